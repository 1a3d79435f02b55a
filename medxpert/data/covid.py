"""COVID-19 image data collection: chest X-rays with free-text case notes and a diagnosis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medxpert.config import Settings
from medxpert.data.case import Case, normalise_view
from medxpert.data.registry import read_split_table, register_reader, resolve_image, warn_missing
from medxpert.labels import diagnosis_labels


@register_reader(
    "covid_cxr",
    pack="covid_cxr",
    description="COVID-19 image data collection: X-rays + case notes, diagnosis → CheXpert-14",
)
def read_covid(root: Path, splits: frozenset[str], *, settings: Settings) -> Iterator[Case]:
    """Read ``reports.csv``; the case notes (``findings``) mix history and imaging findings."""
    frame = read_split_table(
        root / "reports.csv",
        [
            "study_id",
            "image_id",
            "image_path",
            "view",
            "findings",
            "diagnosis_label",
            "license",
            "patient_id",
        ],
        splits,
    )
    missing: list[str] = []
    for row in frame.itertuples(index=False):
        image_path = resolve_image(root, row.image_path, missing)
        if not image_path:
            continue
        labels, extras = diagnosis_labels(row.diagnosis_label)
        yield Case(
            case_id=f"covid_cxr:{row.image_id}",
            source="covid_cxr",
            split=row.split,
            study_id=f"covid_cxr:{row.study_id}",
            patient_id=f"covid_cxr:{row.patient_id}",
            view=normalise_view(row.view),
            image_path=image_path,
            findings=row.findings.strip(),
            impression=getattr(row, "impression", "").strip(),
            report=row.findings.strip(),
            labels=labels,
            extra_labels=extras,
            label_source="covid-diagnosis",
            licence=row.license,
            meta={
                key: getattr(row, key)
                for key in (
                    "view_raw",
                    "diagnosis_label",
                    "other_notes",
                    "source_url",
                    "doi",
                    "sex",
                    "age",
                    "offset_days",
                )
                if hasattr(row, key)
            },
        )
    warn_missing("covid_cxr", missing, root)
