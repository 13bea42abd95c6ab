"""The verbs every app shares, each a straight line from a composed config to files in the run directory.

An app plugs in two functions (`App`): how to build its LightningModule for a datamodule, and how to write
predictions. Everything else (seeding, data, trainer, checkpoints, metrics.json, loss curves) is here.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from apps.common.plots import plot_loss_curves
from apps.common.results import write_metrics
from apps.common.trainer import best_checkpoint, build_trainer, csv_log_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class App:
    """An app as the common command line sees it.

    name: the package under apps/ (python -m apps.<name>).
    config_dir: its Hydra config directory (holding config.yaml).
    build_task: (config, datamodule after setup()) -> LightningModule.
    write_predictions: (outputs of trainer.predict, datamodule, run directory) -> anything; writes files.
    verbs: the app's own verbs besides train/eval/predict (say `separate`, `embed`, `collect`), each called
        with (config, app) under Hydra like the shared ones.
    checkpoint_verbs: those of `verbs` that need `ckpt_path=` (it is resolved and its overrides replayed).
    replay: for a checkpoint verb, the config groups/keys whose stored overrides are replayed (their first name,
        e.g. ("model",) for a fine-tuning verb that takes the pretrained model but not its data); verbs not
        listed replay every stored override.
    """

    name: str
    config_dir: Path
    build_task: Callable[[DictConfig, L.LightningDataModule], L.LightningModule]
    write_predictions: Callable[[list[Any], L.LightningDataModule, Path], Any]
    verbs: dict[str, Callable[[DictConfig, App], Any]] = field(default_factory=dict)
    checkpoint_verbs: tuple[str, ...] = ()
    replay: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def all_verbs(self) -> dict[str, Callable[[DictConfig, App], Any]]:
        """The shared verbs and the app's own (an app's verb of the same name wins)."""
        return {**VERBS, **self.verbs}


def run_info(cfg: DictConfig, started: float, **extra: Any) -> dict[str, Any]:
    """What metrics.json says about the run besides its metrics."""
    hydra = HydraConfig.get()
    return {
        "app": cfg.app,
        "verb": hydra.job.name,
        "name": cfg.name,
        "overrides": list(hydra.overrides.task),
        "run_dir": str(Path(cfg.paths.output_dir).resolve()),
        "seconds": round(time.perf_counter() - started, 2),
        **extra,
    }


def data_and_task(cfg: DictConfig, app: App, stage: str | None = None) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule of cfg.data after setup(stage), and the app's task built for it."""
    datamodule = instantiate(cfg.data)
    datamodule.setup(stage)
    return datamodule, app.build_task(cfg, datamodule)


def train(cfg: DictConfig, app: App) -> dict[str, float]:
    """Fit (resuming from cfg.ckpt_path if set), test the best checkpoint, write loss_curves.png and metrics.json."""
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = data_and_task(cfg, app)
    trainer = build_trainer(cfg)
    fit_started = time.perf_counter()
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    fit_seconds = time.perf_counter() - fit_started
    epochs = max(trainer.current_epoch, 1)  # after a resume this includes the epochs before it
    csv_log = csv_log_file(trainer)  # read before testing: with ddp_spawn, testing starts a new log
    if trainer.is_global_zero and csv_log is not None:
        plot_loss_curves(csv_log, output_dir / "loss_curves.png")
    checkpoint = best_checkpoint(trainer)
    metrics = trainer.test(task, datamodule=datamodule, ckpt_path=checkpoint)[0]
    if trainer.is_global_zero:
        timing = {"epochs": trainer.current_epoch, "steps": trainer.global_step, "seconds_per_epoch": round(fit_seconds / epochs, 2)}
        write_metrics(output_dir, metrics, **run_info(cfg, started, checkpoint=checkpoint, resumed_from=cfg.ckpt_path, **timing))
        log.info("run directory: %s", output_dir)
    return metrics


def evaluate(cfg: DictConfig, app: App) -> dict[str, float]:
    """Test the checkpoint cfg.ckpt_path with the data it was trained on; write metrics.json and test plots."""
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = data_and_task(cfg, app)
    trainer = build_trainer(cfg)
    metrics = trainer.test(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)[0]
    if trainer.is_global_zero:
        write_metrics(output_dir, metrics, **run_info(cfg, started, checkpoint=cfg.ckpt_path))
        log.info("run directory: %s", output_dir)
    return metrics


def predict(cfg: DictConfig, app: App) -> Any:
    """Predict past the end of the data with the checkpoint cfg.ckpt_path; the app writes the files."""
    output_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = data_and_task(cfg, app, "predict")
    trainer = build_trainer(cfg)
    predictions = trainer.predict(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if not trainer.is_global_zero:
        return None
    written = app.write_predictions(predictions, datamodule, output_dir)
    log.info("run directory: %s", output_dir)
    return written


VERBS: dict[str, Callable[[DictConfig, App], Any]] = {"train": train, "eval": evaluate, "predict": predict}
