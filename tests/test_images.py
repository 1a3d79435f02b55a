"""open_image: every accepted format, and every bad input a user can hand it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medxpert.data import open_image
from medxpert.errors import InvalidImageError
from tests.builders import dicom_bytes, gradient, jpeg_bytes, png_bytes, png_with_declared_size


def as_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "L"
    return np.asarray(image)


def test_png_8bit_from_path_is_returned_unchanged(tmp_path):
    pixels = gradient()
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(pixels))
    np.testing.assert_array_equal(as_array(open_image(path)), pixels)


def test_png_16bit_is_min_max_scaled_to_8bit():
    pixels = gradient(low=1000, high=4000, dtype=np.uint16)
    out = as_array(open_image(png_bytes(pixels)))
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0), "ramp must stay monotonic"


def test_rgba_png_is_composited_on_black():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:4, :, 3] = 255  # top half opaque, bottom half transparent
    out = as_array(open_image(png_bytes(rgba)))
    assert out[:4].min() == 200 and out[4:].max() == 0


def test_jpeg_from_bytes_and_file_object():
    data = jpeg_bytes(gradient(32, 48))
    from_bytes = as_array(open_image(data))
    from_file = as_array(open_image(io.BytesIO(data)))
    np.testing.assert_array_equal(from_bytes, from_file)
    assert from_bytes.shape == (32, 48)
    assert abs(int(from_bytes[0, -1]) - 255) < 8


def test_pil_image_is_converted_to_grayscale():
    rgb = Image.fromarray(np.full((4, 4, 3), 128, dtype=np.uint8))
    assert as_array(open_image(rgb)).max() == 128


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is a radiology report, not an image\n", "contains text"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, "corrupt PNG"),
        (b"GIF89a" + b"\x00" * 40, "another format"),
        (b"%PDF-1.7 ...", "PDF"),
        (bytes(range(256)), "match no image format"),
    ],
)
def test_bad_bytes_raise_a_clear_error(data, message):
    with pytest.raises(InvalidImageError, match=message) as caught:
        open_image(data, name="upload.png")
    assert "upload.png" in str(caught.value)


def test_truncated_jpeg_is_rejected():
    data = jpeg_bytes(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="truncated"):
        open_image(data[: len(data) // 2])


def test_text_file_named_png_is_rejected(tmp_path):
    path = tmp_path / "scan.png"
    path.write_text("PATIENT NAME: not an image")
    with pytest.raises(InvalidImageError, match=r"scan\.png.*text.*Accepted formats"):
        open_image(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InvalidImageError, match="does not exist"):
        open_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with pytest.raises(InvalidImageError, match="empty"):
        open_image(empty)


def test_decompression_bomb_header_is_refused_before_decoding():
    with pytest.raises(InvalidImageError, match=r"40000×40000.*not decoded"):
        open_image(png_with_declared_size(40000, 40000))


def test_pixel_limit_is_configurable():
    data = png_bytes(gradient(64, 64))
    with pytest.raises(InvalidImageError, match="MEDXPERT_MAX_IMAGE_PIXELS"):
        open_image(data, max_pixels=1000)


def test_byte_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(gradient(64, 64)))
    with pytest.raises(InvalidImageError, match=r"over the .* limit"):
        open_image(path, max_bytes=100)


# --- DICOM -----------------------------------------------------------------------------
def test_dicom_monochrome2_is_scaled_to_full_range():
    pixels = gradient(low=100, high=3000, dtype=np.uint16)
    out = as_array(open_image(dicom_bytes(pixels)))
    assert out[0, 0] == 0 and out[0, -1] == 255


def test_dicom_monochrome1_is_inverted():
    pixels = gradient(low=0, high=4000, dtype=np.uint16)
    out = as_array(open_image(dicom_bytes(pixels, photometric="MONOCHROME1")))
    assert out[0, 0] == 255 and out[0, -1] == 0, "low values are bright in MONOCHROME1"


def test_dicom_window_is_applied():
    pixels = gradient(low=0, high=4000, dtype=np.uint16)
    out = as_array(open_image(dicom_bytes(pixels, window=(2000, 1000))))
    column_values = pixels[0]
    assert np.all(out[0][column_values < 1400] == 0), "below the window → black"
    assert np.all(out[0][column_values > 2600] == 255), "above the window → white"
    inside = out[0][(column_values > 1600) & (column_values < 2400)]
    assert inside.min() > 0 and inside.max() < 255


def test_multiframe_dicom_takes_the_first_frame():
    first = gradient(low=0, high=4000, dtype=np.uint16)
    second = np.full_like(first, 123)
    out = as_array(open_image(dicom_bytes(np.stack([first, second]))))
    assert out[0, 0] == 0 and out[0, -1] == 255


def test_jpeg_compressed_dicom_is_decoded():
    pixels = gradient()
    data = dicom_bytes(
        pixels,
        transfer_syntax="1.2.840.10008.1.2.4.50",
        encapsulated=[jpeg_bytes(pixels, quality=100)],
    )
    out = as_array(open_image(data))
    assert np.abs(out.astype(int) - pixels.astype(int)).max() < 10


def test_dicom_with_undecodable_transfer_syntax_names_it():
    pixels = gradient()
    data = dicom_bytes(
        pixels,
        transfer_syntax="1.2.840.10008.1.2.4.100",  # MPEG2
        encapsulated=[b"not really mpeg"],
    )
    with pytest.raises(InvalidImageError, match=r"MPEG2.*1\.2\.840\.10008\.1\.2\.4\.100"):
        open_image(data)


def test_dicom_without_pixels_and_truncated_dicom():
    pixels = gradient(dtype=np.uint16)
    with pytest.raises(InvalidImageError, match="no image"):
        open_image(dicom_bytes(pixels, with_pixels=False))
    whole = dicom_bytes(pixels)
    with pytest.raises(InvalidImageError, match=r"corrupt|truncated"):
        open_image(whole[: len(whole) - 500])


def test_dicom_without_preamble_is_recognised():
    from pydicom import dcmread

    pixels = gradient(low=0, high=4000, dtype=np.uint16)
    dataset = dcmread(io.BytesIO(dicom_bytes(pixels)))
    del dataset.file_meta  # a raw dataset: no preamble, no "DICM", no file meta group
    dataset.preamble = None
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True)
    raw = buffer.getvalue()
    assert raw[128:132] != b"DICM"
    assert as_array(open_image(raw))[0, -1] == 255


# --- truncation -------------------------------------------------------------------------------
def truncations(data: bytes) -> list[int]:
    """Cuts inside the signature, inside the header and after it."""
    return sorted({1, 2, 3, 4, 8, 10, 12, 16, 32, 33, 41, 89, 100, 141, 152, len(data) // 2})


FORMATS = {
    "png": png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)),
    "png16": png_bytes(gradient(dtype=np.uint16)),
    "jpeg": jpeg_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)),
    "dicom": dicom_bytes(gradient(dtype=np.uint16)),
}


@pytest.mark.parametrize(
    ("kind", "cut"), [(kind, cut) for kind, data in FORMATS.items() for cut in truncations(data)]
)
def test_a_truncated_file_is_refused_by_its_name_never_an_object_repr(kind, cut):
    with pytest.raises(InvalidImageError) as caught:
        open_image(FORMATS[kind][:cut], name="scan.img")
    message = str(caught.value)
    assert message.startswith("scan.img ") and "object at 0x" not in message, message


@pytest.mark.parametrize(("kind", "cut"), [("png", 4), ("png", 7), ("jpeg", 2)])
def test_a_file_cut_inside_its_signature_says_so(kind, cut):
    with pytest.raises(InvalidImageError, match=f"cut off after {cut} bytes, inside the"):
        open_image(FORMATS[kind][:cut])
