"""Text tokenization for either kind of open_clip text tower.

Hugging Face towers get dynamic padding (to the longest text in the batch, at most
`context_length` tokens): a median report is about 60 tokens, so padding every text to 128
would double the cost of encoding. open_clip's own towers need fixed-length input.
"""

from __future__ import annotations

from pathlib import Path

import torch


def clean_text(text: str) -> str:
    return " ".join(str(text).split())


class TextTokenizer:
    """`tokenizer(texts)` → LongTensor of token ids (batch, length)."""

    def __init__(
        self,
        *,
        hf_path: str | Path | None = None,
        open_clip_name: str | None = None,
        context_length: int = 77,
    ) -> None:
        if (hf_path is None) == (open_clip_name is None):
            raise ValueError("give exactly one of hf_path (a folder or hub id) or open_clip_name")
        self.context_length = context_length
        self.open_clip_name = open_clip_name
        if hf_path is not None:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(hf_path))
        else:
            import open_clip

            self._hf = None
            self._open_clip = open_clip.get_tokenizer(open_clip_name, context_length=context_length)

    @property
    def is_hf(self) -> bool:
        return self._hf is not None

    def __call__(self, texts: list[str]) -> torch.Tensor:
        texts = [clean_text(text) for text in texts]
        if self._hf is not None:
            return self._hf(
                texts,
                padding="longest",
                truncation=True,
                max_length=self.context_length,
                return_tensors="pt",
            ).input_ids
        return self._open_clip(texts)

    def save(self, directory: Path) -> None:
        """Save a Hugging Face tokenizer's files (open_clip's built-in BPE needs none)."""
        if self._hf is not None:
            self._hf.save_pretrained(str(directory))
