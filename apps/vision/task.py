"""ImageClassificationTask: cross-entropy with label smoothing and Mixup/CutMix, top-1/top-5 accuracy, a
test confusion matrix, and what `predict` writes.

Logged: `<stage>/loss`, `<stage>/top1`, `<stage>/top5` (top-k accuracy over all images); after testing,
confusion_matrix.png and confusion_matrix.csv in the run directory (rows true classes, columns predicted).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from timm.data import Mixup
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from apps.common.module import OptimizerFactory, SchedulerFactory, Task
from apps.vision.data import ImageDataModule
from apps.vision.plots import plot_confusion_matrix

log = logging.getLogger(__name__)


def accuracy_metrics(num_classes: int) -> MetricCollection:
    """top1 and top5 accuracy (top-k with k = min(5, classes)), over all images."""
    top5 = min(5, num_classes)
    return MetricCollection({
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "top5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
    })


class ImageClassificationTask(Task):
    """Classify images into `class_names`.

    Args:
        model: images (B, C, H, W) normalised -> logits (B, classes).
        class_names: one name per class (labels index them).
        label_smoothing: cross-entropy label smoothing (also applied to Mixup's soft targets).
        mixup_alpha, cutmix_alpha: Beta parameters of timm's Mixup and CutMix (0: off); with both on, each
            batch takes one of them (switch_prob 0.5). mixup_prob: share of training batches mixed.
    Training accuracy is measured against the un-mixed labels of the (possibly mixed) training images.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        class_names: Sequence[str],
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
    ) -> None:
        num_classes = len(class_names)
        super().__init__(model, optimizer, scheduler, metrics=accuracy_metrics(num_classes))
        self.class_names, self.label_smoothing = list(class_names), label_smoothing
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                               label_smoothing=label_smoothing, num_classes=num_classes)
        self.confusion = MulticlassConfusionMatrix(num_classes)

    def prediction_and_target(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        return self(images), labels

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy of logits (B, classes) against labels (B,) or soft targets (B, classes)."""
        if target.is_floating_point():
            return torch.sum(-target * F.log_softmax(prediction.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(prediction.float(), target, label_smoothing=self.label_smoothing)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        if self.mixup is None:
            return super().training_step(batch, batch_idx)
        images, labels = batch
        if len(labels) % 2:
            raise ValueError(f"Mixup/CutMix pair the images of a batch: data.batch_size must be even, got {len(labels)}")
        mixed, soft_targets = self.mixup(images, labels)
        logits = self(mixed)
        loss = self.loss(logits, soft_targets)
        metrics = self.stage_metrics["train_metrics"]
        metrics.update(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(labels))
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return loss

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        _, prediction, target = self.evaluate_batch(batch, "test")
        self.confusion.update(prediction, target)

    def on_test_epoch_end(self) -> None:
        counts = self.confusion.compute().cpu().numpy()
        self.confusion.reset()
        if self.trainer.is_global_zero:
            output_dir = Path(self.trainer.default_root_dir)
            pd.DataFrame(counts, index=self.class_names, columns=self.class_names).to_csv(output_dir / "confusion_matrix.csv")
            plot_confusion_matrix(counts, self.class_names, output_dir / "confusion_matrix.png")

    def predict_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        """Class probabilities (B, classes) of a batch [images]."""
        return self(batch[0]).float().softmax(-1)


def build_task(cfg: DictConfig, datamodule: ImageDataModule) -> ImageClassificationTask:
    """The timm model of `cfg.model` (`apps.vision.variants`) sized for the data, in the task of `cfg.task`."""
    model = instantiate(
        cfg.model, num_classes=datamodule.num_classes, in_chans=datamodule.channels, img_size=datamodule.img_size,
        _convert_="all",
    )
    return instantiate(
        cfg.task,
        model=model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.get("scheduler")),
        class_names=datamodule.classes,
    )


def write_predictions(predictions: list[Tensor], datamodule: ImageDataModule, output_dir: Path) -> pd.DataFrame:
    """Print each image's most likely label and its probability; write predictions.csv (file, label,
    probability, then the probability of every class)."""
    probabilities = torch.cat(predictions).float()
    best, index = probabilities.max(-1)
    files = [str(path) for path in datamodule.predict_files()]
    frame = pd.DataFrame({"file": files, "label": [datamodule.classes[i] for i in index.tolist()], "probability": best.numpy()})
    frame = pd.concat([frame, pd.DataFrame(probabilities.numpy(), columns=datamodule.classes)], axis=1)
    frame.to_csv(output_dir / "predictions.csv", index=False)
    for row in frame.itertuples():
        print(f"{row.file}: {row.label} ({row.probability:.3f})")
    return frame
