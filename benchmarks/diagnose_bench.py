"""Warm per-stage latency of `DiagnosisPipeline.diagnose` on the CPU, offline writer.

    .venv/bin/python benchmarks/diagnose_bench.py [--queries 40] [--synthetic 377000]

Two libraries, one model (models/medxpert-default):
1. the case library as built by `./dev.sh index` (the shared packs' train + val);
2. the same library with its image index grown to `--synthetic` vectors (MIMIC-CXR's 377k by
   default): copies of the real image vectors with Gaussian noise (σ = 0.02 per dimension,
   renormalised), each a new case with the labels of the case it copies, so the neighbour
   structure stays realistic.

Queries: test-split X-rays of the shared packs (half with a clinical note) and IU test reports
as text queries, after 3 warm-up queries. Writes results/diagnose_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from medxpert.atomic import atomic_write_json, atomic_write_text
from medxpert.config import Settings
from medxpert.data import load_cases
from medxpert.index import CaseLibrary, VectorIndex
from medxpert.index.library import library_artifacts
from medxpert.pipeline import DiagnosisPipeline
from medxpert.retrieval import SearchEngine

STAGES = ("encode", "search", "caption", "read-outs", "write", "total")
NOTE = "Fever, productive cough and shortness of breath for three days."


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=40, help="timed queries per library")
    parser.add_argument("--synthetic", type=int, default=377_000, help="image vectors (0: skip)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="default results/diagnose_bench")
    return parser.parse_args()


def queries(n: int) -> list[dict]:
    """Half image queries (every other one with a note), half text queries."""
    images = [c for s in ("nih_cxr14", "covid_cxr") for c in load_cases(s, "test") if c.has_image]
    reports = [c for c in load_cases("iu_xray", "test") if c.text()]
    rng = np.random.default_rng(0)
    picked_images = rng.choice(len(images), n // 2 + 3, replace=False)
    picked_reports = rng.choice(len(reports), n - n // 2, replace=False)
    out = [
        {"image": images[i].image_path, "note": NOTE if j % 2 else None}
        for j, i in enumerate(picked_images)
    ]
    return out + [{"text": reports[i].text()} for i in picked_reports]


def run(pipeline: DiagnosisPipeline, batch: list[dict], k: int) -> dict:
    for query in batch[:3]:  # warm-up
        pipeline.diagnose(**query, k=k, force=True)
    # force: the guard runs (and is timed) on every X-ray, and refuses none of the test ones
    timings = [pipeline.diagnose(**query, k=k, force=True).timings_ms for query in batch[3:]]
    summary = {}
    for kind, rows in (
        ("image", [t for t in timings if "caption" in t]),
        ("text", [t for t in timings if "caption" not in t]),
    ):
        summary[kind] = {
            stage: {
                "p50_ms": round(float(np.percentile([t[stage] for t in rows], 50)), 2),
                "p95_ms": round(float(np.percentile([t[stage] for t in rows], 95)), 2),
            }
            for stage in STAGES
            if rows and stage in rows[0]
        }
        summary[kind]["n"] = len(rows)
    return summary


def grown(library: CaseLibrary, size: int, seed: int = 0) -> CaseLibrary:
    """The library with its image index grown to `size` noisy copies of its image vectors."""
    stored = library.stored_vectors("images")
    rng = np.random.default_rng(seed)
    extra = size - len(stored.rows)
    source = rng.integers(0, len(stored.rows), extra)
    vectors = stored.vectors[source] + rng.normal(0, 0.02, (extra, stored.vectors.shape[1]))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    start = len(library.cases)
    copies = [
        dataclasses.replace(
            library.case(stored.rows[s]), case_id=f"synthetic:{i}", study_id=f"synthetic:{i}"
        )
        for i, s in enumerate(source)
    ]
    index = VectorIndex.build(stored.vectors, stored.rows, "Flat")
    index.add(vectors, np.arange(start, start + extra))
    return CaseLibrary(
        library.cases + copies,
        {**library.indexes, "images": index},
        library.encoder_fingerprint,
        library.encoder_backbone,
        library.text_sections,
    )


def main() -> None:
    args = parse_args()
    settings = Settings.from_env()
    pipeline = DiagnosisPipeline.from_artifacts(
        *library_artifacts(None, None, settings), device="cpu"
    )
    batch = queries(args.queries)
    results = {"packs": run(pipeline, batch, args.k)}
    sizes = {"packs": pipeline.engine.library.count("images")}
    print(json.dumps(results["packs"], indent=1))
    if args.synthetic:
        started = time.perf_counter()
        library = grown(pipeline.engine.library, args.synthetic)
        print(
            f"grew the image index to {library.count('images'):,} vectors in "
            f"{time.perf_counter() - started:.0f} s"
        )
        big = DiagnosisPipeline(
            SearchEngine(library, pipeline.engine.encoder), pipeline.captioner, pipeline.writer
        )
        results["synthetic"] = run(big, batch, args.k)
        sizes["synthetic"] = library.count("images")
        print(json.dumps(results["synthetic"], indent=1))
    out = args.out or settings.results_dir / "diagnose_bench"
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
        "k": args.k,
        "image_index_sizes": sizes,
        "results": results,
    }
    atomic_write_json(out.with_suffix(".json"), report)
    atomic_write_text(out.with_suffix(".md"), markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "| library | image vectors | query | n | "
        + " | ".join(f"{stage} p50 / p95 ms" for stage in STAGES)
        + " |",
        "| --- | ---: | --- | ---: |" + " ---: |" * len(STAGES),
    ]
    for name, result in report["results"].items():
        for kind in ("image", "text"):
            row = result[kind]
            cells = [
                f"{row[s]['p50_ms']:.1f} / {row[s]['p95_ms']:.1f}" if s in row else "–"
                for s in STAGES
            ]
            lines.append(
                f"| {name} | {report['image_index_sizes'][name]:,} | {kind} | {row['n']} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
