"""Spectrogram PNGs of a mixture and its separated sources."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def log_spectrogram(waveform: Tensor, sample_rate: int, window_seconds: float = 0.032) -> Tensor:
    """Magnitude in dB (frequencies, frames) of waveform (samples,): Hann window, 75% overlap, floor -100 dB."""
    n_fft = max(16, int(window_seconds * sample_rate))
    window = torch.hann_window(n_fft)
    padded = torch.nn.functional.pad(waveform.float().cpu(), (0, max(0, n_fft - len(waveform))))
    spectrum = torch.stft(padded, n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()
    return 20 * torch.log10(spectrum.clamp_min(1e-5))


def plot_spectrograms(signals: Mapping[str, Tensor], sample_rate: int, png: Path, title: str = "") -> Path:
    """One panel per named waveform (samples,), stacked, on a shared time and colour scale."""
    spectrograms = {name: log_spectrogram(x, sample_rate) for name, x in signals.items()}
    top = max(s.max().item() for s in spectrograms.values())
    seconds = max(len(x) for x in signals.values()) / sample_rate
    fig, axes = plt.subplots(len(signals), 1, figsize=(9, 2.2 * len(signals)), squeeze=False, sharex=True)
    for (name, spectrogram), ax in zip(spectrograms.items(), axes[:, 0]):
        image = ax.imshow(
            spectrogram.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
            extent=(0, len(signals[name]) / sample_rate, 0, sample_rate / 2000),
        )  # fmt: skip
        ax.set_ylabel(f"{name}\nkHz")
    axes[-1, 0].set_xlabel("seconds")
    axes[-1, 0].set_xlim(0, seconds)
    axes[0, 0].set_title(title)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="dB", fraction=0.03)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
