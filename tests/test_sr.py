"""The DICOM SR of a diagnosis: dciodvfy and dsrdump accept every SR written here; re-read with
pydicom it holds every finding with its probability, the impression, the ICD-10 suggestions,
the triage, the algorithm and the disclaimer; a DICOM input's SR is in its study, references
its instance and copies its patient module, a PNG input's has a new study and an empty one."""

from __future__ import annotations

import io
import subprocess

import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid

from medxpert.errors import DataFormatError, StorageError
from medxpert.interop.sr import PRIVATE_SCHEME, diagnosis_sr, finding_concept, sr_bytes, write_sr
from tests.builders import dicom_bytes, gradient, png_bytes, tiny_pipeline

PATIENT = {
    "PatientName": "Müller^Jürgen",  # Latin-1 in the input, UTF-8 in the SR
    "PatientID": "P-42",
    "PatientBirthDate": "19600102",
    "PatientSex": "M",
}
STUDY = {
    "StudyDate": "20240301",
    "StudyTime": "101500",
    "AccessionNumber": "ACC7",
    "ReferringPhysicianName": "Who^Doctor",
    "StudyID": "S1",
}
KINDS = ("dicom", "png")


@pytest.fixture(scope="module")
def input_uids() -> dict[str, str]:
    return {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid()}


@pytest.fixture(scope="module")
def diagnoses(tmp_path_factory, input_uids) -> dict:
    """A diagnosis of a DICOM input (patient and study modules set) and of a PNG input."""
    pipeline = tiny_pipeline(tmp_path_factory.mktemp("sr-pipeline"))
    extra = {"SpecificCharacterSet": "ISO_IR 100", **PATIENT, **STUDY, **input_uids}
    dicom = dicom_bytes(gradient(), extra=extra)
    return {
        "dicom": pipeline.diagnose(image=io.BytesIO(dicom)),
        "png": pipeline.diagnose(image=io.BytesIO(png_bytes(gradient()))),
        "pipeline": pipeline,
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory, diagnoses) -> dict:
    """The SR of each diagnosis, written with `write_sr` (validated by `test_tools_accept`)."""
    folder = tmp_path_factory.mktemp("sr")
    return {
        kind: write_sr(diagnoses[kind], folder / f"{kind}.dcm", query_name=f"cxr.{kind}")
        for kind in KINDS
    }


def content_items(node):
    """Every content item of an SR tree, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def named(node, code_value: str) -> list:
    return [i for i in content_items(node) if i.ConceptNameCodeSequence[0].CodeValue == code_value]


def texts(node, code_value: str) -> list[str]:
    return [item.TextValue for item in named(node, code_value) if item.ValueType == "TEXT"]


@pytest.mark.parametrize("kind", KINDS)
def test_tools_accept(kind, written, diagnoses, dicom_tool):
    """dciodvfy finds no error (warnings: the private coding scheme 99MEDXPERT, and the empty
    type 2 Study Date/Time/ID and Patient ID of a PNG input, needed only for a DICOMDIR);
    dsrdump reads the tree, findings and impression included."""
    path, report = written[kind], diagnoses[kind].report
    verified = subprocess.run(
        [dicom_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False
    )
    lines = (verified.stdout + verified.stderr).splitlines()
    assert not [line for line in lines if line.startswith("Error")], lines
    dumped = subprocess.run(
        [dicom_tool("dsrdump"), "+U8", "+Pl", str(path)], capture_output=True, text=True
    )
    assert dumped.returncode == 0, dumped.stderr
    for statement in report.statements:
        assert statement.text in dumped.stdout
    assert report.disclaimer in dumped.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_sr_holds_the_report(kind, written, diagnoses):
    diagnosis = diagnoses[kind]
    report, dataset = diagnosis.report, pydicom.dcmread(written[kind])
    assert dataset.SOPClassUID == ComprehensiveSRStorage and dataset.Modality == "SR"
    assert dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (dataset.PreliminaryFlag, dataset.VerificationFlag) == ("PRELIMINARY", "UNVERIFIED")
    assert dataset.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert texts(dataset, "121071") == [s.text for s in report.findings]
    assert texts(dataset, "121073") == [s.text for s in report.impression]
    assert set(texts(dataset, "CITED-CASE")) == {
        case for s in report.statements for case in s.cited_case_ids
    }
    assert report.differential, "the tiny library should make a differential"
    groups = named(dataset, "125007")
    assert len(groups) == len(report.differential)
    for group, item in zip(groups, report.differential, strict=True):
        concept = finding_concept(item.condition)
        (finding,) = named(group, "121071")
        assert finding.ConceptCodeSequence[0].CodeValue == concept.code
        assert finding.ConceptCodeSequence[0].CodingSchemeDesignator == concept.scheme
        (probability,) = named(group, "122157")
        value = probability.MeasuredValueSequence[0]
        assert float(value.NumericValue) == pytest.approx(item.probability)
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "1"
        assert texts(group, "111003") == [diagnosis.provenance["medxpert_version"]]
        fingerprint = diagnosis.provenance["encoder_fingerprint"]
        assert f"encoder_fingerprint={fingerprint}" in texts(group, "111002")
    icd10 = [
        item.ConceptCodeSequence[0]
        for item in named(dataset, "111023")
        if item.ConceptCodeSequence[0].CodingSchemeDesignator == "I10"
    ]
    assert [code.CodeValue for code in icd10] == [item.code for item in report.icd10]
    (triage,) = named(dataset, "TRIAGE")
    assert triage.ConceptCodeSequence[0].CodeValue == report.triage.level.upper()
    assert texts(triage, "TRIAGE-REASON") == [report.triage.reason]
    assert texts(dataset, "DISCLAIMER") == [report.disclaimer]
    assert texts(dataset, "QUERY") == [f"cxr.{kind}"]
    schemes = {item.CodingSchemeDesignator for item in dataset.CodingSchemeIdentificationSequence}
    assert PRIVATE_SCHEME in schemes


def test_dicom_input_sr_is_in_its_study(written, diagnoses, input_uids):
    dataset = pydicom.dcmread(written["dicom"])
    source = diagnoses["dicom"].dicom_headers[0]
    assert dataset.StudyInstanceUID == input_uids["StudyInstanceUID"]
    assert dataset.SeriesInstanceUID not in (input_uids["SeriesInstanceUID"], "")
    assert dataset.SpecificCharacterSet == "ISO_IR 192"
    for keyword, value in {**PATIENT, **STUDY}.items():
        assert str(dataset[keyword].value) == value, keyword
    (study,) = dataset.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    (instance,) = series.ReferencedSOPSequence
    assert study.StudyInstanceUID == input_uids["StudyInstanceUID"]
    assert series.SeriesInstanceUID == input_uids["SeriesInstanceUID"]
    assert instance.ReferencedSOPInstanceUID == source.sop_instance_uid
    assert instance.ReferencedSOPClassUID == source.sop_class_uid


def test_png_input_sr_has_a_new_study_and_an_empty_patient(written, input_uids):
    dataset = pydicom.dcmread(written["png"])
    assert dataset.StudyInstanceUID not in (input_uids["StudyInstanceUID"], "")
    for keyword in (*PATIENT, *STUDY):
        assert keyword in dataset and dataset[keyword].value in ("", None), keyword
    assert "CurrentRequestedProcedureEvidenceSequence" not in dataset
    assert "PertinentOtherEvidenceSequence" not in dataset


def test_sr_bytes_is_a_part10_file_with_new_uids(diagnoses):
    data = sr_bytes(diagnoses["png"])
    assert data[128:132] == b"DICM"
    first, second = pydicom.dcmread(io.BytesIO(data)), diagnosis_sr(diagnoses["png"])
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID


def test_unwritable_target_is_a_storage_error(tmp_path, diagnoses):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="could not write the DICOM SR"):
        write_sr(diagnoses["png"], blocker / "report.dcm")


def test_header_value_the_sr_cannot_carry_is_a_data_format_error(diagnoses):
    """An invalid Patient's Sex (not M, F or O) in the input's header."""
    dicom = dicom_bytes(gradient(), extra={"PatientSex": "X"})
    diagnosis = diagnoses["pipeline"].diagnose(image=io.BytesIO(dicom))
    with pytest.raises(DataFormatError, match="cannot be carried into a DICOM SR"):
        diagnosis_sr(diagnosis)
