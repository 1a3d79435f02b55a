"""Where data packs live: MEDXPERT_DATA_DIR, else ./data, else ../shared/data."""

from __future__ import annotations

from pathlib import Path

from medxpert.config import Settings
from medxpert.errors import DataNotFoundError

GETTING_DATA = "README.md, section 'Getting the data'"


def find_pack(pack: str, settings: Settings | None = None) -> Path:
    """The first data directory that holds `pack` (a folder name such as ``nih_cxr14``)."""
    settings = settings or Settings.from_env()
    candidates = settings.data_dir_candidates()
    for directory in candidates:
        if (directory / pack).is_dir():
            return directory / pack
    looked = "; ".join(str(directory / pack) for directory in candidates)
    raise DataNotFoundError(
        f"data pack {pack!r} was not found. Looked in (MEDXPERT_DATA_DIR, ./data, "
        f"../shared/data): {looked}. See {GETTING_DATA} for where to get the public datasets "
        "and how to point MEDXPERT_DATA_DIR at them, or pass the folder with --root."
    )
