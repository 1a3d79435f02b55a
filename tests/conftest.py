"""Test configuration: offline hub access, the shared data packs, fixtures."""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_pack():
    """`shared_pack("nih_cxr14")` → the pack's folder.

    Skips when the pack is not found (an outside checkout without ../shared); CI sets
    MEDXPERT_REQUIRE_DATA=1 so that a missing pack fails instead.
    """
    from medxpert.config import Settings
    from medxpert.data.locate import find_pack
    from medxpert.errors import DataNotFoundError

    def locate(name: str):
        try:
            return find_pack(name, Settings.from_env())
        except DataNotFoundError as error:
            if os.environ.get("MEDXPERT_REQUIRE_DATA") == "1":
                raise
            pytest.skip(f"data pack {name} not available: {error}")

    return locate


@pytest.fixture(scope="session")
def make_workspace(shared_pack):
    """`make_workspace(root)` → the MEDXPERT_* environment of a tiny workspace under `root`
    (tests.builders.tiny_workspace on miniatures of the three shared packs)."""
    from tests.builders import tiny_workspace

    def make(root) -> dict[str, str]:
        shared = {pack: shared_pack(pack) for pack in ("nih_cxr14", "iu_xray", "covid_cxr")}
        return tiny_workspace(root, shared)

    return make


@pytest.fixture
def settings(tmp_path):
    """Settings whose artifacts and cache live in a temporary folder."""
    from medxpert.config import Settings

    return Settings.from_env(
        models_dir=tmp_path / "models",
        indexes_dir=tmp_path / "indexes",
        results_dir=tmp_path / "results",
        cache_dir=tmp_path / "cache",
    )


@pytest.fixture(scope="session")
def dicom_tool():
    """`dicom_tool("dsrdump")` → the path of a DCMTK or dicom3tools program.

    Skips when it is not installed (`./dev.sh test` installs Debian's dcmtk and dicom3tools);
    CI sets MEDXPERT_REQUIRE_DICOM_TOOLS=1 so that a missing one fails instead.
    """

    def locate(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            if os.environ.get("MEDXPERT_REQUIRE_DICOM_TOOLS") == "1":
                raise RuntimeError(f"{name} is not installed (apt-get install dcmtk dicom3tools)")
            pytest.skip(f"{name} not installed (apt-get install dcmtk dicom3tools)")
        return path

    return locate
