"""The Lightning Trainer of a run: callbacks and loggers from config, checkpoints to resume or test from."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf

CHECKPOINT_DIR = "checkpoints"


class StoreOverrides(L.Callback):
    """Write the run's command-line overrides into every checkpoint (key "overrides").

    `eval`, `predict` and `train ckpt_path=...` replay them, so the model, data and trainer limits of the
    run are rebuilt exactly without the user repeating them.
    """

    def __init__(self, overrides: list[str] | None = None) -> None:
        # None: this run's command line, as typed: an override holding ${...} is stored unresolved (resolving it
        # here would resolve it twice), and replayed in the config of the verb that loads the checkpoint
        if overrides is None:
            overrides = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
        self.overrides = list(overrides)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["overrides"] = self.overrides


class EndSpawnedProcessGroup(L.Callback):
    """Destroy the process group at the end of every stage run in spawned processes (`ddp_spawn`), which end with it.

    Left alive, it sometimes made a process abort on exit ("terminate called without an active exception"): the
    two-process test on CPU (gloo, torch 2.11) failed in 3 of about 60 runs before this, none of 18 since.
    """

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher) and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """`cfg.trainer` with every callback of `cfg.callbacks` (and `EndSpawnedProcessGroup`) and every logger of
    `cfg.logger` (each a `_target_`)."""
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    callbacks.append(EndSpawnedProcessGroup())
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the best checkpoint of a finished fit (kept by the ModelCheckpoint that monitors a metric);
    None when none was written (fast_dev_run, no such callback), so that testing uses the weights in memory."""
    monitoring = [callback for callback in trainer.checkpoint_callbacks if callback.monitor is not None]
    return (monitoring[0].best_model_path or None) if monitoring else None


def find_checkpoint(value: str, runs_dir: Path, default_file: str) -> Path:
    """Resolve a `ckpt_path=` value to a checkpoint file.

    value: a .ckpt file; a run directory (its checkpoints/`default_file`); or "last" / "best": that file of
    the newest run under `runs_dir` (the runs of one app and run name) that has it.
    Raises FileNotFoundError saying where it looked.
    """
    if value in ("last", "best"):
        found = sorted(runs_dir.glob(f"**/{CHECKPOINT_DIR}/{value}.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise FileNotFoundError(
                f"ckpt_path={value}: no {CHECKPOINT_DIR}/{value}.ckpt under {runs_dir}; pass ckpt_path=RUN_DIR or a .ckpt file "
                "(and the same name=/data overrides as the run you want to continue)"
            )
        return found[-1].resolve()
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_DIR / default_file
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={value}: no checkpoint file at {path}")
    return path.resolve()


def checkpoint_overrides(path: Path) -> list[str]:
    """The overrides stored by `StoreOverrides` in a checkpoint ([] if it has none)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return list(checkpoint.get("overrides", []))


def csv_log_file(trainer: L.Trainer) -> Path | None:
    """metrics.csv of the run's CSVLogger, if there is one and it wrote anything."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            path = Path(logger.log_dir) / "metrics.csv"
            return path if path.is_file() else None
    return None
