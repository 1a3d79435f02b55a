"""The REST API: every route and error through FastAPI's TestClient, on a tiny workspace, and
`medxpert serve` as a real uvicorn process on 127.0.0.1."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medxpert.api import API_KEY_HEADER, check_exposure, create_app
from medxpert.cli import main
from medxpert.config import Settings
from medxpert.data import Case, open_image
from medxpert.errors import ConfigError
from medxpert.explain import Explainer
from medxpert.index import CaseLibrary
from medxpert.labels import CHEXPERT_LABELS, positive_labels
from medxpert.pipeline import DiagnosisPipeline
from medxpert.retrieval import SearchEngine
from tests.builders import gradient, png_bytes, serve_process, wait_for_health

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_workspace) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("api")
    return root, make_workspace(root)


@pytest.fixture(scope="module")
def settings(workspace) -> Settings:
    return Settings.from_env(workspace[1])


@pytest.fixture(scope="module")
def pipeline(settings) -> DiagnosisPipeline:
    return DiagnosisPipeline.from_artifacts(
        settings.models_dir / "medxpert-default", settings.indexes_dir / "medxpert-default", k=5
    )


@pytest.fixture(scope="module")
def client(pipeline, settings) -> TestClient:
    return TestClient(create_app(pipeline, settings=settings))


@pytest.fixture(scope="module")
def xray(settings) -> tuple[str, bytes]:
    """A test-split X-ray of the workspace: file name and bytes."""
    path = next((settings.data_dir / "covid_cxr" / "images").iterdir())
    return path.name, path.read_bytes()


@pytest.fixture(scope="module")
def study_views(pipeline) -> list[tuple[str, bytes]]:
    """The frontal and lateral X-rays of an IU study of the library: file names and bytes."""
    library = pipeline.engine.library
    study = next(
        library.study(case.study_key)
        for case in library.cases
        if case.view == "lateral" and len(library.study(case.study_key).images) == 2
    )
    return [(Path(c.image_path).name, Path(c.image_path).read_bytes()) for c in study.images]


def assert_real_hits(hits: list[dict], pipeline: DiagnosisPipeline, k: int) -> None:
    """Real studies of the library, ranked, each once, with its images and evidence."""
    library = pipeline.engine.library
    assert [hit["rank"] for hit in hits] == list(range(1, k + 1))
    assert len({hit["study_id"] for hit in hits}) == k
    for hit in hits:
        case = library.case(library.row_of(hit["case_id"]))
        assert hit["study_id"] == case.study_key
        assert hit["source"] == case.source and hit["split"] == case.split
        assert hit["labels"] == positive_labels(case.labels)
        assert hit["has_image"] == case.has_image
        images = library.study(hit["study_id"]).images
        assert hit["images"] == [{"case_id": c.case_id, "view": c.view} for c in images]
        assert hit["evidence"] and hit["evidence"][0]["modality"] == hit["modality"]
        for evidence in hit["evidence"]:
            assert library.case(library.row_of(evidence["case_id"])).study_key == hit["study_id"]


def test_health_reports_the_model_the_index_and_its_counts(client, pipeline):
    response = client.get("/health")
    assert response.status_code == 200
    health = response.json()
    library = pipeline.engine.library
    assert health["status"] == "ok" and health["error"] is None
    assert health["model"]["fingerprint"] == pipeline.engine.encoder.fingerprint()
    assert health["index"]["name"] == "medxpert-default"
    assert health["index"]["cases"] == len(library.cases)
    assert health["index"]["counts"] == {
        "images": library.count("images"),
        "reports": library.count("reports"),
    }
    assert health["index"]["splits"] == ["train", "val"]
    assert (health["captioner"], health["writer"], health["k"]) == ("labels", "offline", 5)
    assert health["api_key_required"] is False


def test_search_by_text_matches_the_engine(client, pipeline):
    response = client.post("/search", json={"text": "pleural effusion", "k": 4})
    assert response.status_code == 200
    body = response.json()
    assert (body["kind"], body["k"], body["target"]) == ("text", 4, "reports")
    hits = body["hits"]
    expected = pipeline.engine.search(text="pleural effusion", k=4, target="reports")
    assert [hit["case_id"] for hit in hits] == [hit.case.case_id for hit in expected]
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(hit["modality"] == "report" and hit["excerpt"] for hit in hits)
    assert_real_hits(hits, pipeline, 4)


def test_search_by_image_and_note_as_multipart(client, pipeline, xray):
    name, data = xray
    response = client.post(
        "/search",
        files={"image": (name, data, "image/png")},
        data={"note": "fever and cough", "k": "3", "target": "images"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["kind"], body["target"]) == ("image", "images")
    expected = pipeline.engine.search(image=data, note="fever and cough", k=3, target="images")
    assert [hit["case_id"] for hit in body["hits"]] == [hit.case.case_id for hit in expected]
    assert all(hit["modality"] == "image" and hit["has_image"] for hit in body["hits"])
    assert_real_hits(body["hits"], pipeline, 3)


def test_several_images_are_one_study_query(client, pipeline, study_views):
    files = [("image", (name, data, "image/jpeg")) for name, data in study_views]
    response = client.post("/search", files=files, data={"k": "4", "target": "both"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["kind"], body["target"]) == ("study", "both")
    expected = pipeline.engine.search(images=[d for _, d in study_views], k=4, target="both")
    assert [hit["study_id"] for hit in body["hits"]] == [hit.study_id for hit in expected]
    assert_real_hits(body["hits"], pipeline, 4)
    report = client.post("/diagnose", files=files, data={"note": "cough", "k": "4"})
    assert report.status_code == 200, report.text
    diagnosis = pipeline.diagnose(images=[d for _, d in study_views], note="cough", k=4)
    assert [hit["study_id"] for hit in report.json()["hits"]] == [
        hit.study_id for hit in diagnosis.hits
    ]
    assert report.json()["report"]["caption"] == diagnosis.caption.text
    cited = report.json()["report"]["cited_cases"]
    assert all(c["study_id"] and c["matched"] for c in cited)


def test_diagnose_an_xray_with_a_note(client, pipeline, xray):
    name, data = xray
    response = client.post(
        "/diagnose",
        files={"image": (name, data, "image/png")},
        data={"note": "Fever and productive cough.", "k": "4"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    report = body["report"]
    assert report["caption"] and report["writer"] == "offline" and report["triage"]["level"]
    assert set(report["timings_ms"]) >= {"encode", "search", "caption", "write"}
    assert set(body["probabilities"]) <= set(CHEXPERT_LABELS)
    assert all(0 <= p <= 1 for p in body["probabilities"].values())
    assert_real_hits(body["hits"], pipeline, 4)
    found = {hit["case_id"] for hit in body["hits"]}
    assert {case["case_id"] for case in report["cited_cases"]} <= found


def test_diagnose_a_text_query(client, pipeline):
    response = client.post("/diagnose", data={"text": "enlarged heart", "target": "reports"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["report"]["caption"] is None and body["report"]["impression"]
    assert all(hit["modality"] == "report" for hit in body["hits"])
    assert_real_hits(body["hits"], pipeline, 5)  # the pipeline's k


def test_diagnose_answers_in_every_report_format(client, xray):
    """?format=markdown, fhir and dicom-sr: the same report as Markdown, a FHIR R4 Bundle that
    fhir.resources parses back, and a DICOM SR file that pydicom reads; json (the default)
    carries the provenance."""
    import pydicom
    from fhir.resources.R4B.bundle import Bundle

    name, data = xray
    answers = {
        format: client.post(
            f"/diagnose?format={format}", files={"image": (name, data, "image/png")}
        )
        for format in ("json", "markdown", "fhir", "dicom-sr")
    }
    assert all(answer.status_code == 200 for answer in answers.values()), answers
    body = answers["json"].json()
    assert body["provenance"]["encoder_fingerprint"] and body["provenance"]["library_fingerprint"]
    impression = " ".join(s["text"] for s in body["report"]["impression"])
    assert answers["markdown"].headers["content-type"].startswith("text/markdown")
    assert "### Impression" in answers["markdown"].text
    assert answers["fhir"].headers["content-type"] == "application/fhir+json"
    bundle = Bundle.model_validate_json(answers["fhir"].content)
    report = next(
        e.resource for e in bundle.entry if e.resource.__resource_type__ == "DiagnosticReport"
    )
    assert report.conclusion == impression
    assert answers["dicom-sr"].headers["content-type"] == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(answers["dicom-sr"].content))
    assert sr.Modality == "SR" and impression.split(".")[0] in str(sr.ContentSequence)


def test_an_unknown_report_format_is_422(client, xray):
    name, data = xray
    response = client.post("/diagnose?format=pdf", files={"image": (name, data, "image/png")})
    assert response.status_code == 422 and response.json()["type"] == "ValidationError"


def test_heatmaps_of_a_finding_and_of_a_similar_case_are_pngs_of_the_xray(client, pipeline, xray):
    """The heatmap routes answer the explainer's maps as PNG overlays the size of the X-ray:
    a finding the captioner scores (another is 404), and either side of a retrieved case."""
    name, data = xray
    files = {"image": (name, data, "image/png")}
    finding = Explainer(pipeline.engine.encoder, pipeline.captioner).findings[0]
    hit = client.post("/search", files=files, data={"target": "images", "k": "1"}).json()["hits"][0]
    answers = [
        client.post(f"/heatmaps/findings/{finding}", files=files),
        client.post(f"/heatmaps/cases/{hit['case_id']}", files=files),
        client.post(f"/heatmaps/cases/{hit['case_id']}", files=files, data={"side": "retrieved"}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    pictures = [Image.open(io.BytesIO(a.content)) for a in answers]
    assert all(a.headers["content-type"] == "image/png" for a in answers)
    assert all(p.mode == "RGB" for p in pictures)
    assert pictures[0].size == pictures[1].size == open_image(data).size
    library = pipeline.engine.library
    case_image = open_image(library.case(library.row_of(hit["case_id"])).image_path)
    assert pictures[2].size == case_image.size
    assert pictures[1].tobytes() != pictures[2].tobytes()
    unscored = client.post("/heatmaps/findings/No Finding", files=files)
    assert unscored.status_code == 404 and "scores" in unscored.json()["error"]
    missing = client.post("/heatmaps/cases/iu_xray:nope", files=files)
    assert missing.status_code == 404


def test_case_record_and_its_image(client, pipeline):
    library = pipeline.engine.library
    case = next(case for case in library.cases if case.has_image and case.has_text)
    response = client.get(f"/cases/{case.case_id}")
    assert response.status_code == 200
    record = response.json()
    assert record["case_id"] == case.case_id and record["patient_id"] == case.patient_id
    texts = (record["findings"], record["impression"], record["report"])
    assert texts == (case.findings, case.impression, case.report) and any(texts)
    assert (record["source"], record["split"], record["view"]) == (
        case.source,
        case.split,
        case.view,
    )
    assert record["labels"] == positive_labels(case.labels) and record["has_image"] is True
    image = client.get(f"/cases/{case.case_id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    decoded = Image.open(io.BytesIO(image.content))
    assert decoded.mode == "L" and decoded.size == open_image(case.image_path).size


def test_unknown_cases_and_missing_images_are_404(client, pipeline, settings):
    for path in ("/cases/nih_cxr14:nope", "/cases/nih_cxr14:nope/image"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["type"] == "CaseNotFoundError"
        assert "nih_cxr14:nope" in response.json()["error"]
    # every case of the shared packs has an image: a copy of the library gets a text-only one
    encoder = pipeline.engine.encoder
    library = CaseLibrary.load(settings.indexes_dir / "medxpert-default", encoder=encoder)
    text_only = Case("csv:report-only", "csv", "train", findings="No acute disease.")
    assert library.add_cases(encoder, [text_only]) == 1
    with_text = DiagnosisPipeline(SearchEngine(library, encoder), pipeline.captioner, None)
    client = TestClient(create_app(with_text, settings=settings))
    assert client.get(f"/cases/{text_only.case_id}").json()["has_image"] is False
    response = client.get(f"/cases/{text_only.case_id}/image")
    assert response.status_code == 404 and "has no image" in response.json()["error"]


@pytest.mark.parametrize(
    ("request_args", "error_type", "says"),
    [
        (
            {"url": "/diagnose", "files": {"image": ("cxr.png", b"not an image", "image/png")}},
            "InvalidImageError",
            "cxr.png is not a chest X-ray image",
        ),
        (
            {"url": "/diagnose", "files": {"image": ("empty.png", b"", "image/png")}},
            "InvalidImageError",
            "empty",
        ),
        ({"url": "/search", "data": {"note": "cough"}}, "QueryError", "goes with an image"),
        ({"url": "/diagnose", "data": {}}, "QueryError", "as multipart form data"),
        ({"url": "/search", "content": b"edema"}, "QueryError", "send the search as JSON"),
    ],
)
def test_user_errors_are_400_with_the_message(client, request_args, error_type, says):
    response = client.post(**request_args)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == error_type and says in response.json()["error"]


@pytest.mark.parametrize(
    ("request_args", "location"),
    [
        ({"url": "/search", "json": {"text": "edema", "k": 0}}, ["body", "k"]),
        ({"url": "/search", "json": {"text": "edema", "target": "sideways"}}, ["body", "target"]),
        ({"url": "/search", "json": {"text": "edema", "query": "x"}}, ["body", "query"]),
        ({"url": "/search", "json": {"text": "   "}}, ["body", "text"]),
        ({"url": "/search", "json": {"k": 1, "text": None}}, ["body", "text"]),
        ({"url": "/search", "json": {"text": "edema", "note": "cough"}}, ["body", "note"]),
        ({"url": "/search", "json": {"text": "edema", "k": "3"}}, ["body", "k"]),
        (
            {"url": "/search", "content": b"{", "headers": {"content-type": "application/json"}},
            ["body"],
        ),
        ({"url": "/search", "data": {"text": "edema", "k": "many"}}, ["body", "k"]),
        ({"url": "/search", "data": {"k": ""}}, ["body", "k"]),
        ({"url": "/search", "data": {"target": ""}}, ["body", "target"]),
        ({"url": "/diagnose", "data": {"text": "edema", "k": "-1"}}, ["body", "k"]),
        ({"url": "/diagnose", "data": {"text": "edema", "k": ""}}, ["body", "k"]),
        ({"url": "/diagnose", "data": {"text": "edema", "target": "all"}}, ["body", "target"]),
        ({"url": "/diagnose", "data": {"text": "edema", "force": "maybe"}}, ["body", "force"]),
        ({"url": "/diagnose", "data": {"text": "edema", "note": "cough"}}, ["body", "note"]),
        ({"url": "/diagnose", "data": {"note": "cough"}}, ["body", "text"]),
    ],
)
def test_bad_parameters_are_422_with_each_problem(client, request_args, location):
    response = client.post(**request_args)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "ValidationError" and body["error"].startswith("malformed request")
    assert location in [problem["loc"] for problem in body["detail"]]


def test_every_error_has_the_documented_shape(client, xray):
    name, data = xray
    boundary = {"content-type": "multipart/form-data; boundary=b"}
    responses = {
        "route": client.get("/no-such-route"),
        "method": client.get("/search"),
        "multipart": client.post("/search", content=b"--b\r\nnonsense", headers=boundary),
        "field": client.post(
            "/search",
            files={"image": (name, data, "image/png")},
            data={"note": "x" * 10 * 2**20},
        ),
        "validation": client.post("/search", json={"text": "edema", "k": 0}),
    }
    assert {key: r.status_code for key, r in responses.items()} == {
        "route": 404,
        "method": 405,
        "multipart": 400,
        "field": 400,
        "validation": 422,
    }
    for response in responses.values():
        body = response.json()
        assert set(body) <= {"error", "type", "detail"} and body["error"] and body["type"]
    assert responses["method"].headers["allow"] == "POST"
    assert "maximum size" in responses["field"].json()["error"]


def test_search_says_why_fewer_hits_than_k_came_back(client, pipeline):
    library = pipeline.engine.library
    images = library.count("images")
    studies = {library.case(row).study_key for row in library.indexes["images"].ids()}
    assert len(studies) < images  # a study's views are one hit
    body = client.post("/search", json={"text": "edema", "k": images, "target": "images"}).json()
    assert body["k"] == images and len(body["hits"]) == len(studies)
    assert f"holds {len(studies)} studies" in body["shortfall"]
    beyond = client.post("/search", json={"text": "edema", "k": 10**9, "target": "both"})
    assert beyond.status_code == 200 and beyond.json()["k"] == 10**9
    assert "indexes hold" in beyond.json()["shortfall"]
    assert client.post("/search", json={"text": "edema", "k": 2}).json()["shortfall"] is None


def test_form_fields_are_read_as_the_schema_says(client, xray):
    name, data = xray
    files = {"image": (name, data, "image/png")}
    note = client.post("/search", files=files, data={"note": "false", "k": "2.0"})
    assert note.status_code == 200 and note.json()["k"] == 2  # a note is text, k a number
    twice = client.post("/diagnose", files=files, data={"force": ["true", "false"]})
    assert twice.status_code == 422 and twice.json()["type"] == "ValidationError"  # a field twice
    empty = client.post("/search", files={"image": (name, b"", "image/png")})
    assert empty.status_code == 400 and empty.json()["type"] == "InvalidImageError"
    schema = client.get("/openapi.json").json()["paths"]
    search = schema["/search"]["post"]["requestBody"]["content"]
    assert search["multipart/form-data"]["schema"]["properties"]["image"]["items"]["minLength"]
    assert search["application/json"]["schema"]["required"] == ["text"]
    diagnose = schema["/diagnose"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert [branch["required"] for branch in diagnose["schema"]["oneOf"]] == [["image"], ["text"]]


def test_a_ct_slice_is_refused_with_422_unless_forced(client):
    """A real CT file from pydicom's test data: the input guard refuses it by its header."""
    from pydicom.data import get_testdata_file

    files = {
        "image": (
            "ct.dcm",
            Path(get_testdata_file("CT_small.dcm")).read_bytes(),
            "application/dicom",
        )
    }
    refused = client.post("/diagnose", files=files)
    assert refused.status_code == 422
    body = refused.json()
    assert body["type"] == "InputRefusedError" and "Modality CT" in body["error"]
    assert "force=true" in body["error"]
    forced = client.post("/diagnose", files=files, data={"force": "true"})
    assert forced.status_code == 200, forced.text
    report = forced.json()["report"]
    assert report["triage"]["level"] == "routine"
    assert any("Modality CT" in warning for warning in report["warnings"])
    responses = client.get("/openapi.json").json()["paths"]["/diagnose"]["post"]["responses"]
    assert "InputRefusedError" in responses["422"]["description"]


def test_bodies_over_the_limit_are_413(pipeline, settings):
    client = TestClient(create_app(pipeline, settings=settings, max_body_bytes=4000))
    small = png_bytes(gradient())
    assert len(small) < 3000
    ok = client.post("/search", files={"image": ("small.png", small, "image/png")})
    assert ok.status_code == 200, ok.text
    big = os.urandom(10_000)
    declared = client.post("/diagnose", files={"image": ("big.png", big, "image/png")})
    assert declared.status_code == 413
    assert declared.json()["type"] == "RequestTooLargeError"
    assert ", over the 4,000 bytes limit" in declared.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b"x" * 1000

    for url in ("/search", "/diagnose"):
        chunked = client.post(
            url, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert chunked.status_code == 413, (url, chunked.text)
        assert chunked.json()["type"] == "RequestTooLargeError"


def test_without_an_index_health_says_why_and_routes_answer_503(workspace, settings, xray):
    app = create_app(
        model_dir=settings.models_dir / "medxpert-default",
        index_dir=workspace[0] / "indexes" / "not-built",
        settings=settings,
    )
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert "medxpert index build" in health.json()["error"]
        responses = [
            client.post("/search", json={"text": "edema"}),
            client.post("/diagnose", files={"image": xray}),
            client.get("/cases/nih_cxr14:00000001_000"),
        ]
    for response in responses:
        assert response.status_code == 503
        assert response.json()["type"] == "IndexNotFoundError"
        assert response.json()["error"] == health.json()["error"]


def test_api_key_guards_every_route_but_health(pipeline, settings):
    client = TestClient(create_app(pipeline, settings=settings, api_key="s3cret-key"))
    assert client.get("/health").status_code == 200
    assert client.get("/health").json()["api_key_required"] is True
    assert client.get("/openapi.json").status_code == 200
    case_id = pipeline.engine.library.cases[0].case_id
    for headers in ({}, {API_KEY_HEADER: "wrong"}, {API_KEY_HEADER: "s3cret-key "}):
        for response in (
            client.post("/search", json={"text": "edema"}, headers=headers),
            client.post("/diagnose", data={"text": "edema"}, headers=headers),
            client.get(f"/cases/{case_id}", headers=headers),
        ):
            assert response.status_code == 401
            assert response.json()["type"] == "AuthenticationError"
            assert "s3cret" not in response.text
    good = {API_KEY_HEADER: "s3cret-key"}
    assert client.post("/search", json={"text": "edema"}, headers=good).status_code == 200
    assert client.get(f"/cases/{case_id}", headers=good).status_code == 200


def test_api_key_comes_from_the_environment(pipeline, settings, monkeypatch):
    monkeypatch.setenv("MEDXPERT_API_KEY", "from-env")
    client = TestClient(create_app(pipeline, settings=settings))
    assert client.post("/search", json={"text": "edema"}).status_code == 401
    response = client.post("/search", json={"text": "edema"}, headers={API_KEY_HEADER: "from-env"})
    assert response.status_code == 200
    schemes = client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert any(scheme.get("name") == API_KEY_HEADER for scheme in schemes.values())


def test_an_unexpected_error_is_a_bare_500_with_the_traceback_only_in_the_log(
    client, pipeline, monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(pipeline, "diagnose", broken)
    with caplog.at_level(logging.ERROR, logger="medxpert.api"):
        response = client.post("/diagnose", data={"text": "edema"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error", "type": "InternalError"}
    assert "secret" not in response.text and "Traceback" not in response.text
    logged = [record for record in caplog.records if record.exc_info]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])


def test_inference_runs_one_request_at_a_time(client, pipeline, monkeypatch):
    running, most = 0, 0
    counter = threading.Lock()

    def slow_search(**query):
        nonlocal running, most
        with counter:
            running += 1
            most = max(most, running)
        time.sleep(0.15)
        with counter:
            running -= 1
        return []

    monkeypatch.setattr(pipeline.engine, "search", slow_search)
    statuses: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(client.post("/search", json={"text": "x"}).status_code)
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200, 200] and most == 1


def test_openapi_schema_documents_routes_and_bodies(client):
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"] == "MedXpert API" and schema["info"]["version"]
    assert {"/health", "/search", "/diagnose", "/cases/{case_id}", "/cases/{case_id}/image"} <= set(
        schema["paths"]
    )
    search = schema["paths"]["/search"]["post"]
    assert set(search["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"200", "400", "413", "422", "503"} <= set(search["responses"])
    assert "404" in schema["paths"]["/cases/{case_id}/image"]["get"]["responses"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # one error shape
    diagnose = schema["paths"]["/diagnose"]["post"]
    assert "multipart/form-data" in diagnose["requestBody"]["content"]
    assert "DiagnoseResponse" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_serving_beyond_loopback_needs_a_key_or_an_explicit_flag(capsys):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_exposure(host, None)
    check_exposure("0.0.0.0", "a-key")
    check_exposure("0.0.0.0", None, allow_no_key=True)
    for host in ("0.0.0.0", "192.168.1.10", "example.org"):
        with pytest.raises(ConfigError, match="MEDXPERT_API_KEY"):
            check_exposure(host, None)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--no-api-key" in capsys.readouterr().err


def test_medxpert_serve_answers_over_real_http(workspace, xray):
    server, base = serve_process(workspace[1])
    try:
        health = wait_for_health(server, base)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["model"]["dir"].endswith("medxpert-default")
        found = httpx.post(f"{base}/search", json={"text": "cardiomegaly", "k": 3}, timeout=60)
        assert found.status_code == 200 and len(found.json()["hits"]) == 3
        name, data = xray
        report = httpx.post(
            f"{base}/diagnose",
            files={"image": (name, data, "image/png")},
            data={"note": "cough"},
            timeout=60,
        )
        assert report.status_code == 200 and report.json()["report"]["caption"]
        assert len(report.json()["hits"]) == health.json()["k"] == 10
        bad = httpx.post(f"{base}/diagnose", files={"image": ("x.png", b"junk")}, timeout=60)
        assert bad.status_code == 400 and bad.json()["type"] == "InvalidImageError"
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Uvicorn running on http://127.0.0.1" in output
    assert "Traceback" not in output
