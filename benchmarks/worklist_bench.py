"""Worklist throughput: one `medxpert diagnose --input` run against a `medxpert diagnose --image`
process per study, on the same studies.

    .venv/bin/python benchmarks/worklist_bench.py [--studies 30] [--model DIR] [--index DIR]

Studies: the first N IU X-ray test studies (every view, frontal first), written as a CSV
worklist (`path`, `study`). Both ways run the `medxpert` command in processes, one after the
other in this run, after a discarded warm-up process, with the same settings (forced, the
offline writer, the model and library of MEDXPERT_MODELS_DIR / MEDXPERT_INDEXES_DIR, only
read). Each wall clock includes the process starts (imports, model and library loads): what a
user waits for. The batch run's own figure (diagnosis only, after the load) is given too, and
every study's triage and probabilities are compared between the two ways. Writes
results/worklist_bench.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from medxpert.atomic import atomic_write_json, atomic_write_text
from medxpert.config import Settings
from medxpert.data import group_studies, load_cases
from medxpert.index.library import library_artifacts
from medxpert.interop.worklist import Study

_BATCH_RATE = re.compile(r"in ([\d.]+) s \(([\d.]+) studies/s\)")


def parse_args() -> argparse.Namespace:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--index", help="library name or folder (default: MEDXPERT_ENCODER's)")
    parser.add_argument("--model", type=Path, help="default: the model the library records")
    parser.add_argument("--out", type=Path, default=settings.results_dir / "worklist_bench")
    args = parser.parse_args()
    args.model, args.index = library_artifacts(args.index, args.model, settings)
    return args


def iu_studies(n: int) -> list[Study]:
    """The first `n` IU test studies with images, their views frontal first."""
    cases = [case for case in load_cases("iu_xray", "test") if case.has_image]
    return [
        Study(study.study_id, tuple(Path(case.image_path) for case in study.images))
        for study in group_studies(cases)[:n]
    ]


def write_csv(studies: list[Study], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "study"])
        writer.writerows([str(image), study.name] for study in studies for image in study.paths)


def medxpert(arguments: list[str], model: Path, index: Path) -> tuple[float, str]:
    """Run `medxpert diagnose ARGUMENTS` in a process, forced (the guard runs but refuses
    nothing, so that both ways diagnose every study); (wall seconds, stdout)."""
    command = [sys.executable, "-m", "medxpert", "-q", "diagnose", "--force", "--model", str(model)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--index", str(index), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"medxpert diagnose {' '.join(arguments)} failed:\n{done.stderr}")
    return seconds, done.stdout


def batch(studies: list[Study], work: Path, model: Path, index: Path) -> dict:
    table = work / "worklist.csv"
    write_csv(studies, table)
    seconds, printed = medxpert(["--input", str(table), "--out", str(work / "batch")], model, index)
    inside = _BATCH_RATE.search(printed)
    return {
        "seconds": round(seconds, 2),
        "studies_per_s": round(len(studies) / seconds, 3),
        "diagnosis_only_seconds": float(inside[1]) if inside else None,
        "diagnosis_only_studies_per_s": float(inside[2]) if inside else None,
    }


def one_at_a_time(studies: list[Study], work: Path, model: Path, index: Path) -> dict:
    per_study = []
    for study in studies:
        images = [argument for path in study.paths for argument in ("--image", str(path))]
        target = work / "single" / f"{study.slug}.json"
        seconds, _ = medxpert([*images, "--json", str(target)], model, index)
        per_study.append(seconds)
    total = sum(per_study)
    return {
        "seconds": round(total, 2),
        "studies_per_s": round(len(studies) / total, 3),
        "seconds_per_process_mean": round(total / len(studies), 2),
        "seconds_per_process_min": round(min(per_study), 2),
    }


def agreement(studies: list[Study], work: Path) -> dict:
    """How many studies got the same triage and probabilities (to 1e-6) both ways."""
    same_triage = same_probabilities = 0
    for study in studies:
        ours = json.loads((work / "batch" / study.slug / "report.json").read_text())
        theirs = json.loads((work / "single" / f"{study.slug}.json").read_text())
        same_triage += ours["report"]["triage"] == theirs["report"]["triage"]
        same_probabilities += all(
            abs(p - theirs["probabilities"][label]) < 1e-6
            for label, p in ours["probabilities"].items()
        )
    return {"same_triage": same_triage, "same_probabilities": same_probabilities}


def main() -> None:
    args = parse_args()
    studies = iu_studies(args.studies)
    with tempfile.TemporaryDirectory(prefix="worklist-bench-") as folder:
        work = Path(folder)
        # a discarded process first: the files (Python packages, model, library, images) in
        # the page cache for both ways
        medxpert(["--image", str(studies[0].paths[0])], args.model, args.index)
        load = os.getloadavg()[0]
        results = {
            "batch": batch(studies, work, args.model, args.index),
            "one_process_per_study": one_at_a_time(studies, work, args.model, args.index),
        }
        results["agreement"] = agreement(studies, work)
    results["ratio"] = round(
        results["batch"]["studies_per_s"] / results["one_process_per_study"]["studies_per_s"], 1
    )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.platform()}",
        "load_average_start_end": [round(load, 2), round(os.getloadavg()[0], 2)],
        "model": str(args.model),
        "library": str(args.index),
        "studies": len(studies),
        "images": sum(len(study.paths) for study in studies),
        "results": results,
    }
    atomic_write_json(args.out.with_suffix(".json"), report)
    atomic_write_text(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    batch_, single = report["results"]["batch"], report["results"]["one_process_per_study"]
    agree = report["results"]["agreement"]
    n = report["studies"]
    return (
        f"{n} studies ({report['images']} images); load average "
        f"{report['load_average_start_end'][0]} → {report['load_average_start_end'][1]}\n\n"
        "| way | wall s | studies/s |\n| --- | ---: | ---: |\n"
        f"| one `diagnose --input` run (CSV worklist) | {batch_['seconds']:.1f} | "
        f"{batch_['studies_per_s']:.2f} |\n"
        f"| the same run, diagnosis only (after the load) | "
        f"{batch_['diagnosis_only_seconds']} | {batch_['diagnosis_only_studies_per_s']} |\n"
        f"| one `diagnose --image` process per study | {single['seconds']:.1f} | "
        f"{single['studies_per_s']:.3f} |\n\n"
        f"Batch ÷ one process per study: ×{report['results']['ratio']} "
        f"(a process: {single['seconds_per_process_mean']:.1f} s mean, "
        f"{single['seconds_per_process_min']:.1f} s min). Same triage in "
        f"{agree['same_triage']}/{n} studies, same probabilities in "
        f"{agree['same_probabilities']}/{n}.\n"
    )


if __name__ == "__main__":
    main()
