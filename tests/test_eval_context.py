"""The clinical-context A/B: history-only notes, and the protocol with a scripted query."""

from __future__ import annotations

import numpy as np

from medxpert.eval.context import ContextItem, Retrieved, evaluate_context, history_note
from medxpert.labels import LABEL_INDEX, label_vector


def test_history_note_keeps_only_sentences_without_findings():
    note = history_note(
        "Tachypneic and febrile. Extensive right upper lobe consolidation. "
        "Cough for three days. No pleural effusion."
    )
    assert note == "Tachypneic and febrile. Cough for three days."
    assert history_note("Bilateral patchy opacities.") == ""
    assert history_note("") == ""


def test_history_note_drops_imaging_that_the_labeler_does_not_count():
    note = history_note(
        "Trip to Italy 7 days ago. Posteroanterior chest X-ray shows a diffuse nodular pattern. "
        "The right heart border was lost. Left lung is clear. Appearances are considered "
        "'typical' for COVID-19. Normal cardiomediastinal contour. SARS-CoV-2 RNA was detected."
    )
    assert note == "Trip to Italy 7 days ago. SARS-CoV-2 RNA was detected."


def test_a_note_that_carries_the_answer_wins():
    rng = np.random.default_rng(0)
    items = [
        ContextItem(
            f"img{i}",
            "fever" if i % 2 else "none",
            f"p{i}",
            label_vector({"Pneumonia": int(i % 2)}),
        )
        for i in range(40)
    ]
    pneumonia = LABEL_INDEX["Pneumonia"]

    def query(image: str, note: str | None, patient: str) -> Retrieved:
        positive = note == "fever"
        probabilities = rng.random(14)
        labels = np.zeros((5, 14))
        if note is not None:  # the note tells the truth
            probabilities[pneumonia] = 0.9 if positive else 0.1
            labels[:, pneumonia] = 1 if positive else 0
        return Retrieved(labels, probabilities)

    rows = evaluate_context(items, {"image only": False, "image + note": True}, query, n_boot=100)
    by_metric = {row.metric: row.estimates for row in rows}
    auc = by_metric["AUC Pneumonia (n+=20)"]
    assert auc["image + note"].value == 1.0 and abs(auc["image only"].value - 0.5) < 0.3
    precision = by_metric["label P@k"]
    assert precision["image + note"].value == 0.5 and precision["image only"].value == 0
    assert any(metric.startswith("AUC macro") for metric in by_metric)
