"""Waveform input and output: WAV files (soundfile), resampling (torchaudio), checks, silence trimming."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional as AF
from torch import Tensor

log = logging.getLogger(__name__)


def read_wav(path: str | Path) -> tuple[Tensor, int]:
    """(waveform (channels, samples) float32 in [-1, 1], sample rate) of an audio file soundfile can read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    data, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)  # [samples, channels]
    return torch.from_numpy(np.ascontiguousarray(data.T)), sample_rate


def write_wav(path: str | Path, waveform: Tensor, sample_rate: int) -> Path:
    """Write waveform (samples,) as 16-bit PCM WAV, peak-normalised to 0.9 if it would clip."""
    waveform = waveform.detach().float().cpu()
    peak = waveform.abs().max().item()
    if peak > 1.0:
        waveform = waveform * (0.9 / peak)
    soundfile.write(Path(path), waveform.numpy(), sample_rate, subtype="PCM_16")
    return Path(path)


def resample(waveform: Tensor, from_rate: int, to_rate: int) -> Tensor:
    """waveform (..., samples) at from_rate -> (..., samples') at to_rate (torchaudio's windowed sinc)."""
    return waveform if from_rate == to_rate else AF.resample(waveform, from_rate, to_rate)


def warp(waveform: Tensor, factor: float, sample_rate: int) -> Tensor:
    """waveform (..., samples) played faster by `factor`: pitch and formants times factor, duration over factor (speed
    perturbation: the samples are declared at factor x sample_rate and resampled back to sample_rate)."""
    if factor <= 0:
        raise ValueError(f"a warp factor must be positive, got {factor}")
    return resample(waveform, round(sample_rate * factor), sample_rate)


def check_finite(waveform: Tensor, what: str) -> None:
    """ValueError naming how many samples are NaN or infinite."""
    bad = (~torch.isfinite(waveform)).sum().item()
    if bad:
        raise ValueError(f"{what} has {bad} NaN or infinite samples of {waveform.numel()}; repair or re-export the audio")


def check_not_silent(waveform: Tensor, what: str, floor_db: float = -70.0) -> None:
    """ValueError when the waveform's RMS is below floor_db dBFS (nothing to separate or learn from)."""
    rms = waveform.float().square().mean().sqrt().item()
    if rms <= 10 ** (floor_db / 20):
        level = "digital silence" if rms == 0 else f"{20 * np.log10(rms):.1f} dBFS"
        raise ValueError(f"{what} is silent ({level}, below {floor_db:.0f} dBFS); give a recording with speech in it")


def trim_silence(waveform: Tensor, sample_rate: int, threshold_db: float = -40.0, frame_seconds: float = 0.02) -> Tensor:
    """waveform (samples,) without leading and trailing frames quieter than threshold_db below its peak frame."""
    frame = max(1, int(frame_seconds * sample_rate))
    usable = waveform[: len(waveform) // frame * frame]
    if usable.numel() == 0:
        return waveform
    energy = usable.view(-1, frame).square().mean(dim=1)
    loud = (energy > energy.max() * 10 ** (threshold_db / 10)).nonzero().squeeze(1)
    return waveform[loud[0] * frame : (loud[-1] + 1) * frame]


def to_mono(waveform: Tensor, channel: int | str | None, what: str) -> Tensor:
    """(channels, samples) -> (samples,). One channel passes; more need `channel`: an index or "mean"."""
    if waveform.shape[0] == 1:
        return waveform[0]
    if channel is None:
        raise ValueError(
            f"{what} has {waveform.shape[0]} channels; the model separates one channel. "
            "Choose one with channel=0 (or 1, ...) or average them with channel=mean"
        )
    if channel == "mean":
        log.info("%s: averaging %d channels to one", what, waveform.shape[0])
        return waveform.mean(dim=0)
    if not isinstance(channel, int) or not 0 <= channel < waveform.shape[0]:
        raise ValueError(f"channel={channel!r}: {what} has channels 0..{waveform.shape[0] - 1}, or use channel=mean")
    return waveform[channel]


def load_mono(path: str | Path, sample_rate: int, channel: int | str | None = None) -> Tensor:
    """A file as one channel (samples,) at `sample_rate`, resampled with a logged note; checked for NaNs."""
    waveform, rate = read_wav(path)
    check_finite(waveform, str(path))
    waveform = to_mono(waveform, channel, str(path))
    if rate != sample_rate:
        log.info("%s: resampling %d Hz -> %d Hz (the model's rate)", path, rate, sample_rate)
    return resample(waveform, rate, sample_rate)
