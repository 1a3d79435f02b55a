"""`SearchEngine`: find the prior cases most similar to an X-ray, a text, or an X-ray + note.

    engine = SearchEngine.from_artifacts("models/medxpert-default", "indexes/medxpert-default")
    hits = engine.search(image="cxr.png", note="fever, cough", k=10, target="reports")

Queries: text alone; image alone; image + clinical note (a weighted sum of the two normalised
embeddings, renormalised; weight `note_weight`). Targets: the report index, the image index,
or both (merged by rank, so that image–image scores, which run higher than image–text ones,
do not crowd out reports). Results are de-duplicated by study and can be filtered by split,
view and source, or exclude the query's own patient (for honest evaluation).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medxpert.data import Case
from medxpert.data.images import ImageSource
from medxpert.encoders import DualEncoder
from medxpert.errors import QueryError
from medxpert.index import CaseLibrary
from medxpert.index.library import read_manifest

logger = logging.getLogger(__name__)

TARGETS = ("reports", "images", "both")
MODALITY = {"reports": "report", "images": "image"}
# The clinical-context A/B (benchmarks/RESULTS.md): at 0.3 the note lowered label P@10 from 0.38
# to 0.25; at 0.1 it is level with the X-ray alone.
DEFAULT_NOTE_WEIGHT = 0.1
MAX_TEXT_CHARS = 20_000


@dataclass(frozen=True)
class Hit:
    """One retrieved case: its record, cosine similarity, 1-based rank and which index."""

    case: Case
    score: float
    rank: int
    modality: str  # "report" or "image"


@dataclass(frozen=True)
class Filters:
    """Which cases may be returned (None: any)."""

    splits: frozenset[str] | None = None
    views: frozenset[str] | None = None
    sources: frozenset[str] | None = None
    exclude_patients: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        splits: Iterable[str] | None = None,
        views: Iterable[str] | None = None,
        sources: Iterable[str] | None = None,
        exclude_patients: Iterable[str] = (),
    ) -> Filters:
        return cls(
            *(frozenset(v) if v is not None else None for v in (splits, views, sources)),
            frozenset(p for p in exclude_patients if p),
        )

    def allows(self, case: Case) -> bool:
        return (
            (self.splits is None or case.split in self.splits)
            and (self.views is None or case.view in self.views)
            and (self.sources is None or case.source in self.sources)
            and case.patient_id not in self.exclude_patients
        )


class SearchEngine:
    """Search a `CaseLibrary` with the `DualEncoder` it was built with."""

    def __init__(
        self, library: CaseLibrary, encoder: DualEncoder, note_weight: float = DEFAULT_NOTE_WEIGHT
    ) -> None:
        library._check_encoder(encoder)
        if not 0 <= note_weight <= 1:
            raise QueryError(f"note_weight must be between 0 and 1, got {note_weight}.")
        self.library, self.encoder, self.note_weight = library, encoder, note_weight

    @classmethod
    def from_artifacts(
        cls,
        model_dir: str | Path,
        index_dir: str | Path,
        *,
        device: str = "auto",
        mmap: bool = False,
        note_weight: float = DEFAULT_NOTE_WEIGHT,
    ) -> SearchEngine:
        read_manifest(index_dir)  # no index built yet: say so before loading the model
        encoder = DualEncoder.load(model_dir, device=device)
        return cls(CaseLibrary.load(index_dir, encoder=encoder, mmap=mmap), encoder, note_weight)

    # --- queries -------------------------------------------------------------------------------
    def query_vector(
        self,
        image: ImageSource | None = None,
        text: str | None = None,
        note: str | None = None,
        note_weight: float | None = None,
    ) -> np.ndarray:
        """The (1, d) query embedding. With an image, `text` or `note` is the clinical note."""
        if note is not None and image is None:
            raise QueryError(
                "a clinical note goes with an image; to search by text alone, "
                "give it as the text query."
            )
        if image is None and text is None:
            raise QueryError("nothing to search for: give an image, a text, or both.")
        if text is not None and note is not None:
            raise QueryError("give the clinical note once (as note), not as both text and note.")
        if image is None:
            return self.encoder.encode_texts([_checked_text(text, "text query")], progress=False)
        vector = self.encoder.encode_images([image], progress=False)
        return self.with_note(vector, note if note is not None else text, note_weight)

    def with_note(
        self, image_vector: np.ndarray, note: str | None, note_weight: float | None = None
    ) -> np.ndarray:
        """An image query vector (1, d) combined with a clinical note: the normalised weighted
        sum (1 − w)·image + w·note. No note (None or blank) leaves the image vector as it is."""
        if note is None or not note.strip():
            return image_vector
        weight = self.note_weight if note_weight is None else note_weight
        note_vector = self.encoder.encode_texts(
            [_checked_text(note, "clinical note")], progress=False
        )
        combined = (1 - weight) * image_vector + weight * note_vector
        return combined / np.linalg.norm(combined, axis=1, keepdims=True)

    def search(
        self,
        image: ImageSource | None = None,
        text: str | None = None,
        note: str | None = None,
        *,
        k: int = 10,
        target: str = "reports",
        filters: Filters | None = None,
        dedupe_study: bool = True,
        note_weight: float | None = None,
    ) -> list[Hit]:
        """The k most similar cases, best first."""
        self._check_k(k, target)
        vector = self.query_vector(image, text, note, note_weight)
        return self.search_vectors(
            vector, k=k, target=target, filters=filters, dedupe_study=dedupe_study
        )[0]

    def search_vectors(
        self,
        vectors: np.ndarray,
        *,
        k: int = 10,
        target: str = "reports",
        filters: Filters | None = None,
        dedupe_study: bool = True,
    ) -> list[list[Hit]]:
        """Search with ready-made query vectors (n, d): one hit list per query."""
        self._check_k(k, target)
        modalities = ["reports", "images"] if target == "both" else [target]
        per_modality = {
            m: self._search_one(vectors, m, k, filters, dedupe_study)
            for m in modalities
            if m in self.library.indexes
        }
        if target != "both":
            return per_modality[target]
        return [
            _merge_by_rank([per_modality[m][q] for m in per_modality], k, dedupe_study)
            for q in range(len(vectors))
        ]

    # --- internals ------------------------------------------------------------------------------
    def _check_k(self, k: int, target: str) -> None:
        if target not in TARGETS:
            raise QueryError(f"target must be one of {', '.join(TARGETS)}, not {target!r}.")
        modalities = ["reports", "images"] if target == "both" else [target]
        available = sum(self.library.count(m) for m in modalities)
        if available == 0:
            raise QueryError(f"this library has no {target} index to search.")
        if not isinstance(k, int | np.integer) or k <= 0:
            raise QueryError(f"k must be a positive whole number, got {k!r}.")
        if k > available:
            raise QueryError(
                f"k={k} is larger than the index ({available} {target}); "
                f"ask for at most {available}."
            )

    def _search_one(
        self, vectors: np.ndarray, modality: str, k: int, filters: Filters | None, dedupe: bool
    ) -> list[list[Hit]]:
        index = self.library.indexes[modality]
        total = len(index)
        fetch = min(total, k * 4 if (filters or dedupe) else k)
        pending = list(range(len(vectors)))
        found: dict[int, list[Hit]] = {}
        while pending:
            scores, rows = index.search(vectors[pending], fetch)
            still = []
            for position, query in enumerate(pending):
                hits = self._collect(scores[position], rows[position], modality, k, filters, dedupe)
                if len(hits) < k and fetch < total:
                    still.append(query)
                else:
                    found[query] = hits
            pending, fetch = still, min(total, fetch * 4)
        return [found[q] for q in range(len(vectors))]

    def _collect(self, scores, rows, modality, k, filters, dedupe) -> list[Hit]:
        hits, studies = [], set()
        for score, row in zip(scores, rows, strict=True):
            if row < 0:
                continue
            case = self.library.case(row)
            if filters is not None and not filters.allows(case):
                continue
            study = case.study_id or case.case_id
            if dedupe and study in studies:
                continue
            studies.add(study)
            hits.append(Hit(case, float(score), len(hits) + 1, MODALITY[modality]))
            if len(hits) == k:
                break
        return hits


def _merge_by_rank(lists: Sequence[list[Hit]], k: int, dedupe: bool) -> list[Hit]:
    """Interleave result lists rank by rank (ties: higher score first)."""
    merged, studies = [], set()
    depth = max((len(hits) for hits in lists), default=0)
    for rank in range(depth):
        layer = sorted(
            (hits[rank] for hits in lists if rank < len(hits)), key=lambda hit: -hit.score
        )
        for hit in layer:
            study = hit.case.study_id or hit.case.case_id
            if dedupe and study in studies:
                continue
            studies.add(study)
            merged.append(Hit(hit.case, hit.score, len(merged) + 1, hit.modality))
            if len(merged) == k:
                return merged
    return merged


def _checked_text(text: str | None, what: str) -> str:
    if text is None or not str(text).strip():
        raise QueryError(f"the {what} is empty.")
    if len(text) > MAX_TEXT_CHARS:
        raise QueryError(
            f"the {what} is {len(text):,} characters; the limit is "
            f"{MAX_TEXT_CHARS:,} (about ten full reports). Shorten it."
        )
    return str(text)
