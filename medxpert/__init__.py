"""MedXpert: retrieval-augmented diagnosis engine for chest X-rays."""

from medxpert.errors import MedXpertError

__all__ = ["MedXpertError", "__version__"]
__version__ = "0.1.0"
