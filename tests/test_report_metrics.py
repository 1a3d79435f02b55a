"""Report-quality metrics by hand, and the protocol with a perfect and an empty system."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from medxpert.eval.r2gen import R2GenText, sentences
from medxpert.eval.reports import ReportItem, evaluate_reports
from medxpert.labels import LABEL_INDEX
from medxpert.metrics.text import bleu, label_f1, meteor, rouge_l

REFERENCES = [
    "Large left pleural effusion. Heart size is normal.",
    "No acute cardiopulmonary abnormality.",
    "Cardiomegaly with mild pulmonary edema.",
    "Small right pneumothorax.",
]


def test_bleu_and_rouge():
    perfect = bleu(REFERENCES[:3], REFERENCES[:3])
    assert all(value == pytest.approx(1.0) for value in perfect.values())
    # NLTK's corpus BLEU-4 counts a 3-token sentence against it even when copied exactly
    assert bleu(REFERENCES, REFERENCES)["BLEU-4"] == pytest.approx(0.971, abs=1e-3)
    assert set(perfect) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}
    assert bleu(["zebra"] * 4, REFERENCES)["BLEU-1"] < 0.01
    np.testing.assert_allclose(rouge_l(REFERENCES, REFERENCES), 1.0)
    half = rouge_l(["large left effusion"], ["large left pleural effusion"])[0]
    assert half == pytest.approx(2 * 1 * 0.75 / 1.75)  # LCS 3: precision 1, recall 0.75


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs java")
def test_meteor_with_java():
    assert meteor(REFERENCES, REFERENCES) > 0.95
    assert meteor(["zebra crossing"] * 4, REFERENCES) < 0.1


def test_label_f1_by_hand():
    reference = np.full((4, 14), np.nan)
    generated = np.full((4, 14), np.nan)
    effusion, edema = LABEL_INDEX["Pleural Effusion"], LABEL_INDEX["Edema"]
    reference[:, effusion] = [1, 1, 0, 1]
    generated[:, effusion] = [1, 0, 1, 1]  # tp 2, fp 1, fn 1
    reference[:, edema] = [1, 0, 0, 0]
    generated[:, edema] = [1, 0, 0, 0]  # tp 1
    f1 = label_f1(generated, reference, n_boot=50, seed=0)
    micro = next(v for k, v in f1.items() if "micro" in k)
    assert micro.value == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    macro_name = next(k for k in f1 if "macro" in k)
    assert "(0 labels)" in macro_name  # no label has 5 reference positives here


def test_a_perfect_system_beats_an_empty_one():
    items = [ReportItem(str(i), {"i": i}, text) for i, text in enumerate(REFERENCES)]
    asked = []

    def evidence(i: int) -> int:  # gathered once per item, shared by every system
        asked.append(i)
        return i

    rows = evaluate_reports(
        "toy",
        items,
        {"empty": lambda i: "", "copy": lambda i: REFERENCES[i]},
        evidence,
        n_boot=50,
        extra=R2GenText(REFERENCES * 3).scores,
    )
    assert asked == [0, 1, 2, 3]
    by_metric = {row.metric: row.estimates for row in rows}
    assert by_metric["BLEU-3"]["copy"].value == pytest.approx(1.0)
    assert by_metric["ROUGE-L"]["copy"].value == pytest.approx(1.0)
    assert by_metric["ROUGE-L"]["empty"].value == 0
    assert by_metric["CheXpert F1 micro"]["copy"].value == pytest.approx(1.0)
    # an empty report is labelled "No Finding" (the CheXpert convention), which matches the
    # one normal reference: tp 1, fp 3, fn 4 (effusion, cardiomegaly, oedema, pneumothorax)
    assert by_metric["CheXpert F1 micro"]["empty"].value == pytest.approx(2 / (2 + 3 + 4))
    assert by_metric["BLEU-4 (R2Gen text)"]["copy"].value == pytest.approx(1.0)
    assert by_metric["ROUGE-L (R2Gen text)"]["empty"].value < 0.1


def test_r2gen_text_preparation():
    assert sentences("1. The heart is normal.. 2. No effusion, no pneumothorax (stable).") == [
        "the heart is normal",
        "no effusion no pneumothorax stable",
    ]
    text = R2GenText(["The heart is normal. The lungs are clear."] * 3 + ["A rare word."])
    assert text.prepare("The heart is normal. A rare word.") == (
        "the heart is normal . <unk> <unk> <unk> ."
    )
    assert len(text.prepare("The heart is normal. " * 40).split()) == 60
