"""Scale by simulation: exact and on-disk IVF indexes at 1M and 10M vectors on the CPU.

    .venv/bin/python benchmarks/scale_bench.py                       (1M and 10M, about an hour)
    .venv/bin/python benchmarks/scale_bench.py --small               (100k, a few minutes)

The library's vectors are simulated from the real ones, as benchmarks/diagnose_bench.py grows
the image index: the real image vectors of the case library (`--library`, default
indexes/medxpert-default), then noisy copies of them (Gaussian noise, σ = 0.02 per dimension,
re-normalised) up to N. The copies are generated shard by shard from a seed (each shard is a
function of the seed and its number alone), so no run holds more than a few shards, the 1M
library is the first 1M vectors of the 10M one, and every pass over a library sees the same
vectors. Queries are further noisy copies from another seed: held out, not in any library.

Per N:

* the exact top-10 of every query by one chunked brute-force pass over the stream (FAISS
  `knn` per shard into a result heap), for all sizes at once;
* the coarse quantizer of every IVF index (nlist as `VectorIndex` fills ``{nlist}`` in) is
  trained once, as `OnDiskIndex.build` trains it, and handed to each build (`trained=`); each
  index's build time counts this training.

Per (N, index), each in a fresh subprocess:

* build: ``Flat`` as `VectorIndex('Flat')` in RAM, saved to a file; ``disk:IVF...`` through
  `OnDiskIndex.build` (shards streamed in, added by 2 worker threads, merged into one
  ``.ivfdata`` file, nprobe tuned for recall@10 ≥ 0.95 on 500 held-out library vectors).
  Wall time, the part of it spent generating the vectors, peak RSS, bytes per vector on disk
  (every index file / N);
* serve: a fresh process maps the index read-only (`VectorIndex.load` / `OnDiskIndex.load`),
  after the index's files were dropped from the page cache (``posix_fadvise DONTNEED``): a
  cold pass over the queries (first-query and cold p50 times), then a warm pass, timed one
  query at a time (the realistic serving state: the pages the queries touch are in the
  cache), recall@10 against the exact top-10, at the nprobe the build chose, then an nprobe
  sweep. Peak RSS (VmHWM), and its anonymous and file-backed parts. The serving process does
  not import torch (the model's ~1 GB is the same at every N).

Writes OUT.json, OUT.md (a section for benchmarks/RESULTS.md) and OUT.png (recall@10 against
warm p50 per index and N); OUT=results/scale_bench by default.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

FAISS_PREFETCH = 32  # OnDiskInvertedLists' default prefetch_nthread
ROOT = Path(__file__).resolve().parents[1]
K = 10
MB = 1e6
GIB = 1024**3
SIGMA = 0.02
TARGET = {"n": 10_000_000, "recall": 0.95, "p50_ms": 10.0, "rss_gb": 4.0}
DEFAULT_FACTORIES = [
    "Flat",
    "disk:IVF{nlist},Flat",
    "disk:IVF{nlist},SQ8",
    "disk:IVF{nlist},PQ32",
]
SWEEP = (4, 8, 16, 32, 64, 128, 256)
QUERY_STREAM = 1_000_000_007  # the queries' seed offset: a stream no shard uses


# --- setup --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--queries", type=int, default=200, help="held-out queries, timed")
    parser.add_argument("--factories", nargs="+", default=DEFAULT_FACTORIES)
    parser.add_argument(
        "--max-size",
        action="append",
        default=[],
        metavar="FACTORY=N",
        help="measure FACTORY only up to N vectors (repeatable), e.g. 'disk:IVF{nlist},PQ32=1e6'",
    )
    parser.add_argument("--library", type=Path, default=ROOT / "indexes" / "medxpert-default")
    parser.add_argument(
        "--vectors", type=Path, default=None, help="a .npy of real vectors instead of --library"
    )
    parser.add_argument("--sigma", type=float, default=SIGMA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", type=int, default=250_000, help="vectors per shard")
    parser.add_argument("--workers", type=int, default=2, help="OnDiskIndex.build workers")
    parser.add_argument("--sweep", type=int, nargs="+", default=list(SWEEP), help="nprobe values")
    parser.add_argument(
        "--threads", type=int, default=None, help="FAISS threads when serving (default: FAISS's)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path("/tmp/medxpert-scale-bench"), help="index files"
    )
    parser.add_argument("--keep", action="store_true", help="keep the index files")
    parser.add_argument(
        "--two-level-above",
        type=int,
        default=10**12,
        help="train the coarse quantizer by two-level k-means above this N (default: never; "
        "FAISS's two_level_clustering can give a small cluster 0 sub-clusters and fail)",
    )
    parser.add_argument(
        "--flat-queries-above",
        type=int,
        default=2_000_000,
        help="above this N, time exact search on 50 queries and skip its cold query (run time)",
    )
    parser.add_argument(
        "--min-size",
        action="append",
        default=[],
        metavar="FACTORY=N",
        help="measure FACTORY only from N vectors (repeatable)",
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the notes")
    parser.add_argument("--render", type=Path, default=None, help="re-render OUT from a JSON")
    parser.add_argument(
        "--merge", type=Path, default=None, help="a previous run's JSON whose rows to include"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "scale_bench")
    parser.add_argument("--small", action="store_true", help="smoke run: 100k vectors, 50 queries")
    parser.add_argument("--worker", choices=["build", "serve"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.small:
        args.sizes = [100_000]
        args.queries = min(args.queries, 50)
        args.shard = min(args.shard, 50_000)
    return args


def say(text: str = "") -> None:
    print(text, flush=True)


def progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, mininterval=2)


def meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    return values


def process_memory() -> dict[str, float]:
    """This process's VmRSS, VmHWM (peak), RssAnon and RssFile, in MB; ru_maxrss too."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = round(int(rest.split()[0]) * 1024 / MB, 1)
    out["ru_maxrss"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, 1)
    return out


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def busy_processes() -> list[str]:
    """Other processes using > 20 % of a core now (ps), to say whether the machine was idle."""
    try:
        lines = subprocess.run(
            ["ps", "-eo", "pid,pcpu,rss,args", "--sort=-pcpu"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[1:]
    except (OSError, subprocess.CalledProcessError):
        return []
    busy = []
    for line in lines:
        pid, pcpu, rss, *cmd = line.split(maxsplit=3)
        if int(pid) != os.getpid() and float(pcpu) > 20 and cmd:
            busy.append(f"{pcpu}% {int(rss) // 1024} MB {cmd[0][:90]}")
    return busy


def machine_info() -> dict[str, Any]:
    import faiss

    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = meminfo()
    disk = shutil.disk_usage("/tmp")
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(memory["MemTotal"] / GIB, 1),
        "ram_available_gib_at_start": round(memory["MemAvailable"] / GIB, 1),
        "disk_free_gib_at_start": round(disk.free / GIB, 1),
        "gpu": "none used (faiss-cpu; every search on the CPU)",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "load_average_at_start": load_average(),
        "busy_at_start": busy_processes(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join(["HF_HUB_OFFLINE=1", ".venv/bin/python", *sys.argv]),
    }


def import_index_modules() -> tuple[Any, Any]:
    """medxpert.index.vector_index and .ondisk without the package's __init__ (which imports
    the encoders, hence torch: ~1 GB of RSS that does not depend on the index)."""
    if "medxpert.index" not in sys.modules:
        import medxpert

        package = types.ModuleType("medxpert.index")
        package.__path__ = [str(Path(medxpert.__file__).parent / "index")]
        sys.modules["medxpert.index"] = package
    vector_index = importlib.import_module("medxpert.index.vector_index")
    ondisk = importlib.import_module("medxpert.index.ondisk")
    return vector_index, ondisk


# --- the simulated library ----------------------------------------------------------------------
def real_vectors(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The real image vectors (L2-normalised float32) and where they come from."""
    if args.vectors:
        vectors = np.load(args.vectors).astype(np.float32)
        source = f"{args.vectors} (a .npy of vectors)"
    else:
        from medxpert.index import CaseLibrary

        library = CaseLibrary.load(args.library, verify=False)
        vectors = library.stored_vectors("images").vectors.astype(np.float32)
        index = library.indexes["images"]
        shown = (
            args.library.relative_to(ROOT) if args.library.is_relative_to(ROOT) else args.library
        )
        source = (
            f"the image index of `{shown}` ({index.factory} index, encoder "
            f"{library.encoder_backbone})"
        )
        del library
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors), source


def noisy_copies(real: np.ndarray, count: int, sigma: float, rng: np.random.Generator):
    source = rng.integers(0, len(real), count)
    vectors = rng.standard_normal((count, real.shape[1]), dtype=np.float32)
    vectors *= np.float32(sigma)
    vectors += real[source]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def make_shard(number: int, n: int, real: np.ndarray, sigma: float, seed: int, size: int):
    """Shard `number` of a library of `n` vectors: ids start..stop-1. Rows below len(real)
    are the real vectors, the others noisy copies; a function of (seed, number) alone."""
    start, stop = number * size, min(n, (number + 1) * size)
    vectors = noisy_copies(real, size, sigma, np.random.default_rng([seed, number]))
    if start < len(real):
        vectors[: len(real) - start] = real[start : min(len(real), start + size)]
    return np.arange(start, stop, dtype=np.int64), vectors[: stop - start]


class Stream:
    """The shards of a library of `n` vectors, timing the generation."""

    def __init__(self, n: int, real: np.ndarray, sigma: float, seed: int, size: int, desc: str):
        self.n, self.real, self.sigma, self.seed, self.size = n, real, sigma, seed, size
        self.desc, self.seconds = desc, 0.0

    def __len__(self) -> int:
        return math.ceil(self.n / self.size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for number in progress(range(len(self)), len(self), self.desc):
            start = time.perf_counter()
            shard = make_shard(number, self.n, self.real, self.sigma, self.seed, self.size)
            self.seconds += time.perf_counter() - start
            yield shard


def make_queries(real: np.ndarray, count: int, sigma: float, seed: int) -> np.ndarray:
    return noisy_copies(real, count, sigma, np.random.default_rng([seed, QUERY_STREAM]))


def exact_truth(sizes, real, queries, args) -> tuple[dict[int, np.ndarray], dict[int, float]]:
    """The exact top-K ids of `queries` in every library size, by one pass over the largest."""
    import faiss

    heaps = {n: faiss.ResultHeap(len(queries), K, keep_max=True) for n in sizes}
    stream = Stream(max(sizes), real, args.sigma, args.seed, args.shard, "exact top-10")
    seconds: dict[int, float] = {}
    start = time.perf_counter()
    for ids, vectors in stream:
        for n, heap in heaps.items():
            keep = int(np.searchsorted(ids, n))
            if keep:
                scores, rows = faiss.knn(
                    queries, vectors[:keep], min(K, keep), faiss.METRIC_INNER_PRODUCT
                )
                heap.add_result(scores, ids[rows])
        for n in sizes:
            if n <= ids[-1] + 1 and n not in seconds:
                seconds[n] = time.perf_counter() - start
    truth = {}
    for n, heap in heaps.items():
        heap.finalize()
        truth[n] = heap.I.copy()
    return truth, seconds


def train_coarse(n: int, real: np.ndarray, args: argparse.Namespace, nlist: int, dim: int):
    """The IVF{nlist} centroids, trained as OnDiskIndex.build trains them (10 iterations of
    spherical k-means on min(64 nlist, 500k) of the first vectors), or above
    `--two-level-above` vectors by two-level k-means (FAISS's contrib two_level_clustering:
    √nlist clusters, then each split in proportion to its size; 10 iterations each, same
    sample), which costs about √nlist times fewer inner products."""
    import faiss

    train_size = min(64 * nlist, 500_000, n)
    parts, have = [], 0
    for ids, vectors in Stream(n, real, args.sigma, args.seed, args.shard, "training sample"):
        parts.append(vectors)
        have += len(ids)
        if have >= train_size + 500:
            break
    pool = np.concatenate(parts)
    rows = np.random.default_rng(args.seed).permutation(len(pool))[:train_size]
    sample = np.ascontiguousarray(pool[rows])
    del parts, pool
    start = time.perf_counter()
    if n > args.two_level_above:
        from faiss.contrib.clustering import two_level_clustering

        centroids = two_level_clustering(
            sample, int(math.sqrt(nlist)), nlist, clustering_niter=10, spherical=True
        )[0]
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        return (
            np.ascontiguousarray(centroids, dtype=np.float32),
            (time.perf_counter() - start),
            len(sample),
        )
    index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10
    ivf.cp.max_points_per_centroid = math.ceil(len(sample) / nlist)
    index.train(sample)
    seconds = time.perf_counter() - start
    return ivf.quantizer.reconstruct_n(0, nlist), seconds, len(sample)


def flat_quantizer_cost(centroids, queries, real, args) -> dict[str, float]:
    """With an exact (flat) coarse quantizer over `centroids`: CPU ms to assign one query
    (1 thread), and the CPU seconds to assign 20k vectors, scaled to 1M (2 threads)."""
    import faiss

    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    cpu = []
    for query in queries:
        start = time.process_time()
        quantizer.search(query[None, :], 16)
        cpu.append(time.process_time() - start)
    faiss.omp_set_num_threads(threads)
    sample = noisy_copies(real, 20_000, args.sigma, np.random.default_rng([args.seed, 7]))
    start, start_cpu = time.perf_counter(), time.process_time()
    quantizer.search(sample, 1)
    wall, used = time.perf_counter() - start, time.process_time() - start_cpu
    return {
        "query_cpu_p50_ms": float(np.percentile(cpu, 50) * 1e3),
        "assign_1m_wall_s": wall * 50,
        "assign_1m_cpu_s": used * 50,
    }


# --- workers (fresh subprocesses) ---------------------------------------------------------------
def run_worker(kind: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    path = workdir / f"{kind}-spec.json"
    path.write_text(json.dumps(spec))
    out = Path(spec["result"])
    out.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", str(path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, env=env, cwd=ROOT)
    if completed.returncode != 0 or not out.exists():
        return {"error": f"the {kind} subprocess exited with status {completed.returncode}"}
    return json.loads(out.read_text())


def worker_build(spec: dict[str, Any]) -> dict[str, Any]:
    import faiss

    vector_index, ondisk = import_index_modules()
    real = np.load(spec["real"])
    n, factory, directory = spec["n"], spec["factory"], Path(spec["dir"])
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    stream = Stream(n, real, spec["sigma"], spec["seed"], spec["shard"], f"build {factory}")
    start = time.perf_counter()
    result: dict[str, Any] = {}
    if factory == "Flat":
        index = None
        for ids, vectors in stream:
            if index is None:
                index = vector_index.VectorIndex.build(vectors, ids, "Flat")
            else:
                index.add(vectors, ids)
        built_s = time.perf_counter() - start
        index.save(directory / "index.faiss")
        result["entry"] = {"file": "index.faiss", "factory": "Flat"}
        del index
    else:
        trained = None
        if spec.get("centroids"):
            # the shared coarse quantizer; FAISS then trains only the codec (SQ / PQ)
            inner = ondisk._resolve_factory(factory.removeprefix("disk:"), n, 0)
            trained = faiss.index_factory(real.shape[1], inner, faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(trained)
            ivf.quantizer.add(np.load(spec["centroids"]))
            codec_start = time.perf_counter()
            # the quantizer is full, so FAISS skips k-means; a Flat codec needs no sample
            size = 1_000 if factory.endswith(",Flat") else spec["train_size"]
            trained.train(first_vectors(stream, size))
            result["codec_train_s"] = time.perf_counter() - codec_start
        index = ondisk.OnDiskIndex.build(
            stream, directory, factory, count=n, workers=spec["workers"], trained=trained
        )
        built_s = time.perf_counter() - start
        entry = index.describe()
        result["entry"] = entry
        result["tuning"] = entry["tuning"]
        result["resolved"] = index.factory
        del index, trained
    gc.collect()
    files = [p for p in directory.rglob("*") if p.is_file()]
    result.update(
        {
            "build_s": built_s,
            "saved_s": time.perf_counter() - start,
            "generate_s": stream.seconds,
            "bytes": sum(p.stat().st_size for p in files),
            "files": {str(p.relative_to(directory)): p.stat().st_size for p in files},
            "memory": process_memory(),
        }
    )
    return result


def first_vectors(stream: Stream, count: int) -> np.ndarray:
    """The first `count` vectors of the stream (generated again, not counted in its time)."""
    parts, have = [], 0
    for number in range(len(stream)):
        if have >= count:
            break
        parts.append(
            make_shard(number, stream.n, stream.real, stream.sigma, stream.seed, stream.size)[1]
        )
        have += len(parts[-1])
    return np.ascontiguousarray(np.concatenate(parts)[:count])


def drop_from_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_pass(index, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock ms per query (and, as `.cpu`, the process's CPU ms), and the ids found."""
    latencies = np.empty(len(queries))
    cpu = np.empty(len(queries))
    found = np.empty((len(queries), K), dtype=np.int64)
    for row, query in enumerate(queries):
        start, start_cpu = time.perf_counter(), time.process_time()
        found[row] = index.search(query[None, :], K)[1][0]
        latencies[row] = time.perf_counter() - start
        cpu[row] = time.process_time() - start_cpu
    return Timings(latencies * 1e3, cpu * 1e3), found


class Timings(np.ndarray):
    """Wall-clock ms, with the CPU ms of the same queries as `.cpu`."""

    def __new__(cls, wall: np.ndarray, cpu: np.ndarray):
        out = np.asarray(wall).view(cls)
        out.cpu = cpu
        return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    hits = (found[:, :, None] == exact[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=2).sum(axis=1).mean() / K)


def stats(ms: np.ndarray) -> dict[str, float]:
    out = {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(np.mean(ms)),
    }
    cpu = getattr(ms, "cpu", None)
    if cpu is not None:
        out["cpu_p50_ms"] = float(np.percentile(cpu, 50))
        out["cpu_p99_ms"] = float(np.percentile(cpu, 99))
    return out


def worker_serve(spec: dict[str, Any]) -> dict[str, Any]:
    import faiss

    vector_index, ondisk = import_index_modules()
    directory = Path(spec["dir"])
    queries, exact = np.load(spec["queries"]), np.load(spec["truth"])
    entry = spec["entry"]
    files = [directory / name for name in spec["files"]]
    if not spec.get("flat_queries"):  # else the whole (hot) file would be read again
        drop_from_cache(files)
    if spec.get("threads"):
        faiss.omp_set_num_threads(spec["threads"])
    result: dict[str, Any] = {
        "threads": faiss.omp_get_max_threads(),
        "memory_before_load": process_memory(),
    }
    start = time.perf_counter()
    if entry["factory"] == "Flat":
        index = vector_index.VectorIndex.load(directory / entry["file"], "Flat")
    else:
        index = ondisk.OnDiskIndex.load(directory, entry, verify=False)
        # the main columns keep FAISS's read-ahead (32 threads per search), as the published
        # run measured; OnDiskIndex now turns it off: that is the "no prefetch" column
        faiss.downcast_InvertedLists(index._ivf.invlists).prefetch_nthread = FAISS_PREFETCH
    result["load_s"] = time.perf_counter() - start
    result["memory_after_load"] = process_memory()
    if entry["factory"] == "Flat":  # every query scans every page: one cold query is enough
        if spec.get("flat_queries"):
            queries, exact = queries[: spec["flat_queries"]], exact[: spec["flat_queries"]]
            result["queries"] = len(queries)
            result["cold"] = {}
        else:
            cold, _ = timed_pass(index, queries[:1])
            result["cold"] = {"first_query_ms": float(cold[0])}
        timed_pass(index, queries[1:4])  # warm-up
    else:
        cold, _ = timed_pass(index, queries)
        result["cold"] = {"first_query_ms": float(cold[0]), **stats(cold)}
    warm, found = timed_pass(index, queries)
    result["warm"] = {**stats(warm), "recall_at_10": recall_at_k(found, exact)}
    result["memory"] = process_memory()
    # one OpenMP thread: a 2-thread region waits for a time slice when other processes
    # hold the cores, so on a busy machine this is the steadier figure
    faiss.omp_set_num_threads(1)
    ms, _ = timed_pass(index, queries)
    result["warm_1_thread"] = stats(ms)
    if entry["factory"] != "Flat":
        # with the pages cached, reading the probed lists ahead is pure overhead
        invlists = faiss.downcast_InvertedLists(index._ivf.invlists)
        result["prefetch_nthread"] = int(invlists.prefetch_nthread)
        invlists.prefetch_nthread = 0
        timed_pass(index, queries)
        ms, _ = timed_pass(index, queries)
        result["warm_1_thread_no_prefetch"] = stats(ms)
        invlists.prefetch_nthread = result["prefetch_nthread"]
    say(
        f"    serve: warm p50 {result['warm']['p50_ms']:.2f} ms, p99 {result['warm']['p99_ms']:.2f}"
        f" ms, recall@10 {result['warm']['recall_at_10']:.3f}; cold first query "
        f"{result['cold'].get('first_query_ms', float('nan')):.1f} ms; peak RSS "
        f"{result['memory']['VmHWM']:.0f} MB"
    )
    if entry["factory"] != "Flat":
        chosen = index.search_params
        nlist = faiss.extract_index_ivf(index._index).nlist
        result["sweep"] = []
        for nprobe in sorted({p for p in spec["sweep"] if p <= nlist}):
            index.set_search_params(ondisk._nprobe_params(entry["factory"], nprobe))
            timed_pass(index, queries)  # the pages these lists need, into the cache
            ms, found = timed_pass(index, queries)
            point = {"nprobe": nprobe, **stats(ms), "recall_at_10": recall_at_k(found, exact)}
            result["sweep"].append(point)
            say(
                f"      nprobe={nprobe:<4} recall@10 {point['recall_at_10']:.3f} "
                f"p50 {point['p50_ms']:.2f} ms p99 {point['p99_ms']:.2f} ms"
            )
        index.set_search_params(chosen)
        result["memory_after_sweep"] = process_memory()
    faiss.omp_set_num_threads(result["threads"])
    return result


def worker_main(args: argparse.Namespace) -> None:
    spec = json.loads(args.spec.read_text())
    result = worker_build(spec) if args.worker == "build" else worker_serve(spec)
    Path(spec["result"]).write_text(json.dumps(result, default=float))


# --- the benchmark ------------------------------------------------------------------------------
def nlist_for(n: int) -> int:
    from medxpert.index.vector_index import _resolve_factory

    return int(_resolve_factory("IVF{nlist}", n, 0).removeprefix("IVF"))


def size_limits(args: argparse.Namespace, which: str = "max_size") -> dict[str, int]:
    limits = {}
    for item in getattr(args, which):
        factory, _, size = item.rpartition("=")
        limits[factory] = int(float(size))
    return limits


def projected_bytes(factory: str, n: int, dim: int) -> int:
    """Disk bytes while building (blocks and merged file side by side for IVF)."""
    if factory == "Flat":
        return n * (dim * 4 + 8)
    code = dim * 4 if factory.endswith(",Flat") else dim if "SQ8" in factory else dim // 4
    if ",PQ" in factory:
        code = int(factory.rsplit("PQ", 1)[1].split("x")[0].rstrip("np") or 32)
    return 2 * n * (code + 8)


def bench_one(n, factory, args, real, paths, coarse, state) -> dict[str, Any]:
    dim = real.shape[1]
    label = factory.replace("{nlist}", str(nlist_for(n)))
    row: dict[str, Any] = {"n": n, "factory": factory, "index": label}
    disk_free = shutil.disk_usage(args.workdir).free
    need = projected_bytes(factory, n, dim)
    if need > disk_free - 5 * GIB:
        row["skipped"] = (
            f"needs about {need / GIB:.1f} GiB of disk while building; "
            f"{disk_free / GIB:.1f} GiB free in {args.workdir}"
        )
        return row
    if factory == "Flat":
        ram = n * dim * 4
        available = meminfo()["MemAvailable"]
        if ram * 1.3 > available:
            row["skipped"] = (
                f"the exact index holds {ram / GIB:.1f} GiB in RAM; "
                f"{available / GIB:.1f} GiB available"
            )
            return row
    directory = args.workdir / f"n{n}" / label.replace(":", "_").replace(",", "_")
    say(f"\n--- N={n:,}  {label} ---  (load {load_average()[0]})")
    spec = {
        "n": n,
        "factory": factory,
        "dir": str(directory),
        "real": str(paths["real"]),
        "sigma": args.sigma,
        "seed": args.seed,
        "shard": args.shard,
        "workers": args.workers,
        "result": str(args.workdir / "build-result.json"),
    }
    if factory != "Flat" and coarse is not None:
        spec["centroids"] = str(coarse["path"])
        spec["train_size"] = coarse["train_size"]
    row["load_average_before"] = load_average()
    row["busy_before"] = busy_processes()
    build = run_worker("build", spec, args.workdir)
    row["build"] = build
    if "error" in build:
        say(f"    build failed: {build['error']}")
        return row
    if coarse is not None and factory != "Flat":
        build["coarse_train_s"] = coarse["seconds"]
        build["total_s"] = build["build_s"] + coarse["seconds"]
    else:
        build["total_s"] = build["build_s"]
    tuning = build.get("tuning")
    say(
        f"    build: {build['total_s']:.0f} s (generating the vectors {build['generate_s']:.0f} s)"
        f", {build['bytes'] / n:.1f} B/vector, peak RSS {build['memory']['VmHWM']:.0f} MB"
        + (
            f"; nprobe={tuning['nprobe']} (held-out recall@10 {tuning['recall']:.3f})"
            if tuning
            else ""
        )
    )
    serve_spec = {
        "dir": str(directory),
        "entry": build["entry"],
        "files": list(build["files"]),
        "queries": str(paths["queries"]),
        "truth": str(paths[f"truth{n}"]),
        "sweep": args.sweep,
        "threads": args.threads,
        "flat_queries": 50 if factory == "Flat" and n > args.flat_queries_above else None,
        "result": str(args.workdir / "serve-result.json"),
    }
    row["serve"] = run_worker("serve", serve_spec, args.workdir)
    row["load_average_after"] = load_average()
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
    state["done"] += 1
    return row


def run_benchmark(args: argparse.Namespace) -> None:
    import faiss

    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    say(f"MedXpert scale benchmark, {machine['date']}")
    say(
        f"{machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM "
        f"({machine['ram_available_gib_at_start']} available), "
        f"{machine['disk_free_gib_at_start']} GiB free on /tmp; faiss {machine['faiss']} "
        f"({machine['faiss_omp_threads']} OpenMP threads); load {machine['load_average_at_start']}"
    )
    for line in machine["busy_at_start"]:
        say(f"  busy: {line}")
    real, source = real_vectors(args)
    say(f"real vectors: {len(real):,} x {real.shape[1]} from {source}")
    paths = {"real": args.workdir / "real.npy", "queries": args.workdir / "queries.npy"}
    np.save(paths["real"], real)
    queries = make_queries(real, args.queries, args.sigma, args.seed)
    np.save(paths["queries"], queries)
    sizes = sorted(args.sizes)
    say(f"\nexact top-{K} of {len(queries)} queries at N = {sizes} (one pass) ...")
    start = time.perf_counter()
    truth, truth_s = exact_truth(sizes, real, queries, args)
    truth_total = time.perf_counter() - start
    say(f"  {truth_total:.0f} s")
    for n in sizes:
        paths[f"truth{n}"] = args.workdir / f"truth{n}.npy"
        np.save(paths[f"truth{n}"], truth[n])
    limits = size_limits(args)
    floors = size_limits(args, "min_size")
    report: dict[str, Any] = {
        "machine": machine,
        "settings": {
            "sizes": sizes,
            "queries": args.queries,
            "factories": args.factories,
            "max_size": limits,
            "sigma": args.sigma,
            "seed": args.seed,
            "shard": args.shard,
            "workers": args.workers,
            "sweep": args.sweep,
            "k": K,
            "small": args.small,
        },
        "data": {
            "source": source,
            "real_vectors": len(real),
            "dim": int(real.shape[1]),
            "queries": "noisy copies of the real vectors from another seed (not in the library)",
            "exact_pass_s": truth_total,
            "exact_s_by_n": {str(n): s for n, s in truth_s.items()},
        },
        "sizes": [],
        "rows": [],
        "notes": args.note,
    }
    if args.merge:
        previous = json.loads(args.merge.read_text())
        kept = [r for r in previous["rows"] if r["n"] not in sizes]
        report["merged"] = {
            "from": str(args.merge),
            "command": previous["machine"]["command"],
            "date": previous["machine"]["date"],
            "run_s": previous.get("run_s"),
            "sizes": sorted({r["n"] for r in kept}),
            "load_average_at_start": previous["machine"]["load_average_at_start"],
            "busy_at_start": previous["machine"]["busy_at_start"],
            "exact_pass_s": previous["data"]["exact_pass_s"],
        }
        report["rows"] += kept
        report["sizes"] += [e for e in previous["sizes"] if e["n"] not in sizes]
    state = {"done": 0}
    for n in sizes:
        nlist = nlist_for(n)
        entry: dict[str, Any] = {"n": n, "nlist": nlist}
        coarse = None
        if any(f.startswith("disk:") and "{nlist}" in f for f in args.factories):
            say(f"\n=== N={n:,}: training the IVF{nlist} coarse quantizer (shared) ...")
            centroids, seconds, sample = train_coarse(n, real, args, nlist, real.shape[1])
            coarse = {"path": args.workdir / f"centroids{n}.npy", "seconds": seconds}
            entry["coarse_method"] = (
                "two-level k-means" if n > args.two_level_above else "k-means (as the build)"
            )
            coarse["train_size"] = sample
            np.save(coarse["path"], centroids)
            entry["coarse_train_s"], entry["coarse_train_vectors"] = seconds, sample
            entry["flat_quantizer"] = flat_quantizer_cost(centroids, queries, real, args)
            say(f"  flat coarse quantizer: {entry['flat_quantizer']}")
            say(f"  {seconds:.0f} s on {sample:,} vectors")
        report["sizes"].append(entry)
        for factory in args.factories:
            if n < floors.get(factory, n):
                continue
            if n > limits.get(factory, n):
                report["rows"].append(
                    {
                        "n": n,
                        "factory": factory,
                        "index": factory.replace("{nlist}", str(nlist)),
                        "skipped": (
                            f"not run at this N (`--max-size {factory}={limits[factory]:,}`): "
                            "run time, see the notes"
                        ),
                    }
                )
                continue
            row = bench_one(n, factory, args, real, paths, coarse, state)
            if "skipped" in row:
                say(f"\n--- N={n:,}  {row['index']}: skipped, {row['skipped']}")
            report["rows"].append(row)
            report["run_s"] = time.perf_counter() - started
            write_outputs(report, args.out)
    report["run_s"] = time.perf_counter() - started
    report["machine"]["load_average_at_end"] = load_average()
    write_outputs(report, args.out)
    say("\n" + markdown(report))
    say(f"wrote {args.out}.json, .md, .png in {report['run_s'] / 60:.1f} min")
    del faiss


# --- output -------------------------------------------------------------------------------------
def fmt_mb(value: float) -> str:
    return f"{value:,.0f}"


def ok_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["rows"] if "serve" in r and "warm" in r["serve"]]


def target_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per index at the largest N: recall@10 ≥ 0.95 at p50 ≤ 10 ms with RSS < 4 GB, at the
    build's nprobe and at the fastest swept nprobe meeting the recall."""
    n = max(report["settings"]["sizes"])
    out = []
    for r in [r for r in report["rows"] if r["n"] == n]:
        if "serve" not in r or "warm" not in r.get("serve", {}):
            out.append({"index": r["index"], "status": "not measured", "why": r.get("skipped")})
            continue
        warm, memory = r["serve"]["warm"], r["serve"]["memory"]
        rss_gb = memory["VmHWM"] / 1e3
        cached_gb = (memory["RssAnon"] * MB + r["build"]["bytes"]) / 1e9
        chosen = r["build"].get("tuning", {}).get("nprobe")
        one = {**r["serve"]["warm_1_thread"], "recall_at_10": warm["recall_at_10"]}
        points = [(chosen, warm, "default threads"), (chosen, one, "1 thread")] + [
            (p["nprobe"], p, "1 thread") for p in r["serve"].get("sweep", [])
        ]
        free = r["serve"].get("warm_1_thread_no_prefetch")
        if free:
            points.append((chosen, {**free, "recall_at_10": warm["recall_at_10"]}, "no prefetch"))
        cpu_points = [
            (nprobe, {**p, "p50_ms": p["cpu_p50_ms"]}, f"{label}, CPU time")
            for nprobe, p, label in points
            if "cpu_p50_ms" in p and label != "default threads"
        ]
        points += cpu_points
        good = [
            (nprobe, p, threads)
            for nprobe, p, threads in points
            if p["recall_at_10"] >= TARGET["recall"] and p["p50_ms"] <= TARGET["p50_ms"]
        ]
        best = min(good, key=lambda item: item[1]["p50_ms"]) if good else None
        met = best is not None and rss_gb < TARGET["rss_gb"]
        out.append(
            {
                "index": r["index"],
                "recall": warm["recall_at_10"],
                "p50_ms": warm["p50_ms"],
                "rss_gb": rss_gb,
                "cached_gb": cached_gb,
                "best": best,
                "status": "met" if met else "missed",
            }
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    machine, data, settings = report["machine"], report["data"], report["settings"]
    sizes = settings["sizes"]
    run_min = report.get("run_s", 0) / 60
    busy = machine["busy_at_start"]
    lines = [
        "## Scale: on-disk IVF indexes at 1M and 10M vectors (simulated from the real embeddings)",
        "",
        f"- Date: {machine['date']}",
        f"- Command: `{machine['command']}` ({run_min:.0f} min)",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
        f"no GPU; numpy {machine['numpy']}, faiss {machine['faiss']}; searches with FAISS's "
        f"default {machine['faiss_omp_threads']} OpenMP threads, as the library runs. Load "
        f"average at start {machine['load_average_at_start'][0]}, at end "
        f"{machine.get('load_average_at_end', ['?'])[0]}"
        + (
            "; the machine was **not idle**: " + "; ".join(busy[:3]) if busy else "; otherwise idle"
        ),
        f"- Data: the {data['real_vectors']:,} real image vectors (d = {data['dim']}) of "
        f"{data['source']}, then noisy copies of them up to N (Gaussian noise σ = "
        f"{settings['sigma']} per dimension, re-normalised; as benchmarks/diagnose_bench.py grows "
        f"the library), generated shard by shard ({settings['shard']:,} vectors) from seed "
        f"{settings['seed']}; the 1M library is the first 1M vectors of the 10M one. Queries: "
        f"{settings['queries']} further noisy copies from another seed, not in the library. "
        f"Exact top-10: one brute-force pass over the stream ({data['exact_pass_s']:.0f} s).",
        "- Builds: `Flat` is `VectorIndex('Flat')` in RAM, saved and served memory-mapped; "
        "`disk:` indexes go through `OnDiskIndex.build` (shards streamed in, "
        f"{settings['workers']} worker threads, one `.ivfdata` file, nprobe tuned on 500 held-out "
        "library vectors). The IVF coarse quantizer is trained once per N (10 k-means "
        "iterations on min(64 nlist, 500k) vectors, as the build trains it) and handed to every "
        "build; build s includes it and the time spent generating the vectors (in brackets). "
        "bytes/vector: every index file / N (ids included).",
        "- Serving: a fresh process (no torch) maps the index read-only, after its files were "
        "dropped from the page cache. p50 / p99 are **warm**, one query at a time: a second pass "
        "over the queries, when the pages they touch are cached (the state of a server that has "
        "run a while). cold = the first query of the first pass, and that pass's p50. Peak RSS "
        "= VmHWM of the serving process (Python + FAISS ≈ "
        f"{_baseline(report):.0f} MB of it), including the mapped pages the queries touched "
        "(file-backed, shared with the page cache); `cached` = anonymous RSS + all index files, "
        "the memory for every list to be resident.",
        "",
        "| N | index | nprobe | build s | bytes/vector | peak RSS serving MB (of which file) "
        "| cached MB | recall@10 | p50 ms | p99 ms | 1 thread: p50, p99 ms (CPU p50) "
        "| 1 thread, no prefetch: p50 ms (CPU p50) "
        "| cold: first query ms, p50 ms | build's held-out recall |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for r in report["rows"]:
        if "skipped" in r or "serve" not in r or "warm" not in r.get("serve", {}):
            why = r.get("skipped") or r.get("build", {}).get("error") or r["serve"].get("error")
            lines.append(f"| {r['n']:,} | {r['index']} | skipped: {why} |" + " |" * 11)
            continue
        b, s = r["build"], r["serve"]
        tuning = b.get("tuning")
        cold = s["cold"]
        cold_shown = (
            f"{cold['first_query_ms']:.0f}"
            + (f", {cold['p50_ms']:.1f}" if "p50_ms" in cold else "")
            if cold
            else "not measured"
        )
        cached = s["memory"]["RssAnon"] + b["bytes"] / MB
        held_out = f"{tuning['recall']:.3f}" if tuning else "exact"
        one = s["warm_1_thread"]
        free = s.get("warm_1_thread_no_prefetch")
        off = f"{free['p50_ms']:.2f} ({_cpu(free)})" if free else "–"
        lines.append(
            f"| {r['n']:,} | {r['index']} | {tuning['nprobe'] if tuning else '–'} "
            f"| {b['total_s']:.0f} ({b['generate_s']:.0f}) | {b['bytes'] / r['n']:.1f} "
            f"| {fmt_mb(s['memory']['VmHWM'])} ({fmt_mb(s['memory']['RssFile'])}) "
            f"| {fmt_mb(cached)} | {s['warm']['recall_at_10']:.3f} | {s['warm']['p50_ms']:.2f} "
            f"| {s['warm']['p99_ms']:.2f} | {one['p50_ms']:.2f}, {one['p99_ms']:.2f} "
            f"({_cpu(one)}) | {off} | {cold_shown} "
            f"| {held_out} |"
        )
    sweeps = [r for r in ok_rows(report) if r["serve"].get("sweep")]
    if sweeps:
        lines += [
            "",
            "nprobe sweep (warm, 1 thread, as the library prefetches; recall@10 / p50 ms "
            "(CPU p50 ms)):",
            "",
            "| N | index | " + " | ".join(f"nprobe {p}" for p in settings["sweep"]) + " |",
            "| ---: | --- |" + " ---: |" * len(settings["sweep"]),
        ]
        for r in sweeps:
            by = {p["nprobe"]: p for p in r["serve"]["sweep"]}
            cells = [
                f"{by[p]['recall_at_10']:.3f} / {by[p]['p50_ms']:.2f} ({_cpu(by[p])})"
                if p in by
                else "–"
                for p in settings["sweep"]
            ]
            lines.append(f"| {r['n']:,} | {r['index']} | " + " | ".join(cells) + " |")
    if max(sizes) >= TARGET["n"]:
        lines += [
            "",
            f"**Target** (N = {max(sizes):,}): recall@10 ≥ {TARGET['recall']} at p50 ≤ "
            f"{TARGET['p50_ms']:.0f} ms, with resident memory below {TARGET['rss_gb']:.0f} GB "
            "(judged on the measured peak RSS; `cached` says what keeping every list in memory "
            "would take).",
            "",
            "| index | at the build's nprobe: recall@10, p50 ms | fastest setting meeting recall "
            "and p50 | peak RSS GB | cached GB | target |",
            "| --- | --- | --- | ---: | ---: | --- |",
        ]
        for t in target_rows(report):
            if t["status"] == "not measured":
                lines.append(f"| {t['index']} | not measured: {t['why']} | | | | – |")
                continue
            best = t["best"]
            shown = "none"
            if best:
                setting = f"nprobe={best[0]}, " if best[0] else ""
                shown = (
                    f"{setting}{best[2]}: {best[1]['recall_at_10']:.3f}, {best[1]['p50_ms']:.2f} ms"
                )
            lines.append(
                f"| {t['index']} | {t['recall']:.3f}, {t['p50_ms']:.2f} | {shown} "
                f"| {t['rss_gb']:.2f} | {t['cached_gb']:.2f} | **{t['status']}** |"
            )
    if report.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
    lines.append("")
    return "\n".join(lines) + "\n"


def _cpu(row: dict[str, float]) -> str:
    return f"{row['cpu_p50_ms']:.2f}" if "cpu_p50_ms" in row else "–"


def _baseline(report: dict[str, Any]) -> float:
    rows = ok_rows(report)
    return min(r["serve"]["memory_before_load"]["VmRSS"] for r in rows) if rows else 0.0


def plot(report: dict[str, Any], path: Path) -> None:
    rows = ok_rows(report)
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for r in [r for r in rows if r["n"] == n]:
            s = r["serve"]
            if s.get("sweep"):
                points = s["sweep"]
                line = ax.plot(
                    [p["p50_ms"] for p in points],
                    [p["recall_at_10"] for p in points],
                    marker="o",
                    label=r["index"],
                )[0]
                for p in points:
                    ax.annotate(
                        str(p["nprobe"]),
                        (p["p50_ms"], p["recall_at_10"]),
                        textcoords="offset points",
                        xytext=(3, -9),
                        fontsize=7,
                    )
                ax.plot(
                    [s["warm"]["p50_ms"]],
                    [s["warm"]["recall_at_10"]],
                    marker="*",
                    markersize=14,
                    color=line.get_color(),
                    linestyle="none",
                )
            else:
                ax.plot(
                    [s["warm"]["p50_ms"]],
                    [s["warm"]["recall_at_10"]],
                    marker="s",
                    color="black",
                    linestyle="none",
                    label=f"{r['index']} (exact)",
                )
        ax.axhline(TARGET["recall"], color="grey", linestyle=":", label="recall@10 = 0.95")
        ax.axvline(TARGET["p50_ms"], color="grey", linestyle="--", label="p50 = 10 ms")
        ax.set_xscale("log")
        ax.set_xlabel("warm single-query p50 (ms, log)")
        ax.set_ylabel("recall@10 against exact search")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"N = {n:,} (★ = nprobe chosen by the build)")
        ax.legend(fontsize=8, loc="lower right")
    machine = report["machine"]
    fig.suptitle(
        f"Simulated libraries from {report['data']['real_vectors']:,} real vectors "
        f"(d = {report['data']['dim']}), {machine['cores']} cores, "
        f"{machine['faiss_omp_threads']} threads",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out.with_suffix(".png"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
    elif args.render:
        report = json.loads(args.render.read_text())
        report["notes"] = args.note or report.get("notes", [])
        write_outputs(report, args.out)
        say(markdown(report))
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
