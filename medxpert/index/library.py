"""`CaseLibrary`: the searchable case library saved under ``indexes/<name>/``.

    images.faiss     image embeddings of every case with an image
    reports.faiss    report embeddings, one per study (text-only cases included)
    cases.parquet    the case table; a case's id in both indexes is its row number
    manifest.json    the encoder's fingerprint and model folder, dimension, metric, factory
                     strings, counts, file sizes and SHA-256 checksums, versions, creation time

An on-disk index (factory ``"disk:IVF..."``, what `auto` picks for a library too large to
scan; ondisk.py) adds ``<modality>.ivfdata``, its memory-mapped lists; its manifest entry
records its shards and the nprobe tuned at build. It cannot take new cases (rebuild).

Saving is atomic (a whole new folder replaces the old one), so a crash mid-save leaves the
previous library usable. Loading refuses a missing or truncated file, a checksum mismatch, and
an index built with an encoder other than the one in use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from medxpert import __version__
from medxpert.atomic import atomic_directory
from medxpert.config import Settings
from medxpert.data import Case, Study, cases_from_frame, cases_to_frame, group_studies
from medxpert.data.case import TEXT_FIELDS
from medxpert.encoders import DualEncoder
from medxpert.encoders.factory import INFO_FILE, read_model_info
from medxpert.errors import (
    IndexFormatError,
    IndexNotFoundError,
    MedXpertError,
    ModelNotFoundError,
    StorageError,
)
from medxpert.index.ondisk import OnDiskIndex
from medxpert.index.vector_index import (
    METRIC,
    VectorIndex,
    check_file,
    default_factory,
    file_sha256,
    is_disk_factory,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CASES_FILE = "cases.parquet"
MODALITIES = ("images", "reports")
SHARD_ROWS = 100_000  # an on-disk index is built from shards of this many vectors

AnyIndex = VectorIndex | OnDiskIndex


@dataclass
class CaseLibrary:
    """Cases plus their image and report indexes, built with one encoder."""

    cases: list[Case]
    indexes: dict[str, AnyIndex]  # "images" and/or "reports"
    encoder_fingerprint: str
    encoder_backbone: str
    text_sections: tuple[str, ...] = TEXT_FIELDS
    manifest: dict = field(default_factory=dict)
    encoder_path: str | None = None  # the saved model's folder (None: an unsaved encoder)

    def __post_init__(self) -> None:
        self._row_of = {case.case_id: row for row, case in enumerate(self.cases)}
        self._study_rows: dict[str, list[int]] = {}
        self._add_study_rows(0)

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        encoder: DualEncoder,
        cases: Sequence[Case],
        *,
        image_factory: str = "auto",
        report_factory: str = "auto",
        text_sections: Sequence[str] = TEXT_FIELDS,
        batch_size: int = 8,
    ) -> CaseLibrary:
        """Embed every case (images into one index, one report per study into the other)."""
        cases = list(cases)
        embeddings = embed_cases(encoder, cases, text_sections, batch_size)
        return cls.from_embeddings(
            encoder,
            cases,
            embeddings,
            image_factory=image_factory,
            report_factory=report_factory,
            text_sections=text_sections,
        )

    @classmethod
    def from_embeddings(
        cls,
        encoder: DualEncoder,
        cases: Sequence[Case],
        embeddings: dict[str, Embeddings],
        *,
        image_factory: str = "auto",
        report_factory: str = "auto",
        text_sections: Sequence[str] = TEXT_FIELDS,
    ) -> CaseLibrary:
        """Index embeddings made by `embed_cases` with the same `encoder` and `cases`."""
        factories = {"images": image_factory, "reports": report_factory}
        indexes = {
            modality: _build_index(found, factories[modality], modality)
            for modality, found in embeddings.items()
        }
        return cls(
            list(cases),
            indexes,
            encoder.fingerprint(),
            encoder.backbone,
            tuple(text_sections),
            encoder_path=encoder.info.get("path"),
        )

    def add_cases(self, encoder: DualEncoder, cases: Sequence[Case], batch_size: int = 8) -> int:
        """Embed and append new cases (ids not yet in the library); returns how many. An
        on-disk index cannot take them: refused, the library unchanged."""
        self._check_encoder(encoder)
        new = [case for case in cases if case.case_id not in self._row_of]
        indexed_studies = {case.study_key for case in self.cases if case.text(self.text_sections)}
        start = len(self.cases)
        image_rows, report_rows = rows_to_embed(
            new, self.text_sections, offset=start, known_studies=indexed_studies
        )
        self._check_appendable({"images": image_rows, "reports": report_rows})
        self.cases.extend(new)
        self._row_of.update({case.case_id: start + i for i, case in enumerate(new)})
        self._add_study_rows(start)
        if image_rows:
            vectors = encoder.encode_images(
                [self.cases[r].image_path for r in image_rows], batch_size
            )
            self._index("images", vectors.shape[1]).add(vectors, np.array(image_rows))
        if report_rows:
            vectors = encoder.encode_texts(
                [self.cases[r].text(self.text_sections) for r in report_rows]
            )
            self._index("reports", vectors.shape[1]).add(vectors, np.array(report_rows))
        return len(new)

    def remove_cases(self, case_ids: Sequence[str]) -> int:
        """Take cases out of both indexes (their rows stay in the table); returns how many."""
        rows = np.array([self._row_of[c] for c in case_ids if c in self._row_of], dtype=np.int64)
        removed = {name: index.remove(rows) for name, index in self.indexes.items()}
        return max(removed.values(), default=0)

    # --- lookup --------------------------------------------------------------------------------
    def case(self, row: int) -> Case:
        return self.cases[int(row)]

    def row_of(self, case_id: str) -> int | None:
        return self._row_of.get(case_id)

    def study_rows(self, study_id: str) -> tuple[int, ...]:
        """The rows of a study (key: `Case.study_key`, its study id or else its case id), in table
        order; empty for an unknown study."""
        return tuple(self._study_rows.get(study_id, ()))

    def study(self, study_id: str) -> Study:
        """A study's cases, frontal views first (`group_studies`); empty for an unknown one."""
        cases = [self.cases[row] for row in self.study_rows(study_id)]
        return group_studies(cases)[0] if cases else Study(study_id, ())

    def stored_vectors(self, modality: str) -> Embeddings:
        """The rows and vectors of one index, as stored (exact unless it compresses them:
        see `VectorIndex.stores_exact_vectors`)."""
        index = self.indexes[modality]
        rows = index.ids()
        return Embeddings(rows, index.reconstruct(rows))

    def image_vectors(self, splits: Iterable[str] | None = None) -> tuple[np.ndarray, list[Case]]:
        """The stored image vectors and their cases, all or only those of `splits`."""
        if "images" not in self.indexes:
            return np.zeros((0, 0), dtype=np.float32), []
        stored, wanted = self.stored_vectors("images"), None if splits is None else set(splits)
        keep = [
            i
            for i, row in enumerate(stored.rows)
            if wanted is None or self.case(row).split in wanted
        ]
        return stored.vectors[keep], [self.case(stored.rows[i]) for i in keep]

    def image_vectors_by_path(self) -> dict[str, np.ndarray]:
        """image path → its stored vector, to stand in for the encoder's own (the vectors are
        the ones it made: refused when the index compresses them)."""
        if "images" not in self.indexes:
            return {}
        index = self.indexes["images"]
        if not index.stores_exact_vectors:
            raise IndexFormatError(
                f"the image index compresses its vectors ({index.factory}); they cannot stand "
                "in for the encoder's."
            )
        stored = self.stored_vectors("images")
        paths = [self.case(row).image_path for row in stored.rows]
        return dict(zip(paths, stored.vectors, strict=True))

    @property
    def fingerprint(self) -> str:
        """A hash of the saved library's files (their SHA-256 sums in the manifest): what a
        report records as the library it was written from; "unsaved" before `save`."""
        files = (self.manifest or {}).get("files")
        if not files:
            return "unsaved"
        sums = json.dumps({name: entry["sha256"] for name, entry in files.items()}, sort_keys=True)
        return hashlib.sha256(sums.encode()).hexdigest()[:16]

    def count(self, modality: str) -> int:
        return len(self.indexes[modality]) if modality in self.indexes else 0

    # --- files ---------------------------------------------------------------------------------
    def save(self, directory: str | Path, *, name: str | None = None) -> Path:
        """Write the library folder atomically; returns its path. A failed write (a full disk)
        raises `StorageError` and leaves the previous library as it was."""
        directory = Path(directory)
        try:
            with atomic_directory(directory) as tmp:
                cases_to_frame(self.cases).to_parquet(tmp / CASES_FILE, index=False)
                entries = {m: _save_index(index, tmp, m) for m, index in self.indexes.items()}
                manifest = self._manifest(tmp, name or directory.name, entries)
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise _not_saved(directory, error.strerror or str(error)) from error
        for modality, index in self.indexes.items():
            if isinstance(index, OnDiskIndex):
                index.moved(directory, modality)
        self.manifest = manifest
        logger.info("saved case library %s: %s", directory, _describe_counts(manifest))
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        encoder: DualEncoder | None = None,
        mmap: bool = True,
        verify: bool = True,
    ) -> CaseLibrary:
        """Read a library folder; with `encoder`, refuse an index built with another one.
        The indexes' vectors are memory-mapped (shared by every process that loads them)
        unless `mmap` is False (an on-disk index is always mapped). `verify` checks every
        file's checksum; an on-disk index's files are checked for size even without it."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if verify:
            _verify_files(directory, manifest)
        indexes = {
            modality: _load_index(directory, entry, mmap)
            for modality, entry in manifest["indexes"].items()
        }
        frame = pd.read_parquet(directory / CASES_FILE)
        library = cls(
            cases_from_frame(frame),
            indexes,
            manifest["encoder"]["fingerprint"],
            manifest["encoder"]["backbone"],
            tuple(manifest.get("text_sections", TEXT_FIELDS)),
            manifest,
            manifest["encoder"].get("model_path"),
        )
        if encoder is not None:
            library._check_encoder(encoder)
        logger.info(
            "loaded case library %s (%s) on %s",
            directory,
            _describe_counts(manifest),
            next(iter(indexes.values())).device,
        )
        return library

    # --- internals ------------------------------------------------------------------------------
    def _check_encoder(self, encoder: DualEncoder) -> None:
        fingerprint = encoder.fingerprint()
        if fingerprint != self.encoder_fingerprint:
            raise IndexFormatError(
                f"this index was built with encoder {self.encoder_backbone} (fingerprint "
                f"{self.encoder_fingerprint}), but the encoder in use is {encoder.backbone} "
                f"(fingerprint {fingerprint}); its vectors are not comparable. Rebuild the index "
                "with this model (`medxpert index build --model ...`) or load the model it was "
                "built with."
            )

    def _add_study_rows(self, start: int) -> None:
        for row in range(start, len(self.cases)):
            self._study_rows.setdefault(self.cases[row].study_key, []).append(row)

    def _check_appendable(self, rows: dict[str, list[int]]) -> None:
        for modality, new_rows in rows.items():
            index = self.indexes.get(modality)
            if new_rows and isinstance(index, OnDiskIndex):
                raise IndexFormatError(
                    f"the {modality} index is on disk ({index.factory}) and cannot take new "
                    "cases; rebuild the library with all its cases (`medxpert index build`)."
                )

    def _index(self, modality: str, dim: int) -> AnyIndex:
        if modality not in self.indexes:
            self.indexes[modality] = VectorIndex.build(
                np.empty((0, dim), np.float32), np.empty(0, np.int64), "Flat"
            )
        return self.indexes[modality]

    def _manifest(self, directory: Path, name: str, entries: dict[str, dict]) -> dict:
        """The manifest of the library staged in `directory`, its indexes' `entries` (those
        of on-disk indexes carry their files' checksums)."""
        files = {CASES_FILE: _file_record(directory / CASES_FILE)}
        for entry in entries.values():
            files.update(
                entry.get("files") or {entry["file"]: _file_record(directory / entry["file"])}
            )
        return {
            "format_version": FORMAT_VERSION,
            "name": name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "encoder": {
                "fingerprint": self.encoder_fingerprint,
                "backbone": self.encoder_backbone,
                "dim": next(iter(self.indexes.values())).dim,
                "model": Path(self.encoder_path).name if self.encoder_path else None,
                "model_path": str(Path(self.encoder_path).resolve()) if self.encoder_path else None,
            },
            "metric": METRIC,
            "text_sections": list(self.text_sections),
            "cases": len(self.cases),
            "sources": sorted({case.source for case in self.cases}),
            "splits": sorted({case.split for case in self.cases}),
            "indexes": entries,
            "files": files,
            "versions": _versions(),
        }


@dataclass(frozen=True)
class Embeddings:
    """One modality's vectors and the case-table rows they belong to."""

    rows: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, d) float32, L2-normalised


def _build_index(found: Embeddings, factory: str, modality: str) -> AnyIndex:
    """An index of `found`: on disk (in shards of `SHARD_ROWS`, in a temporary folder until
    the library is saved) for a ``disk:`` factory, or one that `auto` picks; else in RAM."""
    if factory == "auto":
        factory = default_factory(len(found.rows), found.vectors.shape[1])
    if not is_disk_factory(factory):
        return VectorIndex.build(found.vectors, found.rows, factory)
    shards = [
        (found.rows[start : start + SHARD_ROWS], found.vectors[start : start + SHARD_ROWS])
        for start in range(0, len(found.rows), SHARD_ROWS)
    ]
    return OnDiskIndex.build(shards, None, factory, stem=modality, count=len(found.rows))


def _save_index(index: AnyIndex, directory: Path, modality: str) -> dict:
    """Write `index` into the staging `directory`; returns its manifest entry."""
    if isinstance(index, OnDiskIndex):
        return index.save(directory, modality)
    index.save(directory / f"{modality}.faiss")
    return {
        "file": f"{modality}.faiss",
        "factory": index.factory,
        "search_params": index.search_params,
        "count": len(index),
        "removed": sorted(index.removed),
    }


def _load_index(directory: Path, entry: dict, mmap: bool) -> AnyIndex:
    if is_disk_factory(entry["factory"]):
        return OnDiskIndex.load(directory, entry, verify=False)  # checksums: `_verify_files`
    return VectorIndex.load(
        directory / entry["file"],
        entry["factory"],
        set(entry.get("removed", [])),
        mmap=mmap,
        search_params=entry.get("search_params"),
    )


def embed_cases(
    encoder: DualEncoder,
    cases: Sequence[Case],
    text_sections: Sequence[str] = TEXT_FIELDS,
    batch_size: int = 8,
) -> dict[str, Embeddings]:
    """Embed every case's image, and one report per study: ``{"images": ..., "reports": ...}``
    (a modality no case has is left out)."""
    check_unique_ids(cases)
    image_rows, report_rows = rows_to_embed(cases, text_sections)
    embeddings = {}
    if image_rows:
        vectors = encoder.encode_images([cases[r].image_path for r in image_rows], batch_size)
        embeddings["images"] = Embeddings(np.array(image_rows, dtype=np.int64), vectors)
    if report_rows:
        texts = [cases[r].text(text_sections) for r in report_rows]
        vectors = encoder.encode_texts(texts)
        embeddings["reports"] = Embeddings(np.array(report_rows, dtype=np.int64), vectors)
    if not embeddings:
        raise IndexFormatError("none of the cases has an image or a report to index.")
    return embeddings


def check_unique_ids(cases: Sequence[Case]) -> None:
    """Refuse cases that share an id (a case's id names its vectors)."""
    duplicates = len(cases) - len({case.case_id for case in cases})
    if duplicates:
        raise IndexFormatError(f"{duplicates} duplicate case ids among the cases to index.")


def rows_to_embed(
    cases: Sequence[Case],
    sections: Sequence[str],
    offset: int = 0,
    known_studies: set[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Rows with an image; and one row per study with report text (text shared by a study's
    images is indexed once)."""
    seen = set(known_studies or ())
    image_rows, report_rows = [], []
    for row, case in enumerate(cases, start=offset):
        if case.has_image:
            image_rows.append(row)
        study = case.study_key
        if case.text(sections) and study not in seen:
            seen.add(study)
            report_rows.append(row)
    return image_rows, report_rows


def _not_saved(directory: Path, reason: str) -> StorageError:
    free = shutil.disk_usage(_existing(directory)).free
    return StorageError(
        f"could not save the case library {directory} ({reason}; {free / 1e6:.1f} MB free "
        "there). The previous library, if any, is unchanged. Free some disk space, or build "
        "into another folder (MEDXPERT_INDEXES_DIR), and build again."
    )


def _existing(path: Path) -> Path:
    """`path` or its nearest existing parent (for the free space of a folder not made yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_manifest(directory: str | Path) -> dict:
    """A library's manifest; a clear error when there is no library or it is unreadable."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        hint = (
            "build one with `medxpert index build` (or ./dev.sh index)"
            if not directory.exists()
            else f"{directory} has no {MANIFEST}"
        )
        raise IndexNotFoundError(f"no case library at {directory}: {hint}.")
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IndexFormatError(f"{directory / MANIFEST} is not valid JSON ({error}).") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{directory} has index format {manifest.get('format_version')}; "
            f"this MedXpert reads format {FORMAT_VERSION}. Rebuild it."
        )
    return manifest


def library_artifacts(
    library: str | Path | None, model: str | Path | None, settings: Settings
) -> tuple[Path, Path]:
    """(model folder, library folder) for a library by name or folder (default: the `encoder`
    setting's) and the model its manifest records unless `model` names another."""
    index_dir = settings.library_path(library)
    return Path(model) if model else library_model(index_dir, settings.models_dir), index_dir


class LoadsFromLibrary:
    """`load(library)`: a class made `from_artifacts(model_dir, index_dir, **options)` loads
    from a library's name, with the model its manifest records (the search engine and the
    pipeline). `default_options` fills the options a class takes from the settings."""

    @classmethod
    def load(
        cls,
        library: str | Path | None = None,
        *,
        model: str | Path | None = None,
        settings: Settings | None = None,
        **options,
    ) -> Self:
        """A case library by name (under `settings.indexes_dir`; default: the `encoder`
        setting's) or folder, with the model its manifest records (found under
        `settings.models_dir`) unless `model` names another; `options` as `from_artifacts`'s,
        the unset ones from the settings (`default_options`)."""
        settings = settings or Settings.from_env()
        model_dir, index_dir = library_artifacts(library, model, settings)
        return cls.from_artifacts(model_dir, index_dir, **cls.default_options(options, settings))

    @classmethod
    def default_options(cls, options: dict, settings: Settings) -> dict:
        return {"device": settings.device, **options}


def library_model(directory: str | Path, models_dir: str | Path) -> Path:
    """The saved model a library was built with, so that a library loads from its name alone:
    the folder its manifest names under `models_dir`, else the path it recorded, else any model
    under `models_dir` with the fingerprint it recorded (a library from before models were
    named); each checked by that fingerprint."""
    encoder = read_manifest(directory)["encoder"]
    models_dir = Path(models_dir)
    candidates = [models_dir / encoder["model"]] if encoder.get("model") else []
    candidates += [Path(encoder["model_path"])] if encoder.get("model_path") else []
    candidates += (
        sorted(p for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    )
    for path in candidates:
        if _saved_fingerprint(path) == encoder["fingerprint"]:
            return path
    named = f" ({encoder['model']!r})" if encoder.get("model") else ""
    raise ModelNotFoundError(
        f"the library {directory} was built with a {encoder['backbone']} model{named} of "
        f"fingerprint {encoder['fingerprint']}, and no model under {models_dir} has it. Point "
        "MEDXPERT_MODELS_DIR at the folder that holds it, pass the model explicitly "
        "(--model DIR), or rebuild the library with `medxpert index build`."
    )


def _saved_fingerprint(model_dir: Path) -> str | None:
    """The fingerprint a saved model folder records (None: not a readable model folder)."""
    if not (model_dir / INFO_FILE).is_file():
        return None
    try:
        return read_model_info(model_dir).get("fingerprint")
    except MedXpertError:
        return None


def _verify_files(directory: Path, manifest: dict) -> None:
    for file, expected in manifest["files"].items():
        check_file(directory / file, expected)


def _file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def _versions() -> dict[str, str]:
    import faiss
    import open_clip
    import pyarrow
    import torch

    return {
        "medxpert": __version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "pyarrow": pyarrow.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }


def _describe_counts(manifest: dict) -> str:
    parts = [
        f"{entry['count']} {modality} ({entry['factory']})"
        for modality, entry in manifest["indexes"].items()
    ]
    return f"{manifest['cases']} cases; " + ", ".join(parts)
