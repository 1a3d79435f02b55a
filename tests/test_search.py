"""SearchEngine against a NumPy reference: text, image, study and image + note queries; studies
as hits (each once, with its evidence); fusing both indexes on one scale (never by raw cosine);
filters; the saved fusion choice; and every bad query."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from medxpert.data import Case
from medxpert.errors import ConfigError, IndexFormatError, InvalidImageError, QueryError
from medxpert.index import CaseLibrary
from medxpert.index.library import Embeddings
from medxpert.retrieval import (
    Calibration,
    Evidence,
    Filters,
    Fusion,
    SearchEngine,
    read_fusion,
    study_vector,
    write_fusion,
)
from medxpert.retrieval.fusion import FUSION_FILE
from tests.builders import gradient, library_cases, png_bytes, tiny_encoder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("enc"))


@pytest.fixture(scope="module")
def engine(encoder, tmp_path_factory):
    cases = library_cases(tmp_path_factory.mktemp("cases"))
    # two more images of study nih:0, to see de-duplication by study
    cases += [
        dataclasses.replace(cases[0], case_id=f"nih:0-{view}", image_path=cases[i].image_path)
        for view, i in (("b", 1), ("c", 2))
    ]
    return SearchEngine(CaseLibrary.build(encoder, cases), encoder, note_weight=0.3)


def check_against_numpy(engine: SearchEngine, query: np.ndarray, hits, modality: str) -> None:
    """The hits are the best studies of a brute-force scan, best first, each scored by its best
    stored vector (tied studies may come in either order)."""
    stored = engine.library.stored_vectors(modality)
    best: dict[str, float] = {}
    for row, score in zip(stored.rows, stored.vectors @ query.ravel(), strict=True):
        study = engine.library.case(row).study_key
        best[study] = max(best.get(study, -np.inf), float(score))
    expected = sorted(best.values(), reverse=True)[: len(hits)]
    np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-5, atol=1e-6)
    for hit in hits:
        assert hit.score == pytest.approx(best[hit.study_id], abs=1e-5)


def test_text_query_ranks_reports_like_numpy(engine):
    hits = engine.search(text="pleural effusion.", k=3, target="reports")
    check_against_numpy(engine, engine.encoder.encode_texts(["pleural effusion."]), hits, "reports")
    assert [h.rank for h in hits] == [1, 2, 3] and {h.modality for h in hits} == {"report"}
    assert len({h.case.study_id for h in hits}) == 3


def test_image_query_with_and_without_a_note(engine):
    image = png_bytes(gradient(low=30, high=140))
    alone = engine.query_vector(image=image)
    np.testing.assert_allclose(alone, engine.encoder.encode_images([image]), rtol=1e-6)
    with_note = engine.query_vector(image=image, note="fever and cough")
    note = engine.encoder.encode_texts(["fever and cough"])
    blend = 0.7 * alone + 0.3 * note
    np.testing.assert_allclose(with_note, blend / np.linalg.norm(blend), rtol=1e-5, atol=1e-6)
    unweighted = engine.search(
        image=image, note="fever and cough", note_weight=0.0, k=4, target="images"
    )
    plain = engine.search(image=image, k=4, target="images")
    assert [h.case.case_id for h in unweighted] == [h.case.case_id for h in plain]
    check_against_numpy(engine, alone, plain, "images")


def test_a_study_query_is_the_fused_vector_of_its_images(engine):
    frontal, lateral = png_bytes(gradient(low=30, high=140)), png_bytes(gradient(low=90, high=250))
    vectors = engine.encoder.encode_images([frontal, lateral])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = unit.mean(axis=0) / np.linalg.norm(unit.mean(axis=0))
    study = engine.query_vector(images=[frontal, lateral])
    np.testing.assert_allclose(study[0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(study_vector(vectors), study, rtol=1e-6)
    assert not np.allclose(study, engine.query_vector(image=frontal), atol=1e-3)
    hits = engine.search(images=[frontal, lateral], k=4, target="images")
    direct = engine.search_vectors(study, k=4, target="images")[0]
    assert [h.study_id for h in hits] == [h.study_id for h in direct]
    with_note = engine.query_vector(images=[frontal, lateral], note="fever and cough")
    note = engine.encoder.encode_texts(["fever and cough"])
    mixed = 0.7 * study + 0.3 * note
    np.testing.assert_allclose(with_note, mixed / np.linalg.norm(mixed), rtol=1e-5, atol=1e-6)
    with pytest.raises(QueryError, match="no images"):
        engine.search(images=[], k=2)
    with pytest.raises(QueryError, match="not both"):
        engine.search(image=frontal, images=[lateral], k=2)


def test_a_study_is_one_hit_with_every_view_that_matched(engine):
    """Study nih:0 has three images; searched with its own vector, all three rank high."""
    stored = engine.library.stored_vectors("images")
    row = engine.library.row_of("nih:0")
    vector = stored.vectors[list(stored.rows).index(row)][None, :]
    hits = engine.search_vectors(vector, k=12, target="images")[0]
    studies = [h.study_id for h in hits]
    assert len(studies) == len(set(studies)) == 12
    first = hits[0]
    assert first.study_id == "nih:0" and first.case.case_id == "nih:0"
    assert {e.case_id for e in first.evidence} == {"nih:0", "nih:0-b", "nih:0-c"}
    assert first.evidence[0] == Evidence("image", "nih:0", "frontal", pytest.approx(1.0), 1)
    assert [e.score for e in first.evidence] == sorted(e.score for e in first.evidence)[::-1]
    assert [c.case_id for c in first.images] == ["nih:0", "nih:0-b", "nih:0-c"]
    scores = stored.vectors @ vector[0]
    for hit in hits:
        for evidence in hit.evidence:
            own = scores[list(stored.rows).index(engine.library.row_of(evidence.case_id))]
            assert evidence.score == pytest.approx(own, abs=1e-5)
    ranks = sorted(e.rank for hit in hits for e in hit.evidence)
    assert ranks == list(range(1, len(ranks) + 1))  # each image once, in index order


def test_both_targets_interleave_by_rank_with_fusion_rank(engine):
    hits = engine.search(text="pleural effusion.", k=6, target="both", fusion=Fusion("rank"))
    assert {h.modality for h in hits} == {"report", "image"}
    assert [h.rank for h in hits] == list(range(1, 7))
    assert len({h.study_id for h in hits}) == 6
    top_report = engine.search(text="pleural effusion.", k=1, target="reports")[0]
    top_image = engine.search(text="pleural effusion.", k=1, target="images")[0]
    assert {hits[0].case.case_id, hits[1].case.case_id} == {
        top_report.case.case_id,
        top_image.case.case_id,
    }


def test_filters(engine):
    train = engine.search(text="edema", k=5, target="images", filters=Filters.of(splits=["train"]))
    assert len(train) == 5 and {h.case.split for h in train} == {"train"}
    others = engine.search(
        text="edema", k=8, target="images", filters=Filters.of(exclude_patients=["p0", "p1"])
    )
    assert not {"p0", "p1"} & {h.case.patient_id for h in others}
    frontal = engine.search(
        text="effusion", k=3, target="reports", filters=Filters.of(views=["frontal"])
    )
    assert len(frontal) == 3 and {h.case.view for h in frontal} == {"frontal"}
    nothing = engine.search(
        text="edema", k=3, target="images", filters=Filters.of(sources=["mimic_cxr"])
    )
    assert nothing == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({}, "nothing to search for"),
        ({"text": "   "}, "empty"),
        ({"text": "x" * 20_001}, "limit is 20,000"),
        ({"note": "cough"}, "goes with an image"),
        ({"text": "effusion", "k": 0}, "positive"),
        ({"text": "effusion", "k": 4}, "larger than the index"),
        ({"text": "effusion", "target": "notes"}, "target must be"),
    ],
)
def test_bad_queries(engine, query, message):
    with pytest.raises(QueryError, match=message):
        engine.search(**{"k": 2, "target": "reports", **query})


def test_unreadable_image(engine):
    with pytest.raises(InvalidImageError):
        engine.search(image=b"this is not an image", k=2)


def test_an_index_built_with_another_encoder_is_refused(engine, tmp_path):
    other = tiny_encoder(tmp_path, seed=3)
    with pytest.raises(IndexFormatError, match="not comparable"):
        SearchEngine(engine.library, other)


# --- fusing both indexes on one scale --------------------------------------------------------
# Cosines to the query e0 of a library built from fixed vectors: images run near 0.95, reports
# near 0.3 (the modality gap). Study A has two views, both near the top of the image index.
IMAGE_COSINES = {"A-front": 0.97, "A-lat": 0.96, "B": 0.95, "C": 0.94, "D": 0.93, "E": 0.50}
IMAGE_COSINES |= {"F": 0.45, "G": 0.80}
REPORT_COSINES = {"A": 0.10, "B": 0.05, "C": 0.0, "D": -0.05, "E": 0.40, "F": 0.34, "G": 0.30}
CALIBRATION = Calibration({"image": {"image": (0.94, 0.01), "report": (0.20, 0.05)}})


def unit_with_cosine(cosine: float, axis: int, dim: int = 16) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[0], vector[axis] = cosine, np.sqrt(1 - cosine**2)
    return vector


@pytest.fixture(scope="module")
def gap_engine(encoder):
    names = list(IMAGE_COSINES)
    cases = [
        Case(
            case_id=f"iu:{name}",
            source="iu_xray",
            split="train",
            study_id=f"iu:s{name[0]}",
            view="lateral" if name.endswith("lat") else "frontal",
            image_path=f"/nowhere/{name}.png",
            findings=f"report {name[0]}",
        )
        for name in names
    ]
    report_rows = [names.index(f"{study}-front" if study == "A" else study) for study in "ABCDEFG"]
    vectors = [unit_with_cosine(c, axis) for axis, c in enumerate(IMAGE_COSINES.values(), 1)]
    reports = [unit_with_cosine(c, axis) for axis, c in enumerate(REPORT_COSINES.values(), 9)]
    embeddings = {
        "images": Embeddings(np.arange(len(names)), np.stack(vectors)),
        "reports": Embeddings(np.array(report_rows), np.stack(reports)),
    }
    library = CaseLibrary.from_embeddings(encoder, cases, embeddings)
    return SearchEngine(library, encoder)


QUERY = unit_with_cosine(1.0, 1)[None, :]


def studies(hits) -> list[str]:
    return [hit.study_id.removeprefix("iu:s") for hit in hits]


def test_both_never_ranks_by_raw_cosine_across_indexes(gap_engine):
    raw = gap_engine.search_vectors(QUERY, k=4, target="both", fusion=Fusion("max-cosine"))[0]
    assert studies(raw) == ["A", "B", "C", "D"]  # the images crowd out every report
    fused = gap_engine.search_vectors(QUERY, k=4, target="both")[0]  # rrf, the default
    # A: image #1 + report #4; E: report #1; F and B: #2 of each (the report first on a tie)
    assert studies(fused) == ["A", "E", "F", "B"]
    assert [h.score for h in fused] == pytest.approx([1 / 61 + 1 / 64, 1 / 61, 1 / 62, 1 / 62])
    assert [h.modality for h in fused] == ["image", "report", "report", "image"]
    ranked = gap_engine.search_vectors(QUERY, k=4, target="both", fusion=Fusion("rank"))[0]
    assert studies(ranked) == ["E", "A", "F", "B"]
    calibrated = Fusion("calibrated", calibration=CALIBRATION)
    z = gap_engine.search_vectors(QUERY, k=4, target="both", fusion=calibrated)[0]
    # z-scores: E (0.40 − 0.20) / 0.05 = 4, A (0.97 − 0.94) / 0.01 = 3, F 2.8, G 2, B 1
    assert studies(z) == ["E", "A", "F", "G"]
    assert [h.score for h in z] == pytest.approx([4.0, 3.0, 2.8, 2.0], abs=1e-4)


def test_the_evidence_lists_what_matched(gap_engine):
    hits = gap_engine.search_vectors(QUERY, k=4, target="both")[0]
    a, e = hits[0], hits[1]
    assert (a.case.case_id, a.modality, a.cosine) == ("iu:A-front", "image", pytest.approx(0.97))
    assert [(x.modality, x.case_id, x.view, x.rank) for x in a.evidence] == [
        ("image", "iu:A-front", "frontal", 1),
        ("image", "iu:A-lat", "lateral", 2),
        ("report", "iu:A-front", "frontal", 4),
    ]
    assert [x.score for x in a.evidence] == pytest.approx([0.97, 0.96, 0.10], abs=1e-5)
    assert [c.case_id for c in a.images] == ["iu:A-front", "iu:A-lat"]
    assert a.describe_evidence() == (
        "frontal image 0.970 (#1); lateral image 0.960 (#2); report 0.100 (#4)"
    )
    assert (e.case.case_id, e.modality) == ("iu:E", "report")
    assert [(x.modality, x.rank) for x in e.evidence] == [("report", 1)]
    assert [c.case_id for c in e.images] == ["iu:E"]  # the study's images, matched or not
    images = gap_engine.search_vectors(QUERY, k=2, target="images")[0]
    assert studies(images) == ["A", "B"] and [h.rank for h in images] == [1, 2]
    assert len(images[0].evidence) == 2 and images[0].score == pytest.approx(0.97)


def test_calibrated_fusion_without_statistics_for_the_query_kind_uses_rrf(gap_engine):
    calibrated = Fusion("calibrated", calibration=CALIBRATION)
    text = gap_engine.search_vectors(
        QUERY, k=4, target="both", fusion=calibrated, query_kind="text"
    )[0]
    assert studies(text) == ["A", "E", "F", "B"]
    with pytest.raises(ConfigError, match="medxpert eval fusion"):
        Fusion("calibrated")
    with pytest.raises(ConfigError, match="fusion must be one of"):
        Fusion("sum")


def test_the_saved_fusion_choice_is_tied_to_its_encoder(tmp_path, encoder, gap_engine):
    assert read_fusion(tmp_path, "abc") == Fusion("rrf")  # none saved: rrf
    chosen = Fusion("calibrated", k0=30, calibration=CALIBRATION)
    write_fusion(tmp_path, chosen, "abc", chosen_on="val")
    assert read_fusion(tmp_path, "abc") == chosen
    assert read_fusion(tmp_path, "abc", "rank") == Fusion("rank", 30, CALIBRATION)
    assert read_fusion(tmp_path, "another encoder") == Fusion("rrf")
    record = json.loads((tmp_path / FUSION_FILE).read_text())
    assert record["encoder_fingerprint"] == "abc" and record["chosen_on"] == "val"
    model_dir = encoder.save(tmp_path / "model")
    index_dir = gap_engine.library.save(tmp_path / "index")
    assert SearchEngine.from_artifacts(model_dir, index_dir).fusion == Fusion("rrf")
    write_fusion(index_dir, chosen, encoder.fingerprint())
    assert SearchEngine.from_artifacts(model_dir, index_dir).fusion == chosen
    explicit = SearchEngine.from_artifacts(model_dir, index_dir, fusion="max-cosine")
    assert explicit.fusion.method == "max-cosine"
    write_fusion(index_dir, chosen, "another encoder")
    assert SearchEngine.from_artifacts(model_dir, index_dir).fusion == Fusion("rrf")
    (tmp_path / FUSION_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="medxpert eval fusion"):
        read_fusion(tmp_path, "abc")
