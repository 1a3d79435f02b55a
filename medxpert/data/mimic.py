"""MIMIC-CXR-JPG in its PhysioNet layout, with the free-text reports of MIMIC-CXR.

    <root>/mimic-cxr-2.0.0-metadata.csv(.gz)     dicom_id, subject_id, study_id, ViewPosition
    <root>/mimic-cxr-2.0.0-split.csv(.gz)        dicom_id, study_id, subject_id, split
    <root>/mimic-cxr-2.0.0-chexpert.csv(.gz)     subject_id, study_id, 14 CheXpert columns
    <root>/mimic-cxr-2.0.0-negbio.csv(.gz)       (same columns, NegBio labeler)
    <root>/files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg
    <reports_root>/files/pNN/pNNNNNNNN/sNNNNNNNN.txt  or  <reports_root>/mimic-cxr-reports.zip

Images listed but not downloaded (a partial download, e.g. only p10) are skipped.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from medxpert.config import Settings
from medxpert.data.case import Case, normalise_view
from medxpert.data.registry import (
    normalise_split_name,
    register_reader,
    require_columns,
    resolve_image,
    warn_missing,
)
from medxpert.data.report_sections import findings_and_impression
from medxpert.errors import ConfigError, DataNotFoundError
from medxpert.labels import CHEXPERT_LABELS, chexpert_columns_labels, empty_labels

logger = logging.getLogger(__name__)

LICENCE = "PhysioNet Credentialed Health Data License 1.5.0 (MIMIC-CXR-JPG; Johnson et al. 2019)"
REPORTS_ZIP = "mimic-cxr-reports.zip"


@register_reader(
    "mimic_cxr",
    pack="mimic_cxr",
    description="MIMIC-CXR-JPG (PhysioNet layout) with reports and chexpert/negbio labels",
)
def read_mimic(
    root: Path,
    splits: frozenset[str],
    *,
    settings: Settings,
    labeler: str = "chexpert",
    reports_root: str | None = None,
) -> Iterator[Case]:
    """Read the metadata, split and label CSVs, the JPEGs and the report texts."""
    if labeler not in ("chexpert", "negbio"):
        raise ConfigError(f"mimic_cxr labeler must be chexpert or negbio, not {labeler!r}.")
    metadata = _read_table(root, "mimic-cxr-2.0.0-metadata.csv")
    split_table = _read_table(root, "mimic-cxr-2.0.0-split.csv")
    label_table = _read_table(root, f"mimic-cxr-2.0.0-{labeler}.csv")
    require_columns(
        metadata.columns,
        ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        "mimic-cxr-2.0.0-metadata.csv",
    )
    require_columns(split_table.columns, ["dicom_id", "split"], "mimic-cxr-2.0.0-split.csv")
    require_columns(
        label_table.columns,
        ["subject_id", "study_id", *CHEXPERT_LABELS],
        f"mimic-cxr-2.0.0-{labeler}.csv",
    )

    split_table["split"] = split_table["split"].map(normalise_split_name)
    rows = metadata.merge(split_table[["dicom_id", "split"]], on="dicom_id", how="inner")
    rows = rows[rows["split"].isin(splits)]
    labels_by_study = {
        str(record["study_id"]): chexpert_columns_labels(record)
        for record in label_table.to_dict("records")
    }
    missing: list[str] = []
    with _ReportStore(Path(reports_root).expanduser() if reports_root else root) as reports:
        yield from _cases(root, rows, reports, labels_by_study, labeler, missing)
    warn_missing("mimic_cxr", missing, root)


def _cases(
    root: Path,
    rows: pd.DataFrame,
    reports: _ReportStore,
    labels_by_study: dict[str, object],
    labeler: str,
    missing: list[str],
) -> Iterator[Case]:
    for row in rows.itertuples(index=False):
        subject, study = str(row.subject_id), str(row.study_id)
        study_dir = f"files/p{subject[:2]}/p{subject}/s{study}"
        image_path = resolve_image(root, f"{study_dir}/{row.dicom_id}.jpg", missing)
        if not image_path:
            continue
        text = reports.get(f"{study_dir}.txt")
        findings, impression = findings_and_impression(text) if text else ("", "")
        labels = labels_by_study.get(study)
        yield Case(
            case_id=f"mimic_cxr:{row.dicom_id}",
            source="mimic_cxr",
            split=row.split,
            study_id=f"mimic_cxr:{study}",
            patient_id=f"mimic_cxr:{subject}",
            view=normalise_view(str(row.ViewPosition)),
            image_path=image_path,
            findings=findings,
            impression=impression,
            report=text.strip(),
            labels=labels if labels is not None else empty_labels(),
            label_source=f"mimic-{labeler}" if labels is not None else "none",
            licence=LICENCE,
            meta={"view_position": str(row.ViewPosition)},
        )
    if reports.missing:
        logger.warning(
            "mimic_cxr: %d studies have no report text under %s", reports.missing, reports.root
        )


def _read_table(root: Path, name: str) -> pd.DataFrame:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return pd.read_csv(
                candidate, dtype={"subject_id": str, "study_id": str, "dicom_id": str}
            )
    raise DataNotFoundError(
        f"{name}(.gz) is not in {root}. Download MIMIC-CXR-JPG from PhysioNet (see README.md, "
        "'Getting the data') and point --root or MEDXPERT_DATA_DIR at it."
    )


class _ReportStore:
    """Report texts from ``files/.../sNNN.txt`` or, failing that, ``mimic-cxr-reports.zip``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.missing = 0
        zip_path = root / REPORTS_ZIP
        self._zip = zipfile.ZipFile(zip_path) if zip_path.is_file() else None
        self._zip_names = set(self._zip.namelist()) if self._zip else set()

    def __enter__(self) -> _ReportStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._zip is not None:
            self._zip.close()

    def get(self, relative: str) -> str:
        path = self.root / relative
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
        if self._zip is not None:
            for name in (relative, f"mimic-cxr-reports/{relative}"):
                if name in self._zip_names:
                    return self._zip.read(name).decode("utf-8", errors="replace")
        self.missing += 1
        return ""
