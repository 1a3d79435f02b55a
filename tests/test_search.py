"""SearchEngine against a NumPy reference: text, image and image + note queries, both indexes,
filters, study de-duplication, and every bad query."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medxpert.errors import IndexFormatError, InvalidImageError, QueryError
from medxpert.index import CaseLibrary
from medxpert.retrieval import Filters, SearchEngine
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
    """The hits' scores are the k best of a brute-force scan, best first, and each hit's score
    is its own stored vector's (tied items may come in either order)."""
    stored = engine.library.stored_vectors(modality)
    scores = stored.vectors @ query.ravel()
    best = np.sort(scores)[::-1][: len(hits)]
    np.testing.assert_allclose([h.score for h in hits], best, rtol=1e-5, atol=1e-6)
    for hit in hits:
        own = scores[list(stored.rows).index(engine.library.row_of(hit.case.case_id))]
        assert hit.score == pytest.approx(own, abs=1e-5)


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
        image=image,
        note="fever and cough",
        note_weight=0.0,
        k=4,
        target="images",
        dedupe_study=False,
    )
    plain = engine.search(image=image, k=4, target="images", dedupe_study=False)
    assert [h.case.case_id for h in unweighted] == [h.case.case_id for h in plain]
    check_against_numpy(engine, alone, plain, "images")


def test_results_are_deduplicated_by_study(engine):
    query = engine.library.stored_vectors("images")
    row_of_study0 = engine.library.row_of("nih:0")
    vector = query.vectors[list(query.rows).index(row_of_study0)][None, :]
    full = engine.search_vectors(vector, k=14, target="images", dedupe_study=False)[0]
    assert sum(h.case.study_id == "nih:0" for h in full) == 3
    deduped = engine.search_vectors(vector, k=12, target="images")[0]
    studies = [h.case.study_id for h in deduped]
    assert len(studies) == len(set(studies)) == 12


def test_both_targets_merge_by_rank(engine):
    hits = engine.search(text="pleural effusion.", k=6, target="both")
    assert {h.modality for h in hits} == {"report", "image"}
    assert [h.rank for h in hits] == list(range(1, 7))
    assert len({h.case.study_id for h in hits}) == 6
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
