"""Report metrics as R2Gen computes them, so that figures can stand beside its published ones.

R2Gen (Chen et al., EMNLP 2020) scores IU X-ray findings after its own text preparation:
lower-cased; list numbering and punctuation removed; sentences joined by " . " and closed by
" ." (the full stops count as tokens); words seen fewer than 3 times in the train reports
become "<unk>"; at most 60 tokens; on both the reference and the generated side. BLEU-1..4,
METEOR and ROUGE-L then come from pycocoevalcap (corpus BLEU with the closest reference length,
ROUGE-L with β = 1.2 averaged over reports). This module prepares text the same way (written
from that description, not from R2Gen's code) and computes those scores.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from collections import Counter
from collections.abc import Sequence

MIN_COUNT = 3
MAX_TOKENS = 60
_NUMBERING = re.compile(r"(?:^|(?<=\s))\d+\.\s")
_DROPPED = re.compile(r"[.,?;*!%^&_+():\-\[\]{}\"'/\\<=>@]")


def sentences(report: str) -> list[str]:
    """The cleaned sentences of `report`: lower-cased, numbering and punctuation removed."""
    text = re.sub(r"\.{2,}", ".", report.lower())
    text = _NUMBERING.sub("", text)
    cleaned = (" ".join(_DROPPED.sub("", piece).split()) for piece in text.split(". "))
    return [sentence for sentence in cleaned if sentence]


class R2GenText:
    """`R2GenText(train_reports).prepare(report)` → the report as R2Gen's metrics see it."""

    def __init__(self, train_reports: Sequence[str]) -> None:
        counts = Counter(
            word for report in train_reports for s in sentences(report) for word in s.split()
        )
        self.vocabulary = {word for word, n in counts.items() if n >= MIN_COUNT}

    def prepare(self, report: str) -> str:
        words = " . ".join(sentences(report)).split()
        tokens = [w if w in self.vocabulary or w == "." else "<unk>" for w in words]
        if tokens:
            tokens.append(".")
        return " ".join(tokens[:MAX_TOKENS])

    def scores(self, generated: Sequence[str], references: Sequence[str]) -> dict[str, float]:
        """BLEU-1..4, METEOR (when java is installed) and ROUGE-L, pycocoevalcap's."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.rouge.rouge import Rouge

        refs = {i: [self.prepare(text) or "<unk>"] for i, text in enumerate(references)}
        hyps = {i: [self.prepare(text) or "<unk>"] for i, text in enumerate(generated)}
        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
            bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
        figures = {f"BLEU-{n} (R2Gen text)": float(b) for n, b in enumerate(bleu, 1)}
        if shutil.which("java") is not None:
            from pycocoevalcap.meteor.meteor import Meteor

            figures["METEOR (R2Gen text)"] = float(Meteor().compute_score(refs, hyps)[0])
        figures["ROUGE-L (R2Gen text)"] = float(Rouge().compute_score(refs, hyps)[0])
        return figures
