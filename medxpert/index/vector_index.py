"""`VectorIndex`: a FAISS index over L2-normalised vectors (inner product = cosine), with ids.

The index type is data: a FAISS factory string — ``"Flat"`` (exact, the default),
``"HNSW32"``, ``"IVF{nlist},SQ8"``, ``"IVF{nlist},PQ{m}"``, ... — or ``"auto"``, which picks
one for the corpus size (`default_factory`). ``{nlist}`` is filled in from the number of
vectors at training time. A ``"disk:"`` factory (``"disk:IVF{nlist}_HNSW32,SQ8"``, what
`auto` picks for a library too large to scan) is an `OnDiskIndex` (ondisk.py), built by
`CaseLibrary`, not here. Every index is wrapped in an ID map so results carry case ids;
removal is native where FAISS supports it and by tombstones otherwise (HNSW). On a machine
where FAISS sees a GPU, search runs there; results are the same.

`VectorIndex.load` memory-maps the stored vectors (FAISS's ``IO_FLAG_MMAP_IFC``, every index
type): the pages are the operating system's file cache, shared by every process that loads
the same file (the workers of `medxpert serve --workers N`), and the search results are those
of an index read into RAM. A mapped index is read into RAM the first time it is changed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from medxpert.atomic import atomic_path
from medxpert.errors import ConfigError, IndexFormatError, QueryError

logger = logging.getLogger(__name__)

METRIC = "inner_product"
# "auto" keeps exact search while one query scans at most this many floats: about 50 ms on
# the 2-core benchmark machine (42.6 ms at 1M x 256, 33.4 ms at 377k x 512; benchmarks/
# RESULTS.md). That is 1M vectors at d=256, 500k at d=512.
EXACT_SCAN_FLOATS = 256_000_000
DISK_PREFIX = "disk:"  # an on-disk, memory-mapped IVF index (`OnDiskIndex`)
# What "auto" picks beyond `EXACT_SCAN_FLOATS`: a library that large may not fit in RAM, so
# its lists live on disk, compressed 4x by SQ8 (the only type of the 1M / 10M benchmark that
# reaches recall@10 0.95 in under 4 GB), with an HNSW coarse quantizer (an exact one spends
# ~19 min assigning 10M vectors on 2 cores; benchmarks/RESULTS.md, "Scale").
LARGE_FACTORY = DISK_PREFIX + "IVF{nlist}_HNSW32,SQ8"


def default_factory(count: int, dim: int) -> str:
    """The index type `auto` picks: exact search while a single-query scan stays near 50 ms
    (`EXACT_SCAN_FLOATS`), the on-disk `LARGE_FACTORY` beyond it."""
    return "Flat" if count * dim <= EXACT_SCAN_FLOATS else LARGE_FACTORY


def is_disk_factory(factory: str) -> bool:
    """Whether `factory` names an on-disk index (``"disk:IVF..."``, built by `OnDiskIndex`)."""
    return factory.startswith(DISK_PREFIX)


# Exact (Flat) searches of at most this many queries go through `VectorIndex._scan`; larger
# batches through FAISS's BLAS path, which is faster for them (benchmarks/RESULTS.md).
SCAN_MAX_QUERIES = 4
# FAISS computes inner products for fewer queries than this with its own one-query kernel,
# for more with BLAS. Through BLAS, a batch of 256 at N=100k, d=256 runs 10x faster on the
# 2-core benchmark machine, and a single query no slower (benchmarks/RESULTS.md).
BLAS_THRESHOLD = 1


@functools.cache
def load_faiss():
    """The faiss module, configured for this project (see `BLAS_THRESHOLD`)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    return faiss


def apply_search_params(index, params: str, factory: str) -> None:
    """Set a FAISS ParameterSpace string on `index` ("" leaves it as it is)."""
    if params:
        try:
            load_faiss().ParameterSpace().set_index_parameters(index, params)
        except RuntimeError as error:
            raise ConfigError(
                f"search parameters {params!r} do not apply to a {factory} index: "
                f"{str(error).splitlines()[0]}"
            ) from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(path: Path, expected: dict, verify: bool = True) -> None:
    """Refuse a missing index file, or one whose size (or, with `verify`, SHA-256) differs from
    its record ``{"bytes", "sha256"}``: checked before FAISS reads or maps it."""
    if not path.is_file():
        raise IndexFormatError(f"{path} is missing; rebuild the index.")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise IndexFormatError(
            f"{path} is {size} bytes, not the {expected['bytes']} written (truncated or "
            "replaced); rebuild the index."
        )
    if verify and file_sha256(path) != expected["sha256"]:
        raise IndexFormatError(
            f"{path} does not match its checksum (corrupt or modified); rebuild the index."
        )


def default_search_params(factory: str) -> str:
    """Search-time parameters (a FAISS ParameterSpace string) that keep recall@10 high: IVF
    probes 16 lists (all of them when there are fewer), HNSW explores 64 candidates (see the
    search benchmark). Exact indexes take none."""
    params = []
    ivf = re.search(r"IVF(\d+)", factory)
    if ivf:
        params.append(f"nprobe={min(16, int(ivf.group(1)))}")
    if "HNSW" in factory:
        params.append("efSearch=64")
    return ",".join(params)


def nlist_for(count: int) -> int:
    """The IVF lists ``{nlist}`` stands for with `count` vectors: 4·√N, at most N / 39 (FAISS
    wants 39 training vectors per list)."""
    return max(1, min(int(4 * math.sqrt(max(count, 1))), max(count // 39, 1)))


def _resolve_factory(factory: str, count: int, dim: int) -> str:
    if factory == "auto":
        factory = default_factory(count, dim)
    return factory.replace("{nlist}", str(nlist_for(count)))


class RemovableIndex:
    """What both index kinds share: a FAISS index (`_index`) and the ids removed from it."""

    _index: Any
    removed: set[int]

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self.removed)

    def _live(self, stored: np.ndarray) -> np.ndarray:
        """`stored` ids without the removed ones."""
        return stored[~np.isin(stored, np.fromiter(self.removed, dtype=np.int64))]


class VectorIndex(RemovableIndex):
    """FAISS index + ids. Build with `VectorIndex.build(vectors, ids, factory)`."""

    def __init__(
        self,
        index,
        factory: str,
        removed: set[int] | None = None,
        search_params: str | None = None,
    ) -> None:
        self._index = index
        self.factory = factory
        self.removed: set[int] = set(removed or ())
        self.search_params = ""
        self._scan_ids: np.ndarray | None = None  # ids in storage order, for `_scan`
        self.memory_mapped = False  # set by `load`; the mapping is read-only
        self.set_search_params(
            default_search_params(factory) if search_params is None else search_params
        )

    def set_search_params(self, params: str) -> None:
        """Set search-time parameters as a FAISS ParameterSpace string, e.g. ``"nprobe=32"``
        (IVF) or ``"efSearch=128"`` (HNSW); "" keeps the index's own."""
        apply_search_params(self._index, params, self.factory)
        self.search_params = params
        self._search_index = _to_gpu(self._index)

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        factory: str = "Flat",
        search_params: str | None = None,
    ) -> VectorIndex:
        """Train (when the type needs it) and fill an index; `search_params` default to
        `default_search_params(factory)`."""
        faiss = load_faiss()

        vectors = _as_matrix(vectors)
        resolved = _resolve_factory(factory, len(vectors), vectors.shape[1])
        if is_disk_factory(resolved):
            raise ConfigError(
                f"{resolved!r} (for {factory!r}, {len(vectors)} vectors of {vectors.shape[1]} "
                "dimensions) is an on-disk index, which VectorIndex does not hold: build the "
                "library with CaseLibrary.from_embeddings (`medxpert index build`) or the index "
                "with OnDiskIndex.build, or choose an in-RAM factory such as IVF{nlist},SQ8."
            )
        try:
            index = faiss.index_factory(
                vectors.shape[1], f"IDMap2,{resolved}", faiss.METRIC_INNER_PRODUCT
            )
        except RuntimeError as error:
            raise ConfigError(
                f"{factory!r} is not a FAISS index factory string: {str(error).splitlines()[0]}"
            ) from None
        if not index.is_trained:
            if len(vectors) == 0:
                raise IndexFormatError(
                    f"index type {resolved} must be trained, and no vectors were given."
                )
            index.train(vectors)
        built = cls(index, resolved, search_params=search_params)
        built.add(vectors, ids)
        logger.info(
            "built a %s index of %d vectors (d=%d) on %s",
            resolved,
            len(vectors),
            vectors.shape[1],
            built.device,
        )
        return built

    @property
    def device(self) -> str:
        return "gpu" if self._search_index is not self._index else "cpu"

    # --- changes -----------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = _as_matrix(vectors)
        ids = np.asarray(ids, dtype=np.int64)
        if vectors.shape[1] != self.dim:
            raise IndexFormatError(
                f"vectors have {vectors.shape[1]} dimensions; the index has {self.dim}."
            )
        if len(ids) != len(vectors):
            raise IndexFormatError(f"{len(vectors)} vectors but {len(ids)} ids.")
        if len(vectors):
            self._own()
            self._index.add_with_ids(vectors, ids)
            self.removed.difference_update(ids.tolist())
            self._search_index = _to_gpu(self._index)
            self._scan_ids = None

    def remove(self, ids: np.ndarray) -> int:
        """Remove `ids`; returns how many were present."""
        faiss = load_faiss()

        ids = np.asarray(ids, dtype=np.int64)
        self._own()
        try:
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
        except RuntimeError:  # this index type cannot remove: remember tombstones
            present = set(self._present(ids))
            self.removed.update(present)
            removed = len(present)
        self._search_index = _to_gpu(self._index)
        self._scan_ids = None
        return removed

    def _own(self) -> None:
        """Read a memory-mapped index into RAM before changing it: FAISS aborts the process
        on a change to a mapped one (and `clone_index` keeps the mapping)."""
        if self.memory_mapped:
            faiss = load_faiss()
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
            self.memory_mapped = False
            self.set_search_params(self.search_params)

    def _present(self, ids: np.ndarray) -> list[int]:
        id_map = self._index.id_map
        stored = set(faiss_vector_to_array(id_map).tolist())
        return [int(i) for i in ids if int(i) in stored and int(i) not in self.removed]

    # --- search ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; missing results have id -1."""
        queries = _as_matrix(queries)
        if queries.shape[1] != self.dim:
            raise IndexFormatError(
                f"queries have {queries.shape[1]} dimensions; the index has "
                f"{self.dim}. Was it built with another encoder?"
            )
        if k <= 0:
            raise QueryError(f"k must be positive, got {k}.")
        fetch = min(k + len(self.removed), int(self._index.ntotal)) or 1
        if self._scannable and len(queries) <= SCAN_MAX_QUERIES:
            scores, ids = self._scan(queries, fetch)
        else:
            scores, ids = self._search_index.search(queries, fetch)
        if self.removed:
            scores, ids = _drop_removed(scores, ids, self.removed, k)
        return scores[:, :k], ids[:, :k]

    @property
    def stores_exact_vectors(self) -> bool:
        """Whether `reconstruct` gives back the vectors as added (no SQ / PQ compression)."""
        return not re.search(r"SQ|PQ|LSH|RaBitQ", self.factory)

    def ids(self) -> np.ndarray:
        """The ids in the index (removed ones left out)."""
        return self._live(faiss_vector_to_array(self._index.id_map).astype(np.int64))

    @property
    def _scannable(self) -> bool:
        """An exact index searched on the CPU: a few queries go through `_scan`."""
        return (
            self.factory == "Flat" and self._search_index is self._index and self._index.ntotal > 0
        )

    def _scan(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search for a few queries: FAISS's SIMD inner-product kernel over the stored
        vectors (read in place, memory-mapped or not), then a partial sort. For one query
        this is twice as fast as `IndexFlat.search`, whose top-k bookkeeping, not the scan,
        dominates (benchmarks/RESULTS.md)."""
        faiss = load_faiss()
        flat = faiss.downcast_index(self._index.index)
        count, dim = int(flat.ntotal), self.dim
        stored = faiss.rev_swig_ptr(flat.get_xb(), count * dim)
        if self._scan_ids is None:
            self._scan_ids = faiss_vector_to_array(self._index.id_map).astype(np.int64)
        out_scores = np.empty((len(queries), fetch), dtype=np.float32)
        out_ids = np.empty((len(queries), fetch), dtype=np.int64)
        products = np.empty(count, dtype=np.float32)
        for row, query in enumerate(queries):
            faiss.fvec_inner_products_ny(
                faiss.swig_ptr(products),
                faiss.swig_ptr(query),
                faiss.swig_ptr(stored),
                dim,
                count,
            )
            best = (
                np.argpartition(-products, fetch - 1)[:fetch]
                if fetch < count
                else (np.arange(count))
            )
            best = best[np.argsort(-products[best], kind="stable")]
            out_scores[row], out_ids[row] = products[best], self._scan_ids[best]
        return out_scores, out_ids

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` (exact for Flat and HNSW, approximate for SQ/PQ)."""
        return (
            np.stack([self._index.reconstruct(int(i)) for i in ids])
            if len(ids)
            else (np.empty((0, self.dim), dtype=np.float32))
        )

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the FAISS file atomically (tombstones are kept by the caller's manifest).
        The bytes go through a Python file, so that a failed write (a full disk) raises
        `OSError`: FAISS's own file writer only prints "close error" and leaves a short file."""
        faiss = load_faiss()

        with atomic_path(path) as tmp, tmp.open("wb") as handle:
            faiss.write_index(self._index, faiss.PyCallbackIOWriter(handle.write))
        return Path(path)

    @classmethod
    def load(
        cls,
        path: str | Path,
        factory: str,
        removed: set[int] | None = None,
        mmap: bool = True,
        search_params: str | None = None,
    ) -> VectorIndex:
        """Read a FAISS file, its vectors memory-mapped unless `mmap` is False."""
        faiss = load_faiss()

        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as error:
            raise IndexFormatError(
                f"{path} is not a readable FAISS index ({str(error).splitlines()[0]})."
            ) from None
        loaded = cls(index, factory, removed, search_params)
        loaded.memory_mapped = mmap
        return loaded


def faiss_vector_to_array(vector) -> np.ndarray:
    faiss = load_faiss()

    return faiss.vector_to_array(vector)


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise IndexFormatError(f"expected a (n, d) matrix of vectors, got shape {vectors.shape}.")
    return vectors


def _drop_removed(scores, ids, removed: set[int], k: int):
    keep = ~np.isin(ids, np.fromiter(removed, dtype=np.int64))
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    for row in range(len(ids)):
        kept_ids, kept_scores = ids[row][keep[row]][:k], scores[row][keep[row]][:k]
        out_ids[row, : len(kept_ids)] = kept_ids
        out_scores[row, : len(kept_scores)] = kept_scores
    return out_scores, out_ids


@functools.cache
def _gpu_resources():
    faiss = load_faiss()

    return faiss.StandardGpuResources()


def _to_gpu(index):
    """A GPU copy of `index` for searching when FAISS sees a GPU, else the index itself."""
    faiss = load_faiss()

    if not hasattr(faiss, "index_cpu_to_gpu") or faiss.get_num_gpus() == 0:
        return index
    try:
        return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    except RuntimeError as error:  # an index type without a GPU implementation (HNSW)
        logger.info("searching on the CPU: %s", str(error).splitlines()[0])
        return index
