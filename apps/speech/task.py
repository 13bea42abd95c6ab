"""SeparationTask: permutation-invariant SI-SNR training, SI-SNRi / SDRi test reports, and `predict` files.

Logged: `<stage>/loss` (negative PIT SI-SNR), `<stage>/si_snr` (torchmetrics PIT SI-SNR), and in testing
`test/si_snri` and `test/sdri` (improvement over the mixture itself, in dB, per utterance then averaged).
The test also writes test_per_utterance.csv (one row per test mixture) in the run directory.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.audio import PermutationInvariantTraining
from torchmetrics.functional.audio import (
    permutation_invariant_training,
    pit_permutate,
    scale_invariant_signal_noise_ratio,
    signal_distortion_ratio,
)

from apps.common.module import OptimizerFactory, SchedulerFactory, Task
from apps.speech.audio import write_wav
from apps.speech.data import SeparationDataModule
from apps.speech.plots import plot_spectrograms

Batch = Sequence[Any]  # (mixture (B, T), sources (B, N, T), names)


def pit_si_snr(estimates: Tensor, sources: Tensor) -> tuple[Tensor, Tensor]:
    """Best mean SI-SNR over speaker permutations: estimates, sources (B, N, T) -> (SI-SNR (B,) in dB,
    permutation (B, N): estimate perm[b, k] goes with source k)."""
    return permutation_invariant_training(estimates, sources, scale_invariant_signal_noise_ratio, eval_func="max")


def pit_si_snr_loss(estimates: Tensor, sources: Tensor) -> Tensor:
    """Negative permutation-invariant SI-SNR, averaged over the batch (a scalar, in dB)."""
    return -pit_si_snr(estimates, sources)[0].mean()


# added to the diagonal of SDR's filter system (the source's normalised autocorrelation, 1 at lag 0). Without it the
# system of a source with few frequencies (a tone) is near singular, and a perfect estimate's SDR came out NaN on one
# CPU and finite on another (session 19); that of a silent source is singular and torch.linalg.solve raises. With it a
# perfect estimate scores about 120 dB, a silent source -inf (as a silent estimate does), and the SDR of an estimate of
# filtered noise changes by 5e-10 dB
SDR_DIAGONAL_LOAD = 1e-12


def sdr_per_source(estimates: Tensor, sources: Tensor) -> Tensor:
    """torchmetrics' SDR (B, N) of estimates and sources (B, N, T), one source at a time: torch 2.11's batched
    CPU linalg.solve fails ("Pivots given to lu_solve") on some batch shapes with more than one thread."""
    pairs = zip(estimates.flatten(0, 1), sources.flatten(0, 1))
    return torch.stack([signal_distortion_ratio(e, s, load_diag=SDR_DIAGONAL_LOAD) for e, s in pairs]).view(sources.shape[:2])


def improvements(mixture: Tensor, estimates: Tensor, sources: Tensor) -> dict[str, Tensor]:
    """Per-mixture SI-SNR, SI-SNRi, SDR and SDRi in dB, each (B,), of estimates (B, N, T) against sources
    (B, N, T) in the best permutation; improvements are over the mixture (B, T) as every source's estimate.
    Computed in float64 outside autocast (SDR solves a 512-tap least-squares filter)."""
    with torch.autocast(mixture.device.type, enabled=False):
        mixture, estimates, sources = mixture.double(), estimates.double(), sources.double()
        si_snr, permutation = pit_si_snr(estimates, sources)
        ordered = pit_permutate(estimates, permutation)
        as_estimate = mixture.unsqueeze(1).expand_as(sources)
        si_snr_mixture = scale_invariant_signal_noise_ratio(as_estimate, sources).mean(-1)
        sdr = sdr_per_source(ordered, sources).mean(-1)
        sdr_mixture = sdr_per_source(as_estimate, sources).mean(-1)
    return {"si_snr": si_snr, "si_snri": si_snr - si_snr_mixture, "sdr": sdr, "sdri": sdr - sdr_mixture}


class SeparationTask(Task):
    """Separate the sources of a mixture: model (B, T) -> (B, N, T), trained with PIT SI-SNR.

    Args:
        model: the separation network.
        plot_examples: test mixtures whose spectrograms (mixture, sources, estimates) are drawn (0: none).
    """

    def __init__(
        self, model: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None, plot_examples: int = 2
    ) -> None:
        metrics = MetricCollection({"si_snr": PermutationInvariantTraining(scale_invariant_signal_noise_ratio, eval_func="max")})
        super().__init__(model, optimizer, scheduler, metrics=metrics)
        self.plot_examples = plot_examples
        self.test_improvements = nn.ModuleDict({"si_snri": MeanMetric(), "sdri": MeanMetric()})
        self.rows: list[dict[str, Any]] = []

    def forward(self, mixture: Tensor) -> Tensor:
        return self.model(mixture).float()  # the loss in float32 also under bf16 autocast

    def prediction_and_target(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self(batch[0]), batch[1]

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return pit_si_snr_loss(prediction, target)

    def on_test_epoch_start(self) -> None:
        self.rows = []

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        mixture, _, names = batch
        _, estimates, sources = self.evaluate_batch(batch, "test")
        scores = improvements(mixture, estimates, sources)
        for key, metric in self.test_improvements.items():
            metric.update(scores[key])
            self.log(f"test/{key}", metric, on_step=False, on_epoch=True)
        for i, name in enumerate(names):
            row = {"mixture": name, "seconds": mixture.shape[-1] / self.sample_rate}
            self.rows.append(row | {key: value[i].item() for key, value in scores.items()})
        if batch_idx < self.plot_examples and self.trainer.is_global_zero:
            self.plot_example(mixture[0], sources[0], estimates[0], Path(self.trainer.default_root_dir) / f"test_example_{batch_idx}.png")

    @property
    def sample_rate(self) -> int:
        return self.trainer.datamodule.sample_rate

    def plot_example(self, mixture: Tensor, sources: Tensor, estimates: Tensor, png: Path) -> None:
        signals = {"mixture": mixture} | {f"source {k + 1}": s for k, s in enumerate(sources)}
        signals |= {f"estimate {k + 1}": e for k, e in enumerate(estimates)}
        plot_spectrograms(signals, self.sample_rate, png, title=png.stem)

    def on_test_epoch_end(self) -> None:
        rows = self.rows
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if self.trainer.is_global_zero:
            frame = pd.DataFrame(rows).drop_duplicates("mixture").sort_values("mixture")  # DDP pads with repeats
            frame.to_csv(Path(self.trainer.default_root_dir) / "test_per_utterance.csv", index=False, float_format="%.3f")

    def predict_step(self, batch: Batch, batch_idx: int) -> tuple[Tensor, Tensor, list[str]]:
        return batch[0], self(batch[0]), list(batch[2])


def build_model(cfg: DictConfig) -> nn.Module:
    """The separation network of cfg.model for cfg.data.num_speakers speakers."""
    return instantiate(cfg.model, num_speakers=cfg.data.num_speakers, _convert_="all")


def build_task(cfg: DictConfig, datamodule: SeparationDataModule) -> SeparationTask:
    """The network of `cfg.model` inside the SeparationTask of `cfg.task`."""
    if datamodule.num_speakers != cfg.data.num_speakers:
        raise ValueError(f"the data has {datamodule.num_speakers} speakers but cfg.data.num_speakers={cfg.data.num_speakers}")
    return instantiate(cfg.task, model=build_model(cfg), optimizer=instantiate(cfg.optimizer), scheduler=instantiate(cfg.get("scheduler")))


def write_predictions(predictions: list[tuple[Tensor, Tensor, list[str]]], datamodule: SeparationDataModule, output_dir: Path) -> list[Path]:
    """predictions/<mixture>_mix.wav and <mixture>_s<k>.wav for every predicted test mixture, and
    predictions/<mixture>.png (spectrograms) for the first; returns the WAV paths."""
    directory = output_dir / "predictions"
    directory.mkdir(exist_ok=True)
    written = []
    for mixtures, estimates, names in predictions:
        for mixture, estimate, name in zip(mixtures, estimates, names):
            written.append(write_wav(directory / f"{name}_mix.wav", mixture, datamodule.sample_rate))
            written += [write_wav(directory / f"{name}_s{k + 1}.wav", e, datamodule.sample_rate) for k, e in enumerate(estimate)]
    mixture, estimate, name = predictions[0][0][0], predictions[0][1][0], predictions[0][2][0]
    signals = {"mixture": mixture} | {f"estimate {k + 1}": e for k, e in enumerate(estimate)}
    plot_spectrograms(signals, datamodule.sample_rate, directory / f"{name}.png", title=name)
    return written
