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
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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

K = 10
GIB = 1024**3
GB = 1e9
TARGET_N, TARGET_D = 377_000, 512  # MIMIC-CXR's size, the project's widest embedding
TARGETS = {"bound_ratio": 1.3, "approx_p50_ms": 5.0, "recall": 0.95, "batch_qps": 250.0}
RULE_THRESHOLDS_MS = (10.0, 50.0, 100.0)
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


def say(text: str = "") -> None:
    print(text, flush=True)


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


def nlist_for(n: int) -> int:
    """The same rule as medxpert.index.vector_index._resolve_factory fills "{nlist}" with
    (copied: importing medxpert loads torch)."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), max(n // 39, 1)))


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


def faiss_single(index: Any) -> Callable[[np.ndarray], np.ndarray]:
    return partial(_faiss_one, index)


def _faiss_one(index: Any, query: np.ndarray) -> np.ndarray:
    return index.search(query[None, :], K)[1][0]


def faiss_batch(index: Any, queries: np.ndarray) -> np.ndarray:
    return index.search(queries, K)[1]


def _ours_one(index: Any, query: np.ndarray) -> np.ndarray:
    return index.search(query[None, :], K)[1][0]


def _ours_batch(index: Any, queries: np.ndarray) -> np.ndarray:
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
    from medxpert.index.vector_index import VectorIndex

    say("  exact: FAISS IDMap2,Flat (raw search) and MedXpert VectorIndex('Flat')")
    index, _, build_s = build("Flat", gallery, 0)
    raw_single, raw_ids = time_single(faiss_single(index), queries, warm)
    raw_qps = time_batch(partial(faiss_batch, index), batch, repeats)
    flat_bytes = index_bytes(index)
    ours = VectorIndex(index, "Flat")
    flat_single, exact_ids = time_single(partial(_ours_one, ours), queries, warm)
    flat_qps = time_batch(partial(_ours_batch, ours), batch, repeats)
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
            stats, ids = time_single(faiss_single(index), queries, warm)
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


# --- summaries ----------------------------------------------------------------------------------
def best_approx(row: dict[str, Any], recall: float) -> dict[str, Any] | None:
    good = [a for a in row.get("approx", []) if a["recall_at_10"] >= recall]
    return min(good, key=lambda a: a["p50_ms"]) if good else None


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, PASS / MISS / not measured."""
    row = next((r for r in results if r["n"] == TARGET_N and r["d"] == TARGET_D), None)
    where = f"N={TARGET_N}, d={TARGET_D}"
    checks = []

    def check(name: str, value: float | None, ok: bool, shown: str, measured: bool = True) -> None:
        status = "PASS" if ok else ("MISS" if measured else "not measured")
        checks.append({"target": name, "value": value, "status": status, "shown": shown})

    if row is None:
        for name in (
            "exact single p50 / bandwidth bound <= 1.3",
            "approx recall@10 >= 0.95 at p50 <= 5 ms",
            "exact batched q/s >= 250",
        ):
            check(f"{name} ({where})", None, False, "not measured", measured=False)
    else:
        ratio = row["exact"]["p50_over_bound"]
        check(
            f"exact single p50 / bandwidth bound <= {TARGETS['bound_ratio']} ({where})",
            ratio,
            ratio <= TARGETS["bound_ratio"],
            f"{row['exact']['faiss']['p50_ms']:.2f} ms / {row['exact']['bound_ms']:.2f} ms "
            f"= {ratio:.2f}x",
        )
        best = best_approx(row, TARGETS["recall"])
        if best is None:
            check(
                f"approx recall@10 >= 0.95 at p50 <= 5 ms ({where})",
                None,
                False,
                "no approximate setting reached recall@10 0.95",
            )
        else:
            check(
                f"approx recall@10 >= 0.95 at p50 <= 5 ms ({where})",
                best["p50_ms"],
                best["p50_ms"] <= TARGETS["approx_p50_ms"],
                f"{best['index']} {best['param']}={best['value']}: recall "
                f"{best['recall_at_10']:.3f}, p50 {best['p50_ms']:.2f} ms",
            )
        qps = row["exact"]["faiss"]["batch_qps"]
        check(
            f"exact batched q/s >= {TARGETS['batch_qps']:.0f} ({where})",
            qps,
            qps >= TARGETS["batch_qps"],
            f"{qps:.0f} q/s",
        )
    ratios = [(r["exact"]["single_speedup"], r["exact"]["batch_speedup"]) for r in results]
    if ratios:
        worst = min(min(pair) for pair in ratios)
        shown = "; ".join(
            f"N={r['n']} d={r['d']}: single {s:.2f}x, batch {b:.2f}x"
            for r, (s, b) in zip(results, ratios, strict=True)
        )
        check("FAISS ahead of NumPy in every row (single and batch)", worst, worst > 1.0, shown)
    return checks


def size_rule(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Figures behind a default-index-by-corpus-size rule: per d, the exact p50 at each N and
    the N at which it would reach each threshold (linear in N, from the largest N measured)."""
    rule = []
    for d in sorted({r["d"] for r in results}):
        rows = sorted((r for r in results if r["d"] == d), key=lambda r: r["n"])
        largest = rows[-1]
        ms_per_vector = largest["exact"]["faiss"]["p50_ms"] / largest["n"]
        entry: dict[str, Any] = {
            "d": d,
            "exact_p50_ms_by_n": {
                str(r["n"]): round(r["exact"]["faiss"]["p50_ms"], 3) for r in rows
            },
            "best_approx_p50_ms_by_n": {},
            "largest_n_under_ms": {},
            "extrapolated_n_at_ms": {},
        }
        for r in rows:
            best = best_approx(r, TARGETS["recall"])
            entry["best_approx_p50_ms_by_n"][str(r["n"])] = (
                None
                if best is None
                else f"{best['index']} {best['param']}={best['value']}: {best['p50_ms']:.3f}"
            )
        for limit in RULE_THRESHOLDS_MS:
            under = [r["n"] for r in rows if r["exact"]["faiss"]["p50_ms"] < limit]
            entry["largest_n_under_ms"][str(limit)] = max(under) if under else None
            entry["extrapolated_n_at_ms"][str(limit)] = int(limit / ms_per_vector)
        rule.append(entry)
    return rule


# --- output -------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    machine, bw = report["machine"], report["bandwidth"]
    lines = [
        "## Search speed: exact and approximate indexes on synthetic unit vectors",
        "",
        f"- Date: {machine['date']}",
        f"- Command: `{machine['command']}`",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM; "
        f"numpy {machine['numpy']}, faiss {machine['faiss']}; {machine['thread_note']}",
        f"- Memory bandwidth ({bw['array_gib']} GiB array, best of {bw['repeats']}): copy "
        f"{bw['copy_read_write_gbs']} GB/s (read + write bytes); read-only "
        + ", ".join(f"{k} {v} GB/s" for k, v in bw["read_only_gbs"].items())
        + f". The bound uses {bw['bound_gbs']} GB/s ({bw['bound_source']}): a scan only reads.",
        f"- Data: random normal vectors, L2-normalised, float32 (queries from another seed); "
        f"{report['settings']['queries']} single queries timed after warm-up, batches of "
        f"{report['settings']['batch']}. All FAISS indexes are `IDMap2,<type>` with inner "
        "product, as `VectorIndex` builds them; bytes/vector include the 8-byte id.",
        f"- IVF: nlist as in `VectorIndex` (min(4 sqrt N, N/39)), trained on max(39 nlist, 50k) "
        f"vectors (capped at N); HNSW32 with the default efConstruction, built up to N = "
        f"{report['settings']['skip_hnsw_above']}.",
        "- Random unit vectors have no cluster structure: the worst case for approximate "
        "recall. Exact-search timings do not depend on the data.",
        "- `PQ{m}` as a factory string includes FAISS's polysemous training (its default; "
        "`PQ{m}np` skips it): most of the PQ build time at small N.",
        "- bound ms = N × d × 4 bytes / read bandwidth. While the gallery fits in the CPU "
        "caches (small N) a scan can beat it (ratio < 1).",
        "",
        "### Exact search",
        "",
        "FAISS = MedXpert's `VectorIndex('Flat')`: FAISS's SIMD inner-product kernel + a "
        "partial sort for single queries, FAISS's BLAS search for batches. raw = FAISS's own "
        "`IndexIDMap2.search` on the same index, for reference.",
        "",
        "| N | d | FAISS p50 ms | FAISS p99 ms | raw p50 ms | NumPy p50 ms | NumPy p99 ms "
        "| single FAISS/NumPy | FAISS batch q/s | raw batch q/s | NumPy batch q/s "
        "| batch FAISS/NumPy | bound ms | p50 / bound |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for r in report["results"]:
        e = r["exact"]
        lines.append(
            f"| {r['n']:,} | {r['d']} | {e['faiss']['p50_ms']:.2f} | {e['faiss']['p99_ms']:.2f} "
            f"| {e['faiss_raw']['p50_ms']:.2f} "
            f"| {e['numpy']['p50_ms']:.2f} | {e['numpy']['p99_ms']:.2f} "
            f"| {e['single_speedup']:.2f}x | {e['faiss']['batch_qps']:.0f} "
            f"| {e['faiss_raw']['batch_qps']:.0f} | {e['numpy']['batch_qps']:.0f} "
            f"| {e['batch_speedup']:.2f}x | {e['bound_ms']:.2f} "
            f"| {e['p50_over_bound']:.2f}x |"
        )
    lines += [
        "",
        "### Approximate search (single queries; ✓ = each index's smallest setting with recall@10 "
        "≥ 0.95, ★ = the fastest of those)",
        "",
        "| N | d | index | setting | recall@10 | p50 ms | p99 ms | build s | bytes/vector |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        best = best_approx(r, TARGETS["recall"])
        lines.append(
            f"| {r['n']:,} | {r['d']} | Flat (exact) | | 1.000 "
            f"| {r['exact']['faiss']['p50_ms']:.2f} | {r['exact']['faiss']['p99_ms']:.2f} "
            f"| {r['exact']['faiss']['build_s']:.1f} "
            f"| {r['exact']['faiss']['bytes_per_vector']:.0f} |"
        )
        firsts: dict[str, int] = {}
        for a in r["approx"]:
            if a["recall_at_10"] >= TARGETS["recall"]:
                firsts.setdefault(a["index"], id(a))
        for a in r["approx"]:
            mark = (" ✓" if id(a) in firsts.values() else "") + (" ★" if a is best else "")
            lines.append(
                f"| {r['n']:,} | {r['d']} | {a['index']} | {a['param']}={a['value']}{mark} "
                f"| {a['recall_at_10']:.3f} | {a['p50_ms']:.3f} | {a['p99_ms']:.3f} "
                f"| {a['build_s']:.1f} | {a['bytes_per_vector']:.1f} |"
            )
        if "hnsw_skipped" in r:
            lines.append(
                f"| {r['n']:,} | {r['d']} | HNSW32 | skipped: {r['hnsw_skipped']} | | | | | |"
            )
    for skipped in report["skipped"]:
        lines.append(f"\nSkipped N={skipped['n']:,}, d={skipped['d']}: {skipped['reason']}")
    lines += ["", "### Targets", "", "| target | measured | status |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['shown']} | {t['status']} |" for t in report["targets"]]
    lines += [
        "",
        "### Figures for a default index by corpus size",
        "",
        "| d | N | exact FAISS p50 ms | exact NumPy p50 ms | fastest recall@10 ≥ 0.95 (p50 ms) |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(report["results"], key=lambda r: (r["d"], r["n"])):
        best = best_approx(r, TARGETS["recall"])
        shown = (
            "none"
            if best is None
            else (f"{best['index']} {best['param']}={best['value']} ({best['p50_ms']:.3f})")
        )
        lines.append(
            f"| {r['d']} | {r['n']:,} | {r['exact']['faiss']['p50_ms']:.2f} "
            f"| {r['exact']['numpy']['p50_ms']:.2f} | {shown} |"
        )
    lines.append("")
    for entry in report["size_rule"]:
        at = " / ".join(f"{v:,}" for v in entry["extrapolated_n_at_ms"].values())
        lines.append(
            f"- d={entry['d']}: exact single-query p50 would reach "
            f"{' / '.join(f'{t:.0f}' for t in RULE_THRESHOLDS_MS)} ms at N ≈ {at} "
            f"(linear in N from the largest N measured)"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """recall@10 against p50 at the largest N of each d, exact Flat p50 as a reference line."""
    if not report["results"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["d"] for r in report["results"]})
    fig, axes = plt.subplots(1, len(dims), figsize=(6.5 * len(dims), 4.8), squeeze=False)
    for ax, d in zip(axes[0], dims, strict=True):
        row = max((r for r in report["results"] if r["d"] == d), key=lambda r: r["n"])
        for name in dict.fromkeys(a["index"] for a in row["approx"]):
            points = [a for a in row["approx"] if a["index"] == name]
            ax.plot(
                [a["p50_ms"] for a in points],
                [a["recall_at_10"] for a in points],
                marker="o",
                label=name,
            )
            for a in points:
                ax.annotate(
                    str(a["value"]),
                    (a["p50_ms"], a["recall_at_10"]),
                    textcoords="offset points",
                    xytext=(3, 3),
                    fontsize=7,
                )
        exact = row["exact"]["faiss"]["p50_ms"]
        ax.axvline(exact, color="black", linestyle="--", label=f"exact Flat p50 {exact:.3g} ms")
        ax.axhline(TARGETS["recall"], color="grey", linestyle=":", label="recall@10 = 0.95")
        ax.set_xscale("log")
        ax.set_xlabel("single-query p50 latency (ms, log)")
        ax.set_ylabel("recall@10")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"N = {row['n']:,}, d = {d}")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "Approximate indexes on random unit vectors "
        f"({report['machine']['cpu']}, {report['machine']['threads']} threads)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def output_path(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


def write_outputs(report: dict[str, Any], out: Path) -> None:
    report["targets"] = targets(report["results"])
    report["size_rule"] = size_rule(report["results"])
    out.parent.mkdir(parents=True, exist_ok=True)
    output_path(out, ".json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    output_path(out, ".md").write_text(markdown(report))
    plot(report, output_path(out, ".png"))


def print_summary(report: dict[str, Any]) -> None:
    say("\n=== targets ===")
    for t in report["targets"]:
        say(f"  [{t['status']}] {t['target']}: {t['shown']}")
    say("\n=== figures for a default index by corpus size (exact FAISS Flat, single query) ===")
    for entry in report["size_rule"]:
        say(f"  d={entry['d']}: p50 ms by N: {entry['exact_p50_ms_by_n']}")
        for limit in RULE_THRESHOLDS_MS:
            key = str(limit)
            say(
                f"    under {limit:.0f} ms: largest N measured "
                f"{entry['largest_n_under_ms'][key]}, extrapolated N at {limit:.0f} ms "
                f"{entry['extrapolated_n_at_ms'][key]:,}"
            )
        say(f"    fastest recall@10 >= 0.95 by N: {entry['best_approx_p50_ms_by_n']}")


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
