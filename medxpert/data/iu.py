"""IU X-ray (Open-i): paired studies, one row per image (frontal, lateral), the views of a
study sharing its report and MeSH-tag labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medxpert.config import Settings
from medxpert.data.case import Case, join_sections, normalise_view
from medxpert.data.registry import read_split_table, register_reader, resolve_image, warn_missing
from medxpert.labels import mesh_labels

LICENCE = "CC BY-NC-ND 4.0 (as found; Demner-Fushman et al., JAMIA 2016)"


@register_reader(
    "iu_xray",
    pack="iu_xray",
    description="IU X-ray reports with MeSH tags mapped to CheXpert-14; images when present",
)
def read_iu(root: Path, splits: frozenset[str], *, settings: Settings) -> Iterator[Case]:
    """Read ``reports.csv``; rows with ``image_available=1`` point at their image file."""
    return _read(root, splits, source="iu_xray", split_column="split")


@register_reader(
    "iu_xray_r2gen",
    pack="iu_xray",
    description="IU X-ray in R2Gen's split (column r2gen_split; the studies it covers), for "
    "report-generation figures comparable with R2Gen's",
)
def read_iu_r2gen(root: Path, splits: frozenset[str], *, settings: Settings) -> Iterator[Case]:
    """The same studies under R2Gen's train / val / test assignment (Chen et al., EMNLP
    2020); studies R2Gen left out are not read."""
    return _read(root, splits, source="iu_xray_r2gen", split_column="r2gen_split")


def _read(root: Path, splits: frozenset[str], *, source: str, split_column: str) -> Iterator[Case]:
    frame = read_split_table(
        root / "reports.csv",
        [
            "study_id",
            "image_id",
            "image_path",
            "view",
            "findings",
            "impression",
            "mesh",
            "image_available",
        ],
        splits,
        split_column,
    )
    missing: list[str] = []
    for row in frame.itertuples(index=False):
        available = row.image_available.strip() in ("1", "1.0", "true", "True")
        image_path = resolve_image(root, row.image_path, missing) if available else ""
        labels, extras = mesh_labels(row.mesh)
        sections = {
            "indication": getattr(row, "indication", ""),
            "comparison": getattr(row, "comparison", ""),
            "findings": row.findings,
            "impression": row.impression,
        }
        yield Case(
            case_id=f"iu_xray:{row.image_id}",
            source=source,
            split=row.split,
            study_id=f"iu_xray:{row.study_id}",
            patient_id=f"iu_xray:{row.study_id}",  # IU gives no patient id; one study per patient
            view=normalise_view(row.view),
            image_path=image_path,
            findings=row.findings.strip(),
            impression=row.impression.strip(),
            report=join_sections(sections),
            labels=labels,
            extra_labels=extras,
            label_source="none" if np.isnan(labels).all() else "iu-mesh",
            licence=LICENCE,
            meta={"mesh": row.mesh, "indication": sections["indication"]},
        )
    warn_missing(source, missing, root)
