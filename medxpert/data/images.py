"""Open chest X-rays (PNG 8/16-bit, JPEG, DICOM) as 8-bit grayscale PIL images, safely.

`open_image` checks the size in the header before decoding (a guard against decompression
bombs) and turns every failure into an `InvalidImageError` that says what the file was and
what is accepted.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medxpert.errors import InvalidImageError

logger = logging.getLogger(__name__)

ACCEPTED = "PNG (8- or 16-bit), JPEG or DICOM"
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DICOM_HEADER_KEY = "medxpert.dicom"
# How colourful the decoded picture was before it became grey (`colourfulness`).
COLOURFULNESS_KEY = "medxpert.colourfulness"

ImageSource = str | os.PathLike[str] | bytes | bytearray | BinaryIO | Image.Image

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# A raw DICOM dataset (no preamble) starts with its lowest group, 0x0002 (file meta) or 0x0008:
# little-endian (explicit or implicit VR) or big-endian (explicit VR).
_DATASET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class DicomHeader:
    """The tags of a DICOM input that say what it is (each None when absent or unreadable)."""

    modality: str | None  # (0008,0060), upper-cased, e.g. "CR", "DX", "CT"
    sop_class_uid: str | None  # (0008,0016) as a dotted string (else the file meta's (0002,0002))
    sop_class_name: str | None  # pydicom's UID name, e.g. "CT Image Storage"
    body_part: str | None  # (0018,0015) BodyPartExamined, upper-cased
    view_position: str | None  # (0018,5101) ViewPosition, upper-cased
    image_type: tuple[str, ...]  # (0008,0008)
    burned_in_annotation: str | None  # (0028,0301) "YES"/"NO"
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    frames: int  # NumberOfFrames (1 when absent or unreadable)
    # the whole header (a pydicom Dataset without its pixel data): what a DICOM SR of the
    # diagnosis copies its patient and study modules from
    dataset: Any = field(default=None, compare=False, repr=False)


def dicom_header(image: Image.Image) -> DicomHeader | None:
    """The DICOM header summary `open_image` attached, or None for a non-DICOM image."""
    header = image.info.get(DICOM_HEADER_KEY)
    return header if isinstance(header, DicomHeader) else None


def open_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Image.Image:
    """Decode `source` (path, bytes, binary file or PIL image) to an 8-bit grayscale image.

    DICOM: modality LUT and VOI LUT / window applied, MONOCHROME1 inverted, first frame of a
    multi-frame file; its `DicomHeader` in ``image.info[DICOM_HEADER_KEY]`` (`dicom_header`).
    16-bit PNG: min–max scaled to 8 bits. Colour or alpha: composited on black, then luminance.
    Anything else, or anything malformed: `InvalidImageError`.
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
    if _looks_like_dataset(data):
        return "dicom"
    return None


def _looks_like_dataset(data: bytes) -> bool:
    """Whether `data` is a DICOM dataset without preamble and "DICM" (a raw dataset)."""
    if data[:2] not in _DATASET_STARTS:
        return False
    import pydicom

    try:
        with _quiet_pydicom():
            dataset = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:  # a sniffer: whatever pydicom cannot parse is not a dataset
        return False
    return "SOPClassUID" in dataset or "Modality" in dataset


def _describe(data: bytes) -> str:
    head = data[:512]
    for fmt, magic in (("PNG", _PNG_MAGIC), ("JPEG", _JPEG_MAGIC)):
        if len(head) < len(magic) and magic.startswith(head):
            return f"it is cut off after {len(head)} bytes, inside the {fmt} signature"
    stray = next((n for n in (1, 2, 3) if _looks_like_dataset(data[n:])), None)
    if stray is not None:
        return (
            f"it looks like a DICOM dataset without its File Meta header, but {stray} stray "
            f"byte(s) ({head[:stray].hex(' ')}) come before its first element; re-export it "
            "from its source as a DICOM file"
        )
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


def _reason(error: BaseException) -> str:
    """A library's error message, fit for ours: object reprs (``<_io.BytesIO object at 0x…>``)
    taken out, never empty."""
    text = _OBJECT_REPR.sub("the data", str(error)).strip().rstrip(".")
    return text or type(error).__name__


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
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"{label} is a corrupt {fmt} file: its header could not be read (it may be truncated)."
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(f"{label} is a corrupt {fmt} file: {_reason(error)}.") from None
    _check_pixels(image.width, image.height, max_pixels, label)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidImageError(
            f"{label} is a corrupt or truncated {fmt} file and could not be decoded: "
            f"{_reason(error)}."
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
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        rgb = image.convert("RGB")
    gray = rgb.convert("L")
    gray.info[COLOURFULNESS_KEY] = colourfulness(np.asarray(rgb))
    return gray


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk's colourfulness of an (h, w, 3) RGB array: 0 for a grey image,
    about 15 "slightly", 33 "moderately" and 60+ "highly" colourful."""
    red, green, blue = (rgb[..., channel].astype(np.float64) for channel in range(3))
    rg, yb = red - green, 0.5 * (red + green) - blue
    spread = np.hypot(rg.std(), yb.std())
    return float(spread + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _scale_to_uint8(pixels: np.ndarray) -> Image.Image:
    """Min–max scale any numeric array to 0–255."""
    pixels = np.nan_to_num(pixels.astype(np.float64))
    low, high = float(pixels.min()), float(pixels.max())
    pixels = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.round(pixels).astype(np.uint8), mode="L")


# --- DICOM -----------------------------------------------------------------------------
_HELD: contextvars.ContextVar[list[logging.LogRecord] | None] = contextvars.ContextVar(
    "medxpert_pydicom_records", default=None
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IMAGE_INTS = ("SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")
_NUMBERS = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth")
_PHOTOMETRICS = frozenset(
    (
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_420",
        "YBR_PARTIAL_422",
        "YBR_ICT",
        "YBR_RCT",
        "HSV",
        "ARGB",
        "CMYK",
        "XYB",
    )
)
_LUMA = np.array([0.299, 0.587, 0.114])


class _HoldWhileReading(logging.Filter):
    """Holds back a pydicom record made in a thread inside `_quiet_pydicom`: a decoder plugin
    that fails logs its traceback at ERROR, though the next plugin may succeed and otherwise
    `InvalidImageError` says what went wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        held = _HELD.get()
        if held is None:
            return True
        held.append(record)
        return False


_HOLD = _HoldWhileReading()


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's log records and warnings, while this thread reads one input, logged again at
    DEBUG on MedXpert's logger (seen with ``-v``)."""
    import pydicom.pixels  # noqa: F401  (creates the loggers of its decoders)

    for name in list(logging.Logger.manager.loggerDict):
        if name == "pydicom" or name.startswith("pydicom."):
            pydicom_logger = logging.getLogger(name)
            if _HOLD not in pydicom_logger.filters:
                pydicom_logger.addFilter(_HOLD)
    held: list[logging.LogRecord] = []
    token = _HELD.set(held)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        _HELD.reset(token)
        for record in held:
            logger.debug("pydicom: %s", record.getMessage(), exc_info=record.exc_info)
        for warning in caught:
            logger.debug("pydicom: %s", warning.message)


def _dicom_errors() -> tuple[type[Exception], ...]:
    """What pydicom raises for a malformed file or tag value (it parses untrusted bytes)."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    return (
        InvalidDicomError,
        BytesLengthException,
        struct.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        EOFError,
        OSError,
        OverflowError,
        NotImplementedError,  # e.g. an unknown VR
    )


def _open_dicom(data: bytes, label: str, max_pixels: int) -> Image.Image:
    with _quiet_pydicom():
        dataset = _read_dataset(data, label)
        image = _dicom_image(dataset, label, max_pixels)
        header = _dicom_header(dataset)
    image.info[DICOM_HEADER_KEY] = header
    for keyword in _PIXEL_KEYWORDS:  # keep the header only: the pixels are in `image`
        if keyword in dataset:
            del dataset[keyword]
    return image


def _read_dataset(data: bytes, label: str) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except _dicom_errors() as error:
        raise InvalidImageError(
            f"{label} is a corrupt or truncated DICOM file: its header could not be read "
            f"({_reason(error)})."
        ) from None


def _dicom_image(dataset: Any, label: str, max_pixels: int) -> Image.Image:
    """The first frame as 8-bit grayscale; every header value it needs checked first."""
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise InvalidImageError(_no_image(dataset, label))
    rows, columns = _header_int(dataset, "Rows", label), _header_int(dataset, "Columns", label)
    _check_pixels(columns, rows, max_pixels, label)
    frames = _header_int(dataset, "NumberOfFrames", label, default=1, minimum=1)
    for keyword in _IMAGE_INTS:
        _header_int(dataset, keyword, label, default=0)
    for keyword in _NUMBERS:
        _check_numbers(dataset, keyword, label)
    photometric = _photometric(dataset, label)
    pixels = _decode(dataset, label, frames)
    try:
        return _render(pixels, dataset, photometric)
    except _dicom_errors() as error:
        raise InvalidImageError(
            f"{label} is a DICOM file whose pixel values could not be mapped to gray levels "
            f"({_reason(error)}); check its rescale, window and LUT tags, or re-export it."
        ) from None


def _no_image(dataset: Any, label: str) -> str:
    name = _uid_name(_sop_class(dataset))
    what = f"a DICOM {name} object" if name else "a DICOM file"
    return (
        f"{label} is {what} with no image (no Pixel Data element): it is not an image, or it "
        "was cut short. Send the X-ray image itself."
    )


def _header_value(dataset: Any, keyword: str, label: str) -> Any:
    try:
        return dataset.get(keyword)
    except _dicom_errors() as error:
        raise InvalidImageError(
            _malformed(label, keyword, f"unreadable ({_reason(error)})", "a valid value")
        ) from None


def _header_int(
    dataset: Any, keyword: str, label: str, *, default: int | None = None, minimum: int = 0
) -> int:
    """An integer tag; a malformed one, or a missing one without a default, is bad input."""
    value = _header_value(dataset, keyword, label)
    if value is None or value == "":
        if default is None:
            raise InvalidImageError(
                f"{label} is a DICOM image without {keyword} {_tag(keyword)}; re-export it "
                "from its source."
            )
        return default
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < minimum:
        expected = "a positive integer" if minimum else "a non-negative integer"
        raise InvalidImageError(_malformed(label, keyword, _shown(value), expected))
    return number


def _check_numbers(dataset: Any, keyword: str, label: str) -> None:
    """A decimal tag (one value or several) is absent or holds finite numbers."""
    from pydicom.multival import MultiValue

    value = _header_value(dataset, keyword, label)
    if value is None or value == "":
        return
    try:
        numbers = [float(v) for v in (value if isinstance(value, MultiValue) else [value])]
    except (TypeError, ValueError, OverflowError):
        numbers = [float("nan")]
    if not numbers or not np.all(np.isfinite(numbers)):
        raise InvalidImageError(_malformed(label, keyword, _shown(value), "a number"))


def _photometric(dataset: Any, label: str) -> str:
    """PhotometricInterpretation upper-cased ("" when absent: pydicom then says what is
    missing)."""
    value = _header_value(dataset, "PhotometricInterpretation", label)
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or value.strip().upper() not in _PHOTOMETRICS:
        raise InvalidImageError(
            _malformed(
                label,
                "PhotometricInterpretation",
                _shown(value),
                "a known one (MONOCHROME2, RGB...)",
            )
        )
    return value.strip().upper()


def _malformed(label: str, keyword: str, shown: str, expected: str) -> str:
    return (
        f"{label} is a DICOM file with a malformed header: {keyword} {_tag(keyword)} is "
        f"{shown}, not {expected}. Correct the tag, or re-export the image from its source."
    )


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword) or 0
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _shown(value: Any) -> str:
    text = repr(list(value) if isinstance(value, list | tuple) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _transfer_syntax(dataset: Any) -> Any:
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


def _decode(dataset: Any, label: str, frames: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        syntax = _transfer_syntax(dataset)
    except _dicom_errors() as error:
        raise InvalidImageError(
            f"{label} is a DICOM file whose transfer syntax could not be read "
            f"({_reason(error)}); re-export it from its source."
        ) from None
    syntax_text = f"{getattr(syntax, 'name', syntax)} ({syntax})"
    try:
        return pixel_array(dataset, index=0 if frames > 1 else None)
    except NotImplementedError as error:
        raise InvalidImageError(
            f"{label} is a DICOM file compressed with {syntax_text}, which this installation "
            f"cannot decode ({_reason(error)}). Convert it to PNG or an uncompressed DICOM."
        ) from None
    except RuntimeError as error:  # every decoder plugin tried and failed
        raise InvalidImageError(
            f"{label} is a DICOM file compressed with {syntax_text} whose pixel data could not "
            f"be decoded ({_reason(error)}): it is corrupt, or a variant this installation "
            "cannot decode. Convert it to PNG or an uncompressed DICOM."
        ) from None
    except _dicom_errors() as error:
        raise InvalidImageError(
            f"{label} is a corrupt or truncated DICOM file: its pixel data ({syntax_text}) "
            f"could not be decoded ({_reason(error)})."
        ) from None


def _render(pixels: np.ndarray, dataset: Any, photometric: str) -> Image.Image:
    """Decoded pixels to 8-bit gray: colour by luminance; grayscale through the modality and
    VOI LUTs (or window), MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if pixels.ndim == 3 and pixels.shape[-1] >= 3:  # colour (pydicom gives RGB for YBR)
        rgb = pixels[..., :3].astype(np.float64)
        gray = _scale_to_uint8(rgb @ _LUMA)
        peak = float(rgb.max())
        unit = 255.0 / peak if peak > 255 else 1.0  # 16-bit colour on the 8-bit scale
        gray.info[COLOURFULNESS_KEY] = colourfulness(rgb * unit)
        return gray
    if pixels.ndim != 2:
        raise ValueError(f"the decoded pixels have shape {pixels.shape}, not rows × columns")
    pixels = apply_modality_lut(pixels, dataset)
    pixels = np.asarray(apply_voi_lut(pixels, dataset, index=0), dtype=np.float64)
    if photometric == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return _scale_to_uint8(pixels)


def _dicom_header(dataset: Any) -> DicomHeader:
    sop_class = _sop_class(dataset)
    return DicomHeader(
        modality=_tag_text(dataset, "Modality", upper=True),
        sop_class_uid=sop_class,
        sop_class_name=_uid_name(sop_class),
        body_part=_tag_text(dataset, "BodyPartExamined", upper=True),
        view_position=_tag_text(dataset, "ViewPosition", upper=True),
        image_type=_tag_texts(dataset, "ImageType"),
        burned_in_annotation=_tag_text(dataset, "BurnedInAnnotation", upper=True),
        study_instance_uid=_tag_text(dataset, "StudyInstanceUID"),
        series_instance_uid=_tag_text(dataset, "SeriesInstanceUID"),
        sop_instance_uid=_tag_text(dataset, "SOPInstanceUID"),
        frames=_frames(dataset),
        dataset=dataset,
    )


def _sop_class(dataset: Any) -> str | None:
    """(0008,0016), or the file meta's (0002,0002), which the standard makes the same."""
    file_meta = getattr(dataset, "file_meta", None)
    return _tag_text(dataset, "SOPClassUID") or (
        _tag_text(file_meta, "MediaStorageSOPClassUID") if file_meta is not None else None
    )


def _tag_value(dataset: Any, keyword: str) -> Any:
    """A tag's value; None when absent or unreadable (pydicom converts values lazily)."""
    try:
        return dataset.get(keyword)
    except _dicom_errors():
        return None


def _tag_text(dataset: Any, keyword: str, *, upper: bool = False) -> str | None:
    """A single-valued text tag, stripped; None when absent, empty, multi-valued or raw bytes."""
    value = _tag_value(dataset, keyword)
    if not isinstance(value, str):
        return None
    text = str(value).strip()
    return (text.upper() if upper else text) or None


def _tag_texts(dataset: Any, keyword: str) -> tuple[str, ...]:
    from pydicom.multival import MultiValue

    value = _tag_value(dataset, keyword)
    values = value if isinstance(value, MultiValue) else [value]
    return tuple(str(v).strip() for v in values if isinstance(v, str) and v.strip())


def _uid_name(uid: str | None) -> str | None:
    from pydicom.uid import UID_dictionary

    entry = UID_dictionary.get(uid) if uid else None
    return entry[0] if entry else None


def _frames(dataset: Any) -> int:
    try:
        frames = int(_tag_value(dataset, "NumberOfFrames") or 1)
    except (TypeError, ValueError, OverflowError):
        return 1
    return max(frames, 1)
