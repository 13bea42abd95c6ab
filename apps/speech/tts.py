"""A multi-speaker corpus from speech synthesisers: many voices of espeak-ng (accent x variant x pitch x rate x
pitch range) and optionally flite (base voice x f0 mean and spread x tempo x warp) and Festival (base voice x f0 x tempo
x warp), each reading Harvard sentences
(IEEE 1969), synthesised once, resampled (torchaudio) and cached on disk as 16-bit samples at the rate asked for.

    speakers = synthetic_speakers(range(0, 40), utterances=20, sample_rate=8000, cache_dir="~/.cache/seqmix/speech")
    # speakers[i]: list of 1-D float32 tensors, utterances of voice i, leading/trailing silence trimmed
    synthetic_speakers(range(0, 40), 20, 8000, cache_dir, engines=("espeak", "flite"))  # even i: espeak, odd i: flite
    synthetic_speakers(range(0, 40), 20, 8000, cache_dir, engines=("espeak", "flite", "festival"))  # i % 3 picks
    synthetic_speakers(range(0, 40), 20, 8000, cache_dir, sibling=1, f0_shift=0.3)  # f0-siblings: f0 x or / 1.15-1.3
"""
from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import Tensor

from apps.speech import espeak, festival, flite
from apps.speech.audio import trim_silence
from apps.speech.espeak import Voice
from apps.speech.festival import FestivalVoice
from apps.speech.flite import FliteVoice

log = logging.getLogger(__name__)

SENTENCES = (Path(__file__).parent / "harvard_sentences.txt").read_text().splitlines()
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = (  # human-like variants of espeak-ng-data/voices/!v (no robots, whispers or croaks)
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "Alex", "Andy", "Annie", "adam", "anika", "aunty", "belinda", "benjamin", "boris", "caleb", "david",
    "ed", "edward", "grandma", "grandpa", "ian", "john", "linda", "max", "Michael", "norbert", "paul",
    "quincy", "rob", "robert", "shelby", "steph", "travis",
)  # fmt: skip
FLITE_VOICES = {"awb": (90, 150), "kal16": (85, 140), "rms": (90, 150), "slt": (150, 230)}  # f0 mean range (Hz)
CATALOGUE_SEED = 20240607  # fixes which voice is speaker i, for every run and machine


def espeak_voice(index: int) -> Voice:
    """espeak-ng speaker `index`: a reproducible random accent, variant, pitch, rate and pitch range."""
    rng = np.random.default_rng([CATALOGUE_SEED, index])
    return Voice(
        language=str(rng.choice(ACCENTS)),
        variant=str(rng.choice(VARIANTS)),
        pitch=int(rng.integers(15, 85)),
        rate=int(rng.integers(130, 200)),
        pitch_range=int(rng.integers(30, 90)),
    )


def flite_voice(index: int) -> FliteVoice:
    """flite speaker `index`: a reproducible random base voice, f0 mean (in a range natural for that voice) and
    spread (8-20 % of the mean), duration stretch (0.9-1.2) and warp (0.9-1.1)."""
    rng = np.random.default_rng([CATALOGUE_SEED, index, 2])  # [seed, index]: espeak voice, [seed, index, 1]: sentences
    base = str(rng.choice(list(FLITE_VOICES)))
    f0_mean = int(rng.integers(*FLITE_VOICES[base]))
    return FliteVoice(
        voice=base,
        f0_mean=f0_mean,
        f0_stddev=round(f0_mean * rng.uniform(0.08, 0.2)),
        stretch=round(float(rng.uniform(0.9, 1.2)), 2),
        warp=round(float(rng.uniform(0.9, 1.1)), 2),
    )


def festival_voice(index: int) -> FestivalVoice:
    """Festival speaker `index`: a reproducible random base voice (of `festival.PACKAGES`), f0 factor (0.85-1.2; 1 for
    the HTS voices, which ignore it), duration stretch (0.9-1.2) and warp (0.9-1.1)."""
    rng = np.random.default_rng([CATALOGUE_SEED, index, 4])
    base = str(rng.choice(list(festival.PACKAGES)))
    f0 = round(float(rng.uniform(0.85, 1.2)), 2)
    return FestivalVoice(
        voice=base,
        f0=1.0 if base in festival.HTS else f0,
        stretch=round(float(rng.uniform(0.9, 1.2)), 2),
        warp=round(float(rng.uniform(0.9, 1.1)), 2),
    )


def f0_factor(index: int, sibling: int, shift: float) -> float:
    """The f0 factor f of f0-sibling `sibling` (>= 1) of an engine's speaker `index`: |ln f| uniform in
    [ln(1 + shift / 2), ln(1 + shift)], the sign random, the same on every machine for every shift."""
    rng = np.random.default_rng([CATALOGUE_SEED, index, 3, sibling])
    size = rng.uniform(math.log1p(shift / 2), math.log1p(shift))
    return math.exp(size if rng.random() < 0.5 else -size)


@dataclass(frozen=True)
class Engine:
    """A synthesiser of the catalogue: `voice(k)` is its k-th speaker (with a file-name-safe `.name`),
    `synthesize(text, voice)` -> (float32 waveform (samples,), sample rate) and `with_f0(voice, factor)` the same
    voice with its f0 scaled by about `factor`."""

    voice: Callable[[int], Any]
    synthesize: Callable[[str, Any], tuple[np.ndarray, int]]
    with_f0: Callable[[Any, float], Any]


ENGINES = {
    "espeak": Engine(espeak_voice, espeak.synthesize, espeak.with_f0),
    "flite": Engine(flite_voice, flite.synthesize, flite.with_f0),
    "festival": Engine(festival_voice, festival.synthesize, festival.with_f0),
}
Speaker = Voice | FliteVoice | FestivalVoice


def engine_speaker(index: int, engines: Sequence[str]) -> tuple[str, int]:
    """Speaker `index` of the catalogue interleaving `engines`: (its engine, its index among that engine's speakers).
    With engines ("espeak",) speaker i is espeak speaker i; with ("espeak", "flite") espeak i // 2 for even i,
    flite i // 2 for odd i."""
    return engines[index % len(engines)], index // len(engines)


def sibling_voice(engine: str, index: int, sibling: int = 0, f0_shift: float = 0.0) -> Speaker:
    """Speaker `index` of `engine` (sibling 0) or its f0-sibling `sibling`: the same voice with its f0 scaled by
    `f0_factor(index, sibling, f0_shift)` (see the engine's `with_f0`)."""
    voice = ENGINES[engine].voice(index)
    return ENGINES[engine].with_f0(voice, f0_factor(index, sibling, f0_shift)) if sibling else voice


def sentences_of(index: int, count: int) -> list[int]:
    """The `count` sentence numbers speaker `index` reads (a reproducible draw without repeats)."""
    if not 0 < count <= len(SENTENCES):
        raise ValueError(f"utterances per speaker must be in 1..{len(SENTENCES)} (the sentences there are), got {count}")
    rng = np.random.default_rng([CATALOGUE_SEED, index, 1])
    return sorted(rng.choice(len(SENTENCES), size=count, replace=False).tolist())


def cache_file(cache_dir: Path, engine: str, speaker: Speaker, sample_rate: int) -> Path:
    """Where the utterances of `speaker` at `sample_rate` are kept: one .npz, an int16 array per sentence, named by
    engine, rate and voice parameters only (a cache filled on one machine serves another)."""
    return cache_dir / f"{engine}-{sample_rate}" / f"{speaker.name}.npz"


@functools.cache
def resampler(from_rate: int, to_rate: int) -> torchaudio.transforms.Resample:
    """torchaudio's resampler (its filter built once per pair of rates)."""
    return torchaudio.transforms.Resample(from_rate, to_rate)


def resample_batch(waveforms: list[np.ndarray], from_rate: int, to_rate: int) -> list[np.ndarray]:
    """1-D waveforms resampled together (zero-padded into one batch: far faster than one at a time)."""
    batch = torch.zeros(len(waveforms), max(len(w) for w in waveforms))
    for row, waveform in zip(batch, waveforms):
        row[: len(waveform)] = torch.from_numpy(waveform)
    resampled = resampler(from_rate, to_rate)(batch)
    return [r[: math.ceil(len(w) * to_rate / from_rate)].numpy() for r, w in zip(resampled, waveforms)]


def speaker_recordings(
    index: int, count: int, sample_rate: int, cache_dir: Path, engines: Sequence[str] = ("espeak",), sibling: int = 0,
    f0_shift: float = 0.0,
) -> list[np.ndarray]:  # fmt: skip
    """The utterances (int16 at sample_rate, silence trimmed) of speaker `index`, or of its f0-sibling `sibling`
    (`sibling_voice`: the same sentences), synthesised into the cache once."""
    engine, own_index = engine_speaker(index, engines)
    speaker, numbers = sibling_voice(engine, own_index, sibling, f0_shift), sentences_of(own_index, count)
    path = cache_file(cache_dir, engine, speaker, sample_rate)
    cached = dict(np.load(path)) if path.is_file() else {}
    missing = [n for n in numbers if f"s{n}" not in cached]
    if missing:
        log.info("%s: synthesising %d sentences of voice %s into %s", engine, len(missing), speaker.name, path.parent)
        spoken = [ENGINES[engine].synthesize(SENTENCES[n], speaker) for n in missing]
        rate = spoken[0][1]
        trimmed = [trim_silence(torch.from_numpy(waveform), rate).numpy() for waveform, _ in spoken]
        for n, waveform in zip(missing, resample_batch(trimmed, rate, sample_rate)):
            cached[f"s{n}"] = (np.clip(waveform, -1, 1) * 32767).astype(np.int16)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")  # parallel runs share the cache: write, then rename
        np.savez(temporary, **cached)
        temporary.replace(path)
    return [cached[f"s{n}"] for n in numbers]


def synthesize_into_cache(
    indices: Iterable[int], count: int, sample_rate: int, cache_dir: str | Path, workers: int = 1,
    engines: Sequence[str] = ("espeak",), sibling: int = 0, f0_shift: float = 0.0,
) -> None:  # fmt: skip
    """Fill the cache for speakers `indices` or their f0-siblings `sibling` (`workers` processes, one synthesiser and one
    torch thread each; started fresh, since a forked copy of a process that already ran torch may hang in its thread
    pool)."""
    indices, cache_dir, engines = list(indices), Path(cache_dir).expanduser(), tuple(engines)
    if workers <= 1:
        for index in indices:
            speaker_recordings(index, count, sample_rate, cache_dir, engines, sibling, f0_shift)
        return
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        rest = [[x] * len(indices) for x in (count, sample_rate, cache_dir, engines, sibling, f0_shift)]
        list(pool.map(speaker_recordings, indices, *rest))


def synthetic_speakers(
    indices: Iterable[int], utterances: int, sample_rate: int, cache_dir: str | Path, engines: Sequence[str] = ("espeak",),
    sibling: int = 0, f0_shift: float = 0.0,
) -> list[list[Tensor]]:  # fmt: skip
    """Speakers `indices` of the catalogue of `engines` (or their f0-siblings `sibling`, see `sibling_voice`), each a
    list of `utterances` 1-D float32 waveforms at sample_rate."""
    cache_dir = Path(cache_dir).expanduser()
    engines = tuple(engines)
    recordings = (speaker_recordings(i, utterances, sample_rate, cache_dir, engines, sibling, f0_shift) for i in indices)
    return [[torch.from_numpy(r.astype(np.float32) / 32768) for r in speaker] for speaker in recordings]
