"""The zero-shot blend: its arithmetic, the saved weight, choosing it on validation data, and
the pipeline applying it to image queries only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medxpert.caption import LabelCaptioner
from medxpert.errors import ConfigError
from medxpert.eval.blend import BlendInputs, brier_per_query, choose_weight, evaluate_blend
from medxpert.index import CaseLibrary
from medxpert.labels import CHEXPERT_LABELS, LABEL_INDEX
from medxpert.pipeline import DiagnosisPipeline
from medxpert.report import OfflineWriter
from medxpert.retrieval import SearchEngine
from medxpert.retrieval.probabilities import (
    BLEND_FILE,
    LabelVote,
    blend,
    read_blend_weight,
    write_blend_weight,
)
from tests.builders import gradient, library_cases, png_bytes, tiny_encoder


def vote_of(probabilities: dict[str, float]) -> LabelVote:
    full = {label: probabilities.get(label, 0.0) for label in CHEXPERT_LABELS}
    return LabelVote(full, {label: ("iu:1",) for label in CHEXPERT_LABELS})


def test_blend_mixes_only_the_scored_labels():
    vote = vote_of({"Edema": 0.2, "No Finding": 0.6})
    mixed = blend(vote, {"Edema": 1.0, "Cardiomegaly": 0.5}, 0.25)
    assert mixed.probabilities["Edema"] == pytest.approx(0.75 * 0.2 + 0.25 * 1.0)
    assert mixed.probabilities["Cardiomegaly"] == pytest.approx(0.125)
    assert mixed.probabilities["No Finding"] == 0.6  # not scored by the captioner
    assert mixed.evidence == vote.evidence and mixed.zero_shot_weight == 0.25
    assert blend(vote, {"Edema": 1.0}, 0.0) is vote
    assert blend(vote, {}, 0.5) is vote
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        blend(vote, {"Edema": 1.0}, 1.5)


def test_saved_weight_is_tied_to_its_encoder(tmp_path):
    assert read_blend_weight(tmp_path, "abc") == 0.0  # none chosen yet: the vote alone
    write_blend_weight(tmp_path, 0.4, "abc", chosen_on="val")
    assert read_blend_weight(tmp_path, "abc") == 0.4
    assert read_blend_weight(tmp_path, "another encoder") == 0.0
    (tmp_path / BLEND_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="medxpert eval blend"):
        read_blend_weight(tmp_path, "abc")
    (tmp_path / BLEND_FILE).write_text(
        json.dumps({"zero_shot_weight": 3, "encoder_fingerprint": "abc"})
    )
    with pytest.raises(ConfigError, match="outside"):
        read_blend_weight(tmp_path, "abc")


def synthetic(informative: str, n: int = 400, seed: int = 0) -> BlendInputs:
    """One scored label (Edema): either the vote or the zero-shot score carries the truth,
    the other is noise."""
    rng = np.random.default_rng(seed)
    truth = np.full((n, 14), np.nan)
    truth[:, LABEL_INDEX["Edema"]] = rng.random(n) < 0.3
    signal = np.clip(truth[:, LABEL_INDEX["Edema"]] * 0.6 + rng.normal(0.2, 0.1, n), 0, 1)
    noise = rng.random(n)
    votes = np.zeros((n, 14))
    zero_shot = np.full((n, 14), np.nan)
    votes[:, LABEL_INDEX["Edema"]] = signal if informative == "vote" else noise
    zero_shot[:, LABEL_INDEX["Edema"]] = noise if informative == "vote" else signal
    return BlendInputs(votes, zero_shot, truth)


def test_choose_weight_follows_the_informative_source():
    weight, table = choose_weight(synthetic("zero-shot"))
    assert weight >= 0.7 and set(table) == {round(w / 10, 1) for w in range(11)}
    assert table[weight]["macro AUC"] > table[0.0]["macro AUC"] + 0.2
    weight, table = choose_weight(synthetic("vote"))
    assert weight <= 0.3
    assert table[weight]["Brier"] == min(scores["Brier"] for scores in table.values())


def test_choose_weight_without_scorable_labels_keeps_the_vote():
    inputs = synthetic("zero-shot", n=20)  # about 6 positives: too few to score
    assert choose_weight(inputs) == (0.0, {})


def test_brier_score_counts_known_labels_only():
    truth = np.array([[1.0, np.nan], [0.0, 0.0], [np.nan, np.nan]])
    scores = np.array([[0.5, 0.9], [0.1, 0.3], [0.7, 0.7]])
    np.testing.assert_allclose(brier_per_query(truth, scores), [0.25, (0.01 + 0.09) / 2])


def test_evaluate_blend_compares_vote_zero_shot_and_blend():
    inputs = synthetic("zero-shot", seed=1)
    systems, rows = evaluate_blend(
        inputs, 0.8, inputs.labels(), task="synthetic", n_boot=50, seed=0
    )
    assert systems == ["vote (w=0)", "zero-shot (w=1)", "blend (w=0.8)"]
    macro = next(row for row in rows if row.metric.startswith("AUC macro"))
    assert macro.estimates["zero-shot (w=1)"].value > macro.estimates["vote (w=0)"].value + 0.2
    brier = next(row for row in rows if row.metric.startswith("Brier"))
    assert brier.estimates["vote (w=0)"].value > brier.estimates["blend (w=0.8)"].value


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    encoder = tiny_encoder(root)
    library = CaseLibrary.build(encoder, library_cases(root))
    return root, encoder, library


def test_pipeline_blends_image_queries_with_the_caption(parts):
    _, encoder, library = parts
    engine, captioner = SearchEngine(library, encoder), LabelCaptioner(encoder)
    image = png_bytes(gradient(low=30, high=150))
    vote_only = DiagnosisPipeline(engine, captioner, OfflineWriter(), k=5).diagnose(image=image)
    zero_shot = DiagnosisPipeline(
        engine, captioner, OfflineWriter(), k=5, zero_shot_weight=1.0
    ).diagnose(image=image)
    scored = zero_shot.caption.probabilities
    assert scored and zero_shot.zero_shot_weight == 1.0 and vote_only.zero_shot_weight == 0.0
    for label in CHEXPERT_LABELS:
        expected = scored[label] if label in scored else vote_only.probabilities[label]
        assert zero_shot.probabilities[label] == pytest.approx(expected, abs=1e-4)
    assert vote_only.probabilities["Edema"] != zero_shot.probabilities["Edema"]
    differential = {d.condition: d.probability for d in zero_shot.report.differential}
    assert differential and all(zero_shot.probabilities[k] == p for k, p in differential.items())
    text = DiagnosisPipeline(engine, captioner, OfflineWriter(), k=3, zero_shot_weight=1.0)
    assert text.diagnose(text="level two pleural effusion.").zero_shot_weight == 0.0


def test_from_artifacts_reads_the_saved_weight(parts):
    root, encoder, library = parts
    model_dir = encoder.save(root / "model")
    index_dir = library.save(root / "index")
    assert DiagnosisPipeline.from_artifacts(model_dir, index_dir).zero_shot_weight == 0.0
    write_blend_weight(index_dir, 0.3, encoder.fingerprint())
    assert DiagnosisPipeline.from_artifacts(model_dir, index_dir).zero_shot_weight == 0.3
    explicit = DiagnosisPipeline.from_artifacts(model_dir, index_dir, zero_shot_weight=0.0)
    assert explicit.zero_shot_weight == 0.0


def test_library_image_vectors_by_split(parts):
    library = parts[2]
    vectors, cases = library.image_vectors()
    assert len(cases) == 12 and vectors.shape == (12, 16)
    train_vectors, train_cases = library.image_vectors(["train"])
    assert {case.split for case in train_cases} == {"train"} and len(train_cases) == 8
    by_path = library.image_vectors_by_path()
    for vector, case in zip(train_vectors, train_cases, strict=True):
        np.testing.assert_array_equal(vector, by_path[case.image_path])
    assert library.image_vectors(["val"])[0].shape[0] == 0
