"""`SearchEngine`: find the prior studies most similar to X-rays, a text, or an X-ray + note.

    engine = SearchEngine.load("medxpert-default")      # a library by name, with its model
    engine = SearchEngine.from_artifacts("models/medxpert-default", "indexes/medxpert-default")
    hits = engine.search(image="cxr.png", note="fever, cough", k=10, target="both")
    hits = engine.search(images=["frontal.png", "lateral.png"], k=10)   # one study

Queries: text alone; an image, or several images of one study (each encoded, the mean of the
normalised vectors renormalised); either with a clinical note (a weighted sum of the image and
note vectors, renormalised; weight `note_weight`). Targets: the report index, the image index,
or both, fused on one scale (`medxpert.retrieval.fusion`: rrf unless `medxpert eval fusion`
saved another choice). Each hit is a study, listed once with every vector of it that matched.
Results can be filtered by split, view and source, or exclude the query's own patient (for
honest evaluation).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from medxpert.data import Case
from medxpert.data.images import ImageSource
from medxpert.encoders import DualEncoder
from medxpert.errors import QueryError
from medxpert.index import CaseLibrary
from medxpert.index.library import LoadsFromLibrary, read_manifest
from medxpert.retrieval.fusion import Fusion, read_fusion
from medxpert.retrieval.hits import Evidence, Hit, StudyMatch

logger = logging.getLogger(__name__)

Target = Literal["reports", "images", "both"]  # the indexes a query searches
TARGETS: tuple[Target, ...] = get_args(Target)
MODALITY = {"reports": "report", "images": "image"}
# The clinical-context A/B (benchmarks/RESULTS.md): at 0.3 the note lowered label P@10 from 0.38
# to 0.25; at 0.1 it is level with the X-ray alone.
DEFAULT_NOTE_WEIGHT = 0.1
MAX_TEXT_CHARS = 20_000


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


class SearchEngine(LoadsFromLibrary):
    """Search a `CaseLibrary` with the `DualEncoder` it was built with; `fusion` fuses the two
    indexes for `target="both"` (a `Fusion`, or a method name; default rrf)."""

    def __init__(
        self,
        library: CaseLibrary,
        encoder: DualEncoder,
        note_weight: float = DEFAULT_NOTE_WEIGHT,
        fusion: Fusion | str | None = None,
    ) -> None:
        library._check_encoder(encoder)
        if not 0 <= note_weight <= 1:
            raise QueryError(f"note_weight must be between 0 and 1, got {note_weight}.")
        self.library, self.encoder, self.note_weight = library, encoder, note_weight
        self.fusion = fusion if isinstance(fusion, Fusion) else Fusion(fusion or "rrf")

    @classmethod
    def from_artifacts(
        cls,
        model_dir: str | Path,
        index_dir: str | Path,
        *,
        device: str = "auto",
        mmap: bool = True,
        note_weight: float = DEFAULT_NOTE_WEIGHT,
        fusion: Fusion | str | None = None,
    ) -> SearchEngine:
        """`fusion` None takes the choice `medxpert eval fusion` saved next to the index (rrf
        when there is none); a method name takes it with the saved calibration."""
        read_manifest(index_dir)  # no index built yet: say so before loading the model
        encoder = DualEncoder.load(model_dir, device=device)
        library = CaseLibrary.load(index_dir, encoder=encoder, mmap=mmap)
        if not isinstance(fusion, Fusion):
            fusion = read_fusion(index_dir, encoder.fingerprint(), fusion)
        return cls(library, encoder, note_weight, fusion)

    # --- queries -------------------------------------------------------------------------------
    def query_vector(
        self,
        image: ImageSource | None = None,
        text: str | None = None,
        note: str | None = None,
        note_weight: float | None = None,
        *,
        images: Sequence[ImageSource] | None = None,
    ) -> np.ndarray:
        """The (1, d) query embedding. `images` are several images of one study; with an
        image (or images), `text` or `note` is the clinical note."""
        if image is not None and images is not None:
            raise QueryError("give one image as image or a study's images as images, not both.")
        if images is not None:
            if not images:
                raise QueryError("the study query has no images.")
        elif image is not None:
            images = [image]
        if note is not None and images is None:
            raise QueryError(
                "a clinical note goes with an image; to search by text alone, "
                "give it as the text query."
            )
        if images is None and text is None:
            raise QueryError("nothing to search for: give an image, a text, or both.")
        if text is not None and note is not None:
            raise QueryError("give the clinical note once (as note), not as both text and note.")
        if images is None:
            return self.encoder.encode_texts([_checked_text(text, "text query")], progress=False)
        vectors = self.encoder.encode_images(list(images), progress=False)
        vector = vectors if image is not None else study_vector(vectors)
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
        images: Sequence[ImageSource] | None = None,
        k: int = 10,
        target: Target = "reports",
        filters: Filters | None = None,
        note_weight: float | None = None,
        fusion: Fusion | None = None,
    ) -> list[Hit]:
        """The k most similar studies, best first."""
        self._check_k(k, target)
        vector = self.query_vector(image, text, note, note_weight, images=images)
        kind = "text" if image is None and images is None else "image"
        return self.search_vectors(
            vector, k=k, target=target, filters=filters, fusion=fusion, query_kind=kind
        )[0]

    def search_vectors(
        self,
        vectors: np.ndarray,
        *,
        k: int = 10,
        target: Target = "reports",
        filters: Filters | None = None,
        fusion: Fusion | None = None,
        query_kind: str = "image",
    ) -> list[list[Hit]]:
        """Search with ready-made query vectors (n, d): one hit list per query. `fusion`
        overrides the engine's for `both`; `query_kind` ("image" or "text") picks its
        calibration."""
        self._check_k(k, target)
        per_query = self.study_lists(vectors, k=k, target=target, filters=filters)
        if target != "both":
            return [self.hits(lists[0], k) for lists in per_query]
        return [self.fused_hits(lists, k, fusion or self.fusion, query_kind) for lists in per_query]

    def study_lists(
        self,
        vectors: np.ndarray,
        *,
        k: int = 10,
        target: Target = "both",
        filters: Filters | None = None,
    ) -> list[list[list[StudyMatch]]]:
        """Per query, per index searched (reports, then images): its k best studies."""
        modalities = ["reports", "images"] if target == "both" else [target]
        found = [
            self._search_one(vectors, m, k, filters)
            for m in modalities
            if m in self.library.indexes
        ]
        return [[lists[q] for lists in found] for q in range(len(vectors))]

    def hits(self, matches: Sequence[StudyMatch], k: int) -> list[Hit]:
        """The hits of one index's study list, by cosine."""
        return [
            self._hit(match.cosine, rank, [match])
            for rank, match in enumerate(matches[:k], start=1)
        ]

    def fused_hits(
        self, lists: Sequence[Sequence[StudyMatch]], k: int, fusion: Fusion, query_kind: str
    ) -> list[Hit]:
        """The hits of several indexes' study lists, fused by `fusion`."""
        return [
            self._hit(score, rank, matches)
            for rank, (score, matches) in enumerate(fusion.fuse(lists, k, query_kind), start=1)
        ]

    # --- internals ------------------------------------------------------------------------------
    def _check_k(self, k: int, target: Target) -> None:
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
        self, vectors: np.ndarray, modality: str, k: int, filters: Filters | None
    ) -> list[list[StudyMatch]]:
        """Per query, the k best studies of one index: fetch more candidates until k studies
        pass the filters (or the index is spent)."""
        index = self.library.indexes[modality]
        total = len(index)
        # the report index has one vector per study; the image index several
        fetch = min(total, k if modality == "reports" and filters is None else k * 4)
        pending = list(range(len(vectors)))
        found: dict[int, list[StudyMatch]] = {}
        while pending:
            scores, rows = index.search(vectors[pending], fetch)
            still = []
            for position, query in enumerate(pending):
                studies = self._collect(scores[position], rows[position], modality, k, filters)
                if len(studies) < k and fetch < total:
                    still.append(query)
                else:
                    found[query] = studies
            pending, fetch = still, min(total, fetch * 4)
        return [found[q] for q in range(len(vectors))]

    def _collect(
        self, scores: np.ndarray, rows: np.ndarray, modality: str, k: int, filters: Filters | None
    ) -> list[StudyMatch]:
        """The first k studies among the candidates, each with all of its candidates that
        pass the filters as evidence (rank: among those candidates)."""
        evidence: dict[str, list[Evidence]] = {}
        passed = 0
        for score, row in zip(scores, rows, strict=True):
            if row < 0:
                continue
            case = self.library.case(row)
            if filters is not None and not filters.allows(case):
                continue
            passed += 1
            study = case.study_key
            if study in evidence or len(evidence) < k:
                item = Evidence(MODALITY[modality], case.case_id, case.view, float(score), passed)
                evidence.setdefault(study, []).append(item)
        return [
            StudyMatch(study, rank, tuple(items))
            for rank, (study, items) in enumerate(evidence.items(), start=1)
        ]

    def _hit(self, score: float, rank: int, matches: Sequence[StudyMatch]) -> Hit:
        """A study's hit: the case of its best evidence, all of its images, all evidence."""
        best = matches[0]
        study = self.library.study(best.study_id)
        case = self.library.case(self.library.row_of(best.evidence[0].case_id))
        return Hit(
            case,
            float(score),
            rank,
            best.modality,
            best.study_id,
            study.images,
            tuple(item for match in matches for item in match.evidence),
        )


def study_vector(vectors: np.ndarray) -> np.ndarray:
    """One (1, d) query vector for several images of a study: the mean of their L2-normalised
    vectors, renormalised."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    mean = unit.mean(axis=0, keepdims=True)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def _checked_text(text: str | None, what: str) -> str:
    if text is None or not str(text).strip():
        raise QueryError(f"the {what} is empty.")
    if len(text) > MAX_TEXT_CHARS:
        raise QueryError(
            f"the {what} is {len(text):,} characters; the limit is "
            f"{MAX_TEXT_CHARS:,} (about ten full reports). Shorten it."
        )
    return str(text)
