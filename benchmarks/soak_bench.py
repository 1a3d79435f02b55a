"""Soak test of `medxpert serve`: one worker against two, on loopback, side by side.

    .venv/bin/python benchmarks/soak_bench.py [--model DIR] [--index DIR] [--duration 60]
        [--clients 8] [--workers 1 2]

For each worker count: start `medxpert serve --workers N` on a free loopback port, wait until
every worker answers /health, warm up, then run `--clients` concurrent clients for
`--duration` seconds. Each client loops over a mix of /search by text (IU test reports),
/search by X-ray and /diagnose by X-ray (every other one with a clinical note), the X-rays
taken from the test splits of the shared packs. Every request opens its own connection, so
that any worker may accept it. Recorded: errors (anything but 200), latency p50 / p95,
throughput, the requests each worker answered (the X-MedXpert-Worker header), and each
worker's RSS, PSS and private (anonymous) memory from /proc/PID/smaps_rollup, sampled every
second (shared, memory-mapped pages count in every RSS but are split in PSS). The load
average is recorded at the start and end. Writes results/soak_bench.{json,md,png}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from medxpert.api.server import WORKER_HEADER
from medxpert.atomic import atomic_path, atomic_write_json, atomic_write_text
from medxpert.config import Settings
from medxpert.data import load_cases
from medxpert.index.library import library_artifacts

ROOT = Path(__file__).resolve().parents[1]
NOTE = "Fever, productive cough and shortness of breath for three days."
KINDS = ("search_text", "search_image", "diagnose_image")
MEMORY_FIELDS = ("Rss", "Pss", "Anonymous")


def parse_args() -> argparse.Namespace:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", help="library name or folder (default: MEDXPERT_ENCODER's)")
    parser.add_argument("--model", type=Path, help="default: the model the library records")
    parser.add_argument("--duration", type=float, default=60, help="seconds per configuration")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=settings.results_dir / "soak_bench")
    args = parser.parse_args()
    args.model, args.index = library_artifacts(args.index, args.model, settings)
    return args


@dataclass
class Query:
    kind: str
    path: str
    json: dict | None = None
    data: dict | None = None
    image: tuple[str, bytes] | None = None


def queries(k: int, count: int = 60) -> list[Query]:
    """`count` requests of each kind, from the packs' test splits."""
    images = [c for s in ("nih_cxr14", "covid_cxr") for c in load_cases(s, "test") if c.has_image]
    reports = [c for c in load_cases("iu_xray", "test") if c.text()]
    rng = np.random.default_rng(0)
    xrays = [
        (Path(images[i].image_path).name, Path(images[i].image_path).read_bytes())
        for i in rng.choice(len(images), min(count, len(images)), replace=False)
    ]
    texts = [reports[i].text() for i in rng.choice(len(reports), count, replace=False)]
    out = []
    for i, (text, xray) in enumerate(zip(texts, itertools.cycle(xrays), strict=False)):
        out.append(Query("search_text", "/search", json={"text": text, "k": k}))
        out.append(Query("search_image", "/search", data={"k": str(k)}, image=xray))
        note = {"note": NOTE} if i % 2 else {}
        out.append(Query("diagnose_image", "/diagnose", data={"k": str(k), **note}, image=xray))
    return out


def send(client: httpx.Client, base: str, query: Query) -> httpx.Response:
    files = {"image": (query.image[0], query.image[1], "image/png")} if query.image else None
    return client.post(base + query.path, json=query.json, data=query.data, files=files)


def new_client() -> httpx.Client:
    """A client that opens a new connection for every request (no keep-alive)."""
    return httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0))


@dataclass
class Server:
    """`medxpert serve --workers N` in a subprocess on a free loopback port."""

    workers: int
    model: Path
    index: Path
    log: Path
    process: subprocess.Popen | None = None
    port: int = 0
    pids: set[int] = field(default_factory=set)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300) -> None:
        self.port = _free_port()
        command = [sys.executable, "-m", "medxpert", "serve", "--workers", str(self.workers)]
        command += ["--port", str(self.port), "--model", str(self.model)]
        command += ["--index", str(self.index)]
        environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
        environment.pop("MEDXPERT_API_KEY", None)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, env=environment, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        with new_client() as client:
            while len(self.pids) < self.workers:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start; see {self.log}")
                try:
                    answer = client.get(f"{self.base}/health")
                    if answer.status_code == 200:
                        self.pids.add(int(answer.headers[WORKER_HEADER]))
                except httpx.TransportError:
                    time.sleep(0.5)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and anonymous memory of a process in MB (smaps_rollup)."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, amount = line.split(":")[0], line.split()[1]
        if name in MEMORY_FIELDS:
            values[name.lower()] = round(int(amount) / 1024, 1)
    return values


def index_mapped(pid: int, index: Path) -> bool:
    """Whether the process maps the library's FAISS files (rather than holding copies)."""
    return str(index.resolve()) in Path(f"/proc/{pid}/maps").read_text()


def sample_memory(server: Server, stop: threading.Event, samples: list[dict]) -> None:
    started = time.monotonic()
    while not stop.wait(1.0):
        at = round(time.monotonic() - started, 1)
        samples.append({"t": at, **{str(pid): memory(pid) for pid in server.pids}})


def client_loop(
    base: str, batch: list[Query], offset: int, until: float, started: float, out: list[dict]
) -> None:
    with new_client() as client:
        for query in itertools.islice(itertools.cycle(batch), offset, None):
            if time.monotonic() >= until:
                return
            begin = time.monotonic()
            try:
                answer = send(client, base, query)
                status, worker = answer.status_code, int(answer.headers.get(WORKER_HEADER, 0))
            except httpx.HTTPError as error:
                status, worker = type(error).__name__, 0
            out.append(
                {
                    "t": round(begin - started, 3),
                    "ms": round((time.monotonic() - begin) * 1000, 1),
                    "kind": query.kind,
                    "status": status,
                    "worker": worker,
                }
            )


def soak(server: Server, batch: list[Query], clients: int, duration: float) -> dict:
    with new_client() as client:  # warm-up: every kind, a few times per worker
        for query in batch[: 3 * 2 * server.workers]:
            send(client, server.base, query)
    before = {pid: memory(pid) for pid in server.pids}
    samples: list[dict] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(server, stop, samples))
    requests: list[dict] = []
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=client_loop,
            args=(server.base, batch, i * 7, started + duration, started, requests),
        )
        for i in range(clients)
    ]
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    after = {pid: memory(pid) for pid in server.pids}
    mapped = all(index_mapped(pid, server.index) for pid in server.pids)
    return summarize(server, requests, elapsed, before, after, samples, mapped)


def summarize(
    server: Server,
    requests: list[dict],
    elapsed: float,
    before: dict[int, dict],
    after: dict[int, dict],
    samples: list[dict],
    mapped: bool,
) -> dict:
    """The numbers of one configuration, with the raw requests and memory samples."""
    latencies = [r["ms"] for r in requests if r["status"] == 200]
    per_kind = {
        kind: round(float(np.percentile([r["ms"] for r in requests if r["kind"] == kind], 50)), 1)
        for kind in KINDS
    }
    parent = memory(server.process.pid) if server.process.pid not in server.pids else {}
    return {
        "workers": server.workers,
        "requests": len(requests),
        "errors": sum(r["status"] != 200 for r in requests),
        "errors_by_status": dict(Counter(str(r["status"]) for r in requests if r["status"] != 200)),
        "seconds": round(elapsed, 1),
        "requests_per_s": round(len(requests) / elapsed, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "p50_ms_by_kind": per_kind,
        "answered_by": {str(pid): sum(r["worker"] == pid for r in requests) for pid in server.pids},
        "memory_before_mb": {str(pid): m for pid, m in before.items()},
        "memory_after_mb": {str(pid): m for pid, m in after.items()},
        "parent_memory_mb": parent,
        "pss_total_mb": round(sum(m["pss"] for m in after.values()) + parent.get("pss", 0), 1),
        "index_memory_mapped": mapped,
        "memory_samples": samples,
        "raw": requests,
    }


def table(runs: list[dict]) -> str:
    lines = [
        "| workers | requests | errors | req/s | p50 ms | p95 ms | p50 ms search text / image "
        "/ diagnose | answered per worker | RSS per worker MB, start → end | PSS per worker "
        "MB, end | PSS total MB | index mapped |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: | --- |",
    ]
    for run in runs:
        pids = list(run["memory_after_mb"])
        rss = ", ".join(
            f"{run['memory_before_mb'][p]['rss']:.0f} → {run['memory_after_mb'][p]['rss']:.0f}"
            for p in pids
        )
        pss = ", ".join(f"{run['memory_after_mb'][p]['pss']:.0f}" for p in pids)
        kinds = " / ".join(f"{run['p50_ms_by_kind'][k]:.0f}" for k in KINDS)
        answered = ", ".join(str(n) for n in run["answered_by"].values())
        statuses = ", ".join(f"{n}× {s}" for s, n in run["errors_by_status"].items())
        errors = f"{run['errors']} ({statuses})" if statuses else "0"
        lines.append(
            f"| {run['workers']} | {run['requests']} | {errors} | "
            f"{run['requests_per_s']:.2f} | {run['p50_ms']:.0f} | {run['p95_ms']:.0f} | {kinds} | "
            f"{answered} | {rss} | {pss} | {run['pss_total_mb']:.0f} | "
            f"{'yes' if run['index_memory_mapped'] else 'no'} |"
        )
    return "\n".join(lines)


def ratios(runs: list[dict]) -> dict:
    """Each configuration against the first (throughput, latency, total PSS)."""
    first = runs[0]
    keys = ("requests_per_s", "p50_ms", "p95_ms", "pss_total_mb")
    return {
        f"{run['workers']}/{first['workers']}": {k: round(run[k] / first[k], 2) for k in keys}
        for run in runs[1:]
    }


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    for run in runs:
        times = np.array([r["t"] for r in run["raw"]])
        ms = np.array([r["ms"] for r in run["raw"]])
        order = np.argsort(times)
        label = f"{run['workers']} worker{'s' if run['workers'] > 1 else ''}"
        points = axis.scatter(times, ms, s=4, alpha=0.25)
        window = max(1, len(ms) // 40)
        rolling = np.convolve(ms[order], np.ones(window) / window, mode="valid")
        axis.plot(times[order][window - 1 :], rolling, color=points.get_facecolor()[0][:3])
        axis.plot([], [], color=points.get_facecolor()[0][:3], label=f"{label} (rolling mean)")
    axis.set(xlabel="seconds into the soak", ylabel="latency (ms)", yscale="log")
    axis.set_title("medxpert serve under 8 concurrent clients: latency over time")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def main() -> None:
    args = parse_args()
    batch = queries(args.k)
    load_start = _uptime()
    print(f"load at start: {load_start}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for workers in args.workers:
        server = Server(workers, args.model, args.index, args.out.with_suffix(f".{workers}.log"))
        server.start()
        try:
            run = soak(server, batch, args.clients, args.duration)
        finally:
            server.stop()
        runs.append(run)
        shown = {k: v for k, v in run.items() if k not in ("raw", "memory_samples")}
        print(json.dumps(shown, indent=1), flush=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": str(args.model),
        "index": str(args.index),
        "clients": args.clients,
        "duration_s": args.duration,
        "load_start": load_start,
        "load_end": _uptime(),
        "ratios": ratios(runs) if len(runs) > 1 else {},
        "runs": runs,
    }
    atomic_write_json(args.out.with_suffix(".json"), report)
    markdown = (
        f"{report['date']}, {report['machine']}\n\n`{report['command']}`\n\nload at start: "
        f"{load_start}; at end: {report['load_end']}\n\n{table(runs)}\n\n"
        f"ratios: {json.dumps(report['ratios'])}\n"
    )
    atomic_write_text(args.out.with_suffix(".md"), markdown)
    plot(runs, args.out.with_suffix(".png"))
    print(markdown)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    return f"{model}, {os.cpu_count()} cores, {platform.platform()}"


if __name__ == "__main__":
    main()
