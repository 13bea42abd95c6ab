"""The `rollout` verb: roll a checkpoint's policy out without Lightning, one row per episode.

    python -m apps.rl rollout ckpt_path=RUN_DIR [data.targets=[700,1000]] [task.test_episodes=20] [task.inference=window]

rebuilds the model with the overrides stored in the checkpoint, loads its weights (normalisation included),
runs task.test_episodes episodes per target on the GPU when there is one (unless trainer.accelerator=cpu),
and writes metrics.json (the `test/` metrics of training, latency per step included) and rollout_episodes.csv.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from apps.common.results import write_metrics
from apps.common.run import data_and_task, run_info
from apps.rl.task import write_episodes

log = logging.getLogger(__name__)


def rollout(cfg: DictConfig, app: Any) -> dict[str, float]:
    started = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    datamodule, task = data_and_task(cfg, app)
    checkpoint = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=True)
    task.load_state_dict(checkpoint["state_dict"])
    use_gpu = torch.cuda.is_available() and cfg.trainer.accelerator != "cpu"
    task.to("cuda" if use_gpu else "cpu").eval()
    task.results = task.evaluate_targets(datamodule.targets, "test")
    metrics = task.rollout_metrics("test")
    write_episodes(task.results, output_dir / "rollout_episodes.csv")
    write_metrics(output_dir, metrics, **run_info(cfg, started, checkpoint=cfg.ckpt_path, inference=task.inference))
    log.info("%s; run directory: %s", ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()), output_dir)
    return metrics
