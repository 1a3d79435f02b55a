"""MedXpert: retrieval-augmented diagnosis engine for chest X-rays.

    import medxpert
    pipeline = medxpert.load("medxpert-default")
    print(pipeline.diagnose(image="cxr.png").report.to_markdown())

The names below are imported when first used, so `import medxpert` (and the CLI's --help)
stays light.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medxpert.errors import MedXpertError

if TYPE_CHECKING:
    from medxpert.caption import Caption, Captioner
    from medxpert.config import Settings
    from medxpert.data import Case, Study, load_cases, open_image
    from medxpert.encoders import DualEncoder
    from medxpert.index import CaseLibrary
    from medxpert.pipeline import Diagnosis, DiagnosisPipeline
    from medxpert.report import StructuredReport, Writer
    from medxpert.retrieval import Filters, Hit, SearchEngine

__version__ = "0.1.0"

_EXPORTS = {
    "Caption": "medxpert.caption",
    "Captioner": "medxpert.caption",
    "Case": "medxpert.data",
    "CaseLibrary": "medxpert.index",
    "Diagnosis": "medxpert.pipeline",
    "DiagnosisPipeline": "medxpert.pipeline",
    "DualEncoder": "medxpert.encoders",
    "Filters": "medxpert.retrieval",
    "Hit": "medxpert.retrieval",
    "SearchEngine": "medxpert.retrieval",
    "Settings": "medxpert.config",
    "StructuredReport": "medxpert.report",
    "Study": "medxpert.data",
    "Writer": "medxpert.report",
    "load_cases": "medxpert.data",
    "open_image": "medxpert.data",
}

__all__ = [
    "Caption",
    "Captioner",
    "Case",
    "CaseLibrary",
    "Diagnosis",
    "DiagnosisPipeline",
    "DualEncoder",
    "Filters",
    "Hit",
    "MedXpertError",
    "SearchEngine",
    "Settings",
    "StructuredReport",
    "Study",
    "Writer",
    "__version__",
    "load",
    "load_cases",
    "open_image",
]


def load(
    library: str | Path | None = None, *, model: str | Path | None = None, **options: Any
) -> DiagnosisPipeline:
    """The diagnosis pipeline of a case library by name (under ``indexes/``, or
    MEDXPERT_INDEXES_DIR; default: the MEDXPERT_ENCODER one, "medxpert-default") or folder,
    with the model it was built with; `options` as `DiagnosisPipeline.load`'s (captioner,
    writer, device, k, settings, ...)."""
    from medxpert.pipeline import DiagnosisPipeline

    return DiagnosisPipeline.load(library, model=model, **options)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medxpert' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
