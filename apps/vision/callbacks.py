"""ThroughputMonitor: images per second and peak memory of training and testing, logged as metrics."""
from __future__ import annotations

import logging
import resource
import time
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB since the last reset: allocated CUDA memory on a GPU, else the process's peak
    resident memory (which never resets)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class ThroughputMonitor(L.Callback):
    """Logs `train/images_per_second` and `train/peak_memory_mb` per training epoch (training batches
    only, validation excluded) and `test/images_per_second`, `test/peak_memory_mb` after testing. With several
    processes the rates are summed (the whole job's throughput) and the memory is the largest of any process.
    The clock waits for the GPU at the start and end of each stage, so queued work is counted."""

    def __init__(self) -> None:
        self.images, self.started, self.paused = 0, 0.0, 0.0

    def _start(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.images, self.started = 0, time.perf_counter()

    def _finish(self, pl_module: L.LightningModule, stage: str) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        seconds = max(time.perf_counter() - self.started, 1e-9)
        rate, memory = self.images / seconds, peak_memory_mb(pl_module.device)
        pl_module.log(f"{stage}/images_per_second", rate, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")
        pl_module.log(f"{stage}/peak_memory_mb", memory, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        log.info("%s: %.0f images/s, peak memory %.0f MiB (this process)", stage, rate, memory)

    def _count(self, batch: Any) -> None:
        self.images += len(batch[0])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._count(batch)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":  # the training clock pauses during validation
            torch.cuda.synchronize(pl_module.device)
        self.paused = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started += time.perf_counter() - self.paused

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(pl_module, "train")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._count(batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(pl_module, "test")
