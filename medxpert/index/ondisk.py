"""`OnDiskIndex`: an IVF index whose inverted lists live in a memory-mapped file, for
libraries that outgrow RAM.

The factory string is ``"disk:"`` + a FAISS IVF factory string: ``"disk:IVF{nlist},Flat"``,
``"disk:IVF{nlist},SQ8"``, ``"disk:IVF4096,PQ32"``, ``"disk:IVF16384_HNSW32,SQ8"`` (an HNSW
coarse quantizer makes assignment cheap at large nlist). ``{nlist}`` is filled in as for
`VectorIndex`. The build (`OnDiskIndex.build`) reads the vectors as an iterable of shards
``(ids, vectors)``, so a library never has to fit in RAM:

1. the first shards give a sample: the coarse quantizer (and SQ / PQ) is trained once on it,
   and held-out queries are drawn from it;
2. the shards are added in parallel (a thread pool; FAISS releases the GIL) to copies of the
   trained index, each written atomically as a block file ``<stem>.shards/NNNNN.faiss``; while
   they are added, the held-out queries' exact neighbours are gathered shard by shard;
3. the blocks are merged into ``<stem>.ivfdata`` (FAISS ``OnDiskInvertedLists``), written
   atomically, and ``<stem>.faiss`` (quantizer, codebooks, list offsets) beside it; the
   blocks are then deleted unless `keep_shards`;
4. nprobe is the smallest of `NPROBE_LADDER` whose recall@10 against exact search reaches
   `TARGET_RECALL` + `TUNING_MARGIN` on the held-out queries (each query's own id left out
   on both sides). When none does (PQ loses too much), the climb stops once recall no longer
   grows and the smallest nprobe within `RECALL_PLATEAU` of the best is taken, with a
   warning when that misses `TARGET_RECALL`.

Built without a `directory`, the index lives in a temporary folder of its own until it is
saved (a library's build: `save` hard-links the data into the library's staging folder and
`moved` then drops the temporary one).

`describe` gives what a manifest records: the files with sizes and SHA-256 checksums, the
shards (count, bytes, SHA-256, and the file when kept) and the tuning (nprobe, the recall
reached, the number of queries). `load` reads ``<stem>.faiss`` with
``IO_FLAG_ONDISK_SAME_DIR``, so the folder can be moved or renamed; the lists are mapped
read-only (the operating system's file cache, shared by every process). A data file or
shard whose size differs from the record is refused before it is mapped (reading past the end
of a mapping kills the process); `verify` checks the checksums too. `save` links the data
file into another folder and writes a ``.faiss`` that points at it; an open mapping stays
valid when the folder it was read from is replaced (the inode lives on).

The index cannot take new vectors (`add` raises; rebuild the library); `remove` keeps
tombstones, as `VectorIndex` does for HNSW. It always searches on the CPU.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medxpert.atomic import atomic_path
from medxpert.errors import ConfigError, IndexFormatError, QueryError
from medxpert.index.vector_index import (
    DISK_PREFIX,
    RemovableIndex,
    _drop_removed,
    _resolve_factory,
    apply_search_params,
    check_file,
    file_sha256,
    is_disk_factory,
    load_faiss,
)

logger = logging.getLogger(__name__)

__all__ = ["DISK_PREFIX", "OnDiskIndex", "is_disk_factory"]

TARGET_RECALL = 0.95
RECALL_K = 10
RECALL_PLATEAU = 0.002  # a step of the ladder that gains less than this is no gain
# nprobe is tuned to this much above the target: the held-out library vectors are a little
# easier than new queries (0.952 on them gave 0.945 on new ones at 10M; RESULTS.md, "Scale")
TUNING_MARGIN = 0.005
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class Shard:
    """One block file of the build: its vectors' count, size and checksum."""

    name: str  # "00000"
    count: int
    bytes: int
    sha256: str
    file: str | None = None  # relative to the library folder, when kept


@dataclass(frozen=True)
class Tuning:
    """The nprobe chosen on held-out queries, and the recall@k it reached."""

    nprobe: int
    recall: float
    queries: int
    k: int = RECALL_K
    target: float = TARGET_RECALL

    @property
    def reached(self) -> bool:
        return self.recall >= self.target


class OnDiskIndex(RemovableIndex):
    """A memory-mapped IVF index over L2-normalised vectors (inner product), with ids.
    Build with `OnDiskIndex.build(shards, directory, factory)`, read with `load`."""

    memory_mapped = True
    stores_exact_vectors = False  # set per factory in __init__
    device = "cpu"

    def __init__(
        self,
        index,
        factory: str,
        directory: Path,
        stem: str,
        shards: Sequence[Shard],
        tuning: Tuning,
        data_sha256: str,
        search_params: str | None = None,
        removed: set[int] | None = None,
    ) -> None:
        self._index = index
        faiss = load_faiss()
        self._ivf = faiss.extract_index_ivf(index)
        lists = faiss.downcast_InvertedLists(self._ivf.invlists)
        if isinstance(lists, faiss.OnDiskInvertedLists):
            # FAISS reads the probed lists ahead in 32 threads per search; from the page cache
            # that only costs time (warm p50 halves without it; benchmarks/RESULTS.md, "Scale").
            lists.prefetch_nthread = 0
        self.factory = factory
        self.directory, self.stem = Path(directory), stem
        self.shards, self.tuning, self._data_sha256 = list(shards), tuning, data_sha256
        self.removed: set[int] = set(removed or ())
        self.stores_exact_vectors = factory.endswith(",Flat")
        self._direct_map = False
        self._stored: np.ndarray | None = None  # every stored id, sorted
        self._scratch: weakref.finalize | None = None  # removes a temporary home
        self.search_params = ""
        self.set_search_params(
            _nprobe_params(factory, tuning.nprobe) if search_params is None else search_params
        )

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        shards: Iterable[tuple[np.ndarray, np.ndarray]],
        directory: str | Path | None,
        factory: str,
        *,
        stem: str = "index",
        count: int | None = None,
        train_size: int | None = None,
        queries: int = 500,
        workers: int = 2,
        keep_shards: bool = False,
        seed: int = 0,
        trained=None,
    ) -> OnDiskIndex:
        """Build from `shards`, an iterable of ``(ids, vectors)``, into `directory` (None: a
        temporary folder, removed once the index is saved elsewhere or garbage-collected).

        `count` (the total number of vectors) is needed to fill in ``{nlist}`` when `shards`
        is not a sequence. `train_size` vectors (default: 64 per list, at most 500k) train the
        index, unless an already `trained` empty index is given; `queries` of the library's
        vectors choose nprobe (at most half of the first `train_size` + `queries`)."""
        scratch = directory is None
        directory = Path(tempfile.mkdtemp(prefix="medxpert-ondisk-") if scratch else directory)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            built = cls._build(
                shards,
                directory,
                factory,
                stem=stem,
                count=count,
                train_size=train_size,
                queries=queries,
                workers=workers,
                keep_shards=keep_shards,
                seed=seed,
                trained=trained,
            )
        except BaseException:
            if scratch:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        if scratch:
            built._scratch = weakref.finalize(built, shutil.rmtree, directory, True)
        return built

    @classmethod
    def _build(
        cls,
        shards: Iterable[tuple[np.ndarray, np.ndarray]],
        directory: Path,
        factory: str,
        *,
        stem: str,
        count: int | None,
        train_size: int | None,
        queries: int,
        workers: int,
        keep_shards: bool,
        seed: int,
        trained,
    ) -> OnDiskIndex:
        faiss = load_faiss()

        if count is None and isinstance(shards, Sequence):
            count = sum(len(ids) for ids, _ in shards)
        inner = _inner_factory(factory)
        if "{nlist}" in inner and count is None:
            raise ConfigError(f"{factory!r} needs the library's size: pass count=.")
        resolved = _resolve_factory(inner, count or 0, 0)
        stream = _checked(shards)
        first = next(stream, None)
        if first is None:
            raise IndexFormatError("an on-disk index needs vectors; no shards were given.")
        dim = first[1].shape[1]
        nlist = _nlist(resolved)
        train_size = train_size or min(64 * nlist, 500_000)
        pool, stream = _take(first, stream, train_size + queries)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(pool[0]))
        queries = min(queries, len(order) // 2)
        query_ids, query_vectors = pool[0][order[:queries]], pool[1][order[:queries]]
        if trained is None:
            trained = _train(resolved, dim, pool[1][order[queries : queries + train_size]])
        del pool
        truth = faiss.ResultHeap(len(query_ids), RECALL_K + 1, keep_max=True)
        blocks = directory / f"{stem}.shards"
        shutil.rmtree(blocks, ignore_errors=True)
        written = _add_shards(stream, trained, blocks, workers, query_vectors, truth)
        total = sum(shard.count for shard in written)
        data_file = directory / f"{stem}.ivfdata"
        _merge(trained, blocks, written, data_file, directory / f"{stem}.faiss")
        if keep_shards:
            written = [
                Shard(**{**asdict(s), "file": f"{stem}.shards/{s.name}.faiss"}) for s in written
            ]
        else:
            shutil.rmtree(blocks, ignore_errors=True)
        index = _read(directory / f"{stem}.faiss")
        truth.finalize()
        tuning = _tune(index, DISK_PREFIX + resolved, query_ids, query_vectors, truth.I)
        built = cls(
            index, DISK_PREFIX + resolved, directory, stem, written, tuning, file_sha256(data_file)
        )
        logger.info(
            "built an on-disk %s index of %d vectors (d=%d) in %d shards; nprobe=%d gives "
            "recall@%d %.3f on %d held-out queries",
            resolved,
            total,
            dim,
            len(written),
            tuning.nprobe,
            tuning.k,
            tuning.recall,
            tuning.queries,
        )
        return built

    @classmethod
    def load(cls, directory: str | Path, entry: dict, *, verify: bool = True) -> OnDiskIndex:
        """Read the index that `entry` (a `describe` record) names in `directory`. A data
        file or kept shard of another size is refused; with `verify`, also one whose checksum
        differs."""
        directory = Path(directory)
        for name, expected in entry["files"].items():
            check_file(directory / name, expected, verify)
        index = _read(directory / entry["file"])
        stem = entry["file"].removesuffix(".faiss")
        loaded = cls(
            index,
            entry["factory"],
            directory,
            stem,
            [Shard(**shard) for shard in entry["shards"]],
            Tuning(**{k: v for k, v in entry["tuning"].items() if k != "reached"}),
            entry["files"][entry["data_file"]]["sha256"],
            entry.get("search_params"),
            set(entry.get("removed", [])),
        )
        if int(index.ntotal) != entry["count"] + len(loaded.removed):
            raise IndexFormatError(
                f"{directory / entry['file']} holds {index.ntotal} vectors, not the "
                f"{entry['count'] + len(loaded.removed)} recorded; rebuild the index."
            )
        return loaded

    def describe(self) -> dict:
        """The manifest record of this index where it lives: the index and data files with
        sizes and SHA-256 checksums, the shards, the tuning, the tombstones."""
        return self._record(self.directory, self.stem)

    def _record(self, directory: Path, stem: str) -> dict:
        shards = [
            asdict(s) | ({"file": f"{stem}.shards/{s.name}.faiss"} if s.file else {})
            for s in self.shards
        ]
        data = {
            "bytes": (directory / f"{stem}.ivfdata").stat().st_size,
            "sha256": self._data_sha256,
        }
        own = directory / f"{stem}.faiss"
        files = {
            f"{stem}.faiss": {"bytes": own.stat().st_size, "sha256": file_sha256(own)},
            f"{stem}.ivfdata": data,
        }
        files.update(
            {s["file"]: {"bytes": s["bytes"], "sha256": s["sha256"]} for s in shards if s["file"]}
        )
        return {
            "file": f"{stem}.faiss",
            "data_file": f"{stem}.ivfdata",
            "factory": self.factory,
            "search_params": self.search_params,
            "count": len(self),
            "removed": sorted(self.removed),
            "shards": shards,
            "tuning": asdict(self.tuning) | {"reached": self.tuning.reached},
            "files": files,
        }

    def save(self, directory: str | Path, stem: str) -> dict:
        """Put this index into `directory` (a library's staging folder) as `stem`: the data
        file and kept shards hard-linked (copied across filesystems), the small ``.faiss``
        written anew to point at the new data file. Returns the copy's `describe` record."""
        faiss = load_faiss()

        directory = Path(directory)
        for source, target in self._file_pairs(directory, stem):
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(source, target)
        invlists = faiss.downcast_InvertedLists(self._ivf.invlists)
        filename = invlists.filename
        invlists.filename = str(directory / f"{stem}.ivfdata")
        try:
            _write(self._index, directory / f"{stem}.faiss")
        finally:
            invlists.filename = filename
        return self._record(directory, stem)

    def moved(self, directory: str | Path, stem: str) -> None:
        """Record that the files now live in `directory` under `stem` (after a save, once
        the staging folder is in place); a temporary home is removed (the mapping stays)."""
        self.directory, self.stem = Path(directory), stem
        if self._scratch is not None:
            self._scratch()
            self._scratch = None

    def _file_pairs(self, directory: Path, stem: str) -> Iterator[tuple[Path, Path]]:
        yield self.directory / f"{self.stem}.ivfdata", directory / f"{stem}.ivfdata"
        for shard in self.shards:
            if shard.file:
                name = f"{shard.name}.faiss"
                yield (
                    self.directory / f"{self.stem}.shards" / name,
                    directory / f"{stem}.shards" / name,
                )

    # --- the VectorIndex interface ---------------------------------------------------------
    def set_search_params(self, params: str) -> None:
        """Set search-time parameters as a FAISS ParameterSpace string (``"nprobe=32"``)."""
        apply_search_params(self._index, params, self.factory)
        self.search_params = params

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        raise IndexFormatError(
            f"an on-disk index ({self.factory}) cannot take new vectors; rebuild the library "
            "with all its cases (`medxpert index build`)."
        )

    def remove(self, ids: np.ndarray) -> int:
        """Remove `ids` (tombstones); returns how many were present."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        present = ids[np.isin(ids, self.ids())]
        self.removed.update(present.tolist())
        return len(present)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; missing results have id -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IndexFormatError(
                f"queries have shape {queries.shape}; the index has {self.dim} dimensions. "
                "Was it built with another encoder?"
            )
        if k <= 0:
            raise QueryError(f"k must be positive, got {k}.")
        fetch = max(1, min(k + len(self.removed), int(self._index.ntotal)))
        scores, ids = self._index.search(queries, fetch)
        if self.removed:
            scores, ids = _drop_removed(scores, ids, self.removed, k)
        if fetch < k:
            scores = np.pad(scores, ((0, 0), (0, k - fetch)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - fetch)), constant_values=-1)
        return scores[:, :k], ids[:, :k]

    def ids(self) -> np.ndarray:
        """The ids in the index (removed ones left out), in ascending order."""
        return self._live(self._stored_ids())

    def _stored_ids(self) -> np.ndarray:
        faiss = load_faiss()

        if self._stored is None:
            invlists = self._ivf.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(i), size).copy()
                for i in range(self._ivf.nlist)
                if (size := invlists.list_size(i))
            ]
            stored = np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
            self._stored = np.sort(stored)
        return self._stored

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of `ids` (exact for ``Flat``, decoded for SQ / PQ)."""
        faiss = load_faiss()

        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return np.empty((0, self.dim), dtype=np.float32)
        unknown = ids[~np.isin(ids, self._stored_ids())]
        if len(unknown):
            raise QueryError(f"{len(unknown)} ids are not in the index (e.g. {unknown[0]}).")
        if not self._direct_map:  # an id → (list, offset) table, read from the lists once
            self._ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            self._direct_map = True
        return self._index.reconstruct_batch(ids)


# --- building ------------------------------------------------------------------------------
def _inner_factory(factory: str) -> str:
    if not is_disk_factory(factory):
        raise ConfigError(f"{factory!r} is not an on-disk factory string (disk:IVF...).")
    inner = factory.removeprefix(DISK_PREFIX)
    if not inner.split(",")[0].split("_")[0].startswith("IVF"):
        raise ConfigError(
            f"{factory!r}: an on-disk index is an IVF index, e.g. disk:IVF{{nlist}},SQ8 or "
            "disk:IVF4096,PQ32."
        )
    return inner


def _nlist(resolved: str) -> int:
    head = resolved.split(",")[0].split("_")[0]
    try:
        return int(head.removeprefix("IVF"))
    except ValueError:
        raise ConfigError(f"{resolved!r}: the IVF list count must be a number.") from None


def _checked(shards: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator:
    dim = None
    for ids, vectors in shards:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise IndexFormatError(
                f"a shard must be (ids, vectors) of shapes (n,) and (n, d); got "
                f"{ids.shape} and {vectors.shape}."
            )
        if dim is not None and vectors.shape[1] != dim:
            raise IndexFormatError(f"a shard has {vectors.shape[1]} dimensions, not {dim}.")
        dim = vectors.shape[1]
        if len(ids):
            yield ids, vectors


def _take(first, stream: Iterator, size: int):
    """The first `size` vectors (whole shards), and a stream that yields every shard."""
    taken = [first]
    while sum(len(ids) for ids, _ in taken) < size:
        shard = next(stream, None)
        if shard is None:
            break
        taken.append(shard)
    pool = (
        np.concatenate([ids for ids, _ in taken]),
        np.concatenate([vectors for _, vectors in taken]),
    )

    def replay() -> Iterator:
        yield from taken
        taken.clear()
        yield from stream

    return pool, replay()


def _train(resolved: str, dim: int, sample: np.ndarray):
    faiss = load_faiss()

    try:
        index = faiss.index_factory(dim, resolved, faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index)
    except RuntimeError as error:
        raise ConfigError(
            f"{resolved!r} is not a FAISS IVF factory string: {str(error).splitlines()[0]}"
        ) from None
    if len(sample) < _nlist(resolved):
        raise IndexFormatError(
            f"{resolved} has {_nlist(resolved)} lists but only {len(sample)} vectors to train "
            "on; choose a smaller nlist (or {nlist})."
        )
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10
    ivf.cp.max_points_per_centroid = math.ceil(len(sample) / ivf.nlist)
    index.train(sample)
    return index


def _add_shards(stream, trained, blocks: Path, workers: int, queries, truth) -> list[Shard]:
    """Add every shard to a copy of `trained`, `workers` at a time, each written as a block
    file; meanwhile gather the exact neighbours of `queries` in `truth`."""
    faiss = load_faiss()
    blocks.mkdir(parents=True)

    def add(number: int, ids: np.ndarray, vectors: np.ndarray) -> Shard:
        faiss.omp_set_num_threads(1)  # this thread's; the pool is the parallelism
        index = faiss.clone_index(trained)
        index.add_with_ids(vectors, ids)
        name = f"{number:05d}"
        size, digest = _write(index, blocks / f"{name}.faiss")
        return Shard(name, len(ids), size, digest)

    written: list[Shard] = []
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as executor:
        pending: list[concurrent.futures.Future] = []
        for number, (ids, vectors) in enumerate(stream):
            if len(pending) >= max(1, workers):
                written.append(pending.pop(0).result())
            pending.append(executor.submit(add, number, ids, vectors))
            scores, rows = faiss.knn(
                queries, vectors, min(RECALL_K + 1, len(ids)), faiss.METRIC_INNER_PRODUCT
            )
            truth.add_result(scores, np.where(rows >= 0, ids[rows], -1))
        written.extend(future.result() for future in pending)
    return written


def _merge(trained, blocks: Path, shards: list[Shard], data_file: Path, index_file: Path):
    """Merge the block files into one on-disk index: `data_file` and `index_file`."""
    faiss = load_faiss()

    parts = []
    for shard in shards:
        path = blocks / f"{shard.name}.faiss"
        check_file(path, asdict(shard), verify=False)
        parts.append(faiss.read_index(str(path), faiss.IO_FLAG_MMAP))
    merged = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(merged)
    lists = faiss.InvertedListsPtrVector()
    for part in parts:
        lists.push_back(faiss.extract_index_ivf(part).invlists)
    with atomic_path(data_file) as tmp:
        invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(tmp))
        total = invlists.merge_from_multiple(lists.data(), lists.size(), False, False)
        ivf.replace_invlists(invlists, True)
        invlists.this.disown()
        merged.ntotal = ivf.ntotal = total
        invlists.filename = str(data_file)  # its name once renamed, which .faiss records
    del parts
    _write(merged, index_file)


def _tune(index, factory: str, query_ids, queries, truth_ids) -> Tuning:
    """The smallest nprobe of the ladder reaching `TARGET_RECALL` + `TUNING_MARGIN`; else, once
    two steps in a row gain less than `RECALL_PLATEAU`, the smallest within `RECALL_PLATEAU` of
    the best (a warning when that misses `TARGET_RECALL`)."""
    faiss = load_faiss()

    exact = [_without(row, own)[:RECALL_K] for row, own in zip(truth_ids, query_ids, strict=True)]
    nlist = faiss.extract_index_ivf(index).nlist
    tried: list[Tuning] = []
    for nprobe in [n for n in NPROBE_LADDER if n < nlist] + [nlist]:
        faiss.ParameterSpace().set_index_parameters(index, _nprobe_params(factory, nprobe))
        found = index.search(queries, RECALL_K + 1)[1]
        recall = _recall(found, query_ids, exact)
        tried.append(Tuning(nprobe, round(recall, 4), len(query_ids)))
        if recall >= TARGET_RECALL + TUNING_MARGIN:
            return tried[-1]
        if len(tried) >= 3 and recall - tried[-3].recall < RECALL_PLATEAU:
            break
    top = max(t.recall for t in tried)
    best = next(t for t in tried if t.recall >= top - RECALL_PLATEAU)
    if best.reached:
        return best
    logger.warning(
        "no nprobe up to %d reaches recall@%d %.2f on this library (best %.3f at nprobe=%d); "
        "a finer quantizer (SQ8 or Flat) would",
        tried[-1].nprobe,
        RECALL_K,
        TARGET_RECALL,
        best.recall,
        best.nprobe,
    )
    return best


def _recall(found: np.ndarray, query_ids: np.ndarray, exact: list[np.ndarray]) -> float:
    """Mean recall@k of `found` (k + 1 per query, its own id left out) against `exact`."""
    return float(
        np.mean(
            [
                len(set(_without(row, own)[:RECALL_K].tolist()) & set(want.tolist()))
                / max(1, len(want))
                for row, own, want in zip(found, query_ids, exact, strict=True)
            ]
        )
    )


def _without(row: np.ndarray, own: int) -> np.ndarray:
    return row[(row != own) & (row >= 0)]


def _nprobe_params(factory: str, nprobe: int) -> str:
    params = f"nprobe={nprobe}"
    if "_HNSW" in factory:
        params += f",quantizer_efSearch={max(64, 2 * nprobe)}"
    return params


# --- files ---------------------------------------------------------------------------------
def _read(path: Path):
    faiss = load_faiss()

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as error:
        raise IndexFormatError(
            f"{path} is not a readable on-disk FAISS index ({str(error).splitlines()[0]}); "
            "rebuild the index."
        ) from None


def _write(index, path: Path) -> tuple[int, str]:
    """Write `index` atomically through a Python file (a failed write raises `OSError`);
    returns its size and SHA-256."""
    faiss = load_faiss()

    digest, size = hashlib.sha256(), 0

    with atomic_path(path) as tmp, tmp.open("wb") as handle:

        def write(data: bytes) -> int:
            nonlocal size
            digest.update(data)
            size += len(data)
            return handle.write(data)

        faiss.write_index(index, faiss.PyCallbackIOWriter(write))
    return size, digest.hexdigest()


def _link(source: Path, target: Path) -> None:
    """Hard-link `source` as `target` (a copy across filesystems)."""
    if target.exists() and target.samefile(source):
        return
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
