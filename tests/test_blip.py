"""The BLIP captioner's real code path with a tiny randomly initialised BLIP saved to and loaded
from a local folder: captioning, fine-tuning, the CLI, the pipeline, and the offline errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medxpert.caption.blip import BlipCaptioner
from medxpert.caption.training import finetune_captioner
from medxpert.data import Case
from medxpert.errors import HubUnavailableError, ModelFormatError, QueryError
from medxpert.train.loop import TrainingDataError
from tests.builders import gradient, image_case, png_bytes, tiny_blip

REPORTS = [
    "large left pleural effusion.",
    "heart size normal.",
    "no pneumothorax.",
    "small right pleural effusion.",
]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return tiny_blip(tmp_path_factory.mktemp("blip") / "tiny")


def pairs(tmp_path, n: int = 8) -> list[Case]:
    cases = []
    for i in range(n):
        cases.append(
            image_case(
                tmp_path / f"pair{i}.png",
                gradient(low=i * 20, high=120 + i * 10),
                case_id=f"p:{i}",
                source="t",
                findings=REPORTS[i % len(REPORTS)],
            )
        )
    return cases


def test_caption_from_a_local_folder(blip_dir):
    captioner = BlipCaptioner(blip_dir, device="cpu", max_new_tokens=8)
    caption = captioner.caption(png_bytes(gradient()))
    assert caption.captioner == "blip" and caption.text
    again = BlipCaptioner(blip_dir, device="cpu", max_new_tokens=8).caption(png_bytes(gradient()))
    assert again.text == caption.text, "greedy decoding is deterministic"
    with pytest.raises(QueryError):
        captioner.caption(None)


def test_finetuning_lowers_the_loss_and_saves_a_loadable_folder(blip_dir, tmp_path):
    captioner = BlipCaptioner(blip_dir, device="cpu", max_new_tokens=8)
    log = tmp_path / "results" / "log.jsonl"
    losses = finetune_captioner(
        captioner,
        pairs(tmp_path),
        out_dir=tmp_path / "tuned",
        epochs=12,
        batch_size=4,
        lr=5e-3,
        log_path=log,
    )
    assert len(losses) == 24 and len(log.read_text().splitlines()) == 24
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5, losses
    image = png_bytes(gradient())
    reloaded = BlipCaptioner(tmp_path / "tuned", device="cpu", max_new_tokens=8)
    assert reloaded.caption(image).text == captioner.caption(image).text
    with pytest.raises(TrainingDataError, match="image-report pairs"):
        finetune_captioner(
            captioner,
            [Case(case_id="x", source="t", split="train", findings="text only")],
            out_dir=tmp_path / "no",
        )


def test_missing_folder_files_and_offline_hub(blip_dir, tmp_path):
    with pytest.raises(ModelFormatError, match="no BLIP folder"):
        BlipCaptioner(tmp_path / "nothing-here")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(
        ModelFormatError, match=r"processor_config\.json or preprocessor_config\.json missing"
    ):
        BlipCaptioner(tmp_path / "half")
    started = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="label captioner"):
        BlipCaptioner("Salesforce/blip-image-captioning-base")  # HF_HUB_OFFLINE=1 in tests
    assert time.perf_counter() - started < 30
