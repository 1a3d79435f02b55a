"""Fine-tuning BLIP on image–report pairs (`medxpert train-captioner`).

Language-modelling loss on the report text (impression + findings), AdamW, a fixed seed,
tqdm progress and a JSON-lines log. Meant for MIMIC-CXR on a GPU; on the shared packs it runs on
the COVID pack's 185 training pairs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medxpert.caption.blip import BlipCaptioner
from medxpert.data import Case, open_image
from medxpert.train.loop import TrainingDataError

logger = logging.getLogger(__name__)

MAX_TEXT_TOKENS = 128


def finetune_captioner(
    captioner: BlipCaptioner,
    cases: Sequence[Case],
    *,
    out_dir: str | Path,
    epochs: int = 3,
    batch_size: int = 8,
    lr: float = 5e-5,
    max_steps: int | None = None,
    sections: Sequence[str] = ("impression", "findings"),
    seed: int = 0,
    log_path: str | Path | None = None,
) -> list[float]:
    """Fine-tune `captioner` in place on the cases with an image and a report, save it to
    `out_dir`, and return the loss of every step."""
    pairs = [case for case in cases if case.has_image and case.text(sections)]
    if len(pairs) < 2:
        raise TrainingDataError(
            f"{len(pairs)} image-report pairs: the captioner needs cases with both an image and "
            "a report (MIMIC-CXR, the COVID pack, a Hugging Face or CSV source with reports)."
        )
    torch.manual_seed(seed)
    order = random.Random(seed)
    model = captioner.model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    pad = captioner.processor.tokenizer.pad_token_id
    losses: list[float] = []
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    model.train()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(Path(log_path).open("a", encoding="utf-8")) if log_path else None
        stack.callback(model.eval)
        for epoch in range(epochs):
            order.shuffle(pairs)
            batches = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
            for batch in tqdm(batches, desc=f"captioner epoch {epoch + 1}/{epochs}", unit="step"):
                losses.append(_step(captioner, optimizer, batch, sections, pad))
                if log:
                    log.write(
                        json.dumps({"epoch": epoch + 1, "step": len(losses), "loss": losses[-1]})
                        + "\n"
                    )
                if max_steps and len(losses) >= max_steps:
                    break
            if max_steps and len(losses) >= max_steps:
                break
    captioner.save(out_dir)
    logger.info("captioner fine-tuned for %d steps; saved to %s", len(losses), out_dir)
    return losses


def _step(captioner: BlipCaptioner, optimizer, batch: Sequence[Case], sections, pad: int) -> float:
    inputs = captioner.processor(
        images=[open_image(case.image_path).convert("RGB") for case in batch],
        text=[case.text(sections) for case in batch],
        padding=True,
        truncation=True,
        max_length=min(MAX_TEXT_TOKENS, captioner.model.config.text_config.max_position_embeddings),
        return_tensors="pt",
    ).to(captioner.device)
    labels = inputs.input_ids.masked_fill(inputs.input_ids == pad, -100)
    loss = captioner.model(
        pixel_values=inputs.pixel_values,
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        labels=labels,
    ).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(captioner.model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())
