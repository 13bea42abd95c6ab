"""Mixtures of N speakers from single-speaker utterances: random pairs, gains and offsets (dynamic mixing).

Every mixing function takes a numpy Generator, so a training draw is new each time and a validation or test
set is the same every time (a fixed seed per item).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor


def pick_speakers(num_speakers_available: int, num_speakers: int, rng: np.random.Generator) -> list[int]:
    """`num_speakers` different speaker indices, uniformly at random."""
    if num_speakers_available < num_speakers:
        raise ValueError(
            f"mixtures of {num_speakers} speakers need at least {num_speakers} speakers, the corpus has "
            f"{num_speakers_available}; add speakers (data.train_voices / more folders) or lower data.num_speakers"
        )
    return rng.choice(num_speakers_available, size=num_speakers, replace=False).tolist()


def place(utterance: Tensor, length: int, rng: np.random.Generator) -> Tensor:
    """The utterance in a window of `length` samples: a random crop if longer, else at a random offset in silence."""
    if len(utterance) >= length:
        start = int(rng.integers(0, len(utterance) - length + 1))
        return utterance[start : start + length]
    window = utterance.new_zeros(length)
    start = int(rng.integers(0, length - len(utterance) + 1))
    window[start : start + len(utterance)] = utterance
    return window


@dataclass(frozen=True)
class Room:
    """Reverberation of a fraction of the sources (as read in a room, not at the synthesiser's output): a source is
    convolved with a synthetic impulse response: a unit direct path, then Gaussian noise that decays by 60 dB in rt60
    seconds, with drr_db dB less energy than the direct path; rt60 and drr_db drawn uniformly in their ranges per source.
    The reverberant source is then the source to estimate, as a recording's room is part of its source."""

    fraction: float
    sample_rate: int
    rt60: tuple[float, float] = (0.1, 0.5)
    drr_db: tuple[float, float] = (3.0, 15.0)

    def impulse_response(self, rng: np.random.Generator) -> Tensor:
        """A random impulse response (round(rt60 x sample_rate) samples, float32)."""
        rt60, drr_db = rng.uniform(*self.rt60), rng.uniform(*self.drr_db)
        t = np.arange(1, max(2, round(rt60 * self.sample_rate))) / self.sample_rate
        tail = rng.standard_normal(len(t)) * 10 ** (-3 * t / rt60)  # -60 dB at rt60
        tail *= np.sqrt(10 ** (-drr_db / 10) / np.square(tail).sum())
        return torch.from_numpy(np.concatenate([[1.0], tail])).float()

    def __call__(self, source: Tensor, rng: np.random.Generator) -> Tensor:
        """source (T,) -> (T,): reverberant with probability `fraction` (the tail past T cut), else unchanged."""
        if not self.fraction or rng.random() >= self.fraction:
            return source
        return AF.fftconvolve(source, self.impulse_response(rng))[: len(source)]


def mix(utterances: Sequence[Tensor], length: int | None, gain_db: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """(mixture (length,), sources (N, length)) from N utterances.

    Each utterance is placed in the window (`place`; length None = the shortest utterance, the "min" mode of
    wsj0-2mix), scaled to unit RMS over the window times a random gain in [-gain_db, gain_db] dB, and the
    mixture is their sum; everything is scaled by one factor so that the mixture peaks at 0.9 at most.
    """
    length = min(len(u) for u in utterances) if length is None else length
    sources = torch.stack([place(u, length, rng) for u in utterances])  # [N, T]
    rms = sources.square().mean(dim=1, keepdim=True).sqrt().clamp_min(1e-8)
    gains = torch.from_numpy(10 ** (rng.uniform(-gain_db, gain_db, size=(len(utterances), 1)) / 20)).float()
    sources = sources / rms * gains
    mixture = sources.sum(dim=0)
    scale = min(1.0, 0.9 / mixture.abs().max().clamp_min(1e-8).item())
    return mixture * scale, sources * scale


def pick_utterances(
    speakers: Sequence[Sequence[Tensor]], num_speakers: int, rng: np.random.Generator, same_speaker_fraction: float = 0.0
) -> list[tuple[int, list[int]]]:
    """Each source's speaker and its utterance indices in a random reading order: `num_speakers` different speakers,
    or, with probability `same_speaker_fraction`, one random speaker whose utterances are dealt out among the
    sources (no utterance twice in a mixture)."""
    if same_speaker_fraction and rng.random() < same_speaker_fraction:
        speaker = int(rng.integers(len(speakers)))
        order = rng.permutation(len(speakers[speaker]))
        return [(speaker, order[k::num_speakers].tolist()) for k in range(num_speakers)]
    return [(s, rng.permutation(len(speakers[s])).tolist()) for s in pick_speakers(len(speakers), num_speakers, rng)]


def read_on(utterances: Sequence[Tensor], length: int, pause: tuple[int, int], rng: np.random.Generator) -> Tensor:
    """A passage: the utterances one after another with a random pause of [pause[0], pause[1]) samples between
    two, as many as it takes to reach `length` samples (all of them if they are shorter together)."""
    parts, filled = [utterances[0]], len(utterances[0])
    for utterance in utterances[1:]:
        if filled >= length:
            break
        gap = int(rng.integers(*pause))
        parts += [utterance.new_zeros(gap), utterance]
        filled += gap + len(utterance)
    return torch.cat(parts)


def draw_mixture(
    speakers: Sequence[Sequence[Tensor]], num_speakers: int, length: int | None, gain_db: float, rng: np.random.Generator,
    same_speaker_fraction: float = 0.0, pause: tuple[int, int] | None = None,
    same_speaker_voices: Sequence[Sequence[Sequence[Tensor]]] | None = None,
    room: Callable[[Tensor, np.random.Generator], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One random mixture (see `mix`) of the speakers `pick_utterances` draws: each source one utterance, or, with
    `pause` (samples, min and max), a passage of its speaker's utterances (`read_on`) that fills `length`.
    `same_speaker_voices[n][s]`: what source n of a same-speaker mixture of speaker s reads instead of speakers[s]
    (utterance u the same sentence as speakers[s][u], e.g. by an f0-sibling voice of s). `room` (e.g. a `Room`)
    transforms each source before mixing."""
    picked = pick_utterances(speakers, num_speakers, rng, same_speaker_fraction)
    same_speaker = len({s for s, _ in picked}) == 1
    voices = same_speaker_voices if same_speaker and same_speaker_voices is not None else [speakers] * num_speakers
    readings = [[voices[n][s][u] for u in order] for n, (s, order) in enumerate(picked)]  # source n's utterances, in order
    sources = [reading[0] for reading in readings] if pause is None else [read_on(reading, length, pause, rng) for reading in readings]
    if room is not None:
        sources = [room(source, rng) for source in sources]
    return mix(sources, length, gain_db, rng)


def seeded(seed: int, index: int) -> np.random.Generator:
    """The generator of item `index` of a fixed set."""
    return np.random.default_rng([seed, index])


def fresh() -> np.random.Generator:
    """A generator seeded from torch's global RNG, which Lightning seeds per run and per data-loader worker."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
