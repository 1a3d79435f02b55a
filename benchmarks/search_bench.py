"""Search speed of the case library's index types on synthetic unit vectors.

    .venv/bin/python benchmarks/search_bench.py                     (full run, tens of minutes)
    .venv/bin/python benchmarks/search_bench.py --sizes 2000 --dims 64 --queries 50 --quick

Per (N, d), side by side in one process:

* exact search: FAISS ``IDMap2,Flat`` (inner product, as `VectorIndex` builds it) against NumPy
  brute force (one matmul + ``argpartition``), single queries (p50 / p99 latency) and batches
  (queries/s), with the FAISS / NumPy speed ratios;
* approximate search: ``HNSW32`` (efSearch sweep), ``IVF{nlist},SQ8`` and ``IVF{nlist},PQ{m}``
  (nprobe sweep), each with recall@10 against the exact result, latency, build time and bytes
  per vector;
* the physical limit: this machine's memory bandwidth, measured in the same run, and the exact
  single-query latency as a multiple of (N * d * 4 bytes) / read bandwidth.

Vectors are random normal, L2-normalised float32 (queries from a separate seed). Such data have
no cluster structure, the hardest case for approximate indexes: recall on real embeddings is
higher at the same settings. Exact-search timings do not depend on the data.

Writes OUT.json (all numbers, machine, command line), OUT.md (tables for benchmarks/RESULTS.md)
and OUT.png (recall@10 against latency at the largest N), by default OUT=results/search_bench.
This file measures; `search_report.py` turns the measurements into the targets, the size rule,
the tables and the plot (and redraws them from an OUT.json alone).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from search_report import (
    TARGETS,
    output_path,
    print_summary,
    say,
    write_outputs,
)

from medxpert.index.vector_index import VectorIndex, nlist_for

K = 10
GIB = 1024**3
GB = 1e9
MEMORY_FRACTION = 0.6
GALLERY_SEED, QUERY_SEED, SAMPLE_SEED = 20_261_122, 77_777, 5
ADD_CHUNK = 50_000

_THREAD_LIMITS: Any = None  # keeps the threadpoolctl limit alive for the whole run


# --- setup --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 377_000, 1_000_000]
    )
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--queries", type=int, default=200, help="single queries timed")
    parser.add_argument("--batch", type=int, default=256, help="queries per batch")
    parser.add_argument(
        "--quick", action="store_true", help="fewer warm-ups and repeats, shorter parameter sweeps"
    )
    parser.add_argument(
        "--out",
        default="results/search_bench",
        help="output prefix: writes OUT.json, OUT.md, OUT.png",
    )
    parser.add_argument(
        "--blas-threshold",
        type=int,
        default=1,
        help="FAISS distance_compute_blas_threshold (1: as MedXpert runs; 20: FAISS's default)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="FAISS OpenMP and NumPy BLAS threads (default: all cores)",
    )
    parser.add_argument(
        "--skip-hnsw-above",
        type=int,
        default=400_000,
        help="build HNSW only up to this N (slow to build on few cores)",
    )
    parser.add_argument(
        "--ef-search",
        type=int,
        nargs="+",
        default=None,
        help="HNSW efSearch values (default 16 32 64 128 256)",
    )
    parser.add_argument(
        "--nprobe",
        type=int,
        nargs="+",
        default=None,
        help="IVF nprobe values (default 8 16 32 64 128 256)",
    )
    parser.add_argument(
        "--bw-gib",
        type=float,
        default=1.0,
        help="size of the array for the memory-bandwidth test, GiB",
    )
    return parser.parse_args(argv)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int, blas_threshold: int) -> str:
    """Set FAISS's OpenMP and NumPy's BLAS thread counts, and the query count from which FAISS
    uses BLAS (medxpert.index.vector_index.BLAS_THRESHOLD, 1, is what MedXpert runs with; 20 is
    FAISS's default); returns a line saying what was set."""
    global _THREAD_LIMITS
    faiss.omp_set_num_threads(threads)
    faiss.cvar.distance_compute_blas_threshold = blas_threshold
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return (
            f"FAISS OpenMP threads: {threads}; NumPy BLAS threads: left as the BLAS "
            "chooses (threadpoolctl not installed; set OPENBLAS_NUM_THREADS)"
        )
    _THREAD_LIMITS = threadpool_limits(limits=threads, user_api="blas")
    blas = ", ".join(
        f"{i['internal_api']} {i.get('version')} x{i['num_threads']}"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    )
    return f"FAISS OpenMP threads: {threads}; NumPy BLAS threads: {threads} ({blas})"


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty off Linux)."""
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def machine_info(threads: int, thread_note: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = meminfo()
    return {
        "cpu": cpu,
        "cores": cpu_count(),
        "threads": threads,
        "thread_note": thread_note,
        "ram_gib": round(memory.get("MemTotal", 0) / GIB, 1),
        "ram_available_gib": round(memory.get("MemAvailable", 0) / GIB, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "load_average_at_start": load_average(),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
    }


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    """tqdm when installed and the loop is long enough to watch, else the plain iterable."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=total < 4, file=sys.stderr)


# --- memory bandwidth ---------------------------------------------------------------------------
def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: page faults, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _threaded_sum(pool: ThreadPoolExecutor, chunks: list[np.ndarray]) -> list[float]:
    return list(pool.map(np.sum, chunks))


def measure_bandwidth(gib: float, repeats: int, threads: int) -> dict[str, Any]:
    """Best-of-`repeats` memory bandwidth in GB/s (1e9 B/s): a copy (read + write bytes) and
    three read-only scans (NumPy sum on one thread, sums of slices on `threads` threads, BLAS
    sdot). The read-only bound is the best read-only figure."""
    n = int(gib * GIB) // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros_like(src)
    nbytes = src.nbytes
    copy = best_seconds(partial(np.copyto, dst, src), repeats)
    del dst
    gc.collect()
    read_sum = best_seconds(src.sum, repeats)
    chunks = np.array_split(src, threads * 4)
    with ThreadPoolExecutor(threads) as pool:  # NumPy releases the GIL inside reductions
        read_threads = best_seconds(partial(_threaded_sum, pool, chunks), repeats)
    read_dot = best_seconds(partial(np.dot, src, src), repeats)
    del src, chunks
    gc.collect()
    reads = {
        "numpy_sum_1thread": nbytes / read_sum / GB,
        f"numpy_sum_{threads}threads": nbytes / read_threads / GB,
        "blas_sdot": nbytes / read_dot / GB,
    }
    best = max(reads, key=reads.__getitem__)
    return {
        "array_gib": round(nbytes / GIB, 2),
        "repeats": repeats,
        "copy_read_write_gbs": round(2 * nbytes / copy / GB, 2),
        "read_only_gbs": {key: round(value, 2) for key, value in reads.items()},
        "bound_gbs": round(reads[best], 2),
        "bound_source": f"read-only, {best}",
    }


# --- data and measurements ----------------------------------------------------------------------
def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    """`n` random normal float32 vectors of dimension `d`, L2-normalised."""
    rng = np.random.default_rng([seed, n, d])
    vectors = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, ADD_CHUNK):
        block = vectors[start : start + ADD_CHUNK]
        block[...] = rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return vectors


def numpy_single(gallery: np.ndarray, query: np.ndarray) -> np.ndarray:
    scores = gallery @ query
    top = np.argpartition(scores, -K)[-K:]
    return top[np.argsort(-scores[top])]


def numpy_batch(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = queries @ gallery.T
    top = np.argpartition(scores, -K, axis=1)[:, -K:]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def time_single(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, warm: int
) -> tuple[dict[str, float], np.ndarray]:
    """Latency of one query at a time (after `warm` untimed ones) and the ids found."""
    for query in queries[:warm]:
        search(query)
    timed = queries[warm:]
    latencies = np.empty(len(timed))
    found = np.full((len(timed), K), -1, dtype=np.int64)
    for row, query in enumerate(timed):
        start = time.perf_counter()
        ids = search(query)
        latencies[row] = time.perf_counter() - start
        found[row, : len(ids)] = ids[:K]
    ms = latencies * 1e3
    stats = {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }
    return stats, found


def time_batch(search: Callable[[np.ndarray], Any], batch: np.ndarray, repeats: int) -> float:
    """Queries per second for one call on the whole batch (best of `repeats`, after a warm-up)."""
    return len(batch) / best_seconds(lambda: search(batch), repeats)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    hits = (found[:, :, None] == exact[:, None, :]) & (found[:, :, None] >= 0)
    return float(hits.any(axis=2).sum(axis=1).mean() / K)


def index_bytes(index: Any) -> int:
    """Size of the serialised index, counted as it is written (no copy kept)."""
    written = 0

    def count(chunk: bytes) -> int:
        nonlocal written
        written += len(chunk)
        return len(chunk)

    if hasattr(faiss, "PyCallbackIOWriter"):
        writer = faiss.PyCallbackIOWriter(count)
        faiss.write_index(index, writer)
        del writer
        return written
    return int(faiss.serialize_index(index).nbytes)


def pq_m(d: int) -> int:
    """Sub-quantisers for PQ: about one byte per 8 dimensions, a divisor of d."""
    return next(m for m in range(max(1, d // 8), 0, -1) if d % m == 0)


def train_size(n: int, nlist: int) -> int:
    return min(n, max(39 * nlist, 50_000))


def build(factory: str, gallery: np.ndarray, train_rows: int) -> tuple[Any, float, float]:
    """An IDMap2-wrapped inner-product index as VectorIndex builds it, trained on a sample of
    `train_rows` vectors when it needs training. Returns (index, train s, train + add s)."""
    index = faiss.index_factory(gallery.shape[1], f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    start = time.perf_counter()
    if not index.is_trained:
        rng = np.random.default_rng(SAMPLE_SEED)
        rows = np.sort(rng.choice(len(gallery), size=train_rows, replace=False))
        index.train(np.ascontiguousarray(gallery[rows]))
        del rows
    trained = time.perf_counter()
    starts = range(0, len(gallery), ADD_CHUNK)
    for begin in progress(starts, len(starts), f"add {factory}"):
        block = gallery[begin : begin + ADD_CHUNK]
        index.add_with_ids(block, np.arange(begin, begin + len(block), dtype=np.int64))
    return index, trained - start, time.perf_counter() - start


def search_one(index: Any, query: np.ndarray) -> np.ndarray:
    """The ids of one query's top K (a FAISS index or a VectorIndex: both have `search`)."""
    return index.search(query[None, :], K)[1][0]


def search_batch(index: Any, queries: np.ndarray) -> np.ndarray:
    return index.search(queries, K)[1]


def estimate_peak_bytes(n: int, d: int, batch: int, n_queries: int) -> int:
    """Rough peak for one (N, d): the gallery, plus the largest of NumPy's batch (scores and
    argpartition's int64 indices), a second copy in the Flat index, HNSW (vectors + links) or
    IVF (codes + training sample), plus 10 % and the queries."""
    gallery = n * d * 4
    numpy_batch_bytes = batch * n * (4 + 8)
    flat = gallery + n * 16
    hnsw = gallery + n * (32 * 2 * 4 + 64)
    ivf = n * (d + 16) + min(n, 200_000) * d * 4
    queries = (n_queries + batch) * d * 4
    return int(1.1 * (gallery + max(numpy_batch_bytes, flat, hnsw, ivf) + queries))


# --- one (N, d) ---------------------------------------------------------------------------------
def bench_size(n: int, d: int, args: argparse.Namespace, bandwidth_gbs: float) -> dict[str, Any]:
    warm = 3 if args.quick else 10
    repeats = 1 if args.quick else 3
    gallery = unit_vectors(n, d, GALLERY_SEED)
    queries = unit_vectors(args.queries + warm, d, QUERY_SEED)
    batch = unit_vectors(args.batch, d, QUERY_SEED + 1)
    result: dict[str, Any] = {"n": n, "d": d}
    bound_ms = n * d * 4 / (bandwidth_gbs * GB) * 1e3

    # exact: NumPy
    say(f"  exact: NumPy brute force ({args.queries} single queries, batch of {args.batch})")
    np_single, np_ids = time_single(partial(numpy_single, gallery), queries, warm)
    np_qps = time_batch(partial(numpy_batch, gallery), batch, repeats)

    # exact: FAISS Flat through IDMap2 (raw FAISS search, for reference), then MedXpert's
    # VectorIndex over the same index (a SIMD scan for a few queries, BLAS for batches)
    say("  exact: FAISS IDMap2,Flat (raw search) and MedXpert VectorIndex('Flat')")
    index, _, build_s = build("Flat", gallery, 0)
    raw_single, raw_ids = time_single(partial(search_one, index), queries, warm)
    raw_qps = time_batch(partial(search_batch, index), batch, repeats)
    flat_bytes = index_bytes(index)
    ours = VectorIndex(index, "Flat")
    flat_single, exact_ids = time_single(partial(search_one, ours), queries, warm)
    flat_qps = time_batch(partial(search_batch, ours), batch, repeats)
    del index, ours
    gc.collect()
    numpy_agrees = recall_at_k(np_ids, exact_ids)
    result["exact"] = {
        "faiss": {
            **flat_single,
            "batch_qps": flat_qps,
            "build_s": build_s,
            "bytes_per_vector": flat_bytes / n,
        },
        "faiss_raw": {**raw_single, "batch_qps": raw_qps},
        "raw_agrees": recall_at_k(raw_ids, exact_ids),
        "numpy": {**np_single, "batch_qps": np_qps},
        "single_speedup": np_single["p50_ms"] / flat_single["p50_ms"],
        "batch_speedup": flat_qps / np_qps,
        "numpy_recall_vs_faiss": numpy_agrees,
        "bound_ms": bound_ms,
        "p50_over_bound": flat_single["p50_ms"] / bound_ms,
    }
    say(f"  {'':8}{'p50 ms':>9}{'p99 ms':>9}{'batch q/s':>11}")
    say(f"  {'ours':8}{flat_single['p50_ms']:9.2f}{flat_single['p99_ms']:9.2f}{flat_qps:11.0f}")
    say(f"  {'raw':8}{raw_single['p50_ms']:9.2f}{raw_single['p99_ms']:9.2f}{raw_qps:11.0f}")
    say(f"  {'NumPy':8}{np_single['p50_ms']:9.2f}{np_single['p99_ms']:9.2f}{np_qps:11.0f}")
    say(
        f"  FAISS/NumPy speed: single {result['exact']['single_speedup']:.2f}x, batch "
        f"{result['exact']['batch_speedup']:.2f}x; bandwidth bound {bound_ms:.2f} ms, "
        f"FAISS p50 = {result['exact']['p50_over_bound']:.2f}x bound; NumPy top-10 agrees "
        f"{numpy_agrees:.3f}"
    )
    del batch
    gc.collect()

    # approximate
    result["approx"] = []
    nlist = nlist_for(n)
    m = pq_m(d)
    candidates: list[tuple[str, str, list[int]]] = []
    if n <= args.skip_hnsw_above:
        candidates.append(("HNSW32", "efSearch", sweep(args.ef_search, args.quick, "ef")))
    else:
        say(f"  HNSW32 skipped: N={n} > --skip-hnsw-above {args.skip_hnsw_above}")
        result["hnsw_skipped"] = f"N > --skip-hnsw-above {args.skip_hnsw_above}"
    probes = sorted({min(p, nlist) for p in sweep(args.nprobe, args.quick, "nprobe")})
    candidates += [(f"IVF{nlist},SQ8", "nprobe", probes), (f"IVF{nlist},PQ{m}", "nprobe", probes)]
    rows = train_size(n, nlist)
    result["ivf_training_vectors"] = rows
    params = faiss.ParameterSpace()
    for factory, knob, values in candidates:
        trains = "" if factory.startswith("HNSW") else f", trained on {rows} of {n} vectors"
        say(f"  approx: IDMap2,{factory} (building{trains})")
        index, train_s, build_s = build(factory, gallery, rows)
        nbytes = index_bytes(index)
        say(
            f"  {factory}: build {build_s:.1f} s (train {train_s:.1f} s), {nbytes / n:.1f} B/vector"
        )
        if ",PQ" in factory and not factory.endswith("np"):
            say("  (training includes FAISS's polysemous training, the factory default)")
        say(f"  {knob:>10}{'recall@10':>11}{'p50 ms':>9}{'p99 ms':>9}")
        for value in values:
            params.set_index_parameter(index, knob, value)
            stats, ids = time_single(partial(search_one, index), queries, warm)
            recall = recall_at_k(ids, exact_ids)
            result["approx"].append(
                {
                    "index": factory,
                    "param": knob,
                    "value": value,
                    "recall_at_10": recall,
                    **stats,
                    "build_s": build_s,
                    "train_s": train_s,
                    "bytes_per_vector": nbytes / n,
                }
            )
            say(f"  {value:>10}{recall:11.3f}{stats['p50_ms']:9.3f}{stats['p99_ms']:9.3f}")
        reached = [
            a for a in result["approx"][-len(values) :] if a["recall_at_10"] >= TARGETS["recall"]
        ]
        say(
            f"  smallest {knob} with recall@10 >= 0.95: {reached[0]['value']} "
            f"(p50 {reached[0]['p50_ms']:.3f} ms)"
            if reached
            else f"  no {knob} tried reached recall@10 0.95"
        )
        del index
        gc.collect()
    del gallery, queries
    gc.collect()
    return result


def sweep(values: list[int] | None, quick: bool, kind: str) -> list[int]:
    if values:
        return values
    full = [16, 32, 64, 128, 256] if kind == "ef" else [8, 16, 32, 64, 128, 256]
    return full[::2] if quick else full


# --- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = args.threads or cpu_count()
    thread_note = set_threads(threads, args.blas_threshold)
    thread_note += f"; FAISS distance_compute_blas_threshold {args.blas_threshold}"
    machine = machine_info(threads, thread_note)
    out = Path(args.out)
    say(f"MedXpert search benchmark, {machine['date']}")
    say(
        f"{machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM "
        f"({machine['ram_available_gib']} available); numpy {machine['numpy']}, "
        f"faiss {machine['faiss']} (GPUs seen: {machine['faiss_gpus']}; all timings on CPU)"
    )
    say(thread_note)
    say("FAISS indexes are timed through IDMap2 with inner product, as VectorIndex builds them.")
    load = machine["load_average_at_start"]
    if load and load[0] > 0.5:
        say(
            f"WARNING: load average {load[0]} before starting: other processes are using the CPU. "
            "Timings will be noisy; multi-threaded FAISS calls can wait a scheduler time slice "
            "(a floor of several ms per query). Run on an idle machine, or compare --threads 1."
        )

    repeats = 2 if args.quick else 5
    say(f"\nmemory bandwidth: {args.bw_gib} GiB array, best of {repeats} ...")
    bandwidth = measure_bandwidth(args.bw_gib, repeats, threads)
    say(
        f"  copy (read + write bytes): {bandwidth['copy_read_write_gbs']} GB/s; read-only: "
        + ", ".join(f"{k} {v} GB/s" for k, v in bandwidth["read_only_gbs"].items())
    )
    say(f"  exact-search bound uses {bandwidth['bound_gbs']} GB/s ({bandwidth['bound_source']})")

    report: dict[str, Any] = {
        "machine": machine,
        "settings": {
            "sizes": args.sizes,
            "dims": args.dims,
            "queries": args.queries,
            "batch": args.batch,
            "quick": args.quick,
            "k": K,
            "skip_hnsw_above": args.skip_hnsw_above,
            "seeds": {"gallery": GALLERY_SEED, "queries": QUERY_SEED, "ivf_sample": SAMPLE_SEED},
        },
        "bandwidth": bandwidth,
        "results": [],
        "skipped": [],
    }
    for d in args.dims:
        for n in args.sizes:
            available = meminfo().get("MemAvailable", 0)
            need = estimate_peak_bytes(n, d, args.batch, args.queries)
            say(f"\n=== N={n:,}, d={d} (~{need / GIB:.1f} GiB peak) ===")
            if available and need > MEMORY_FRACTION * available:
                reason = (
                    f"estimated {need / GIB:.1f} GiB > {MEMORY_FRACTION:.0%} of the "
                    f"{available / GIB:.1f} GiB available"
                )
                say(f"  skipped: {reason}")
                report["skipped"].append({"n": n, "d": d, "reason": reason})
                continue
            start = time.perf_counter()
            load = load_average()
            report["results"].append(bench_size(n, d, args, bandwidth["bound_gbs"]))
            report["results"][-1]["load_average_at_start"] = load
            say(f"  ({time.perf_counter() - start:.0f} s)")
            write_outputs(report, out)  # partial results survive an interrupted run
    write_outputs(report, out)
    print_summary(report)
    written = [output_path(out, suffix) for suffix in (".json", ".md", ".png")]
    say("\nwrote " + ", ".join(str(path) for path in written if path.exists()))


if __name__ == "__main__":
    main()
