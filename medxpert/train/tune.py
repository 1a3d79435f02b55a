"""Hyperparameter search for fine-tuning, with Optuna, on the validation score.

Each trial fine-tunes a fresh encoder with sampled settings and returns the best validation
score of its epochs (`Validator`). Trials that fall behind the median of earlier ones at the
same epoch are pruned, from the third epoch on: the first epochs rank settings poorly. Trials
live in an Optuna SQLite study, so a search can be stopped and resumed, and studies of other
runs compared.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medxpert.data import Case
from medxpert.encoders import DualEncoder
from medxpert.errors import ConfigError
from medxpert.train.config import TrainConfig
from medxpert.train.loop import finetune

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneResult:
    best_value: float
    best_params: dict
    best_trial: int
    trials: int
    storage: str
    plots: dict[str, Path]


def suggest(trial) -> dict:
    """The search space: learning rates, the soft-target temperature, how much of the image
    tower is trained, the input resolution, the positives of a paired batch, the loss weights,
    the batch size and the epochs. The text transformer stays frozen, so its features are
    cached: on 2 CPU cores, training two of its layers costs more than the rest of a step."""
    return {
        "lr_head": trial.suggest_float("lr_head", 1e-4, 5e-3, log=True),
        "lr_tower": trial.suggest_float("lr_tower", 1e-5, 1e-3, log=True),
        "label_temperature": trial.suggest_float("label_temperature", 0.03, 0.5, log=True),
        "frozen_image_stages": trial.suggest_int("frozen_image_stages", 5, 6),
        "image_size": trial.suggest_categorical("image_size", [192, 224]),
        "shared_positives": trial.suggest_categorical(
            "shared_positives", ["none", "text", "labels"]
        ),
        "image_image_weight": trial.suggest_float("image_image_weight", 0.0, 1.0),
        "uniformity_weight": trial.suggest_float("uniformity_weight", 0.0, 1.0),
        "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
        "epochs": trial.suggest_int("epochs", 2, 12),
    }


def tune(
    backbone: str,
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    storage_dir: str | Path,
    minutes: float,
    trials: int | None = None,
    study_name: str | None = None,
    feature_cache: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    space: Callable[[object], dict] = suggest,
    base: dict | None = None,
    make_encoder: Callable[[], DualEncoder] | None = None,
) -> TuneResult:
    """Search `space` for at most `minutes` (and `trials`); returns the best trial, with the
    optimisation-history and parameter-importance plots saved beside the study. `base`
    holds fixed settings; `make_encoder` builds each trial's fresh encoder (default: the
    backbone's pretrained towers)."""
    import optuna

    storage_dir = Path(storage_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{storage_dir / 'optuna.db'}"
    study = optuna.create_study(
        study_name=study_name or f"{backbone}-finetune",
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        load_if_exists=True,
    )
    deadline = time.monotonic() + minutes * 60

    def objective(trial) -> float:
        params = {**(base or {}), **space(trial)}
        config = TrainConfig.for_backbone(backbone, seed=seed, **params)
        encoder = make_encoder() if make_encoder else DualEncoder.create(backbone, device=device)

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
            if time.monotonic() > deadline:
                trial.set_user_attr("stopped", "time budget")
                raise _OutOfTime(score)

        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = finetune(
                    encoder,
                    train_cases,
                    config,
                    out_dir=Path(tmp) / "model",
                    val_cases=val_cases,
                    feature_cache=feature_cache,
                    on_epoch=report,
                )
            except _OutOfTime as stop:
                return stop.score
        trial.set_user_attr("best_epoch", result.best_epoch)
        return result.best_score

    remaining = max(1.0, deadline - time.monotonic())
    study.optimize(objective, n_trials=trials, timeout=remaining, gc_after_trial=True)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise ConfigError("no trial finished within the time budget; give more --minutes.")
    plots = _plots(study, storage_dir)
    best = study.best_trial
    return TuneResult(best.value, best.params, best.number, len(study.trials), storage, plots)


class _OutOfTime(Exception):  # noqa: N818  (control flow, not an error)
    def __init__(self, score: float) -> None:
        super().__init__("time budget spent")
        self.score = score


def _plots(study, directory: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    from medxpert.atomic import atomic_path

    plots = {}
    makers = {
        "history": optuna_plots.plot_optimization_history,
        "importance": optuna_plots.plot_param_importances,
    }
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():  # optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = make(study)
        except (ValueError, RuntimeError) as error:  # e.g. importance with one trial
            logger.info("tune: no %s plot (%s)", name, error)
            continue
        path = directory / f"optuna_{name}.png"
        with atomic_path(path) as tmp:
            axes.figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(axes.figure)
        plots[name] = path
    return plots
