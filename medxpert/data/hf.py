"""A Hugging Face `datasets` dataset with image / findings / impression columns.

By hub id when online (e.g. ``itsanmolgupta/mimic-cxr-dataset``, the set the original MedXpert
used), or offline from a ``save_to_disk`` folder, a parquet file or a folder of parquet files.
Images stored inside the dataset are written once to the cache folder so that every `Case`
has a file path like the other sources.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medxpert.atomic import atomic_write_bytes
from medxpert.config import Settings
from medxpert.data.case import Case, join_sections
from medxpert.data.registry import hashed_split, normalise_split_name, register_reader
from medxpert.errors import ConfigError, DataFormatError, DataNotFoundError
from medxpert.labels import CHEXPERT_LABELS, chexpert_columns_labels, empty_labels

logger = logging.getLogger(__name__)


@register_reader(
    "hf",
    pack=None,
    description="Hugging Face dataset (hub id, save_to_disk folder, parquet) with images + reports",
)
def read_hf(
    root: Path | None,
    splits: frozenset[str],
    *,
    settings: Settings,
    dataset: str | None = None,
    image_column: str = "image",
    findings_column: str = "findings",
    impression_column: str = "impression",
    id_column: str | None = None,
    patient_column: str | None = None,
    licence: str = "",
) -> Iterator[Case]:
    """Read every row of the asked splits. CheXpert-named columns, when present, give labels.

    A dataset with a single split is divided 80/10/10 by a stable hash of the patient column
    (or the row id when there is none).
    """
    location = dataset or (str(root) if root is not None else None)
    if not location:
        raise ConfigError("source 'hf' needs dataset=<hub id, save_to_disk folder or parquet>.")
    dataset_dict = _load(location)
    name = Path(location).name if Path(location).exists() else location.replace("/", "__")
    single = len(dataset_dict) == 1 and normalise_split_name(next(iter(dataset_dict))) in (
        None,
        "train",
    )
    for raw_split, table in dataset_dict.items():
        split_name = normalise_split_name(raw_split)
        if not single and (split_name is None or split_name not in splits):
            continue
        columns = set(table.column_names)
        for column in (image_column, findings_column, impression_column):
            if column not in columns:
                raise DataFormatError(
                    f"dataset {location} split {raw_split!r} has no column {column!r} "
                    f"(columns: {sorted(columns)}); pass image_column= / findings_column= / "
                    "impression_column= to name them."
                )
        columns_spec = _Columns(
            image_column, findings_column, impression_column, id_column, patient_column
        )
        yield from _cases(table, raw_split, splits, single, name, settings, columns_spec, licence)


def _load(location: str):
    import datasets

    path = Path(location).expanduser()
    try:
        if path.is_dir() and any(
            (path / marker).exists() for marker in ("dataset_dict.json", "state.json")
        ):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file() and path.suffix == ".parquet":
            loaded = datasets.load_dataset("parquet", data_files=str(path))
        elif path.is_dir():
            files = sorted(str(p) for p in path.rglob("*.parquet"))
            if not files:
                raise DataFormatError(
                    f"{path} holds neither a save_to_disk dataset nor parquet files."
                )
            loaded = datasets.load_dataset("parquet", data_files=files)
        else:
            loaded = datasets.load_dataset(location)
    except DataFormatError:
        raise
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as error:
        raise DataNotFoundError(
            f"could not load Hugging Face dataset {location!r} ({type(error).__name__}: {error}). "
            "Offline, pass a local save_to_disk folder or parquet files instead of a hub id."
        ) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


@dataclass(frozen=True)
class _Columns:
    image: str
    findings: str
    impression: str
    id: str | None
    patient: str | None


def _cases(
    table,
    raw_split: str,
    splits: frozenset[str],
    single: bool,
    name: str,
    settings: Settings,
    columns: _Columns,
    licence: str,
) -> Iterator[Case]:
    import datasets

    image_column = columns.image

    if isinstance(table.features[image_column], datasets.Image):
        table = table.cast_column(image_column, datasets.Image(decode=False))
    label_columns = [label for label in CHEXPERT_LABELS if label in table.column_names]
    cache = settings.cache_dir / "hf" / name / table._fingerprint
    rows = tqdm(
        enumerate(table),
        total=len(table),
        desc=f"{name}/{raw_split}",
        unit="row",
        disable=len(table) < 500,
    )
    for index, row in rows:
        row_id = str(row[columns.id]) if columns.id else f"{raw_split}-{index}"
        patient = str(row[columns.patient]) if columns.patient else ""
        split = hashed_split(patient or row_id) if single else normalise_split_name(raw_split)
        if split not in splits:
            continue
        labels = chexpert_columns_labels(row) if label_columns else empty_labels()
        findings = str(row[columns.findings] or "").strip()
        impression = str(row[columns.impression] or "").strip()
        yield Case(
            case_id=f"hf:{name}:{row_id}",
            source="hf",
            split=split,
            study_id=f"hf:{name}:{row_id}",
            patient_id=f"hf:{name}:{patient}" if patient else "",
            view="unknown",
            image_path=_materialise(row[image_column], cache / f"{row_id}", row_id),
            findings=findings,
            impression=impression,
            report=join_sections({"findings": findings, "impression": impression}),
            labels=labels,
            label_source="hf-columns" if label_columns and not np.isnan(labels).all() else "none",
            licence=licence,
            meta={"dataset": name, "dataset_split": raw_split},
        )


def _materialise(value: object, stem: Path, row_id: str) -> str:
    """A file path for an image cell: its own path when it has one on disk, else its bytes
    written once (atomically) under the cache folder."""
    if value is None:
        return ""
    if isinstance(value, dict):
        path, data = value.get("path"), value.get("bytes")
        if data is None and path and Path(path).is_file():
            return str(Path(path).resolve())
        if data is None:
            raise DataFormatError(f"row {row_id}: image cell has neither bytes nor a local path.")
        suffix = Path(path).suffix if path else _suffix(data)
        target = stem.with_suffix(suffix or ".png")
        if not target.is_file():
            atomic_write_bytes(target, data)
        return str(target)
    if isinstance(value, str):
        return value if Path(value).is_file() else ""
    raise DataFormatError(f"row {row_id}: unsupported image cell of type {type(value).__name__}.")


def _suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return ".dcm"
    return ".bin"
