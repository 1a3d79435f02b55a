"""Clinical context A/B: the same X-rays queried alone and with their clinical note.

The COVID pack's case notes mix history ("Fever and cough for three days.") with imaging
findings ("Bilateral patchy opacities."). A note that described the image would leak the
answer, so the note of a case is only its history: the sentences in which the report labeler
finds no CheXpert observation and that name no imaging term (`IMAGING`: "chest X-ray shows a
nodular pattern", "the right heart border was lost", "left lung is clear"). Cases without such
a sentence are left out.

`run(pipeline)` queries every such X-ray of `CONTEXT_SOURCE` (all splits: the library holds
them, so each query leaves its own patient out) alone and with its history as the note.

Per condition: label P@10 of the retrieved cases (a hit is relevant when it shares a positive
label with the query) and the AUC of the pathology probabilities (the vote of the hits) per
label with ≥ `MIN_AUC_POSITIVES` positives and some negatives, with 95% bootstrap intervals.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from medxpert.data import SPLITS, Case, load_cases
from medxpert.eval.results import Evaluation, Row
from medxpert.eval.retrieval import SOURCE_NAMES
from medxpert.eval.sources import CONTEXT_SOURCE
from medxpert.labels import CHEXPERT_LABELS, default_labeler
from medxpert.metrics.bootstrap import bootstrap_auc, bootstrap_mean

if TYPE_CHECKING:
    from medxpert.pipeline import DiagnosisPipeline

MIN_AUC_POSITIVES = 10
CONDITIONS = {"image only": False, "image + note": True}  # name → whether the note is used
SENTENCE = re.compile(r"[^.!?]+[.!?]?")
# words of imaging reports that the CheXpert labeler does not count as observations
IMAGING = re.compile(
    r"x-?ray|radiograph|\bCT\b|computed tomography|\bscan|imaging|\bfilms?\b|\bcxr\b|"
    r"\bfig(ure)?\b|appearance|pattern|opacit|infiltrat|consolidat|ground.glass|reticul|"
    r"interstitial|nodul|\bnodal\b|pneumatocele|lucen|shadow|marking|\blungs?\b|\blobes?\b|"
    r"\bzones?\b|hil(um|ar|a)\b|mediastin|heart (border|size)|cardiac silhouette|"
    r"diaphragm|costophrenic|pleura|air.?space",
    re.IGNORECASE,
)


def history_note(case_note: str) -> str:
    """The sentences of `case_note` that mention no CheXpert observation and no imaging term
    (history, symptoms, tests)."""
    labeler = default_labeler()
    sentences = [s.strip() for s in SENTENCE.findall(case_note or "") if s.strip()]
    return " ".join(s for s in sentences if not labeler.mentions(s) and not IMAGING.search(s))


@dataclass(frozen=True)
class Retrieved:
    """What one query returned: the labels of its hits (k, 14) and its probabilities (14,)."""

    hit_labels: np.ndarray
    probabilities: np.ndarray


# A condition: (image, note or None, patient to exclude) → what it retrieved.
Query = Callable[[str, str | None, str], Retrieved]


@dataclass(frozen=True)
class ContextItem:
    image_path: str
    note: str
    patient_id: str
    labels: np.ndarray  # the query case's CheXpert-14 vector


def context_items(cases: Sequence[Case]) -> list[ContextItem]:
    """The cases with an image whose case note has a history part, with that part as note."""
    items = []
    for case in cases:
        note = history_note(case.text()) if case.has_image else ""
        if note:
            items.append(ContextItem(case.image_path, note, case.patient_id, case.labels))
    return items


def evaluate_context(
    items: Sequence[ContextItem],
    conditions: Mapping[str, bool],
    query: Query,
    *,
    task: str = "COVID pack, leave one patient out",
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Row]:
    """Every metric under every condition (name → whether the note is used)."""
    truth = np.stack([item.labels for item in items]).astype(np.float64)
    truth[truth == -1] = np.nan
    positives = np.stack([item.labels == 1 for item in items])
    results = {
        name: [
            query(item.image_path, item.note if with_note else None, item.patient_id)
            for item in tqdm(items, desc=name, unit="query", leave=False)
        ]
        for name, with_note in conditions.items()
    }
    rows = []
    precision = {
        name: bootstrap_mean(
            np.array(
                [
                    np.mean(((r.hit_labels == 1) & positives[i]).any(axis=1))
                    for i, r in enumerate(found)
                ]
            ),
            n_boot,
            seed,
        )
        for name, found in results.items()
    }
    rows.append(Row(task, "label P@k", precision))
    counts, negatives = np.sum(truth == 1, axis=0), np.sum(truth == 0, axis=0)
    labels = [
        j
        for j in range(len(CHEXPERT_LABELS))
        if counts[j] >= MIN_AUC_POSITIVES and negatives[j] > 0
    ]
    if not labels:
        return rows
    aucs = {
        name: bootstrap_auc(
            truth[:, labels], np.stack([r.probabilities for r in found])[:, labels], n_boot, seed
        )
        for name, found in results.items()
    }
    for position, j in enumerate(labels):
        metric = f"AUC {CHEXPERT_LABELS[j]} (n+={int(counts[j])})"
        rows.append(Row(task, metric, {name: auc[0][position] for name, auc in aucs.items()}))
    rows.append(
        Row(task, f"AUC macro ({len(labels)} labels)", {name: auc[1] for name, auc in aucs.items()})
    )
    return rows


def run(
    pipeline: DiagnosisPipeline,
    *,
    k: int = 10,
    n_boot: int = 1000,
    source: str = CONTEXT_SOURCE,
) -> Evaluation:
    """The A/B on every X-ray of `source` with a history note, through `pipeline.diagnose`
    (past the input guard: every labelled X-ray counts)."""
    from medxpert.retrieval import Filters

    items = context_items([case for split in SPLITS for case in load_cases(source, split)])

    def query(image: str, note: str | None, patient: str) -> Retrieved:
        diagnosis = pipeline.diagnose(
            image=image, note=note, k=k, filters=Filters.of(exclude_patients=[patient]), force=True
        )
        return Retrieved(
            np.stack([hit.case.labels for hit in diagnosis.hits]),
            np.array([diagnosis.probabilities[label] for label in CHEXPERT_LABELS]),
        )

    return Evaluation(
        evaluate_context(items, CONDITIONS, query, n_boot=n_boot),
        list(CONDITIONS),
        f"Clinical context A/B ({len(items)} {SOURCE_NAMES.get(source, source)} X-rays with a "
        "history note)",
        {"k": k, "note_weight": pipeline.engine.note_weight, "bootstrap": n_boot},
    )
