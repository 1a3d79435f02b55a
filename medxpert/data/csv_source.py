"""Any CSV plus an image folder, with the column names given as options."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from medxpert.config import Settings
from medxpert.data.case import Case, join_sections, normalise_view
from medxpert.data.registry import (
    hashed_split,
    normalise_split_name,
    register_reader,
    require_columns,
    resolve_image,
    warn_missing,
)
from medxpert.data.report_sections import findings_and_impression
from medxpert.errors import ConfigError, DataFormatError, DataNotFoundError
from medxpert.labels import CHEXPERT_LABELS, chexpert_columns_labels, empty_labels

# Optional columns: used when present under these names, unless another name is given.
DEFAULT_COLUMNS = {
    "id_column": "case_id",
    "image_column": "image_path",
    "findings_column": "findings",
    "impression_column": "impression",
    "report_column": "report",
    "split_column": "split",
    "patient_column": "patient_id",
    "study_column": "study_id",
    "view_column": "view",
}


@register_reader(
    "csv",
    pack=None,
    description="any CSV + image folder (column names as options; CheXpert-named label columns)",
)
def read_csv_source(
    root: Path | None,
    splits: frozenset[str],
    *,
    settings: Settings,
    csv: str | None = None,
    image_root: str | None = None,
    name: str = "csv",
    licence: str = "",
    **columns: str,
) -> Iterator[Case]:
    """Read one row per case. Images are resolved against `image_root` (default: the CSV's
    folder). Without a split column, rows are split 80/10/10 by a hash of the patient id
    (or the case id). With a `report` column but no findings/impression, the sections are
    parsed from the report text."""
    unknown = sorted(set(columns) - set(DEFAULT_COLUMNS))
    if unknown:
        raise ConfigError(
            f"source 'csv' has no option(s) {unknown}; column options are "
            f"{', '.join(DEFAULT_COLUMNS)}."
        )
    if not csv:
        if root is None:
            raise ConfigError("source 'csv' needs csv=<path to the CSV file>.")
        csv = str(root)
    table_path = Path(csv).expanduser()
    if not table_path.is_file():
        raise DataNotFoundError(f"CSV file {table_path} does not exist.")
    frame = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    named = {key: columns.get(key, default) for key, default in DEFAULT_COLUMNS.items()}
    require_columns(frame.columns, [columns[key] for key in columns], str(table_path))
    present = {key: col for key, col in named.items() if col in frame.columns}
    if "image_column" not in present and not {
        "findings_column",
        "impression_column",
        "report_column",
    } & set(present):
        raise DataFormatError(
            f"{table_path} has neither an image column nor a report column "
            f"(looked for {named['image_column']!r}, {named['report_column']!r}, ...)."
        )
    images = Path(image_root).expanduser() if image_root else table_path.parent
    label_columns = [label for label in CHEXPERT_LABELS if label in frame.columns]
    missing: list[str] = []
    for index, row in enumerate(frame.to_dict("records")):
        cell = _CellReader(row, present)
        case_id = cell("id_column") or f"row{index}"
        patient = cell("patient_column")
        raw_split = cell("split_column")
        split = normalise_split_name(raw_split) if raw_split else hashed_split(patient or case_id)
        if split is None:
            raise DataFormatError(f"{table_path} row {index}: unknown split {raw_split!r}.")
        if split not in splits:
            continue
        image_path = resolve_image(images, cell("image_column"), missing)
        findings, impression, report = (
            cell("findings_column"),
            cell("impression_column"),
            cell("report_column"),
        )
        if report and not (findings or impression):
            findings, impression = findings_and_impression(report)
        if not image_path and not (findings or impression or report):
            continue
        labels = chexpert_columns_labels(row) if label_columns else empty_labels()
        yield Case(
            case_id=f"{name}:{case_id}",
            source=name,
            split=split,
            study_id=f"{name}:{cell('study_column') or case_id}",
            patient_id=f"{name}:{patient}" if patient else "",
            view=normalise_view(cell("view_column")),
            image_path=image_path,
            findings=findings,
            impression=impression,
            report=report or join_sections({"findings": findings, "impression": impression}),
            labels=labels,
            label_source="csv-columns" if not np.isnan(labels).all() else "none",
            licence=licence,
        )
    warn_missing(name, missing, images)


class _CellReader:
    """`cell("findings_column")`: the stripped value of an optional column, "" when absent."""

    def __init__(self, row: dict[str, str], present: dict[str, str]) -> None:
        self.row, self.present = row, present

    def __call__(self, key: str) -> str:
        return str(self.row[self.present[key]]).strip() if key in self.present else ""
