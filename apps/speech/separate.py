"""The `separate` verb: one audio file in, one WAV file per speaker out, with a spectrogram PNG.

    python -m apps.speech separate ckpt_path=RUN_DIR separate.input=mixture.wav [separate.chunk_seconds=8]

Long files are separated in overlapping chunks; each chunk's estimates are matched to what came before on
their overlap (the speaker order of a separation is arbitrary, and so is each estimate's scale), then
cross-faded into it.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from apps.common.run import App
from apps.speech.audio import check_not_silent, load_mono, write_wav
from apps.speech.plots import plot_spectrograms
from apps.speech.task import build_model

log = logging.getLogger(__name__)

Separator = Callable[[Tensor], Tensor]  # mixture (T,) -> estimates (N, T)


def match_to(previous: Tensor, current: Tensor) -> Tensor:
    """current (N, L) reordered and rescaled to fit previous (N, O), O <= L, on their first O samples (the
    overlap): the permutation with the largest summed correlation, then each estimate's least-squares gain
    (1 where either side is silent there)."""
    overlap = previous.shape[1]

    def correlation(order: tuple[int, ...]) -> float:
        pairs = zip(previous, current[list(order), :overlap])
        return sum((F.normalize(p, dim=0) * F.normalize(c, dim=0)).sum().item() for p, c in pairs)

    current = current[list(max(itertools.permutations(range(len(current))), key=correlation))]
    head = current[:, :overlap]
    energy, previous_energy = head.square().sum(dim=1), previous.square().sum(dim=1)
    audible = (energy > 1e-8) & (previous_energy > 1e-8)
    gains = torch.where(audible, (previous * head).sum(dim=1) / energy.clamp_min(1e-8), torch.ones_like(energy))
    return current * gains.unsqueeze(1)


def separate_in_chunks(separator: Separator, mixture: Tensor, chunk: int, overlap: int) -> Tensor:
    """Estimates (N, T) of a mixture (T,): `separator` on chunks of `chunk` samples overlapping by at least
    `overlap` (the last chunk ends at T), each matched to the output so far (`match_to`) and cross-faded
    linearly over the samples they share."""
    if not 0 < overlap < chunk:
        raise ValueError(f"need 0 < overlap < chunk, got overlap={overlap} and chunk={chunk} samples; set separate.overlap_seconds")
    total = len(mixture)
    if total <= chunk:
        return separator(mixture)
    starts = [*range(0, total - chunk, chunk - overlap), total - chunk]
    output = separator(mixture[:chunk])
    output = torch.cat([output, output.new_zeros(len(output), total - chunk)], dim=1)
    done = chunk
    for start in starts[1:]:
        shared = done - start
        estimates = match_to(output[:, start:done], separator(mixture[start : start + chunk]))
        fade = torch.linspace(0, 1, shared, device=estimates.device)
        output[:, start:done] = output[:, start:done] * (1 - fade) + estimates[:, :shared] * fade
        output[:, done : start + chunk] = estimates[:, shared:]
        done = start + chunk
    return output


def prepare_input(path: Path, sample_rate: int, channel: int | str | None, min_samples: int) -> tuple[Tensor, int]:
    """(checked mono waveform (T',) at sample_rate, its length T before padding): resampled with a note, NaNs
    and silence refused, multichannel audio only with `channel`; shorter than `min_samples`: zero-padded to
    it, with a note (the estimates are cut back to T)."""
    waveform = load_mono(path, sample_rate, channel)
    check_not_silent(waveform, str(path))
    length = len(waveform)
    if length < min_samples:
        log.warning("%s: %d samples, shorter than the model's %d-sample window; zero-padded", path, length, min_samples)
        waveform = F.pad(waveform, (0, min_samples - length))
    return waveform, length


def load_separator(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The network of the checkpoint cfg.ckpt_path (rebuilt from its stored config), in eval mode on device."""
    model = build_model(cfg)
    state = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")})
    return model.eval().to(device)


def separate(cfg: DictConfig, app: App) -> list[Path]:
    """Separate cfg.separate.input with the checkpoint cfg.ckpt_path; writes <stem>_s<k>.wav and
    <stem>_spectrograms.png in the run directory and returns the WAV paths."""
    options = cfg.separate
    if options.input is None:
        raise ValueError("separate needs an audio file: separate.input=PATH.wav")
    device = torch.device(options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_separator(cfg, device)
    sample_rate, path = cfg.data.sample_rate, Path(options.input)
    padded, length = prepare_input(path, sample_rate, options.channel, model.min_samples)
    chunk, overlap = round(options.chunk_seconds * sample_rate), round(options.overlap_seconds * sample_rate)

    @torch.inference_mode()
    def separator(piece: Tensor) -> Tensor:
        return model(piece.to(device).unsqueeze(0))[0].float().cpu()

    estimates = separate_in_chunks(separator, padded, chunk, overlap)[:, :length]
    mixture = padded[:length]
    output_dir = Path(cfg.paths.output_dir)
    written = [write_wav(output_dir / f"{path.stem}_s{k + 1}.wav", e, sample_rate) for k, e in enumerate(estimates)]
    signals = {"mixture": mixture} | {f"speaker {k + 1}": e for k, e in enumerate(estimates)}
    plot_spectrograms(signals, sample_rate, output_dir / f"{path.stem}_spectrograms.png", title=path.name)
    log.info("wrote %s in %s", ", ".join(p.name for p in written), output_dir)
    return written
