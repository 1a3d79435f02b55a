"""Agreement of MedXpert's report labeler with the IU X-ray MeSH tags (a reference no one here
wrote), per CheXpert-14 label.

    .venv/bin/python benchmarks/labeler_agreement.py        (or ./dev.sh labels)

Development set: IU train+val (the phrase vocabulary was refined by reading its errors).
Held-out set: IU test (not looked at while building the vocabulary). Writes
results/labeler_agreement.{json,md,png} and prints the Markdown table.
"""

from __future__ import annotations

import platform
import time
from datetime import date

import numpy as np

from medxpert.atomic import atomic_write_json, atomic_write_text
from medxpert.config import Settings
from medxpert.data import load_cases
from medxpert.eval.classification import label_agreement
from medxpert.eval.plots import grouped_bar_chart
from medxpert.labels import CHEXPERT_LABELS, UNCERTAIN_POLICIES, ReportLabeler

MIN_SUPPORT = 30  # labels with at least this many development positives enter the macro F1
SETS = {"dev (train+val)": ("train", "val"), "test (held out)": ("test",)}


def studies(splits):
    """One case per study (IU rows are per image; the report and tags are per study)."""
    seen, unique = set(), []
    for case in load_cases("iu_xray", splits):
        if case.study_id not in seen and case.label_source != "none":
            seen.add(case.study_id)
            unique.append(case)
    return unique


def main() -> None:
    labeler = ReportLabeler()
    results = {
        "date": date.today().isoformat(),
        "machine": platform.platform(),
        "min_support": MIN_SUPPORT,
        "sets": {},
    }
    for set_name, splits in SETS.items():
        cases = studies(splits)
        reference = np.stack([case.labels for case in cases])
        start = time.perf_counter()
        predicted = labeler.label_many([case.text(("findings", "impression")) for case in cases])
        seconds = time.perf_counter() - start
        results["sets"][set_name] = {
            "studies": len(cases),
            "seconds": round(seconds, 1),
            "policies": {},
        }
        for policy in UNCERTAIN_POLICIES:
            rows = label_agreement(reference, predicted, uncertain=policy)
            results["sets"][set_name]["policies"][policy] = [
                {
                    "label": r.label,
                    "support": r.support,
                    "precision": round(r.precision, 3),
                    "recall": round(r.recall, 3),
                    "f1": round(r.f1, 3),
                }
                for r in rows
            ]
    dev_rows = results["sets"]["dev (train+val)"]["policies"]["positive"]
    macro_labels = [r["label"] for r in dev_rows if r["support"] >= MIN_SUPPORT]
    results["macro_labels"] = macro_labels
    for block in results["sets"].values():
        for policy, rows in block["policies"].items():
            block[f"macro_f1_uncertain_{policy}"] = round(
                float(np.mean([r["f1"] for r in rows if r["label"] in macro_labels])), 3
            )
    settings = Settings.from_env()
    out = settings.results_dir / "labeler_agreement"
    atomic_write_json(out.with_suffix(".json"), results)
    markdown = to_markdown(results)
    atomic_write_text(out.with_suffix(".md"), markdown)
    grouped_bar_chart(
        list(CHEXPERT_LABELS),
        {
            f"{name}, uncertain→positive": [r["f1"] for r in block["policies"]["positive"]]
            for name, block in results["sets"].items()
        },
        out.with_suffix(".png"),
        title="Report labeler vs IU X-ray MeSH tags (F1 per label)",
        ylabel="F1",
    )
    print(markdown)
    print(f"wrote {out}.json, .md and .png")


def to_markdown(results: dict) -> str:
    lines = []
    for name, block in results["sets"].items():
        positive = {r["label"]: r for r in block["policies"]["positive"]}
        negative = {r["label"]: r for r in block["policies"]["negative"]}
        lines += [
            f"**{name}**: {block['studies']} studies, labelled in {block['seconds']} s. "
            f"Macro F1 over the {len(results['macro_labels'])} labels with ≥ "
            f"{results['min_support']} dev positives: "
            f"**{block['macro_f1_uncertain_positive']}** (uncertain → positive), "
            f"{block['macro_f1_uncertain_negative']} (uncertain → negative).",
            "",
            "| label | MeSH positives | P | R | F1 | F1 (uncertain → negative) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label in CHEXPERT_LABELS:
            p, n = positive[label], negative[label]
            marker = "" if label in results["macro_labels"] else " ¹"
            lines.append(
                f"| {label}{marker} | {p['support']} | {p['precision']:.2f} | "
                f"{p['recall']:.2f} | {p['f1']:.2f} | {n['f1']:.2f} |"
            )
        lines.append("")
    lines.append(f"¹ fewer than {results['min_support']} dev positives: not in the macro F1.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
