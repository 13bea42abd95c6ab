"""Train and score one tiny model (embedding, core.Backbone over one mixer, linear head) on one experiment."""
from __future__ import annotations

import ast
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import core
from benchmarks.synthetic.tasks import IGNORE, TASKS, Task


@dataclass(frozen=True)
class Settings:
    d_model: int = 64
    depth: int = 2
    batch: int = 64
    steps: int = 1500
    lr: float = 3e-3
    eval_batches: int = 4
    seed: int = 0
    device: str = "cpu"
    max_seconds: float = float("inf")  # training stops after this long (the row records the steps it made)


@dataclass(frozen=True)
class Experiment:
    """A task trained on sequences of `train_lengths` (one drawn per step) and tested at `test_lengths`.
    `d_model` overrides Settings.d_model (the state-size axis of MQAR)."""

    task: str
    train_lengths: tuple[int, ...]
    test_lengths: tuple[int, ...]
    d_model: int | None = None


EXPERIMENTS = {
    "mqar_L64": Experiment("mqar", (64,), (64,)),
    "mqar_L128": Experiment("mqar", (128,), (128,)),
    "mqar_L256": Experiment("mqar", (256,), (256,)),
    "mqar_L64_d32": Experiment("mqar", (64,), (64,), d_model=32),
    "mqar_L256_d128": Experiment("mqar", (256,), (256,), d_model=128),
    "parity": Experiment("parity", (64,), (64, 256)),
    "s3": Experiment("s3", (64,), (64, 256)),
    "needle": Experiment("needle", (64, 128, 256), (256, 1024, 4096)),
}


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """"deltanet:allow_neg_eigval=True,head_dim=32" -> ("deltanet", {"allow_neg_eigval": True, "head_dim": 32})."""
    name, _, options = spec.partition(":")
    parsed = {}
    for item in filter(None, options.split(",")):
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"mixer variant {spec!r}: options are key=value pairs separated by commas, got {item!r}")
        parsed[key.strip()] = ast.literal_eval(value.strip())
    return name, parsed


class TinyModel(nn.Module):
    """tokens (B, T) -> logits (B, T, num_classes)."""

    def __init__(self, variant: str, task: Task, d_model: int, depth: int) -> None:
        super().__init__()
        name, options = parse_variant(variant)
        self.embed = nn.Embedding(task.vocab_size, d_model)
        self.backbone = core.Backbone(d_model, depth, layers=name, mixer_options={name: options})
        self.head = nn.Linear(d_model, task.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(self.embed(x))[0])


def accuracy(logits: Tensor, y: Tensor) -> tuple[int, int]:
    """(correct, scored) over the tokens with a target."""
    scored = y != IGNORE
    return int((logits.argmax(-1) == y)[scored].sum()), int(scored.sum())


def train_and_score(variant: str, experiment: Experiment, settings: Settings) -> dict[str, float]:
    """AdamW with warm-up and cosine decay on fresh batches; returns the final training loss, the test accuracy
    on fresh sequences of every test length (`acc_<length>`), the parameter count and the wall time."""
    if experiment.d_model is not None:
        settings = replace(settings, d_model=experiment.d_model)
    task, device = TASKS[experiment.task], torch.device(settings.device)
    torch.manual_seed(settings.seed)
    rng = torch.Generator().manual_seed(settings.seed)
    model = TinyModel(variant, task, settings.d_model, settings.depth).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    warmup = max(1, settings.steps // 20)
    schedule = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, 0.01, 1.0, warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, settings.steps - warmup)),
    ], [warmup])
    start = time.perf_counter()
    model.train()
    steps = 0
    while steps < settings.steps and time.perf_counter() - start < settings.max_seconds:
        length = experiment.train_lengths[steps % len(experiment.train_lengths)]
        x, y = (t.to(device) for t in task.make_batch(settings.batch, length, rng))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        steps += 1
    model.eval()
    result = dict(train_loss=loss.item(), steps=steps, params=sum(p.numel() for p in model.parameters()),
                  seconds=time.perf_counter() - start)
    with torch.no_grad():
        for length in experiment.test_lengths:
            # as many sequences at every length, in smaller batches at long lengths (peak memory)
            batch = min(settings.batch, max(16, settings.batch * 256 // length))
            batches = settings.eval_batches * settings.batch // batch
            try:
                counts = [accuracy(model(x.to(device)), y.to(device)) for x, y in
                          (task.make_batch(batch, length, rng) for _ in range(batches))]
                result[f"acc_{length}"] = sum(c for c, _ in counts) / sum(n for _, n in counts)
            except (torch.OutOfMemoryError, ValueError) as error:  # a length beyond what the model or memory
                result[f"acc_{length}"] = float("nan")                  # allows: the other lengths still count
                result[f"error_{length}"] = f"{type(error).__name__}: {error}"[:120]
    return result


def run_job(variant: str, experiment: str, settings: Settings) -> dict[str, object]:
    """One row of the results (in a worker process): the scores, or the error that stopped this job."""
    torch.set_num_threads(1)
    try:
        return dict(mixer=variant, experiment=experiment, **train_and_score(variant, EXPERIMENTS[experiment], settings))
    except Exception as error:  # one broken mixer must not hide the others' results
        return dict(mixer=variant, experiment=experiment, error=f"{type(error).__name__}: {error}"[:120])
