"""The LightningModules of the genomics app: language-model pretraining and the downstream classifications.

- `LanguageModelTask`: objective "causal" (next base from the bases before it) or "mlm" (15% of the bases
  hidden: 80% become MASK, 10% a random base, 10% stay; predict them). Logged: `<stage>/bits_per_base` (cross
  entropy in bits over the predicted A/C/G/T positions; N is never a target) and `<stage>/accuracy`.
- `ClassificationTask`: one class per window ("sequence") or per base ("per_base"); logged: accuracy, MCC and
  macro F1 (over windows or over bases).

`predict` writes one CSV row per FASTA record (predictions.csv); per-base tasks also write the predicted
positive-class intervals as BED (predictions.bed).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from torchmetrics import Accuracy, F1Score, MatthewsCorrCoef, Metric, MetricCollection

from apps.common.module import OptimizerFactory, SchedulerFactory, Task
from apps.genomics import tokenizer
from apps.genomics.data import GenomicsDataModule
from apps.genomics.model import DNAModel

OBJECTIVES = ("causal", "mlm")
EVAL_SEED = {"val": 1_000_003, "test": 2_000_003, "predict": 3_000_003}


class BitsPerBase(Metric):
    """Mean cross entropy in bits over every predicted base: update(logits (N, 4), targets (N,))."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nats", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, targets: Tensor) -> None:
        self.nats += F.cross_entropy(logits.float(), targets, reduction="sum").double()
        self.count += targets.numel()

    def compute(self) -> Tensor:
        return self.nats / self.count / math.log(2)


def classification_metrics(num_classes: int) -> MetricCollection:
    return MetricCollection({
        "accuracy": Accuracy(task="multiclass", num_classes=num_classes),
        "mcc": MatthewsCorrCoef(task="multiclass", num_classes=num_classes),
        "f1": F1Score(task="multiclass", num_classes=num_classes, average="macro"),
    })


class LanguageModelTask(Task):
    """Pretraining: model (B, T) -> (B, T, 4) base logits; batches (tokens, tokens)."""

    def __init__(self, model: DNAModel, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
                 objective: str = "mlm", mask_fraction: float = 0.15) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"task.objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
        if model.head_kind != "bases":
            raise ValueError(f"a language model needs model.head=bases, got {model.head_kind!r}")
        if objective == "causal" and not model.causal:
            raise ValueError(
                "task.objective=causal needs a causal model: model.bidirectional=false, model.rc=none and a causal mixer "
                "(attention: model.mixer.options.causal=true); or use task.objective=mlm"
            )
        if not 0 < mask_fraction < 1:
            raise ValueError(f"task.mask_fraction must be in (0, 1), got {mask_fraction}")
        super().__init__(model, optimizer, scheduler, metrics=MetricCollection({
            "bits_per_base": BitsPerBase(), "accuracy": Accuracy(task="multiclass", num_classes=tokenizer.NUM_BASES)}))
        self.objective, self.mask_fraction = objective, mask_fraction
        self.stage, self.eval_batch = "val", 0  # which fixed masks an evaluation batch gets

    def masked_input(self, tokens: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(input with the chosen bases hidden, chosen (B, T) bool): BERT's 80/10/10 scheme over A/C/G/T positions."""
        def uniform() -> Tensor:
            return torch.rand(tokens.shape, generator=generator, device=tokens.device)
        chosen = (uniform() < self.mask_fraction) & (tokens < tokenizer.NUM_BASES)
        if not chosen.any():  # tiny batches: always predict something
            chosen = tokens < tokenizer.NUM_BASES
        roll = uniform()
        random_bases = torch.randint(0, tokenizer.NUM_BASES, tokens.shape, generator=generator, device=tokens.device)
        hidden = torch.where(roll < 0.8, torch.full_like(tokens, tokenizer.MASK), torch.where(roll < 0.9, random_bases, tokens))
        return torch.where(chosen, hidden, tokens), chosen

    def generator(self, device: torch.device, stage: str) -> torch.Generator | None:
        """None in training (the global generator); a fixed one per evaluation batch, so that evaluating a
        checkpoint again hides the same bases."""
        if stage == "train":
            return None
        return torch.Generator(device=device).manual_seed(EVAL_SEED[stage] + self.eval_batch)

    def logits_and_targets(self, tokens: Tensor, stage: str) -> tuple[Tensor, Tensor]:
        """Logits (N, 4) and targets (N,) of every predicted base of a batch of tokens (B, T)."""
        if self.objective == "causal":
            logits, targets = self.model(tokens[:, :-1]), tokens[:, 1:]
            chosen = targets < tokenizer.NUM_BASES
        else:
            inputs, chosen = self.masked_input(tokens, self.generator(tokens.device, stage))
            logits, targets = self.model(inputs), tokens
        return logits[chosen], targets[chosen]

    def prediction_and_target(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self.logits_and_targets(batch[0], "train" if self.training else self.stage)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(prediction.float(), target)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self.stage, self.eval_batch = "val", batch_idx
        self.evaluate_batch(batch, "val")

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        self.stage, self.eval_batch = "test", batch_idx
        self.evaluate_batch(batch, "test")

    def predict_step(self, batch: tuple[str, Tensor], batch_idx: int) -> dict[str, Any]:
        name, tokens = batch
        self.eval_batch = batch_idx
        logits, targets = self.logits_and_targets(tokens, "predict")
        bits = F.cross_entropy(logits.float(), targets, reduction="sum").item() / math.log(2)
        return {"name": name, "length": tokens.shape[1], "predicted_bases": len(targets),
                "bits_per_base": bits / max(len(targets), 1)}


class ClassificationTask(Task):
    """One class per window (model head "sequence", labels (B,)) or per base ("per_base", labels (B, T))."""

    def __init__(self, model: DNAModel, optimizer: OptimizerFactory, class_names: Sequence[str],
                 scheduler: SchedulerFactory | None = None) -> None:
        if model.head_kind not in ("sequence", "per_base"):
            raise ValueError(f"classification needs model.head=sequence or per_base, got {model.head_kind!r}")
        if model.head.out_features != len(class_names):
            raise ValueError(
                f"model.num_classes={model.head.out_features} but the data have {len(class_names)} classes {list(class_names)}"
            )
        super().__init__(model, optimizer, scheduler, metrics=classification_metrics(len(class_names)), monitor="val/loss")
        self.class_names = list(class_names)

    def prediction_and_target(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        tokens, labels = batch
        logits = self.model(tokens)
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(prediction.float(), target)

    def predict_step(self, batch: tuple[str, Tensor], batch_idx: int) -> dict[str, Any]:
        name, tokens = batch
        probabilities = self.model(tokens).float().softmax(-1)[0].cpu()  # (C,) or (T, C)
        row: dict[str, Any] = {"name": name, "length": tokens.shape[1]}
        if self.model.head_kind == "sequence":
            row["prediction"] = self.class_names[int(probabilities.argmax())]
            row.update({f"p_{label}": float(p) for label, p in zip(self.class_names, probabilities)})
            return row
        calls = probabilities.argmax(-1).numpy()
        row.update({f"fraction_{label}": float((calls == c).mean()) for c, label in enumerate(self.class_names)})
        row["intervals"] = runs_of(calls == len(self.class_names) - 1)
        return row


def runs_of(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def build_task(cfg: DictConfig, datamodule: GenomicsDataModule) -> Task:
    """The DNAModel of `cfg.model` inside the task of `cfg.task`, sized for the data's classes."""
    classes = datamodule.class_names
    model = instantiate(cfg.model, **({"num_classes": len(classes)} if classes else {}), _convert_="all")
    extra = {"class_names": classes} if classes else {}
    optimizer, scheduler = instantiate(cfg.optimizer), instantiate(cfg.get("scheduler"))
    return instantiate(cfg.task, model=model, optimizer=optimizer, scheduler=scheduler, **extra)


def write_predictions(predictions: list[dict[str, Any]], datamodule: GenomicsDataModule, output_dir: Path) -> pd.DataFrame:
    """predictions.csv, one row per record; for per-base tasks also predictions.bed (positive-class intervals)."""
    rows = [dict(row) for row in predictions]
    if rows and "intervals" in rows[0]:
        positive = datamodule.class_names[-1]
        with open(output_dir / "predictions.bed", "w") as bed:
            for row in rows:
                bed.writelines(f"{row['name']}\t{start}\t{end}\t{positive}\n" for start, end in row["intervals"])
        for row in rows:
            del row["intervals"]
    frame = pd.DataFrame(rows)
    frame.to_csv(output_dir / "predictions.csv", index=False)
    return frame
