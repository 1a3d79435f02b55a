"""`Case`: one row per image (or per report, for text-only sources) with its report and labels."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from medxpert.labels import CHEXPERT_LABELS, NUM_LABELS, empty_labels

SPLITS: tuple[str, ...] = ("train", "val", "test")
VIEWS: tuple[str, ...] = ("frontal", "lateral", "unknown")
TEXT_FIELDS: tuple[str, ...] = ("impression", "findings")
FRONTAL_POSITIONS = frozenset(
    {"FRONTAL", "PA", "AP", "AP AXIAL", "AP SUPINE", "PA LLD", "AP LLD", "AP RLD", "PA RLD"}
)
LATERAL_POSITIONS = frozenset({"LATERAL", "LL", "RL", "L", "XTABLE LATERAL"})


def normalise_view(position: str) -> str:
    """frontal / lateral / unknown from a source's view or DICOM ViewPosition (PA, AP, LL...)."""
    position = " ".join(str(position).upper().split())
    if position in FRONTAL_POSITIONS:
        return "frontal"
    if position in LATERAL_POSITIONS:
        return "lateral"
    return "unknown"


@dataclass(frozen=True, eq=False)
class Case:
    """A chest X-ray case.

    `labels` is the CheXpert-14 vector (1 positive, 0 negative, -1 uncertain, NaN not
    mentioned); `extra_labels` keeps source labels outside that vocabulary; `label_source`
    says where the labels came from. `image_path` is absolute, or "" for text-only cases.
    """

    case_id: str
    source: str
    split: str
    study_id: str = ""
    patient_id: str = ""
    view: str = "unknown"
    image_path: str = ""
    findings: str = ""
    impression: str = ""
    report: str = ""
    labels: np.ndarray = field(default_factory=empty_labels)
    extra_labels: tuple[str, ...] = ()
    label_source: str = ""
    licence: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.float32)
        if labels.shape != (NUM_LABELS,):
            raise ValueError(f"case {self.case_id}: labels must have {NUM_LABELS} values")
        object.__setattr__(self, "labels", labels)
        if self.split not in SPLITS:
            raise ValueError(f"case {self.case_id}: split {self.split!r} not in {SPLITS}")
        if self.view not in VIEWS:
            raise ValueError(f"case {self.case_id}: view {self.view!r} not in {VIEWS}")

    @property
    def has_image(self) -> bool:
        return bool(self.image_path)

    @property
    def has_text(self) -> bool:
        return bool(self.findings or self.impression or self.report)

    @property
    def study_key(self) -> str:
        """The study this case belongs to: its study id, else (a study of one) its case id."""
        return self.study_id or self.case_id

    def text(self, sections: Iterable[str] = TEXT_FIELDS) -> str:
        """The case's text: the named sections joined (impression + findings by default),
        falling back to the full report when those sections are empty."""
        parts = [getattr(self, name).strip() for name in sections]
        joined = " ".join(part for part in parts if part)
        return joined or self.report.strip()


def join_sections(sections: Mapping[str, str]) -> str:
    """A full report from named sections, one ``NAME: text`` line each (empty ones skipped)."""
    return "\n".join(
        f"{name.upper()}: {text.strip()}"
        for name, text in sections.items()
        if text and text.strip()
    )


def cases_to_frame(cases: Iterable[Case]) -> pd.DataFrame:
    """A case table: one column per field, one float column per CheXpert label."""
    rows = []
    for case in cases:
        row = {f.name: getattr(case, f.name) for f in fields(Case) if f.name not in ("labels",)}
        row["extra_labels"] = list(case.extra_labels)
        row["meta"] = json.dumps(dict(case.meta), ensure_ascii=False, sort_keys=True)
        row.update(zip(CHEXPERT_LABELS, case.labels.tolist(), strict=True))
        rows.append(row)
    columns = [f.name for f in fields(Case) if f.name != "labels"] + list(CHEXPERT_LABELS)
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({name: "float32" for name in CHEXPERT_LABELS})


def cases_from_frame(frame: pd.DataFrame) -> list[Case]:
    """Inverse of `cases_to_frame`."""
    labels = frame[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float32)
    scalar_fields = [
        f.name for f in fields(Case) if f.name not in ("labels", "extra_labels", "meta")
    ]
    cases = []
    for i, record in enumerate(frame[[*scalar_fields, "extra_labels", "meta"]].to_dict("records")):
        extra = record.pop("extra_labels")
        meta = record.pop("meta")
        cases.append(
            Case(
                **{k: ("" if _missing(v) else str(v)) for k, v in record.items()},
                labels=labels[i],
                extra_labels=tuple(extra) if extra is not None else (),
                meta=json.loads(meta) if isinstance(meta, str) and meta else {},
            )
        )
    return cases


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
