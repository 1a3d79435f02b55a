"""open_image on real DICOM files (pydicom's test files, which nobody here wrote) and on
headers with malformed values; the header summary `open_image` attaches for the input guard."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from medxpert.data import DICOM_HEADER_KEY, DicomHeader, dicom_header, open_image
from medxpert.errors import InvalidImageError
from tests.builders import dicom_bytes, gradient, png_bytes

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
ALL_FILES = sorted(path for path in TEST_FILES.rglob("*") if path.is_file())


def test_the_test_files_are_there():
    assert len(ALL_FILES) > 100 and any("dicomdirtests" in path.parts for path in ALL_FILES)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda path: str(path.relative_to(TEST_FILES)))
def test_every_file_decodes_or_is_refused_clearly(path, caplog):
    caplog.set_level(logging.DEBUG)
    try:
        image = open_image(path)
    except InvalidImageError as error:
        assert str(path) in str(error) and "object at 0x" not in str(error)
    else:
        assert image.mode == "L" and image.width > 0 and image.height > 0
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage()[:100] for r in loud]


def read(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def test_a_malformed_number_of_frames_is_bad_input():
    with pytest.raises(InvalidImageError, match=r"NumberOfFrames \(0028,0008\) is '1A'"):
        open_image(get_testdata_file("badVR.dcm"))


# --- files without file meta ----------------------------------------------------------------
def raw_dataset(name: str, *, little_endian: bool, implicit_vr: bool) -> bytes:
    """A file's dataset alone: no preamble, no "DICM", no file meta group."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    del dataset.file_meta
    dataset.preamble = None
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=implicit_vr, little_endian=little_endian)
    assert buffer.getvalue()[128:132] != b"DICM"
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "little_endian", "implicit_vr"),
    [
        ("MR_small.dcm", True, True),
        ("MR_small.dcm", True, False),
        ("MR_small_bigendian.dcm", False, False),
    ],
)
def test_a_dataset_without_file_meta_is_read_in_every_encoding(name, little_endian, implicit_vr):
    expected = np.asarray(open_image(get_testdata_file("MR_small.dcm")))
    raw = raw_dataset(name, little_endian=little_endian, implicit_vr=implicit_vr)
    np.testing.assert_array_equal(np.asarray(open_image(raw)), expected)


@pytest.mark.parametrize("name", ["ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm"])
def test_datasets_without_file_meta_that_hold_no_image_say_what_they_are(name):
    with pytest.raises(InvalidImageError, match="DICOM RT Ion Plan Storage object with no image"):
        open_image(get_testdata_file(name))


def test_a_file_meta_without_group_length_is_read():
    with pytest.raises(InvalidImageError, match="DICOM RT Image Storage object with no image"):
        open_image(get_testdata_file("no_meta_group_length.dcm"))


def test_a_dataset_behind_a_stray_byte_is_named_as_such():
    """no_meta.dcm is CT_small.dcm's dataset with one stray byte (0x20) before it."""
    data = read("no_meta.dcm")
    with pytest.raises(
        InvalidImageError, match=r"DICOM dataset without .* 1 stray byte\(s\) \(20\)"
    ):
        open_image(data, name="no_meta.dcm")
    np.testing.assert_array_equal(
        np.asarray(open_image(data[1:])), np.asarray(open_image(get_testdata_file("CT_small.dcm")))
    )


# --- logs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"])
def test_an_undecodable_file_logs_nothing_above_debug(name, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="medxpert")  # the CLI's tests set it to INFO
    with pytest.raises(InvalidImageError, match="could not be decoded") as caught:
        open_image(get_testdata_file(name))
    assert "Convert it to PNG" in str(caught.value)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    held = [r for r in caplog.records if r.name == "medxpert.data.images"]
    assert held and all(r.levelno == logging.DEBUG for r in held), "pydicom's records, at DEBUG"


def test_the_jpeg_lossy_error_names_its_compression():
    with pytest.raises(InvalidImageError, match=r"JPEG Extended .*1\.2\.840\.10008\.1\.2\.4\.51"):
        open_image(get_testdata_file("JPEG-lossy.dcm"))


# --- malformed header values ----------------------------------------------------------------
def with_raw_element(data: bytes, keyword: str, vr: str, value: bytes) -> bytes:
    """`data` with one element replaced by raw bytes, as a broken writer would store it."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    tag = Tag(keyword)
    dataset[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "message"),
    [
        ("NumberOfFrames", "IS", b"1A", "NumberOfFrames .* is '1A', not a positive integer"),
        ("NumberOfFrames", "IS", b"0 ", "NumberOfFrames .* not a positive integer"),
        ("Rows", "IS", b"xy", r"Rows \(0028,0010\) is 'xy'"),
        ("Rows", "US", b"\x05", "Rows .* unreadable"),
        ("Columns", "US", b"\x00\x00", "empty image"),
        ("BitsAllocated", "IS", b"zz", "BitsAllocated .* is 'zz'"),
        ("BitsAllocated", "US", b"\x07\x00", "Bits Allocated"),
        ("SamplesPerPixel", "IS", b"-1", "SamplesPerPixel .* not a non-negative integer"),
        ("PixelRepresentation", "US", b"\x05\x00", "Pixel Representation"),
        ("PhotometricInterpretation", "CS", b"BANANA", "PhotometricInterpretation .* 'BANANA'"),
        ("WindowCenter", "DS", b"abc ", r"WindowCenter \(0028,1050\) is 'abc', not a number"),
        ("WindowWidth", "DS", b"1\\zz ", r"WindowWidth .* \['1', 'zz'\]"),
        ("WindowWidth", "DS", b"0 ", "Window Width must be greater"),
        ("RescaleSlope", "DS", b"nan ", "RescaleSlope .* not a number"),
        ("RescaleIntercept", "DS", b"1e999 ", "RescaleIntercept .* not a number"),
        ("VOILUTFunction", "CS", b"WEIRD ", "VOI LUT Function"),
    ],
)
def test_a_malformed_header_value_is_bad_input(keyword, vr, value, message):
    good = dicom_bytes(gradient(dtype=np.uint16), window=(2000, 1000))
    with pytest.raises(InvalidImageError, match=message) as caught:
        open_image(with_raw_element(good, keyword, vr, value), name="scan.dcm")
    assert str(caught.value).startswith("scan.dcm ")


# --- the header summary ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "modality", "sop_class_name", "frames"),
    [
        ("CT_small.dcm", "CT", "CT Image Storage", 1),
        ("MR_small.dcm", "MR", "MR Image Storage", 1),
        ("rtdose.dcm", "RTDOSE", "RT Dose Storage", 15),
        ("liver_1frame.dcm", "SEG", "Segmentation Storage", 1),
    ],
)
def test_the_header_of_real_files(name, modality, sop_class_name, frames):
    dataset = pydicom.dcmread(get_testdata_file(name))
    header = dicom_header(open_image(get_testdata_file(name)))
    assert header is not None
    assert (header.modality, header.sop_class_name, header.frames) == (
        modality,
        sop_class_name,
        frames,
    )
    assert header.sop_class_uid == str(dataset.SOPClassUID)
    assert header.sop_instance_uid == str(dataset.SOPInstanceUID)
    assert header.study_instance_uid == str(dataset.StudyInstanceUID)
    assert header.image_type == tuple(dataset.get("ImageType", ()))


def test_the_header_of_a_chest_radiograph_survives_a_copy():
    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient(dtype=np.uint16))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: lower case is not valid for CS
        dataset.Modality = "dx"
        dataset.BodyPartExamined = "Chest"
        dataset.ViewPosition = "pa"
    dataset.ImageType = ["ORIGINAL", "PRIMARY"]
    dataset.BurnedInAnnotation = "NO"
    dataset.SeriesInstanceUID = "1.2.3.4"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    image = open_image(buffer.getvalue())
    expected = DicomHeader(
        modality="DX",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        sop_class_name="Digital X-Ray Image Storage - For Presentation",
        body_part="CHEST",
        view_position="PA",
        image_type=("ORIGINAL", "PRIMARY"),
        burned_in_annotation="NO",
        study_instance_uid=None,
        series_instance_uid="1.2.3.4",
        sop_instance_uid=str(dataset.SOPInstanceUID),
        frames=1,
    )
    assert dicom_header(image) == expected
    assert dicom_header(image.copy()) == expected
    assert image.info[DICOM_HEADER_KEY] is dicom_header(image)


def test_a_malformed_tag_gives_none_for_its_field():
    good = dicom_bytes(gradient(dtype=np.uint16))
    odd_length = with_raw_element(good, "Modality", "US", b"\x01\x02\x03")
    two_values = with_raw_element(good, "BodyPartExamined", "CS", b"CHEST\\ABDOMEN ")
    assert dicom_header(open_image(odd_length)).modality is None
    assert dicom_header(open_image(two_values)).body_part is None


def test_other_images_have_no_dicom_header():
    assert dicom_header(open_image(png_bytes(gradient()))) is None
    assert dicom_header(Image.new("L", (4, 4))) is None
