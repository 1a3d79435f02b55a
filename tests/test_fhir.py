"""The FHIR R4 Bundle of a diagnosis, parsed back with fhir.resources: a DiagnosticReport with the
impression, the ICD-10 suggestions and the Markdown report, one Observation per finding with its
probability, a Device, all referenced by urn:uuid; the input's study for a DICOM input."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.uid import generate_uid

from medxpert.errors import StorageError
from medxpert.interop.fhir import ICD10, UCUM, diagnosis_fhir, fhir_json, write_fhir
from medxpert.interop.sr import finding_concept
from tests.builders import dicom_bytes, gradient, png_bytes, tiny_pipeline

STUDY_UID = generate_uid()
KINDS = ("dicom", "png")


@pytest.fixture(scope="module")
def diagnoses(tmp_path_factory) -> dict:
    pipeline = tiny_pipeline(tmp_path_factory.mktemp("fhir-pipeline"))
    extra = {"PatientID": "P-42", "PatientName": "Doe^Jane", "StudyInstanceUID": STUDY_UID}
    dicom = dicom_bytes(gradient(), extra=extra)
    return {
        "dicom": pipeline.diagnose(image=io.BytesIO(dicom)),
        "png": pipeline.diagnose(image=io.BytesIO(png_bytes(gradient()))),
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, diagnoses) -> dict[str, Bundle]:
    """Each diagnosis's Bundle, written with `write_fhir` and parsed back."""
    folder = tmp_path_factory.mktemp("fhir")
    return {
        kind: Bundle.model_validate_json(
            write_fhir(
                diagnoses[kind], folder / f"{kind}.json", query_name=f"cxr.{kind}"
            ).read_text(encoding="utf-8")
        )
        for kind in KINDS
    }


def resources(bundle: Bundle, kind: str) -> list:
    return [entry.resource for entry in bundle.entry if entry.resource.get_resource_type() == kind]


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_holds_the_report(kind, bundles, diagnoses):
    bundle, diagnosis = bundles[kind], diagnoses[kind]
    report = diagnosis.report
    assert bundle.type == "collection"
    urls = [entry.fullUrl for entry in bundle.entry]
    assert all(url.startswith("urn:uuid:") for url in urls) and len(set(urls)) == len(urls)
    (diagnostic,) = resources(bundle, "DiagnosticReport")
    assert diagnostic.status == "preliminary"
    assert (diagnostic.code.coding[0].system, diagnostic.code.coding[0].code) == (
        "http://loinc.org",
        "18748-4",
    )
    assert diagnostic.conclusion == report.impression_text
    assert [(c.coding[0].system, c.coding[0].code) for c in diagnostic.conclusionCode] == [
        (ICD10, item.code) for item in report.icd10
    ]
    (form,) = diagnostic.presentedForm
    assert form.contentType == "text/markdown" and form.title == f"MedXpert report of cxr.{kind}"
    assert form.data.decode("utf-8") == report.to_markdown()  # fhir.resources decodes base64
    extensions = {extension.url.rsplit(":", 1)[-1]: extension for extension in diagnostic.extension}
    assert extensions["disclaimer"].valueString == report.disclaimer
    assert extensions["triage"].valueCodeableConcept.text == report.triage.reason


@pytest.mark.parametrize("kind", KINDS)
def test_every_finding_has_an_observation(kind, bundles, diagnoses):
    bundle, report = bundles[kind], diagnoses[kind].report
    by_url = {entry.fullUrl: entry.resource for entry in bundle.entry}
    (diagnostic,) = resources(bundle, "DiagnosticReport")
    (device_url,) = [url for url, r in by_url.items() if r.get_resource_type() == "Device"]
    observations = [by_url[result.reference] for result in diagnostic.result]
    assert report.differential, "the tiny library should make a differential"
    assert len(observations) == len(report.differential) == len(resources(bundle, "Observation"))
    for observation, item in zip(observations, report.differential, strict=True):
        assert observation.status == "preliminary"
        assert observation.code.coding[0].code == finding_concept(item.condition).code
        quantity = observation.valueQuantity
        assert float(quantity.value) == pytest.approx(item.probability)
        assert (quantity.system, quantity.code, quantity.unit) == (UCUM, "1", "1")
        assert observation.interpretation[0].coding[0].code in ("POS", "IND")
        assert [ref.identifier.value for ref in observation.derivedFrom] == list(
            item.supporting_case_ids
        )
        assert observation.device.reference == device_url


def test_device_carries_the_provenance(bundles, diagnoses):
    (device,) = resources(bundles["png"], "Device")
    versions = {version.type.text: version.value for version in device.version}
    assert versions == diagnoses["png"].provenance


def test_dicom_input_references_its_study_and_patient(bundles):
    (diagnostic,) = resources(bundles["dicom"], "DiagnosticReport")
    (study,) = diagnostic.imagingStudy
    assert (study.identifier.system, study.identifier.value) == (
        "urn:dicom:uid",
        f"urn:oid:{STUDY_UID}",
    )
    assert diagnostic.subject.identifier.value == "P-42"


def test_png_input_has_no_study_or_patient(bundles):
    (diagnostic,) = resources(bundles["png"], "DiagnosticReport")
    assert diagnostic.imagingStudy is None and diagnostic.subject is None


def test_fhir_json_is_the_bundle(diagnoses):
    diagnosis = diagnoses["dicom"]
    document = json.loads(fhir_json(diagnosis))
    assert document["resourceType"] == "Bundle"
    assert [entry["resource"]["resourceType"] for entry in document["entry"]] == [
        "DiagnosticReport",
        *["Observation"] * len(diagnosis.report.differential),
        "Device",
    ]
    (form,) = document["entry"][0]["resource"]["presentedForm"]
    assert base64.b64decode(form["data"]).decode("utf-8") == diagnosis.report.to_markdown()
    assert len(diagnosis_fhir(diagnosis).entry) == len(document["entry"])


def test_unwritable_target_is_a_storage_error(tmp_path, diagnoses):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="could not write the FHIR bundle"):
        write_fhir(diagnoses["png"], blocker / "report.json")
