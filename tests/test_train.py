"""Fine-tuning: losses, the loop on a toy set (loss falls, recall rises), resume, early stop."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from medxpert.data import Case, open_image
from medxpert.encoders import DualEncoder
from medxpert.errors import ConfigError
from medxpert.labels import label_vector
from medxpert.metrics.retrieval import recall_at_k
from medxpert.train import TrainConfig, TrainingDataError, finetune
from medxpert.train import loop as loop_module
from medxpert.train.data import shared_positive_matrix, training_sets
from medxpert.train.losses import (
    clip_loss,
    shared_clip_loss,
    soft_clip_loss,
    soft_self_loss,
    soft_targets,
)
from tests.builders import TOY_WORDS, image_case, png_bytes, tiny_encoder

LEVEL_WORDS = TOY_WORDS[TOY_WORDS.index("zero") : TOY_WORDS.index("fifteen") + 1]


# --- losses -------------------------------------------------------------------------------------
def test_clip_loss_matches_its_definition():
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    logits = 10.0 * image @ text.T
    expected = (
        -(torch.log_softmax(logits, 1).diag().mean() + torch.log_softmax(logits.T, 1).diag().mean())
        / 2
    )
    torch.testing.assert_close(clip_loss(image, text, torch.tensor(10.0)), expected)


def test_soft_targets_follow_label_similarity():
    labels = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    targets = soft_targets(labels, labels, temperature=0.01)
    torch.testing.assert_close(targets.sum(1), torch.ones(3))
    assert targets[0, 0] == pytest.approx(0.5, abs=1e-4) and targets[0, 2] < 1e-6
    assert targets[2, 2] == pytest.approx(1.0, abs=1e-4)


def test_soft_clip_loss_is_lowest_when_same_labels_align():
    labels = torch.tensor([[1.0, 0], [0, 1.0]])
    aligned = torch.eye(2)
    crossed = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    scale = torch.tensor(10.0)
    assert soft_clip_loss(aligned, aligned, scale, labels, labels) < soft_clip_loss(
        aligned, crossed, scale, labels, labels
    )


def test_soft_self_loss_ignores_each_item_itself():
    labels = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    grouped = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), dim=1
    )
    mixed = grouped[[0, 2, 1, 3]]
    scale = torch.tensor(10.0)
    assert soft_self_loss(grouped, scale, labels) < soft_self_loss(mixed, scale, labels)
    assert torch.isfinite(soft_self_loss(grouped, scale, labels))


def test_train_config_validation_and_tuned_defaults():
    assert TrainConfig().lr_tower == 5e-6 and TrainConfig().batch_size == 16
    tuned = TrainConfig.for_backbone("medxpert-default", epochs=1, lr_head=None)
    assert tuned.epochs == 1 and tuned.lr_head == 1e-3
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.for_backbone("medxpert-default", learning_rate=1.0)


# --- the loop on a toy set ------------------------------------------------------------------------
def toy_pairs(tmp_path, n: int = 16) -> list[Case]:
    """Images with a bright block at a different place each (a 4×4 grid of positions), each
    paired with a report naming its number. (Global grey levels would be a poor toy: batch
    norm removes much of a whole-image brightness difference.)"""
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        pixels = np.clip(60 + rng.normal(0, 3, (48, 48)), 0, 255)
        row, column = divmod(i, 4)
        pixels[row * 12 : (row + 1) * 12, column * 12 : (column + 1) * 12] = 230
        cases.append(
            image_case(
                tmp_path / f"toy{i}.png",
                pixels,
                case_id=f"toy:{i}",
                source="toy",
                findings=f"level {LEVEL_WORDS[i]}.",
                view="frontal",
            )
        )
    return cases


def toy_unpaired(tmp_path) -> list[Case]:
    """Labelled images (a bright block top left = effusion, bottom right = cardiomegaly)
    and labelled reports."""
    rng = np.random.default_rng(1)
    cases = []
    for i in range(16):
        label = "Pleural Effusion" if i % 2 else "Cardiomegaly"
        pixels = np.clip(60 + rng.normal(0, 3, (48, 48)), 0, 255)
        if i % 2:
            pixels[:20, :20] = 230
        else:
            pixels[28:, 28:] = 230
        cases.append(
            image_case(
                tmp_path / f"u{i}.png",
                pixels,
                case_id=f"img:{i}",
                source="toy",
                labels=label_vector({label: 1}),
            )
        )
        text = "large left pleural effusion." if i % 2 else "cardiomegaly."
        cases.append(
            Case(
                case_id=f"txt:{i}",
                source="toy",
                split="train",
                study_id=f"s{i}",
                findings=text,
                labels=label_vector({label: 1}),
            )
        )
    return cases


def paired_recall(encoder: DualEncoder, cases: list[Case], k: int = 1) -> float:
    images = encoder.encode_images([c.image_path for c in cases])
    texts = encoder.encode_texts([c.text() for c in cases])
    return float(recall_at_k(images @ texts.T, k).mean())


def toy_config(**overrides) -> TrainConfig:
    values = dict(
        epochs=4,
        batch_size=8,
        lr_tower=3e-3,
        lr_head=3e-3,
        augment=False,
        freeze=(),
        warmup_fraction=0.0,
        log_every=1,
        patience=10,
    )
    return TrainConfig(**{**values, **overrides})


def test_loss_falls_and_recall_rises_on_a_toy_set(tmp_path):
    cases = toy_pairs(tmp_path)
    encoder = tiny_encoder(tmp_path)
    before = paired_recall(encoder, cases, k=5)
    log = tmp_path / "log.jsonl"
    result = finetune(
        encoder,
        cases,
        toy_config(epochs=20),
        out_dir=tmp_path / "model",
        val_cases=cases,
        log_path=log,
    )
    after = paired_recall(encoder, cases, k=5)
    losses = [
        r["paired_loss"]
        for r in map(json.loads, log.read_text().splitlines())
        if r["event"] == "step"
    ]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 1.0
    assert after >= before + 0.4, (before, after)
    assert result.best_epoch >= 10 and (tmp_path / "model" / "medxpert.json").is_file()
    saved = DualEncoder.load(tmp_path / "model")
    assert saved.info["training"]["best_epoch"] == result.best_epoch
    assert saved.fingerprint() == encoder.fingerprint(), "the encoder holds the best epoch"


def test_unpaired_labelled_data_trains_with_soft_targets(tmp_path):
    cases = toy_unpaired(tmp_path)
    encoder = tiny_encoder(tmp_path)
    log = tmp_path / "log.jsonl"
    config = toy_config(epochs=12, lr_tower=1e-2, lr_head=1e-2)
    finetune(encoder, cases, config, out_dir=tmp_path / "model", log_path=log)
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    unpaired = [r["unpaired_loss"] for r in steps if r["event"] == "step"]
    assert unpaired and np.mean(unpaired[-2:]) < np.mean(unpaired[:2])
    images = encoder.encode_images([c.image_path for c in cases if c.has_image])
    texts = encoder.encode_texts(["cardiomegaly.", "large left pleural effusion."])
    similarity = images @ texts.T  # even images show cardiomegaly, odd ones an effusion
    cardiomegaly, effusion = similarity[0::2].mean(axis=0), similarity[1::2].mean(axis=0)
    assert cardiomegaly[0] > cardiomegaly[1] and effusion[1] > effusion[0]


def test_resume_after_a_crash_gives_the_same_model(tmp_path, monkeypatch):
    cases = toy_pairs(tmp_path)
    config = toy_config(epochs=3)
    straight = tiny_encoder(tmp_path)
    finetune(straight, cases, config, out_dir=tmp_path / "straight", val_cases=cases)

    calls = {"n": 0}
    real_call = loop_module.Validator.__call__

    def crash_in_epoch_two(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed during epoch 2")
        return real_call(self)

    monkeypatch.setattr(loop_module.Validator, "__call__", crash_in_epoch_two)
    interrupted = tiny_encoder(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        finetune(interrupted, cases, config, out_dir=tmp_path / "resumed", val_cases=cases)
    assert (tmp_path / ".resumed.checkpoints" / "last.pt").is_file()
    monkeypatch.setattr(loop_module.Validator, "__call__", real_call)
    resumed = tiny_encoder(tmp_path)
    result = finetune(
        resumed, cases, config, out_dir=tmp_path / "resumed", val_cases=cases, resume=True
    )
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for (key, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=key)
    assert not (tmp_path / ".resumed.checkpoints").exists(), "checkpoints removed when done"


def test_early_stopping_keeps_the_best_epoch(tmp_path, monkeypatch):
    scores = iter([0.5, 0.4, 0.3, 0.2])
    monkeypatch.setattr(loop_module.Validator, "__call__", lambda self: {"score": next(scores)})
    encoder = tiny_encoder(tmp_path)
    result = finetune(
        encoder, toy_pairs(tmp_path), toy_config(epochs=4, patience=2), out_dir=tmp_path / "model"
    )
    assert result.best_epoch == 1 and len(result.history) == 3


def test_training_needs_usable_data(tmp_path):
    encoder = tiny_encoder(tmp_path)
    only_images = [c for c in toy_unpaired(tmp_path) if c.has_image]
    with pytest.raises(TrainingDataError, match="nothing to train on"):
        finetune(encoder, only_images, toy_config(), out_dir=tmp_path / "m")
    with pytest.raises(TrainingDataError, match="larger than the training data"):
        finetune(
            encoder, toy_pairs(tmp_path, n=4), toy_config(batch_size=8), out_dir=tmp_path / "m"
        )


# --- studies --------------------------------------------------------------------------------------
def test_identical_reports_are_shared_positives():
    texts = ["No acute disease.", "no acute disease", "Small left effusion.", "Cardiomegaly."]
    labels = np.full((4, 14), np.nan)
    labels[2:, 0] = 1  # studies 2 and 3: the same labels, different reports
    positives = shared_positive_matrix(texts, labels, "text")
    np.testing.assert_array_equal(
        positives.numpy(),
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
    )
    assert shared_positive_matrix(texts, labels, "none").numpy().sum() == 4
    assert bool(shared_positive_matrix(texts, labels, "labels")[2, 3])
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    text = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    scale = torch.tensor(10.0)
    torch.testing.assert_close(
        shared_clip_loss(image, text, scale, torch.eye(3, dtype=torch.bool)),
        clip_loss(image, text, scale),
    )
    # studies 0 and 1 share a report: each row's target is half on either of them
    same = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    targets = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])
    logits = scale * image @ text.T
    by_hand = (
        -(targets * torch.log_softmax(logits, 1)).sum(1).mean()
        - (targets * torch.log_softmax(logits.T, 1)).sum(1).mean()
    ) / 2
    torch.testing.assert_close(shared_clip_loss(image, text, scale, same), by_hand)


def toy_studies(tmp_path) -> list[Case]:
    """The toy pairs as studies of two views each (a second, noisier image of the same
    block), sharing their report."""
    cases = []
    for case in toy_pairs(tmp_path):
        frontal = dataclasses.replace(case, study_id=f"{case.case_id}-study")
        pixels = np.asarray(open_image(case.image_path), dtype=np.float64)
        noisy = np.clip(pixels + np.random.default_rng(1).normal(0, 8, pixels.shape), 0, 255)
        path = tmp_path / f"{case.case_id.replace(':', '_')}-lateral.png"
        path.write_bytes(png_bytes(noisy.astype(np.uint8)))
        lateral = dataclasses.replace(
            frontal, case_id=f"{case.case_id}-lat", image_path=str(path), view="lateral"
        )
        cases += [lateral, frontal]
    return cases


def test_a_study_is_one_paired_item_whatever_its_views(tmp_path):
    sets = training_sets(toy_studies(tmp_path), ("impression", "findings"))
    assert len(sets.studies) == 16 and all(len(s.images) == 2 for s in sets.studies)
    assert sets.studies[0].query_image.view == "frontal"


def test_training_on_cached_frozen_stages_learns_and_embeds_each_image_once(tmp_path):
    cases = toy_studies(tmp_path)
    encoder = tiny_encoder(tmp_path)
    frontals = [c for c in cases if c.view == "frontal"]
    before = paired_recall(encoder, frontals, k=5)
    config = toy_config(epochs=40, freeze=None, frozen_image_stages=1, frozen_text_layers=1)
    cache = tmp_path / "features"
    result = finetune(
        encoder, cases, config, out_dir=tmp_path / "model", val_cases=cases, feature_cache=cache
    )
    assert paired_recall(encoder, frontals, k=5) >= before + 0.15
    assert {"image_to_report_r10", "report_to_image_r10"} <= set(result.history[0])
    shards = list(cache.glob("*/shard-*.npz"))
    keys = [key for shard in shards for key in np.load(shard)["keys"]]
    assert len(keys) == len(set(keys)) == 32, "each of the 32 images through the stem once"
    trained = DualEncoder.load(tmp_path / "model")
    assert trained.info["training"]["config"]["frozen_image_stages"] == 1
    frozen_stem = trained.model.visual.trunk.conv_stem.weight
    torch.testing.assert_close(
        frozen_stem, tiny_encoder(tmp_path).model.visual.trunk.conv_stem.weight
    )


def test_tune_runs_trials_into_a_resumable_study_and_plots_them(tmp_path):
    import optuna

    from medxpert.train.tune import tune

    cases = toy_pairs(tmp_path)

    def space(trial) -> dict:
        return {
            "lr_head": trial.suggest_float("lr_head", 1e-4, 1e-2, log=True),
            "epochs": trial.suggest_int("epochs", 1, 3),
        }

    common = dict(
        storage_dir=tmp_path / "tune",
        minutes=5,
        space=space,
        base={"batch_size": 8, "freeze": (), "augment": False, "log_every": 1},
        make_encoder=lambda: tiny_encoder(tmp_path),
    )
    first = tune("medxpert-default", cases, cases, trials=4, **common)
    again = tune("medxpert-default", cases, cases, trials=1, **common)
    assert first.trials == 4 and again.trials == 5, "the second search resumes the study"
    study = optuna.load_study(study_name="medxpert-default-finetune", storage=again.storage)
    best = max(t.value for t in study.trials if t.value is not None)
    assert again.best_value == pytest.approx(best) and set(again.best_params) == {
        "lr_head",
        "epochs",
    }
    assert (tmp_path / "tune" / "optuna_history.png").stat().st_size > 5_000
    assert (tmp_path / "tune" / "optuna_importance.png").stat().st_size > 5_000
