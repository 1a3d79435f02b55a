"""Open chest X-rays (PNG 8/16-bit, JPEG, DICOM) as 8-bit grayscale PIL images, safely.

`open_image` checks the size in the header before decoding (a guard against decompression
bombs) and turns every failure into an `InvalidImageError` that says what the file was and
what is accepted.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medxpert.errors import InvalidImageError

ACCEPTED = "PNG (8- or 16-bit), JPEG or DICOM"
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 100 * 1024 * 1024

ImageSource = str | os.PathLike[str] | bytes | bytearray | BinaryIO | Image.Image

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def open_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Image.Image:
    """Decode `source` (path, bytes, binary file or PIL image) to an 8-bit grayscale image.

    DICOM: modality LUT and VOI LUT / window applied, MONOCHROME1 inverted, first frame of a
    multi-frame file. 16-bit PNG: min–max scaled to 8 bits. Colour or alpha: composited on
    black, then luminance.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, max_pixels, name or "image")
        return _to_gray8(source)
    data, label = _read_source(source, max_bytes, name)
    kind = _sniff(data)
    if kind == "dicom":
        return _open_dicom(data, label, max_pixels)
    if kind in ("png", "jpeg"):
        return _open_raster(data, label, kind, max_pixels)
    raise InvalidImageError(
        f"{label} is not a chest X-ray image MedXpert can read: {_describe(data)}. "
        f"Accepted formats: {ACCEPTED}."
    )


def image_size(source: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a PNG/JPEG file from its header, without decoding pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            return image.size


def _read_source(source: ImageSource, max_bytes: int, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
        label = name or "the uploaded data"
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise InvalidImageError(f"{label} does not exist.")
        if not path.is_file():
            raise InvalidImageError(f"{label} is not a file.")
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidImageError(_too_big(label, size, max_bytes))
        data = path.read_bytes()
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        label = name or getattr(source, "name", None) or "the uploaded file"
    else:
        raise InvalidImageError(f"cannot read an image from a {type(source).__name__}.")
    if len(data) > max_bytes:
        raise InvalidImageError(_too_big(label, len(data), max_bytes))
    if not data:
        raise InvalidImageError(f"{label} is empty (0 bytes). Accepted formats: {ACCEPTED}.")
    return data, label


def _too_big(label: str, size: int, max_bytes: int) -> str:
    return (
        f"{label} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit "
        "(MEDXPERT_MAX_IMAGE_MB raises it)."
    )


def _sniff(data: bytes) -> str | None:
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    # DICOM without the 128-byte preamble starts with a group 0x0002 or 0x0008 tag.
    if data[:2] in (b"\x02\x00", b"\x08\x00") and _looks_like_dicom(data):
        return "dicom"
    return None


def _looks_like_dicom(data: bytes) -> bool:
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:
        return False
    return "SOPClassUID" in dataset or "Modality" in dataset


def _describe(data: bytes) -> str:
    head = data[:512]
    if head.startswith((b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")):
        return "it is an image of another format (GIF, BMP, TIFF or WebP)"
    if head.startswith(b"%PDF"):
        return "it is a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "it is a ZIP archive"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"its first bytes ({head[:8].hex(' ')}) match no image format"
    return "it contains text, not image data"


def _check_pixels(width: int, height: int, max_pixels: int, label: str) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"{label} declares an empty image ({width}×{height} pixels).")
    if width * height > max_pixels:
        raise InvalidImageError(
            f"{label} declares {width}×{height} pixels ({width * height / 1e6:.0f} MP), over the "
            f"{max_pixels / 1e6:.0f} MP limit; it was not decoded (a guard against "
            "decompression bombs). Downscale it, or raise MEDXPERT_MAX_IMAGE_PIXELS."
        )


def _open_raster(data: bytes, label: str, kind: str, max_pixels: int) -> Image.Image:
    fmt = kind.upper()
    if kind == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
        # Check the declared size before PIL parses anything.
        _check_pixels(
            int.from_bytes(data[16:20], "big"),
            int.from_bytes(data[20:24], "big"),
            max_pixels,
            label,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as error:
        raise InvalidImageError(
            f"{label} declares too many pixels to decode safely ({error}). "
            "Downscale it, or raise MEDXPERT_MAX_IMAGE_PIXELS."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(f"{label} is a corrupt {fmt} file: {error}.") from None
    _check_pixels(image.width, image.height, max_pixels, label)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidImageError(
            f"{label} is a corrupt or truncated {fmt} file and could not be decoded: {error}."
        ) from None
    if kind == "jpeg":
        image = ImageOps.exif_transpose(image)
    return _to_gray8(image)


def _to_gray8(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "L":
        return image.copy()
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _scale_to_uint8(np.asarray(image, dtype=np.float64))
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("L")


def _scale_to_uint8(pixels: np.ndarray) -> Image.Image:
    """Min–max scale any numeric array to 0–255."""
    pixels = np.nan_to_num(pixels.astype(np.float64))
    low, high = float(pixels.min()), float(pixels.max())
    pixels = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.round(pixels).astype(np.uint8), mode="L")


def _transfer_syntax(dataset):
    """The dataset's transfer syntax; a raw dataset (no file meta) gets the uncompressed
    syntax matching the encoding it was read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is None:
        file_meta = dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in file_meta:
        implicit, little = dataset.original_encoding
        file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
    return file_meta.TransferSyntaxUID


def _open_dicom(data: bytes, label: str, max_pixels: int) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidImageError(f"{label} is a corrupt DICOM file: {error}.") from None
    if "PixelData" not in dataset:
        raise InvalidImageError(f"{label} is a DICOM file with no image (no Pixel Data element).")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InvalidImageError(f"{label} is a DICOM file without valid Rows/Columns.") from None
    _check_pixels(columns, rows, max_pixels, label)
    frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    syntax = _transfer_syntax(dataset)
    try:
        pixels = pixel_array(dataset, index=0 if frames > 1 else None)
    except (NotImplementedError, RuntimeError) as error:
        syntax_name = getattr(syntax, "name", str(syntax))
        raise InvalidImageError(
            f"{label} is a DICOM file compressed with {syntax_name} ({syntax}), which this "
            f"installation cannot decode ({error}). Convert it to PNG or an uncompressed DICOM."
        ) from None
    except (ValueError, EOFError, OSError, AttributeError, KeyError) as error:
        raise InvalidImageError(
            f"{label} is a corrupt or truncated DICOM file: its pixel data could not be "
            f"decoded ({error})."
        ) from None
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        gray = _scale_to_uint8(pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
        return gray
    pixels = apply_modality_lut(pixels, dataset)
    pixels = apply_voi_lut(pixels, dataset, index=0)
    pixels = np.asarray(pixels, dtype=np.float64)
    if photometric == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return _scale_to_uint8(pixels)
