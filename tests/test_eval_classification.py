"""Label agreement metrics, checked against hand-computed values; the bar chart helper."""

import numpy as np
import pytest
from PIL import Image

from medxpert.eval.classification import label_agreement
from medxpert.eval.plots import grouped_bar_chart
from medxpert.labels import LABEL_INDEX, NUM_LABELS


def test_precision_recall_f1_by_hand():
    reference = np.full((4, NUM_LABELS), np.nan, dtype=np.float32)
    predicted = reference.copy()
    edema = LABEL_INDEX["Edema"]
    reference[:, edema] = [1, 1, 0, np.nan]
    predicted[:, edema] = [1, -1, 1, np.nan]
    positive = {r.label: r for r in label_agreement(reference, predicted, "positive")}["Edema"]
    assert (positive.support, positive.predicted, positive.true_positives) == (2, 3, 2)
    assert positive.precision == pytest.approx(2 / 3) and positive.recall == 1.0
    assert positive.f1 == pytest.approx(0.8)
    negative = {r.label: r for r in label_agreement(reference, predicted, "negative")}["Edema"]
    assert (negative.predicted, negative.true_positives) == (2, 1)
    assert negative.f1 == pytest.approx(0.5)


def test_shape_and_policy_checks():
    with pytest.raises(ValueError, match="shapes differ"):
        label_agreement(np.zeros((2, NUM_LABELS)), np.zeros((3, NUM_LABELS)))
    with pytest.raises(ValueError, match="uncertain"):
        label_agreement(np.zeros((1, NUM_LABELS)), np.zeros((1, NUM_LABELS)), "ignore")


def test_grouped_bar_chart_writes_a_png(tmp_path):
    path = grouped_bar_chart(
        ["a", "b", "c"],
        {"x": [0.1, 0.5, 0.9], "y": [0.2, 0.4, 0.6]},
        tmp_path / "chart.png",
        title="t",
        ylabel="F1",
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400
