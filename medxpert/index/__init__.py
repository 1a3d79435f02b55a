"""The case library: FAISS indexes of image and report embeddings, the case table, a manifest."""

from medxpert.index.library import CaseLibrary, Embeddings, embed_cases
from medxpert.index.vector_index import VectorIndex, default_factory

__all__ = ["CaseLibrary", "Embeddings", "VectorIndex", "default_factory", "embed_cases"]
