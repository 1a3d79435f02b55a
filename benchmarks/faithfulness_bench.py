"""How often the faithfulness check fires: on an unfaithful LLM's reports, and on the offline
writer's own.

    .venv/bin/python benchmarks/faithfulness_bench.py [--model DIR] [--index DIR] [--limit N]

It uses the loopback server of this checkout's tests/openai_loopback.py.

Queries: the IU X-ray test studies, each by its frontal X-ray (`medxpert.eval.reports`
`image_items`, as `medxpert eval reports`). Each query's evidence is written up twice:

- by the offline writer, whose own faithfulness check should never fire;
- by the local-LLM writer (`openai-compatible`, the real `openai` client) against the loopback
  server in "unfaithful" mode: it echoes the offline draft it is sent and adds, to the
  findings, a finding no retrieved study supports ("Large right pneumothorax.", citing the
  top study), a sentence that cites nothing and one with an `XXXX` token, and the invented
  finding to the impression.

Figures: the share of reports with at least one removal, removals by reason, the injected
sentences removed (per kind), the draft's sentences kept, and the fallbacks to the offline
report. Writes results/faithfulness.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from medxpert.atomic import atomic_write_json
from medxpert.config import Settings
from medxpert.data import load_cases
from medxpert.eval.reports import REPORT_SECTIONS, image_items
from medxpert.index.library import library_artifacts
from medxpert.pipeline import DiagnosisPipeline
from medxpert.report import OfflineWriter, OpenAICompatibleWriter, StructuredReport
from medxpert.report.deid import deidentify

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's tests/, first
from tests.openai_loopback import (
    DEIDENTIFIED,
    MODEL,
    UNCITED,
    UNSUPPORTED,
    LoopbackLLM,
)

REMOVED = re.compile(r'^Removed "(?P<text>.*)" from the (?P<section>\w+): (?P<why>.*)\.$')
REASONS = (
    ("it cites no retrieved study", "cites no retrieved study"),
    ("it states .*, which the evidence does not support", "states an unsupported finding"),
    ("it states .*, but none of the studies", "states a finding none of its cited studies has"),
    ("it suggests", "suggests an unsupported finding"),
    ("it denies", "denies a supported finding"),
    ("it holds a de-identification token", "holds an XXXX token"),
)
INJECTED = {"unsupported finding": UNSUPPORTED, "no citation": UNCITED, "XXXX token": DEIDENTIFIED}


def parse_args() -> argparse.Namespace:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", help="library name or folder (default: MEDXPERT_ENCODER's)")
    parser.add_argument("--model", type=Path, help="default: the model the library records")
    parser.add_argument("--limit", type=int, default=None, help="at most N test studies")
    parser.add_argument("--k", type=int, default=None, help="studies retrieved (default: top_k)")
    parser.add_argument("--out", type=Path, default=settings.results_dir / "faithfulness.json")
    args = parser.parse_args()
    args.model, args.index = library_artifacts(args.index, args.model, settings)
    return args


def removals(report: StructuredReport, skip: int = 0) -> list[dict]:
    """The faithfulness check's removals among `report.warnings[skip:]`: text, section and
    reason."""
    found = []
    for warning in report.warnings[skip:]:
        match = REMOVED.match(warning)
        if match:
            why = match["why"]
            reason = next((name for p, name in REASONS if re.match(p, why)), why)
            found.append({"text": match["text"], "section": match["section"], "reason": reason})
    return found


def summary(removed: list[list[dict]]) -> dict:
    n = len(removed)
    return {
        "reports": n,
        "reports_with_a_removal": sum(bool(r) for r in removed),
        "share_with_a_removal": round(sum(bool(r) for r in removed) / n, 4) if n else None,
        "removals": sum(len(r) for r in removed),
        "removals_by_reason": dict(Counter(x["reason"] for r in removed for x in r).most_common()),
    }


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    pipeline = DiagnosisPipeline.from_artifacts(args.model, args.index, device="cpu")
    items = image_items(load_cases("iu_xray", "test"), REPORT_SECTIONS, args.limit)
    offline_writer = OfflineWriter()
    offline_removed, llm_removed = [], []
    injected = Counter()
    draft_sentences = draft_kept = fallbacks = 0
    with LoopbackLLM("unfaithful") as llm:
        writer = OpenAICompatibleWriter(llm.url, MODEL, timeout_s=30, retries=0)
        for i, item in enumerate(items, start=1):
            context = pipeline.evidence(**item.query, k=args.k, force=True)
            offline = offline_writer.write(context)
            report = writer.write(context)
            offline_removed.append(removals(offline))
            llm_removed.append(removals(report, skip=len(offline.warnings)))
            fallbacks += report.writer != writer.name
            kept = {s.text for s in report.statements} if report.writer == writer.name else set()
            for kind, text in INJECTED.items():
                injected[kind] += text not in kept
            drafted = [deidentify(s.text) for s in offline.statements]
            draft_sentences += len(drafted)
            draft_kept += sum(text in kept for text in drafted)
            if i % 50 == 0:
                print(f"{i}/{len(items)} studies, {time.perf_counter() - started:.0f} s")
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
        "model": str(args.model),
        "index": str(args.index),
        "queries": f"IU X-ray test studies by their frontal X-ray (n={len(items)})",
        "k": args.k or pipeline.k,
        "offline writer": summary(offline_removed),
        "local LLM, unfaithful": {
            **summary(llm_removed),
            "injected_sentences_removed": {
                kind: f"{injected[kind]}/{len(items)}" for kind in INJECTED
            },
            "draft_sentences_kept": f"{draft_kept}/{draft_sentences}",
            "fallbacks_to_the_offline_report": fallbacks,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(args.out, results)
    print(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
