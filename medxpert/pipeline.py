"""`DiagnosisPipeline`: one query through every stage, timed.

    pipeline = DiagnosisPipeline.load("medxpert-default")   # a library by name, with its model
    pipeline = DiagnosisPipeline.from_artifacts("models/medxpert-default",
                                                "indexes/medxpert-default")
    diagnosis = pipeline.diagnose(image="cxr.png", note="fever, productive cough", k=10)
    diagnosis = pipeline.diagnose(images=["frontal.png", "lateral.png"])   # one study
    print(diagnosis.report.to_markdown())

Stages: encode the query (an image or a study's images, a text, or either image query + note)
→ search the case library for studies → caption the (first) image → pathology probabilities
(the similarity-weighted vote of the retrieved studies, blended with the captioner's zero-shot
probabilities at the weight chosen on the validation split), ICD-10 suggestions and triage →
the structured report.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from medxpert import __version__
from medxpert.caption import Caption, Captioner, make_captioner
from medxpert.config import Settings
from medxpert.data.images import DicomHeader, ImageSource, dicom_header, open_image
from medxpert.errors import InputRefusedError, QueryError
from medxpert.guard import OVERRIDE, InputGuard, describe_problems
from medxpert.index.library import LoadsFromLibrary
from medxpert.report import ReportContext, StructuredReport, Writer, make_writer, writer_options
from medxpert.report.sentences import phrasing_counts
from medxpert.report.thresholds import default_thresholds, read_thresholds
from medxpert.retrieval import DEFAULT_NOTE_WEIGHT, Filters, Fusion, Hit, SearchEngine, Target
from medxpert.retrieval.engine import study_vector
from medxpert.retrieval.export import hit_record
from medxpert.retrieval.probabilities import read_blend_weight

logger = logging.getLogger(__name__)


@dataclass
class Diagnosis:
    """The report and everything it was made from."""

    report: StructuredReport
    hits: list[Hit]
    caption: Caption | None
    probabilities: dict[str, float]
    timings_ms: dict[str, float] = field(default_factory=dict)
    zero_shot_weight: float = 0.0  # the probabilities' blend with the caption (0: vote alone)
    # what wrote it: MedXpert's version, the encoder, the library (`DiagnosisPipeline.provenance`)
    provenance: dict[str, str] = field(default_factory=dict)
    # the query images' DICOM headers (None for a PNG or JPEG), for a DICOM SR of the report
    dicom_headers: list[DicomHeader | None] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: the report (with timings), its provenance and the ranked hits, one per
        study, each with its images and the evidence that matched (`hit_record`)."""
        return {
            "report": self.report.model_dump(),
            "provenance": self.provenance,
            "probabilities": self.probabilities,
            "zero_shot_weight": self.zero_shot_weight,
            "hits": [hit_record(hit) for hit in self.hits],
        }


class DiagnosisPipeline(LoadsFromLibrary):
    """Search engine + captioner + report writer."""

    def __init__(
        self,
        engine: SearchEngine,
        captioner: Captioner,
        writer: Writer,
        *,
        k: int = 10,
        zero_shot_weight: float = 0.0,
        thresholds: dict[str, float] | None = None,
        guard: InputGuard | None = None,
    ) -> None:
        self.engine, self.captioner, self.writer, self.k = engine, captioner, writer, k
        self.guard = guard or InputGuard()
        self.zero_shot_weight = zero_shot_weight
        self.thresholds = thresholds or default_thresholds()
        reports = {(c.study_key, c.findings, c.impression) for c in engine.library.cases}
        self.phrasing = phrasing_counts(text for _, *sections in reports for text in sections)

    @classmethod
    def default_options(cls, options: dict, settings: Settings) -> dict:
        """For `load`: the captioner, writer (with its LLM options), device and k default to
        the settings'."""
        options = {
            "captioner": settings.captioner,
            "writer": settings.writer,
            "device": settings.device,
            "k": settings.top_k,
            **options,
        }
        if options.get("writer_options") is None:
            options["writer_options"] = writer_options(options["writer"], settings)
        return options

    @classmethod
    def from_artifacts(
        cls,
        model_dir: str | Path,
        index_dir: str | Path,
        *,
        captioner: str = "labels",
        writer: str = "offline",
        device: str = "auto",
        note_weight: float = DEFAULT_NOTE_WEIGHT,
        k: int = 10,
        writer_options: dict | None = None,
        blip_source: str | Path | None = None,
        zero_shot_weight: float | None = None,
        fusion: Fusion | str | None = None,
    ) -> DiagnosisPipeline:
        """`writer_options` go to the writer, e.g. ``{"model": "gemini-2.5-pro"}`` or
        ``{"send_image": True}`` (the user's explicit consent to send the image).
        `zero_shot_weight` None takes the weight saved next to the index by `medxpert eval
        blend` (0, the vote alone, when there is none); `fusion` None the fusion saved by
        `medxpert eval fusion` (rrf when there is none). The writer is made first, so that its
        configuration errors come before the model and library load."""
        writer_ = make_writer(writer, **(writer_options or {}))
        engine = SearchEngine.from_artifacts(
            model_dir, index_dir, device=device, note_weight=note_weight, fusion=fusion
        )
        captioner_ = make_captioner(
            captioner, engine.encoder, blip_source=blip_source, models_dir=Path(model_dir).parent
        )
        if "images" in engine.library.indexes:
            vectors, cases = engine.library.image_vectors()
            used = captioner_.calibrate(vectors, np.stack([case.labels for case in cases]))
            if used is not None:
                logger.info("caption calibrated on the library's images: %s", used)
        fingerprint = engine.encoder.fingerprint()
        if zero_shot_weight is None:
            zero_shot_weight = read_blend_weight(index_dir, fingerprint)
        return cls(
            engine,
            captioner_,
            writer_,
            k=k,
            zero_shot_weight=zero_shot_weight,
            thresholds=read_thresholds(index_dir, fingerprint),
            guard=InputGuard.for_library(engine.library, index_dir, fingerprint),
        )

    @cached_property
    def provenance(self) -> dict[str, str]:
        """What every report of this pipeline comes from: MedXpert's version, the encoder (its
        backbone and weight fingerprint) and the case library (its name and file fingerprint)."""
        library, encoder = self.engine.library, self.engine.encoder
        return {
            "medxpert_version": __version__,
            "encoder": encoder.backbone,
            "encoder_fingerprint": library.encoder_fingerprint,
            "library": str(library.manifest.get("name", "unsaved")),
            "library_fingerprint": library.fingerprint,
            "captioner": self.captioner.name,
            "writer": self.writer.name,
        }

    @property
    def _may_send_image(self) -> bool:
        """Only a writer the user explicitly allowed to send the image gets it."""
        return self.writer.send_image

    def diagnose(
        self,
        image: ImageSource | None = None,
        text: str | None = None,
        note: str | None = None,
        *,
        force: bool = False,
        **options,
    ) -> Diagnosis:
        """Diagnose an image, or several `images` of one study (frontal first: the caption is
        of the first), with an optional clinical note; or a text query. `options` are those of
        `evidence` (images, k, target, filters, note_weight). An image the input guard refuses
        raises `InputRefusedError` unless `force`, which diagnoses it with a warning."""
        timings: dict[str, float] = {}
        context = self.evidence(image, text, note, timings=timings, force=force, **options)
        with _timed(timings, "write"):
            report = self.writer.write(context)
        timings["total"] = round(sum(timings.values()), 2)
        overridden = [
            f"The input guard refused this input and it was diagnosed only because it was "
            f"forced; the report may describe no chest X-ray. {line}"
            for line in context.guard_warnings
        ]
        not_sent = [context.image_not_sent] if context.image_not_sent else []
        report = report.model_copy(
            update={"timings_ms": timings, "warnings": [*overridden, *not_sent, *report.warnings]}
        )
        return Diagnosis(
            report,
            list(context.hits),
            context.caption,
            context.vote.probabilities,
            timings,
            context.vote.zero_shot_weight,
            self.provenance,
            list(context.dicom_headers),
        )

    def evidence(
        self,
        image: ImageSource | None = None,
        text: str | None = None,
        note: str | None = None,
        *,
        images: Sequence[ImageSource] | None = None,
        k: int | None = None,
        target: Target = "both",
        filters: Filters | None = None,
        note_weight: float | None = None,
        timings: dict[str, float] | None = None,
        force: bool = False,
    ) -> ReportContext:
        """Everything a report is written from (the stages before the writer), each stage
        timed into `timings`. `note_weight` overrides the engine's weight of the note. Images
        pass the input guard first (`force`: flagged ones go on, with warnings)."""
        k = k or self.k
        timings = {} if timings is None else timings
        if image is not None and images is not None:
            raise QueryError("give one image as image or a study's images as images, not both.")
        if images is not None and not images:
            raise QueryError("the study query has no images.")
        sources = [image] if image is not None else list(images or ())
        if sources and text is not None:
            raise QueryError("give the clinical note of an image as note, not as text.")
        names = [_name(source, i, len(sources)) for i, source in enumerate(sources)]
        pictures: list[Image.Image] = []
        problems: list[list[str]] = []
        if sources:
            with _timed(timings, "guard"):
                pictures, problems = self._decoded(sources, names, force)
        with _timed(timings, "encode"):
            if pictures:
                vectors, problems = self._encoded(pictures, problems, names, force)
                study = vectors if image is not None else study_vector(vectors)
                query = self.engine.with_note(study, note, note_weight)
            else:
                query = self.engine.query_vector(text=text, note=note)
        with _timed(timings, "search"):
            hits = self.engine.search_vectors(
                query,
                k=k,
                target=target,
                filters=filters,
                query_kind="image" if pictures else "text",
            )[0]
        caption = None
        if pictures:
            with _timed(timings, "caption"):
                caption = self.captioner.caption(pictures[0], vector=vectors[0])
        with _timed(timings, "read-outs"):
            return ReportContext.from_hits(
                hits,
                zero_shot_weight=self.zero_shot_weight,
                caption=caption,
                query_text=text,
                note=note,
                has_image=bool(pictures),
                **self._image_to_send(pictures[0] if pictures else None),
                thresholds=self.thresholds,
                phrasing=self.phrasing,
                guard_warnings=describe_problems(problems, names) if pictures else (),
                dicom_headers=[dicom_header(picture) for picture in pictures],
            )

    def checked_images(
        self, sources: Sequence[ImageSource], *, force: bool = False
    ) -> list[Image.Image]:
        """`sources` decoded, each past the input guard (header, pixels, embedding): what an
        explanation of a query is made from. `InputRefusedError` unless `force`."""
        names = [_name(source, i, len(sources)) for i, source in enumerate(sources)]
        pictures, problems = self._decoded(sources, names, force)
        self._encoded(pictures, problems, names, force)
        return pictures

    def _decoded(
        self, sources: Sequence[ImageSource], names: list[str], force: bool
    ) -> tuple[list[Image.Image], list[list[str]]]:
        """The decoded images and the guard's header and pixel problems with each."""
        pictures = [
            open_image(source, name=name) for source, name in zip(sources, names, strict=True)
        ]
        problems = [self.guard.image_problems(picture) for picture in pictures]
        self._check(problems, names, force)
        return pictures, problems

    def _encoded(
        self, pictures: list[Image.Image], problems: list[list[str]], names: list[str], force: bool
    ) -> tuple[np.ndarray, list[list[str]]]:
        """The images' vectors, and every problem with each once the embedding is checked."""
        vectors = self.engine.encoder.encode_images(pictures, progress=False)
        problems = [
            [*a, *b] for a, b in zip(problems, self.guard.vector_problems(vectors), strict=True)
        ]
        self._check(problems, names, force)
        return vectors, problems

    def _image_to_send(self, picture: Image.Image | None) -> dict:
        """The query image as PNG pixels for a writer the user let send it; none, and why,
        when its DICOM header says text is burned into the pixels (names, dates, ids)."""
        if picture is None or not self._may_send_image:
            return {}
        header = dicom_header(picture)
        if header is not None and header.burned_in_annotation == "YES":
            return {
                "image_not_sent": "The X-ray was not sent to the LLM: its DICOM header says "
                "text is burned into its pixels (BurnedInAnnotation YES); the report was "
                "written from text alone."
            }
        return {"image_png": _png(picture)}

    @staticmethod
    def _check(problems: list[list[str]], names: list[str], force: bool) -> None:
        """Refuse flagged images unless `force`."""
        lines = describe_problems(problems, names)
        if lines and not force:
            raise InputRefusedError(
                "MedXpert diagnoses chest radiographs only, and refused this input: "
                + " | ".join(lines)
                + f". If it is a chest X-ray, {OVERRIDE}."
            )


def _name(source: ImageSource, position: int, count: int) -> str:
    """How messages call a query image: its file name, else its place in the query."""
    if isinstance(source, str | Path):
        return Path(source).name
    label = getattr(source, "name", None)
    if isinstance(label, str) and label:
        return Path(label).name
    return "the image" if count == 1 else f"image {position + 1}"


def _png(image: ImageSource) -> bytes:
    buffer = io.BytesIO()
    open_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round((time.perf_counter() - start) * 1000, 2)
