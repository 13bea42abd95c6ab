"""Train and score one tiny model (embedding, core.Backbone over one mixer, linear head) on one task."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import core
from benchmarks.synthetic.tasks import IGNORE, Task


@dataclass(frozen=True)
class Settings:
    d_model: int = 64
    depth: int = 2
    length: int = 64  # training (and test) sequence length
    batch: int = 32
    steps: int = 300
    lr: float = 3e-3
    eval_batches: int = 8
    seed: int = 0


class TinyModel(nn.Module):
    """tokens (B, T) -> logits (B, T, num_classes)."""

    def __init__(self, mixer: str, task: Task, settings: Settings) -> None:
        super().__init__()
        self.embed = nn.Embedding(task.vocab_size, settings.d_model)
        self.backbone = core.Backbone(settings.d_model, settings.depth, layers=mixer)
        self.head = nn.Linear(settings.d_model, task.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(self.embed(x))[0])


def accuracy(logits: Tensor, y: Tensor) -> tuple[int, int]:
    """(correct, scored) over the tokens with a target."""
    scored = y != IGNORE
    return int((logits.argmax(-1) == y)[scored].sum()), int(scored.sum())


def train_and_score(mixer: str, task: Task, settings: Settings) -> dict[str, float]:
    """AdamW with a cosine schedule on fresh batches; returns the final training loss, the test accuracy on
    fresh sequences of the training length and of twice that length, and the wall time."""
    torch.manual_seed(settings.seed)
    rng = torch.Generator().manual_seed(settings.seed)
    model = TinyModel(mixer, task, settings)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    start = time.perf_counter()
    model.train()
    for _ in range(settings.steps):
        x, y = task.make_batch(settings.batch, settings.length, rng)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
    model.eval()
    result = dict(train_loss=loss.item(), seconds=time.perf_counter() - start)
    with torch.no_grad():
        for name, length in (("accuracy", settings.length), ("accuracy_2x_length", 2 * settings.length)):
            counts = [accuracy(model(x), y) for x, y in
                      (task.make_batch(settings.batch, length, rng) for _ in range(settings.eval_batches))]
            result[name] = sum(c for c, _ in counts) / sum(n for _, n in counts)
    return result
