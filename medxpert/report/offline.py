"""The offline writer (the default): a report in radiology prose, every sentence taken from a
retrieved study's report and citing it.

In the spirit of report generation by retrieving and selecting sentences (CXR-RePaiR, X-REM):

1. The sentences of the retrieved studies' findings and impressions (`report.sentences`) are
   merged into paraphrase groups (same labels, sentence embeddings ≥ `PARAPHRASE`). A group's
   *support* is the vote weight of the studies that state it, out of the studies with a report.
2. A sentence is *compatible* with the evidence when every finding it affirms is stated by the
   context (its vote reaches its threshold), every finding it hedges is stated or possible,
   no finding it denies is either, and, for each finding it affirms or hedges, one of the
   studies that state it is positive for that finding.
3. Findings: for each stated finding the best-supported compatible sentence that affirms it;
   for each possible finding one that hedges it ("possible small left effusion"), never a fact;
   then the sentences most retrieved studies agree on (support ≥ `CONSENSUS`), and the
   pertinent negatives radiologists state (no pneumothorax, no effusion, no consolidation)
   when studies with support ≥ `PERTINENT_SUPPORT` deny them; nothing twice. A stated finding
   no sentence states gets a plain sentence citing the studies positive for it.
   Each group speaks in the phrasing the library uses most (`ReportContext.phrasing`).
4. They are ordered as a report is: lines and tubes, heart and mediastinum, lungs, pleura,
   bones, the rest. The impression is chosen the same way from the impressions.
5. The faithfulness check (`report.faithfulness`) reads the result again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from medxpert.labels import PATHOLOGIES
from medxpert.report.context import ReportContext
from medxpert.report.faithfulness import enforce
from medxpert.report.parts import computed_parts, display
from medxpert.report.schema import Statement, StructuredReport
from medxpert.report.sentences import (
    REGIONS,
    Sentence,
    SentenceBank,
    default_bank,
    normalised,
    region_of,
)
from medxpert.retrieval.probabilities import hit_weights

PARAPHRASE = 0.85
REDUNDANT = 0.75  # a sentence this close to one already chosen adds nothing
CONSENSUS = 0.15
PERTINENT_SUPPORT = 0.15
PERTINENT_NEGATIVES = ("Pneumothorax", "Pleural Effusion", "Consolidation")
MAX_FINDINGS = 6  # chosen on the IU X-ray and R2Gen val splits (BLEU-4, ROUGE-L)
MAX_POSSIBLE = 1  # possibilities worded per report, the best-supported one
MAX_CITATIONS = 5
SECTIONS = ("findings", "impression")


@dataclass(eq=False)  # a group is itself, whatever its contents
class _Group:
    """Paraphrases of one sentence across the retrieved studies (best-weighted study first)."""

    sentence: Sentence
    vector: np.ndarray
    hits: list[int] = field(default_factory=list)
    support: float = 0.0
    phrasings: list[Sentence] = field(default_factory=list)

    @property
    def topic(self) -> frozenset[str]:
        return self.sentence.positive | self.sentence.uncertain | self.sentence.negative


class OfflineWriter:
    """`OfflineWriter().write(context)` → `StructuredReport` in prose, from the retrieved
    studies' sentences."""

    name = "offline"
    model = None
    send_image = False

    def __init__(self, bank: SentenceBank | None = None) -> None:
        self._bank = bank

    @property
    def bank(self) -> SentenceBank:
        return self._bank or default_bank()

    def write(self, context: ReportContext) -> StructuredReport:
        groups = self._groups(context)
        findings = self._findings(context, groups["findings"], groups["impression"])
        impression = self._impression(context, groups["impression"])
        report = StructuredReport(
            findings=findings,
            impression=impression,
            **computed_parts(context, findings + impression),
            writer=self.name,
        )
        return enforce(report, context)

    # --- the sentences of the retrieved studies ------------------------------------------------
    def _groups(self, context: ReportContext) -> dict[str, list[_Group]]:
        hits = context.hits
        weights = hit_weights(hits)
        texts = {section: [getattr(h.case, section) for h in hits] for section in SECTIONS}
        self.bank.prepare([t for section in texts.values() for t in section if t])
        reporting = sum(w for w, h in zip(weights, hits, strict=True) if h.case.text().strip())
        by_weight = sorted(range(len(hits)), key=lambda i: (-weights[i], i))
        groups: dict[str, list[_Group]] = {}
        for section in SECTIONS:
            items = [(s, i) for i in by_weight for s in self.bank.sentences(texts[section][i])]
            vectors = self.bank.vectors([s.text for s, _ in items])
            found: list[_Group] = []
            for (sentence, i), vector in zip(items, vectors, strict=True):
                group = next(
                    (
                        g
                        for g in found
                        if g.sentence.signature == sentence.signature
                        and float(vector @ g.vector) >= PARAPHRASE
                    ),
                    None,
                )
                if group is None:
                    found.append(group := _Group(sentence, vector))
                group.phrasings.append(sentence)
                if i not in group.hits:
                    group.hits.append(i)
                    group.support += weights[i] / (reporting or 1.0)
            for group in found:  # a group speaks in the library's most common phrasing
                here = Counter(normalised(s.text) for s in group.phrasings)
                group.sentence = max(
                    group.phrasings,
                    key=lambda s: (
                        context.phrasing.get(normalised(s.text), 0),
                        here[normalised(s.text)],
                    ),
                )
            groups[section] = found
        return groups

    def _compatible(self, group: _Group, context: ReportContext) -> bool:
        s, evidence = group.sentence, context.vote.evidence
        cited = {context.hits[i].case.case_id for i in group.hits}
        return (
            all(context.stated(label) for label in s.positive)
            and all(context.stated(label) or context.possible(label) for label in s.uncertain)
            and not any(context.stated(label) or context.possible(label) for label in s.negative)
            and all(cited & set(evidence[label]) for label in s.positive | s.uncertain)
        )

    def _statement(self, group: _Group, context: ReportContext) -> Statement:
        evidence = context.vote.evidence
        wanted = group.sentence.positive | group.sentence.uncertain
        # the studies positive for what the sentence affirms come first among its citations
        hits = sorted(
            group.hits,
            key=lambda i: -sum(context.hits[i].case.case_id in evidence[x] for x in wanted),
        )
        return Statement(
            text=group.sentence.text,
            cited_case_ids=[context.hits[i].case.case_id for i in hits[:MAX_CITATIONS]],
        )

    # --- findings ------------------------------------------------------------------------------
    def _findings(
        self, context: ReportContext, groups: list[_Group], impressions: list[_Group]
    ) -> list[Statement]:
        usable = [g for g in groups if self._compatible(g, context)]
        fallback = [g for g in impressions if self._compatible(g, context)]
        chosen: list[_Group] = []
        made: list[tuple[str, Statement]] = []  # sentences no study states: (region, statement)
        stated = [x for x in (*PATHOLOGIES, "Support Devices") if context.stated(x)]
        p = context.vote.probabilities
        possible = sorted((x for x in PATHOLOGIES if context.possible(x)), key=lambda x: -p[x])
        possible = possible[:MAX_POSSIBLE]
        for label, kind in [(x, "positive") for x in stated] + [(x, "uncertain") for x in possible]:
            if any(label in getattr(g.sentence, kind) for g in chosen):
                continue
            group = _best([g for g in usable if label in getattr(g.sentence, kind)]) or _best(
                [g for g in fallback if label in getattr(g.sentence, kind)]
            )
            if group is not None:
                chosen.append(group)
            else:
                made.append(_made_sentence(label, kind, context))
        for group in sorted(usable, key=lambda g: -g.support):
            if len(chosen) + len(made) >= MAX_FINDINGS or group.support < CONSENSUS:
                break
            if not _redundant(group, chosen):
                chosen.append(group)
        for label in PERTINENT_NEGATIVES:
            denying = [
                g for g in usable if label in g.sentence.negative and g.support >= PERTINENT_SUPPORT
            ]
            covered = any(label in g.topic for g in chosen)
            if denying and not covered and len(chosen) + len(made) < MAX_FINDINGS:
                group = _best(denying)
                if not _redundant(group, chosen):
                    chosen.append(group)
        ordered = [(g.sentence.region, self._statement(g, context)) for g in chosen] + made
        ordered.sort(key=lambda item: REGIONS.index(item[0]))
        statements = [statement for _, statement in ordered]
        return statements or [_indeterminate(context)]

    # --- impression ----------------------------------------------------------------------------
    def _impression(self, context: ReportContext, groups: list[_Group]) -> list[Statement]:
        usable = [g for g in groups if self._compatible(g, context)]
        stated = [x for x in PATHOLOGIES if context.stated(x)]
        if not stated:
            normal = _best([g for g in usable if not g.sentence.positive | g.sentence.uncertain])
            if normal is not None:
                return [self._statement(normal, context)]
            return [_indeterminate(context)]
        chosen: list[_Group] = []
        for label in sorted(stated, key=lambda x: -context.vote.probabilities[x]):
            if any(label in g.sentence.positive for g in chosen):
                continue
            group = _best([g for g in usable if label in g.sentence.positive])
            if group is not None and not _redundant(group, chosen):
                chosen.append(group)
        covered = {label for g in chosen for label in g.sentence.positive}
        statements = [self._statement(g, context) for g in chosen]
        missing = [x for x in stated if x not in covered]
        if missing:
            names = [display(x).lower() for x in missing]
            text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            evidence = context.vote.evidence
            cited = list(dict.fromkeys(c for x in missing for c in evidence[x]))[:MAX_CITATIONS]
            statements.append(
                Statement(text=text[0].upper() + text[1:] + ".", cited_case_ids=cited)
            )
        return statements


def _best(groups: Sequence[_Group]) -> _Group | None:
    """The best-supported group (the first, i.e. the best-weighted study's, on ties)."""
    return max(groups, key=lambda g: g.support, default=None)


def _redundant(group: _Group, chosen: Sequence[_Group]) -> bool:
    """`group` says nothing the chosen sentences do not: its findings are all covered, or
    (a sentence about no finding) one of them says nearly the same."""
    if group in chosen:
        return True
    if group.topic:
        return group.topic <= {label for g in chosen for label in g.topic}
    return any(float(group.vector @ g.vector) >= REDUNDANT for g in chosen)


def _made_sentence(label: str, kind: str, context: ReportContext) -> tuple[str, Statement]:
    """A plain sentence for a supported finding that no retrieved sentence states."""
    name = display(label).lower()
    if kind == "uncertain":
        text = f"Possible {name}."
    elif label == "Support Devices":
        text = "Support devices are present."
    else:
        text = f"{name[0].upper()}{name[1:]} is present."
    region = REGIONS[0] if label == "Support Devices" else region_of(name)
    cited = list(context.vote.evidence[label])[:MAX_CITATIONS]
    return region, Statement(text=text, cited_case_ids=cited)


def _indeterminate(context: ReportContext) -> Statement:
    """What is said when the retrieved studies agree on nothing that can be reported."""
    k = len(context.hits)
    return Statement(
        text=f"No finding is stated consistently by the {k} most similar prior studies.",
        cited_case_ids=[hit.case.case_id for hit in context.hits[:MAX_CITATIONS]],
    )
