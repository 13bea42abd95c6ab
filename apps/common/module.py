"""Base LightningModule of every app: a plain network, its loss and metrics, optimizer and scheduler from config.

Logged names: `train/loss_step`, `train/loss_epoch`, `val/loss`, `test/loss`, and `<stage>/<metric>` for every
metric of the collection. Losses are reduced over processes with sync_dist, metrics by torchmetrics.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
from torch import Tensor, nn
from torch.optim import Optimizer
from torchmetrics import MetricCollection

STAGES = ("train", "val", "test")
OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]


class Task(L.LightningModule, abc.ABC):
    """A network (`model`, a plain nn.Module) trained with `loss` and scored with `metrics`.

    Args:
        model: the network; `forward` calls it.
        optimizer: a partial optimizer (Hydra `_partial_: true`), called with the parameters.
        scheduler: a partial learning-rate scheduler called with the optimizer, or None. It steps once per
            epoch; schedulers that need a value (ReduceLROnPlateau) read `monitor`.
        metrics: metrics over (prediction, target); each stage gets its own copy, named `<stage>/<metric>`.
        monitor: the metric that schedulers and checkpoints watch.

    Subclasses implement `prediction_and_target(batch)` and `loss(prediction, target)`.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        metrics: MetricCollection | None = None,
        monitor: str = "val/loss",
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.monitor = monitor
        metrics = metrics if metrics is not None else MetricCollection({})
        # keys are suffixed: a ModuleDict key "train" would clash with nn.Module.train
        self.stage_metrics = nn.ModuleDict({f"{stage}_metrics": metrics.clone(prefix=f"{stage}/") for stage in STAGES})

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs)

    @abc.abstractmethod
    def prediction_and_target(self, batch: Any) -> tuple[Tensor, Tensor]:
        """The model's prediction for a batch and the target it is scored against."""

    @abc.abstractmethod
    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The scalar training loss."""

    def evaluate_batch(self, batch: Any, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """Loss and metrics of one batch, logged under `stage`; returns (loss, prediction, target)."""
        prediction, target = self.prediction_and_target(batch)
        loss = self.loss(prediction, target)
        metrics = self.stage_metrics[f"{stage}_metrics"]
        metrics.update(prediction, target)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(target)
        )
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return loss, prediction, target

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.evaluate_batch(batch, "train")[0]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluate_batch(batch, "test")

    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor}}
