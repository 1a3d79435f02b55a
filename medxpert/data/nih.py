"""NIH ChestX-ray14: frontal images with the 14 NIH finding labels (no report text)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medxpert.config import Settings
from medxpert.data.case import Case
from medxpert.data.registry import read_split_table, register_reader, resolve_image, warn_missing
from medxpert.labels import nih_labels

LICENCE = "CC0-1.0 (NIH Clinical Center; cite Wang et al., CVPR 2017)"


@register_reader(
    "nih_cxr14",
    pack="nih_cxr14",
    description="NIH ChestX-ray14 images with NIH labels mapped to CheXpert-14 (no reports)",
)
def read_nih(root: Path, splits: frozenset[str], *, settings: Settings) -> Iterator[Case]:
    """Read ``labels.csv`` (one row per image) and ``images/<image_id>.jpg|png``."""
    frame = read_split_table(
        root / "labels.csv",
        ["image_id", "image_path", "patient_id", "view", "finding_labels"],
        splits,
    )
    missing: list[str] = []
    for row in frame.itertuples(index=False):
        image_path = resolve_image(root, row.image_path, missing)
        if not image_path:
            continue
        labels, extras = nih_labels(row.finding_labels)
        yield Case(
            case_id=f"nih_cxr14:{row.image_id}",
            source="nih_cxr14",
            split=row.split,
            study_id=f"nih_cxr14:{row.image_id}",
            patient_id=f"nih_cxr14:{row.patient_id}",
            view="frontal",
            image_path=image_path,
            labels=labels,
            extra_labels=extras,
            label_source="nih-labels",
            licence=LICENCE,
            meta={
                "view_position": row.view,
                "finding_labels": row.finding_labels,
                **{
                    key: getattr(row, key)
                    for key in ("age", "sex", "follow_up")
                    if hasattr(row, key)
                },
            },
        )
    warn_missing("nih_cxr14", missing, root)
