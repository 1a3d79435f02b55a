"""The registry of data sources: each reader is registered by name and yields `Case`s."""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medxpert.config import Settings
from medxpert.data.case import SPLITS, Case
from medxpert.data.locate import find_pack
from medxpert.errors import ConfigError, DataFormatError, DataNotFoundError

logger = logging.getLogger(__name__)

# A reader takes the source's root folder (None for sources that find their own data), the
# splits asked for, the settings and its own keyword options, and yields cases.
Reader = Callable[..., Iterable[Case]]


@dataclass(frozen=True)
class SourceSpec:
    name: str
    reader: Reader
    pack: str | None
    description: str


_SOURCES: dict[str, SourceSpec] = {}


def register_reader(name: str, *, pack: str | None, description: str) -> Callable[[Reader], Reader]:
    """Register `reader` under `name`; `pack` is the folder it reads from the data dir."""

    def decorate(reader: Reader) -> Reader:
        _SOURCES[name] = SourceSpec(name, reader, pack, description)
        return reader

    return decorate


def sources() -> list[SourceSpec]:
    """Every registered source, by name."""
    return [_SOURCES[name] for name in sorted(_SOURCES)]


def load_cases(
    source: str,
    split: str | Iterable[str] | None = None,
    *,
    root: str | Path | None = None,
    settings: Settings | None = None,
    **options: object,
) -> list[Case]:
    """Read the cases of `source` for `split` (a name, several, or None / "all" for every split).

    `root` overrides where the source's files are; `options` go to the reader (e.g.
    ``dataset=`` for ``hf``, ``csv=`` and column names for ``csv``).
    """
    if source not in _SOURCES:
        raise ConfigError(
            f"unknown data source {source!r}; available: {', '.join(sorted(_SOURCES))}."
        )
    spec = _SOURCES[source]
    splits = _normalise_splits(split)
    settings = settings or Settings.from_env()
    if root is not None:
        folder: Path | None = Path(root).expanduser()
        if not folder.is_dir():
            raise DataFormatError(f"--root {folder} is not a folder.")
    elif spec.pack is not None:
        folder = find_pack(spec.pack, settings)
    else:
        folder = None
    _check_options(spec, options)
    cases = list(spec.reader(folder, splits, settings=settings, **options))
    logger.info("%s: %d cases (%s)", source, len(cases), ", ".join(sorted(splits)))
    return cases


def reader_options(spec: SourceSpec) -> list[str]:
    """The keyword options a source's reader accepts."""
    parameters = list(inspect.signature(spec.reader).parameters.values())[2:]
    return [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "settings"]


def _check_options(spec: SourceSpec, options: dict[str, object]) -> None:
    parameters = inspect.signature(spec.reader).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return  # the reader checks its own open-ended options
    accepted = reader_options(spec)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"source {spec.name!r} has no option(s) {unknown}; "
            f"it accepts: {', '.join(accepted) or 'none'}."
        )


def _normalise_splits(split: str | Iterable[str] | None) -> frozenset[str]:
    if split is None or split == "all":
        return frozenset(SPLITS)
    names = {split} if isinstance(split, str) else set(split)
    unknown = names - set(SPLITS)
    if unknown:
        raise ConfigError(f"unknown split(s) {sorted(unknown)}; use {', '.join(SPLITS)} or all.")
    return frozenset(names)


SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def normalise_split_name(name: str) -> str | None:
    """Map a source's split spelling (``validate``, ``validation``) to train / val / test."""
    return SPLIT_ALIASES.get(str(name).strip().lower())


def hashed_split(key: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """A deterministic train/val/test assignment from a stable hash of `key`.

    Used for sources that ship one split only; hash the patient id where there is one, so
    no patient spans two splits.
    """
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if bucket < test_fraction:
        return "test"
    if bucket < test_fraction + val_fraction:
        return "val"
    return "train"


def read_split_table(
    path: Path, columns: Iterable[str], splits: frozenset[str], split_column: str = "split"
) -> pd.DataFrame:
    """A pack's CSV as strings (blank cells ""), checked for `columns`, rows whose
    `split_column` is one of `splits` only, that column copied to ``split``."""
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing; is {path.parent} a complete data pack?")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    require_columns(frame.columns, [*columns, split_column], str(path))
    frame = frame[frame[split_column].isin(splits)]
    return frame.assign(split=frame[split_column])


def require_columns(frame_columns: Iterable[str], needed: Iterable[str], where: str) -> None:
    """Raise `DataFormatError` naming the columns of `needed` that `where` lacks."""
    missing = [name for name in needed if name not in set(frame_columns)]
    if missing:
        raise DataFormatError(f"{where} lacks column(s) {missing}; is it the right file?")


def resolve_image(root: Path, relative: str, missing: list[str]) -> str:
    """Absolute path of `root / relative` when the file exists, else "" (noted in `missing`)."""
    if not relative:
        return ""
    path = root / relative
    if path.is_file():
        return str(path)
    missing.append(relative)
    return ""


def warn_missing(source: str, missing: list[str], where: Path) -> None:
    if missing:
        logger.warning(
            "%s: %d listed image(s) are missing under %s (e.g. %s); those cases are kept "
            "without an image where they have text, else skipped.",
            source,
            len(missing),
            where,
            missing[0],
        )
