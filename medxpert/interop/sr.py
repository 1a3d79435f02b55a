"""A diagnosis as a DICOM Comprehensive SR document, built with highdicom.

    dataset = diagnosis_sr(diagnosis)           # a pydicom Dataset (highdicom ComprehensiveSR)
    write_sr(diagnosis, "report.dcm")           # a Part 10 file, written atomically

The content tree (see docs/dicom-sr-fhir.md): a Diagnostic Imaging Report container (LOINC
18748-4) with the language and device observer context, the Findings and Impressions sections as
TEXT items (each citing the similar cases it was drawn from), the ICD-10 suggestions as CODE
items, one TID 1501 measurement group per differential finding (the finding as a coded
qualitative evaluation, its probability as a NUM, the algorithm as TID 4019), the triage level,
the warnings and the disclaimer. Concepts without a fitting standard code use the private coding
scheme `PRIVATE_SCHEME`, declared in the Coding Scheme Identification Sequence.

A DICOM input puts the SR in the input's study: its patient and study modules are copied and its
instances are the SR's evidence. Any other input gets a new study and an empty patient module.
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from highdicom import UID
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medxpert.atomic import atomic_path
from medxpert.errors import DataFormatError, StorageError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydicom.sr.coding import Code

    from medxpert.pipeline import Diagnosis
    from medxpert.report.schema import Statement

PRIVATE_SCHEME = "99MEDXPERT"
MANUFACTURER = "MedXpert"
SERIES_NUMBER = 900  # apart from the acquisition series of the study
CODE_MEANING_CHARS = 64  # Code Meaning is LO
CODE_VALUE_CHARS = 16  # Code Value is SH

CONTAINS = RelationshipTypeValues.CONTAINS
INFERRED_FROM = RelationshipTypeValues.INFERRED_FROM
CONCEPT_MOD = RelationshipTypeValues.HAS_CONCEPT_MOD
OBS_CONTEXT = RelationshipTypeValues.HAS_OBS_CONTEXT
EVIDENCE = ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence")
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# the type 2 attributes of the patient and general study modules an SR must carry (maybe empty)
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)


class Concept(NamedTuple):
    """A coded concept: its code, coding scheme designator and meaning."""

    code: str
    scheme: str
    meaning: str


# The CheXpert-14 observations: SNOMED CT where a code fits the finding, else private.
FINDING_CONCEPTS: dict[str, Concept] = {
    "No Finding": Concept("NO-FINDING", PRIVATE_SCHEME, "No finding"),
    "Enlarged Cardiomediastinum": Concept(
        "ENL-CARDIOMED", PRIVATE_SCHEME, "Enlarged cardiomediastinum"
    ),
    "Cardiomegaly": Concept("8186001", "SCT", "Cardiomegaly"),
    "Lung Opacity": Concept("LUNG-OPACITY", PRIVATE_SCHEME, "Lung opacity"),
    "Lung Lesion": Concept("LUNG-LESION", PRIVATE_SCHEME, "Lung lesion (nodule or mass)"),
    "Edema": Concept("19242006", "SCT", "Pulmonary edema"),
    "Consolidation": Concept("95436008", "SCT", "Lung consolidation"),
    "Pneumonia": Concept("233604007", "SCT", "Pneumonia"),
    "Atelectasis": Concept("46621007", "SCT", "Atelectasis"),
    "Pneumothorax": Concept("36118008", "SCT", "Pneumothorax"),
    "Pleural Effusion": Concept("60046008", "SCT", "Pleural effusion"),
    "Pleural Other": Concept("PLEURAL-OTHER", PRIVATE_SCHEME, "Other pleural abnormality"),
    "Fracture": Concept("125605004", "SCT", "Fracture of bone"),
    "Support Devices": Concept("SUPPORT-DEVICES", PRIVATE_SCHEME, "Support devices"),
}
PLAIN_CHEST_XRAY = Concept("399208008", "SCT", "Plain chest X-ray")
TRIAGE_LEVEL = Concept("TRIAGE", PRIVATE_SCHEME, "Triage level")
TRIAGE_REASON = Concept("TRIAGE-REASON", PRIVATE_SCHEME, "Triage reason")
CITED_CASE = Concept("CITED-CASE", PRIVATE_SCHEME, "Cited similar case")
QUERY_IMAGE = Concept("QUERY", PRIVATE_SCHEME, "Query image")
WARNING = Concept("WARNING", PRIVATE_SCHEME, "Warning")
DISCLAIMER = Concept("DISCLAIMER", PRIVATE_SCHEME, "Disclaimer")
NO_UNITS = Concept("1", "UCUM", "no units")  # a probability in [0, 1]
ICD10_SCHEME = "I10"


def diagnosis_sr(diagnosis: Diagnosis, *, query_name: str | None = None) -> Dataset:
    """The diagnosis as a Comprehensive SR (preliminary, unverified: decision support).
    `query_name` (the query image's file name) is recorded with the report."""
    sources, referenced = _sources(diagnosis)
    content, provenance = _content(diagnosis, query_name), diagnosis.provenance
    try:
        document = ComprehensiveSR(
            evidence=sources,
            content=content,
            series_instance_uid=generate_uid(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=_short(provenance.get("encoder", "unknown")),
            software_versions=_short(provenance.get("medxpert_version", "unknown")),
            series_description="MedXpert decision support report",
            is_complete=True,
            coding_schemes=[
                CodingSchemeIdentificationItem(
                    PRIVATE_SCHEME,
                    name="MedXpert chest X-ray findings and triage",
                    responsible_organization=MANUFACTURER,
                )
            ],
            specific_character_set="ISO_IR 192",
        )
    except ValueError as error:  # a value of the input's header that highdicom refuses
        raise DataFormatError(
            f"the DICOM header of the query cannot be carried into a DICOM SR ({error}). Fix "
            "that attribute in the input file, or diagnose a PNG or JPEG export of it."
        ) from error
    if not referenced:  # the placeholder stands for no instance: the SR has no evidence
        for keyword in EVIDENCE:
            document.pop(keyword, None)
    return document


def sr_bytes(diagnosis: Diagnosis, *, query_name: str | None = None) -> bytes:
    """The SR as a complete DICOM Part 10 file (preamble, file meta, explicit VR little endian)."""
    buffer = io.BytesIO()
    diagnosis_sr(diagnosis, query_name=query_name).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_sr(diagnosis: Diagnosis, path: str | Path, *, query_name: str | None = None) -> Path:
    """Write the SR to `path` atomically; `StorageError` when it cannot be written."""
    data = sr_bytes(diagnosis, query_name=query_name)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as error:
        raise StorageError(
            f"could not write the DICOM SR {path} ({error.strerror or error}); what was there "
            "before is unchanged. Choose a writable folder with free space."
        ) from error
    return Path(path)


def finding_concept(label: str) -> Concept:
    """The coded concept of a CheXpert observation (a private code for any other name)."""
    return FINDING_CONCEPTS.get(label) or private_concept(label)


def private_concept(name: str) -> Concept:
    """A `PRIVATE_SCHEME` concept whose code is `name` upper-cased, dashes between words."""
    code = re.sub(r"[^A-Z0-9]+", "-", name.upper()).strip("-")[:CODE_VALUE_CHARS]
    return Concept(code or "UNNAMED", PRIVATE_SCHEME, name)


def coded(concept: Concept) -> CodedConcept:
    return CodedConcept(concept.code, concept.scheme, _short(concept.meaning))


def _short(text: str, chars: int = CODE_MEANING_CHARS) -> str:
    return text if len(text) <= chars else text[: chars - 3].rstrip() + "..."


def _sources(diagnosis: Diagnosis) -> tuple[list[Dataset], bool]:
    """The SR's evidence: the query's DICOM instances (each with its patient and study modules),
    and True; else a placeholder in a new study (or the input's, when it names one), False."""
    headers = [h.dataset for h in diagnosis.dicom_headers if h and h.dataset is not None]
    instances = [d for d in headers if all(d.get(keyword) for keyword in INSTANCE_UIDS)]
    if instances:
        return [_with_modules(dataset) for dataset in instances], True
    placeholder = _with_modules(headers[0] if headers else Dataset())
    placeholder.StudyInstanceUID = placeholder.get("StudyInstanceUID") or generate_uid()
    placeholder.SeriesInstanceUID = generate_uid()
    placeholder.SOPInstanceUID = generate_uid()
    placeholder.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    return [placeholder], False


def _with_modules(dataset: Dataset) -> Dataset:
    """A copy of `dataset` with every type 2 patient and study attribute, empty where absent."""
    source = copy.deepcopy(dataset)
    for keyword in PATIENT_STUDY:
        if keyword not in source:
            setattr(source, keyword, None)
    return source


def _content(diagnosis: Diagnosis, query_name: str | None) -> ContainerContentItem:
    """The root container: context, sections, measurements, triage, warnings, disclaimer."""
    report = diagnosis.report
    root = ContainerContentItem(name=codes.LN.DiagnosticImagingReport)
    items = ContentSequence()
    items.extend(LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE))
    items.extend(_observer(diagnosis.provenance))
    items.append(CodeContentItem(codes.DCM.ProcedureReported, coded(PLAIN_CHEST_XRAY), CONCEPT_MOD))
    if query_name:
        items.append(TextContentItem(coded(QUERY_IMAGE), query_name, OBS_CONTEXT))
    items.append(_section(codes.DCM.Findings, codes.DCM.Finding, report.findings))
    impressions = _section(codes.DCM.Impressions, codes.DCM.Impression, report.impression)
    impressions.ContentSequence.extend(
        CodeContentItem(
            codes.DCM.DifferentialDiagnosisImpression,
            coded(Concept(item.code, ICD10_SCHEME, item.description)),
            CONTAINS,
        )
        for item in report.icd10
    )
    items.append(impressions)
    if report.differential:
        items.append(_measurements(diagnosis))
    items.append(_triage(report.triage.level, report.triage.reason))
    items.extend(TextContentItem(coded(WARNING), text, CONTAINS) for text in report.warnings)
    items.append(TextContentItem(coded(DISCLAIMER), report.disclaimer, CONTAINS))
    root.ContentSequence = items
    return root


def _observer(provenance: dict[str, str]) -> ObservationContext:
    """TID 1002: the report's observer is the MedXpert device (its encoder and library)."""
    uid = generate_uid(entropy_srcs=[MANUFACTURER, *sorted(provenance.values())])
    device = DeviceObserverIdentifyingAttributes(
        uid=uid,
        name=MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=_short(provenance.get("encoder", "unknown")),
    )
    return ObservationContext(observer_device_context=ObserverContext(codes.DCM.Device, device))


def _section(heading: Code, name: Code, statements: Sequence[Statement]) -> ContainerContentItem:
    """A section container of TEXT statements, each INFERRED FROM the cases it cites."""
    section = ContainerContentItem(name=heading, relationship_type=CONTAINS)
    section.ContentSequence = ContentSequence()
    for statement in statements:
        item = TextContentItem(name, statement.text, CONTAINS)
        if statement.cited_case_ids:
            item.ContentSequence = ContentSequence(
                TextContentItem(coded(CITED_CASE), case_id, INFERRED_FROM)
                for case_id in statement.cited_case_ids
            )
        section.ContentSequence.append(item)
    return section


def _measurements(diagnosis: Diagnosis) -> ContainerContentItem:
    """Imaging Measurements: one TID 1501 group per differential finding."""
    algorithm = _algorithm(diagnosis.provenance)
    container = ContainerContentItem(name=codes.DCM.ImagingMeasurements, relationship_type=CONTAINS)
    container.ContentSequence = ContentSequence()
    for item in diagnosis.report.differential:
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=UID(), identifier=item.condition),
            algorithm_id=algorithm,
            measurements=[
                Measurement(codes.DCM.Probability, float(item.probability), coded(NO_UNITS))
            ],
            qualitative_evaluations=[
                QualitativeEvaluation(codes.DCM.Finding, coded(finding_concept(item.condition)))
            ],
        )
        container.ContentSequence.extend(group)
    return container


def _algorithm(provenance: dict[str, str]) -> AlgorithmIdentification:
    """TID 4019: MedXpert's version, its encoder and library with their fingerprints."""
    parameters = [
        f"{key}={value}" for key, value in provenance.items() if key != "medxpert_version"
    ]
    return AlgorithmIdentification(
        name=MANUFACTURER,
        version=provenance.get("medxpert_version", "unknown"),
        parameters=parameters,
        manufacturer=MANUFACTURER,
    )


def _triage(level: str, reason: str) -> CodeContentItem:
    """The triage level, INFERRED FROM the rule that set it."""
    item = CodeContentItem(coded(TRIAGE_LEVEL), coded(private_concept(level)), CONTAINS)
    item.ContentSequence = ContentSequence(
        [TextContentItem(coded(TRIAGE_REASON), reason, INFERRED_FROM)]
    )
    return item
