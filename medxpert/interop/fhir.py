"""A diagnosis as FHIR R4 resources (`fhir.resources.R4B`, FHIR 4.3.0, whose DiagnosticReport,
Observation, Device and Bundle are R4's).

    bundle = diagnosis_fhir(diagnosis)          # a collection Bundle
    write_fhir(diagnosis, "report.json")        # its JSON, written atomically

The Bundle (type collection: a self-contained set of resources to store or forward, without the
server semantics of a transaction) holds a preliminary DiagnosticReport (LOINC 18748-4: the
impression as conclusion, the ICD-10 suggestions as conclusionCode, the Markdown report as
presentedForm, the input's Study Instance UID as imagingStudy identifier, the disclaimer and
the triage as extensions), one preliminary Observation per differential finding (its probability
as valueQuantity, derived from the similar cases that support it) and the Device that made them
(MedXpert, its version and fingerprints). Entries reference each other by urn:uuid fullUrls.
See docs/dicom-sr-fhir.md.
"""

from __future__ import annotations

import base64
import datetime
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from medxpert.atomic import atomic_path
from medxpert.errors import StorageError
from medxpert.interop.sr import PRIVATE_SCHEME, finding_concept, private_concept
from medxpert.labels.clinical import ICD10_THRESHOLD

if TYPE_CHECKING:
    from medxpert.data.images import DicomHeader
    from medxpert.pipeline import Diagnosis
    from medxpert.report.schema import DifferentialItem

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
# MedXpert's own identifiers: the codes of the DICOM SR's private scheme (findings, triage), the
# case library's case ids, and the extensions of the DiagnosticReport
MEDXPERT_CODES = "urn:medxpert:codes"
MEDXPERT_CASES = "urn:medxpert:case-id"
DISCLAIMER_EXTENSION = "urn:medxpert:fhir:StructureDefinition:disclaimer"
TRIAGE_EXTENSION = "urn:medxpert:fhir:StructureDefinition:triage"
WARNING_EXTENSION = "urn:medxpert:fhir:StructureDefinition:warning"
DEVICE_EXTENSION = "urn:medxpert:fhir:StructureDefinition:device"
SYSTEMS = {"SCT": SNOMED, PRIVATE_SCHEME: MEDXPERT_CODES}


def diagnosis_fhir(diagnosis: Diagnosis, *, query_name: str | None = None) -> Bundle:
    """The diagnosis as a collection Bundle: DiagnosticReport, Observations, Device.
    `query_name` (the query image's file name) titles the presented form."""
    device_url = _urn()
    subject = _subject(diagnosis.dicom_headers)
    disclaimer = diagnosis.report.disclaimer
    observations = {
        _urn(): _observation(item, device_url, subject, disclaimer)
        for item in diagnosis.report.differential
    }
    report = _report(diagnosis, list(observations), device_url, subject, query_name)
    resources = {_urn(): report, **observations, device_url: _device(diagnosis.provenance)}
    return Bundle(
        type="collection",
        timestamp=_now(),
        entry=[{"fullUrl": url, "resource": resource} for url, resource in resources.items()],
    )


def fhir_json(diagnosis: Diagnosis, *, query_name: str | None = None) -> str:
    """The Bundle as FHIR JSON."""
    return diagnosis_fhir(diagnosis, query_name=query_name).model_dump_json(indent=2)


def write_fhir(diagnosis: Diagnosis, path: str | Path, *, query_name: str | None = None) -> Path:
    """Write the Bundle's JSON to `path` atomically; `StorageError` when it cannot be written."""
    text = fhir_json(diagnosis, query_name=query_name) + "\n"
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as error:
        raise StorageError(
            f"could not write the FHIR bundle {path} ({error.strerror or error}); what was "
            "there before is unchanged. Choose a writable folder with free space."
        ) from error
    return Path(path)


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _coding(label: str) -> dict:
    concept = finding_concept(label)
    return {"system": SYSTEMS[concept.scheme], "code": concept.code, "display": concept.meaning}


def _subject(headers: list[DicomHeader | None]) -> dict | None:
    """A logical reference to the patient of a DICOM input that names one (its PatientID)."""
    for header in headers:
        dataset = getattr(header, "dataset", None)
        if dataset is not None and dataset.get("PatientID"):
            name = str(dataset.get("PatientName") or "").replace("^", " ").strip()
            return {"type": "Patient", "identifier": {"value": str(dataset.PatientID)}} | (
                {"display": name} if name else {}
            )
    return None


def _study_references(headers: list[DicomHeader | None]) -> list[dict]:
    """Logical references to the input's studies by Study Instance UID (urn:oid:)."""
    uids = dict.fromkeys(
        header.study_instance_uid for header in headers if header and header.study_instance_uid
    )
    return [
        {"type": "ImagingStudy", "identifier": {"system": DICOM_UID, "value": f"urn:oid:{uid}"}}
        for uid in uids
    ]


def _observation(
    item: DifferentialItem, device_url: str, subject: dict | None, disclaimer: str
) -> Observation:
    """A finding: its probability, an interpretation (positive where MedXpert would suggest an
    ICD-10 code, else indeterminate), the cases it was derived from, the disclaimer."""
    positive = item.probability >= ICD10_THRESHOLD
    return Observation(
        status="preliminary",
        category=[{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
        code={"coding": [_coding(item.condition)], "text": item.condition},
        subject=subject,
        valueQuantity={"value": item.probability, "unit": "1", "system": UCUM, "code": "1"},
        interpretation=[
            {
                "coding": [
                    {"system": INTERPRETATION, "code": "POS", "display": "Positive"}
                    if positive
                    else {"system": INTERPRETATION, "code": "IND", "display": "Indeterminate"}
                ]
            }
        ],
        device={"reference": device_url},
        derivedFrom=[
            {"type": "ImagingStudy", "identifier": {"system": MEDXPERT_CASES, "value": case_id}}
            for case_id in item.supporting_case_ids
        ]
        or None,
        note=[{"text": disclaimer}],
    )


def _report(
    diagnosis: Diagnosis,
    results: list[str],
    device_url: str,
    subject: dict | None,
    query_name: str | None,
) -> DiagnosticReport:
    report = diagnosis.report
    markdown = base64.b64encode(report.to_markdown().encode("utf-8")).decode("ascii")
    title = f"MedXpert report of {query_name}" if query_name else "MedXpert report"
    triage = private_concept(report.triage.level)
    return DiagnosticReport(
        status="preliminary",
        category=[{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "RAD"}]}],
        code={
            "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}]
        },
        subject=subject,
        issued=_now(),
        imagingStudy=_study_references(diagnosis.dicom_headers) or None,
        result=[{"reference": url} for url in results] or None,
        conclusion=report.impression_text or None,
        conclusionCode=[
            {"coding": [{"system": ICD10, "code": item.code, "display": item.description}]}
            for item in report.icd10
        ]
        or None,
        presentedForm=[{"contentType": "text/markdown", "data": markdown, "title": title}],
        extension=[
            {"url": DISCLAIMER_EXTENSION, "valueString": report.disclaimer},
            {
                "url": TRIAGE_EXTENSION,
                "valueCodeableConcept": {
                    "coding": [
                        {"system": MEDXPERT_CODES, "code": triage.code, "display": triage.meaning}
                    ],
                    "text": report.triage.reason,
                },
            },
            *({"url": WARNING_EXTENSION, "valueString": text} for text in report.warnings),
            {"url": DEVICE_EXTENSION, "valueReference": {"reference": device_url}},
        ],
    )


def _device(provenance: dict[str, str]) -> Device:
    """MedXpert as a device: one version per provenance entry (version, encoder, library and
    their fingerprints, captioner, writer)."""
    return Device(
        deviceName=[{"name": "MedXpert", "type": "manufacturer-name"}],
        manufacturer="MedXpert",
        modelNumber=provenance.get("encoder"),
        version=[{"type": {"text": key}, "value": value} for key, value in provenance.items()],
    )
