"""Batch worklists: every study of a folder or a CSV diagnosed into a report folder of its own.

    summary = run_worklist(pipeline, "incoming/", "reports/", formats=("sr", "fhir"))
    print(summary.done, summary.skipped, summary.failed, summary.studies_per_s)

Input (`read_worklist`):
- a folder, searched recursively (hidden files and the output folder left out): the DICOM
  files (by content, or a .dcm/.dicom name) of one StudyInstanceUID form one study, frontal
  views first by ViewPosition, laterals last; every other file is a study of its own (a PNG
  or JPEG; anything else fails with the reader's reason);
- a CSV with a `path` column (relative to the CSV's folder, or absolute), an optional `note`
  and an optional `study`: rows of one `study` form one study, in the CSV's order.

Output under `out`: per study `<slug>/report.json` (written last: a study is done when it
and the files of the asked formats exist, so a rerun skips it, and one killed mid-study is
redone), `report.md`, and `report.sr.dcm`, `report.fhir.json` or `heatmaps/` when asked;
`summary.csv` (one row per done study) and `errors.csv` (one row per failure of this run).
Every file is written atomically. A failed study never stops the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medxpert.atomic import atomic_directory, atomic_write_json, atomic_write_text
from medxpert.data.case import normalise_view
from medxpert.data.images import open_image
from medxpert.errors import ConfigError, DataFormatError, DataNotFoundError, MedXpertError

if TYPE_CHECKING:
    from PIL import Image

    from medxpert.pipeline import Diagnosis, DiagnosisPipeline

logger = logging.getLogger(__name__)

# what each format writes into a study's folder; json and markdown are always written
OUTPUTS = {
    "json": "report.json",
    "markdown": "report.md",
    "sr": "report.sr.dcm",
    "fhir": "report.fhir.json",
    "heatmaps": "heatmaps",
}
FORMATS = tuple(OUTPUTS)
ALWAYS = ("json", "markdown")
SUMMARY_FILE, ERRORS_FILE = "summary.csv", "errors.csv"
SUMMARY_COLUMNS = ("study", "folder", "images", "triage", "top_findings", "seconds")
ERROR_COLUMNS = ("study", "path", "error", "message")
TOP_FINDINGS = 3
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
_VIEW_RANK = {"frontal": 0, "unknown": 1, "lateral": 2}
_SLUG_LENGTH = 80


@dataclass(frozen=True)
class Study:
    """One study of a worklist: its name, its image files (the first is captioned), its note."""

    name: str
    paths: tuple[Path, ...]
    note: str | None = None

    @property
    def slug(self) -> str:
        """The name of its report folder: the name itself when it is file-name safe, else a
        safe form of it with a hash of the name (so that two names never share a folder)."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("._-")[:_SLUG_LENGTH]
        if safe == self.name and safe not in (SUMMARY_FILE, ERRORS_FILE):
            return safe
        digest = hashlib.sha1(self.name.encode("utf-8")).hexdigest()[:8]
        return f"{safe}-{digest}" if safe else digest


@dataclass(frozen=True)
class WorklistSummary:
    """What a run did: studies diagnosed, skipped (already done) and failed, in `seconds`."""

    done: int
    skipped: int
    failed: int
    seconds: float
    out: Path

    @property
    def studies_per_s(self) -> float:
        """Studies diagnosed per second of the run."""
        return self.done / self.seconds if self.seconds > 0 else 0.0


class _FileError(Exception):
    """A study's failure and the file it came from."""

    def __init__(self, path: Path, error: Exception) -> None:
        super().__init__(str(error))
        self.path, self.error = path, error


def parse_formats(formats: str | Iterable[str] | None) -> tuple[str, ...]:
    """The formats to write, from ``"sr,fhir"`` or a list: json and markdown always, then the
    asked ones in `FORMATS` order. `ConfigError` names an unknown one."""
    if isinstance(formats, str):
        formats = formats.split(",")
    asked = {name.strip().lower() for name in formats or () if name.strip()}
    unknown = sorted(asked - set(FORMATS))
    if unknown:
        raise ConfigError(
            f"unknown report format(s) {', '.join(unknown)}: choose from {', '.join(FORMATS)}."
        )
    return tuple(name for name in FORMATS if name in asked or name in ALWAYS)


def read_worklist(
    source: str | Path, *, note: str | None = None, exclude: str | Path | None = None
) -> list[Study]:
    """The studies of a folder or a CSV (module docstring); `note` goes with the studies that
    have none, files under `exclude` (the output folder) are left out."""
    source = Path(source)
    if source.is_dir():
        return _folder_studies(source, note, Path(exclude).resolve() if exclude else None)
    if source.is_file():
        return _csv_studies(source, note)
    raise DataNotFoundError(f"the worklist {source} is neither a folder nor a CSV file.")


def run_worklist(
    pipeline: DiagnosisPipeline,
    source: str | Path,
    out: str | Path,
    *,
    formats: str | Iterable[str] | None = None,
    note: str | None = None,
    force: bool = False,
    progress: bool = True,
    **options: Any,
) -> WorklistSummary:
    """Diagnose every study of `source` not done yet into `out` (module docstring). `force`
    diagnoses images the input guard refuses (else each is a row of errors.csv); `options` go
    to `DiagnosisPipeline.diagnose` (k, target...)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    started = time.perf_counter()
    out, formats = Path(out), parse_formats(formats)
    studies = read_worklist(source, note=note, exclude=out)
    rows = {study.slug: _finished(out / study.slug, formats) for study in studies}
    pending = [study for study in studies if rows[study.slug] is None]
    skipped = len(studies) - len(pending)
    if skipped:
        logger.info("skipped %d of %d studies, done before", skipped, len(studies))
    # errors.csv: this run's failures, and the last run's of the studies not retried yet
    previous = _previous_errors(out / ERRORS_FILE)
    errors = {study.slug: previous.get(study.name, []) for study in pending}
    failed = 0
    with logging_redirect_tqdm():
        bar = tqdm(pending, desc="worklist", unit="study", disable=not progress)
        for study in bar:
            errors[study.slug] = []
            try:
                rows[study.slug] = _summary_row(
                    _diagnose_study(pipeline, study, out / study.slug, formats, force, options),
                    study.slug,
                )
            except _FileError as failure:
                errors[study.slug] = [_error_row(study, failure.error, failure.path)]
            except Exception as error:  # one study's failure, whatever it is, never stops the run
                if not isinstance(error, MedXpertError):
                    logger.warning("study %s failed", study.name, exc_info=True)
                errors[study.slug] = [_error_row(study, error)]
            failed += bool(errors[study.slug])
            bar.set_postfix(failed=failed)
            _write_tables(out, studies, rows, errors)
    _write_tables(out, studies, rows, errors)
    return WorklistSummary(
        done=len(pending) - failed,
        skipped=skipped,
        failed=failed,
        seconds=time.perf_counter() - started,
        out=out,
    )


# --- reading worklists ----------------------------------------------------------------------
def _folder_studies(folder: Path, note: str | None, exclude: Path | None) -> list[Study]:
    """Each DICOM study (by StudyInstanceUID) and every other file, in path order."""
    groups: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    for path in _files(folder, exclude):
        relative = path.relative_to(folder).as_posix()
        uid, view = _dicom_keys(path) if _is_dicom(path) else (None, None)
        key = ("dicom", uid) if uid else ("file", relative)
        groups.setdefault(key, []).append((_VIEW_RANK[normalise_view(view or "")], path))
    return [
        Study(name, tuple(path for _, path in sorted(members)), note)
        for (_, name), members in groups.items()
    ]


def _files(folder: Path, exclude: Path | None) -> list[Path]:
    """The files under `folder`, sorted, without hidden ones and those under `exclude`."""
    found = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in parts) or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    return found


def _is_dicom(path: Path) -> bool:
    """A DICOM file by its content ("DICM" after the preamble), else by its name."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if head.startswith(_RASTER_MAGIC):
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in _DICOM_SUFFIXES


def _dicom_keys(path: Path) -> tuple[str | None, str | None]:
    """(StudyInstanceUID, ViewPosition) of a DICOM file; None for what cannot be read (the
    file is then a study of its own, and its reading fails with the reason)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(
                path,
                stop_before_pixels=True,
                force=True,
                specific_tags=["StudyInstanceUID", "ViewPosition"],
            )
        uid, view = dataset.get("StudyInstanceUID"), dataset.get("ViewPosition")
    except Exception:  # a sniffer of untrusted bytes: unreadable is "no study"
        return None, None
    return (str(uid).strip() or None) if uid else None, str(view) if view else None


def _csv_studies(path: Path, note: str | None) -> list[Study]:
    """The rows of a CSV worklist grouped by their `study` (each row alone without one)."""
    rows, columns = _csv_rows(path)
    groups: dict[str, tuple[list[Path], list[str]]] = {}
    for number, row in enumerate(rows, start=2):
        cell = _cell(row, columns, "path")
        if not cell:
            logger.warning("%s line %d has no path: left out", path, number)
            continue
        name = _cell(row, columns, "study") or cell
        files, notes = groups.setdefault(name, ([], []))
        files.append(_resolved(cell, path.parent))
        row_note = _cell(row, columns, "note")
        if row_note and row_note not in notes:
            notes.append(row_note)
    return [
        Study(name, tuple(files), " ".join(notes) or note)
        for name, (files, notes) in groups.items()
    ]


def _csv_rows(path: Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The CSV's rows and its columns by lower-cased name; it must have a `path` column."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataFormatError(f"the worklist {path} is not a readable CSV file: {error}.") from None
    columns = {name.strip().lower(): name for name in reader.fieldnames or ()}
    if "path" not in columns:
        raise DataFormatError(
            f"the worklist {path} has no `path` column (it has: "
            f"{', '.join(reader.fieldnames or ()) or 'none'}); give one image path a row, with "
            "optional `note` and `study` columns."
        )
    return rows, columns


def _cell(row: dict[str, str], columns: dict[str, str], name: str) -> str:
    """A row's stripped value in the column `name` ("" when the CSV has no such column)."""
    return (row.get(columns[name]) or "").strip() if name in columns else ""


def _resolved(cell: str, folder: Path) -> Path:
    path = Path(cell).expanduser()
    return path if path.is_absolute() else folder / path


# --- diagnosing a study ---------------------------------------------------------------------
def _diagnose_study(
    pipeline: DiagnosisPipeline,
    study: Study,
    folder: Path,
    formats: Sequence[str],
    force: bool,
    options: dict[str, Any],
) -> dict:
    """Diagnose `study`, write its files, report.json last; returns report.json's record."""
    started = time.perf_counter()
    pictures = _decoded(study)
    query = {"image": pictures[0]} if len(pictures) == 1 else {"images": pictures}
    diagnosis = pipeline.diagnose(**query, note=study.note, force=force, **options)
    _write_formats(pipeline, diagnosis, pictures, study, folder, formats)
    record = {
        "query": study.name,
        "worklist": {
            "study": study.name,
            "images": [str(path) for path in study.paths],
            "note": study.note,
            "seconds": round(time.perf_counter() - started, 3),
        },
        **diagnosis.to_dict(),
    }
    atomic_write_json(folder / OUTPUTS["json"], record)
    return record


def _decoded(study: Study) -> list[Image.Image]:
    """The study's images, decoded; a file that is no readable image fails the study."""
    pictures = []
    for path in study.paths:
        try:
            pictures.append(open_image(path, name=path.name))
        except MedXpertError as error:
            raise _FileError(path, error) from error
    return pictures


def _write_formats(
    pipeline: DiagnosisPipeline,
    diagnosis: Diagnosis,
    pictures: list[Image.Image],
    study: Study,
    folder: Path,
    formats: Sequence[str],
) -> None:
    """Every asked file but report.json (the writers of SR, FHIR and heatmaps imported only
    when asked)."""
    from medxpert.report.schema import markdown_text

    markdown = f"# MedXpert report: {markdown_text(study.name)}\n\n{diagnosis.report.to_markdown()}"
    atomic_write_text(folder / OUTPUTS["markdown"], markdown)
    if "sr" in formats:
        from medxpert.interop.sr import write_sr

        write_sr(diagnosis, folder / OUTPUTS["sr"], query_name=study.name)
    if "fhir" in formats:
        from medxpert.interop.fhir import write_fhir

        write_fhir(diagnosis, folder / OUTPUTS["fhir"], query_name=study.name)
    if "heatmaps" in formats:
        from medxpert.explain import write_heatmaps

        with atomic_directory(folder / OUTPUTS["heatmaps"]) as directory:
            write_heatmaps(pipeline, diagnosis, pictures, directory)


# --- the tables -----------------------------------------------------------------------------
def _finished(folder: Path, formats: Sequence[str]) -> dict | None:
    """The summary row of a study done before (its report.json and asked files there), else
    None."""
    if not all((folder / OUTPUTS[name]).exists() for name in formats):
        return None
    try:
        record = json.loads((folder / OUTPUTS["json"]).read_text(encoding="utf-8"))
        return _summary_row(record, folder.name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # not a report this worklist wrote: diagnose it again


def _summary_row(record: dict, slug: str) -> dict:
    """A row of summary.csv from a report.json record."""
    probabilities = record["probabilities"]
    top = sorted(probabilities, key=lambda label: -probabilities[label])[:TOP_FINDINGS]
    return {
        "study": record["worklist"]["study"],
        "folder": slug,
        "images": len(record["worklist"]["images"]),
        "triage": record["report"]["triage"]["level"],
        "top_findings": "; ".join(f"{label} {probabilities[label]:.2f}" for label in top),
        "seconds": record["worklist"]["seconds"],
    }


def _error_row(study: Study, error: Exception, path: Path | None = None) -> dict:
    """A row of errors.csv: the study, the file (else all of the study's), the error, why."""
    return {
        "study": study.name,
        "path": str(path) if path is not None else ";".join(str(p) for p in study.paths),
        "error": type(error).__name__,
        "message": " ".join(str(error).split()) or type(error).__name__,
    }


def _write_tables(
    out: Path, studies: list[Study], rows: dict[str, dict | None], errors: dict[str, list[dict]]
) -> None:
    """summary.csv (the done studies) and errors.csv, in worklist order."""
    done = [rows[study.slug] for study in studies if rows[study.slug] is not None]
    failures = [row for study in studies for row in errors.get(study.slug, [])]
    _write_csv(out / SUMMARY_FILE, SUMMARY_COLUMNS, done)
    _write_csv(out / ERRORS_FILE, ERROR_COLUMNS, failures)


def _previous_errors(path: Path) -> dict[str, list[dict]]:
    """The rows of an earlier run's errors.csv by study (none when there is none)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row.get("study") or "", []).append(row)
    return found


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    """Write the table atomically, unless the file already holds exactly it."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
