"""Embedding throughput: one process against the Ray engine, on the same images.

    .venv/bin/python benchmarks/ray_bench.py [--images 512] [--small 32] [--model DIR]
        [--num-gpus-per-worker G]

Images: the first N IU X-ray train images (256 x 256 PNG). Every engine embeds them cold (no
feature cache), in this run, one after the other:

- `single`: `embed_cases` in this process (torch on every core), as `index build` does on a
  first build;
- `ray-1`, `ray-2`: `embed_cases_ray` on a local Ray runtime started for the measurement, with
  1 and 2 actors. The wall clock includes starting Ray and the actors (what a user waits for);
  the steady rate is measured from the first vector back to the last.

The same is run at `--small` images to show Ray's fixed cost at small N. The image-reading
stage alone (open + transform, one core) is timed too: it bounds how many CPUs a GPU needs.
Every Ray result is compared with the single process's (max abs difference). Writes
results/ray_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medxpert.atomic import atomic_write_json, atomic_write_text
from medxpert.config import Settings
from medxpert.data import load_cases, open_image
from medxpert.encoders import DualEncoder
from medxpert.index import embed_cases
from medxpert.index.ray_engine import RayOptions, embed_cases_ray


def parse_args() -> argparse.Namespace:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--small", type=int, default=32)
    parser.add_argument("--model", default=settings.encoder, help="model name or folder")
    parser.add_argument("--out", type=Path, default=settings.results_dir / "ray_bench")
    parser.add_argument(
        "--num-gpus-per-worker", type=float, default=0.0, help="GPUs per actor (0: the CPU)"
    )
    return parser.parse_args()


def image_cases(n: int):
    """The first `n` IU train cases with an image, as image-only cases (no report)."""
    from dataclasses import replace

    cases = [case for case in load_cases("iu_xray", "train") if case.has_image][:n]
    return [replace(case, findings="", impression="", report="") for case in cases]


def time_single(encoder: DualEncoder, cases) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = embed_cases(encoder, cases)["images"].vectors
    return time.perf_counter() - start, vectors


def time_ray(encoder: DualEncoder, cases, workers: int, gpus: float) -> dict:
    import ray

    shards = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    vectors = embed_cases_ray(
        encoder,
        cases,
        shards,
        options=RayOptions(workers=workers, num_gpus_per_worker=gpus, rows_per_shard=8),
    )["images"].vectors
    done = time.perf_counter()
    ray.shutdown()
    first = min(path.stat().st_mtime for path in shards.glob("*.parquet"))
    last = max(path.stat().st_mtime for path in shards.glob("*.parquet"))
    shutil.rmtree(shards)
    steady = (len(cases) - 8) / (last - first) if last > first else float("nan")
    return {
        "wall_s": done - start,
        "ray_start_s": started - start,
        "steady_images_per_s": steady,
        "vectors": vectors,
    }


def reading_rate(encoder: DualEncoder, cases) -> float:
    transform = encoder.image_transform()
    start = time.perf_counter()
    for case in cases:
        transform(open_image(case.image_path))
    return len(cases) / (time.perf_counter() - start)


def measure(encoder: DualEncoder, n: int, gpus: float) -> dict:
    cases = image_cases(n)
    single_s, single_vectors = time_single(encoder, cases)
    row = {"images": len(cases), "single": {"wall_s": single_s, "images_per_s": n / single_s}}
    for workers in (1, 2):
        found = time_ray(encoder, cases, workers, gpus)
        found["images_per_s"] = n / found["wall_s"]
        found["max_abs_diff"] = float(np.abs(found.pop("vectors") - single_vectors).max())
        row[f"ray-{workers}"] = found
    return row


def main() -> None:
    args = parse_args()
    encoder = DualEncoder.load(args.model, models_dir=Settings.from_env().models_dir, device="cpu")
    rows = [measure(encoder, n, args.num_gpus_per_worker) for n in (args.small, args.images)]
    read = reading_rate(encoder, image_cases(min(args.images, 256)))
    report = {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model": encoder.info["path"],
        "num_gpus_per_worker": args.num_gpus_per_worker,
        "rows": rows,
        "read_transform_images_per_s_one_core": read,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), report)
    lines = [
        "| images | engine | wall s | images/s (wall) | steady images/s | Ray start s | "
        "vs single | max abs diff |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        base = row["single"]["images_per_s"]
        lines.append(
            f"| {row['images']} | single | {row['single']['wall_s']:.1f} | {base:.1f} | | | "
            "1.00x | |"
        )
        for name in ("ray-1", "ray-2"):
            found = row[name]
            lines.append(
                f"| {row['images']} | {name} | {found['wall_s']:.1f} | "
                f"{found['images_per_s']:.1f} | {found['steady_images_per_s']:.1f} | "
                f"{found['ray_start_s']:.1f} | {found['images_per_s'] / base:.2f}x | "
                f"{found['max_abs_diff']:.1e} |"
            )
    lines.append("")
    lines.append(f"Reading + transforming alone, one core: {read:.0f} images/s.")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
