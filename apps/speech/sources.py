"""Speech on disk: folders of single-speaker recordings, and prepared mixture sets in the LibriMix and
wsj0-mix layouts (for users who have them).

    folder_speakers(DIR, 8000)               # DIR/<speaker>/**/*.wav, or DIR/*.wav with one speaker per file
    folder_speakers(DIR, 8000, CACHE)        # the same, decoded once into CACHE and read from it on access
    PreparedMixtures.from_layout("librimix", ROOT, "test", 8000, num_speakers=2)
        # ROOT/wav8k/min/test/{mix_clean,s1,s2}/<id>.wav, ids from ROOT/wav8k/min/metadata/mixture_test_mix_clean.csv
    PreparedMixtures.from_layout("wsj0_mix", ROOT, "test", 8000, num_speakers=2)
        # ROOT/2speakers/wav8k/min/tt/{mix,s1,s2}/<id>.wav
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from apps.speech.audio import check_finite, load_mono, read_wav, resample
from apps.speech.mixing import place

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus")
log = logging.getLogger(__name__)


def audio_files(directory: Path) -> list[Path]:
    """Audio files under `directory`, recursively, sorted."""
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)


def folder_speakers(path: str | Path, sample_rate: int, cache_dir: str | Path | None = None) -> list[Sequence[Tensor]]:
    """Speakers of a folder, each a sequence of 1-D float32 waveforms at sample_rate (first channel of each file).

    Subdirectories holding audio are speakers (LibriSpeech's SPEAKER/CHAPTER/*.flac); a folder of audio
    files without subdirectories gives one speaker per file (e.g. ../shared/data/speech/librivox).
    Without cache_dir every file is decoded into memory; with it, each speaker is decoded once into 16-bit samples
    under cache_dir/recordings-<rate> and read from there on access (`CachedRecordings`), so that a corpus larger
    than memory trains and a second run starts at once.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"no folder of recordings at {root}; set data.train_path / data.test_path, or paths.data "
                                "for the default ${paths.data}/speech/librivox")
    directories = sorted(d for d in root.iterdir() if d.is_dir() and audio_files(d))
    groups = [audio_files(d) for d in directories] if directories else [[f] for f in audio_files(root)]
    if not groups:
        raise FileNotFoundError(f"no {'/'.join(AUDIO_SUFFIXES)} files under {root}")
    if cache_dir is None:
        return [[load_mono(f, sample_rate, channel=0) for f in files] for files in groups]
    start, directory = time.perf_counter(), Path(cache_dir).expanduser() / f"recordings-{sample_rate}"
    speakers = [CachedRecordings.of(files, sample_rate, directory) for files in groups]
    log.info("%d speakers of %s read through %s in %.1f s (each decoded there once)", len(speakers), root, directory, time.perf_counter() - start)
    return speakers


class CachedRecordings(Sequence[Tensor]):
    """One speaker's recordings: item u is recording u as a 1-D float32 waveform, read from a cache of 16-bit samples
    (memory-mapped on first access in each process: data-loader workers share its pages)."""

    def __init__(self, samples: Path, offsets: np.ndarray) -> None:
        self.samples, self.offsets, self._mapped = samples, offsets, None

    @classmethod
    def of(cls, files: list[Path], sample_rate: int, directory: Path) -> CachedRecordings:
        """The cache of `files` at sample_rate in `directory`, decoded first if it is missing. Its name hashes the files'
        paths, sizes and modification times, so that a changed recording is decoded again."""
        stamp = "\n".join(f"{f.resolve()} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files)
        name = f"{files[0].parent.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}"
        samples, offsets = directory / f"{name}.samples.npy", directory / f"{name}.offsets.npy"
        if not offsets.is_file():  # written last: its presence means the samples are complete
            waveforms = [load_mono(f, sample_rate, channel=0).clamp(-1, 32767 / 32768) for f in files]
            directory.mkdir(parents=True, exist_ok=True)
            for target, array in ((samples, torch.cat(waveforms).mul(32768).round().short().numpy()),
                                  (offsets, np.cumsum([0, *map(len, waveforms)]))):  # fmt: skip
                partial = target.with_suffix(f".{os.getpid()}.partial")
                with open(partial, "wb") as handle:
                    np.save(handle, array)
                os.replace(partial, target)
            log.debug("decoded %d recordings of %s into %s", len(files), files[0].parent, samples)
        return cls(samples, np.load(offsets))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> Tensor:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"recording {index} of {len(self)}")
        if self._mapped is None:
            self._mapped = np.load(self.samples, mmap_mode="r")
        index %= len(self)
        return torch.from_numpy(self._mapped[self.offsets[index] : self.offsets[index + 1]].astype(np.float32) / 32768)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mapped": None}  # a spawned worker maps the file itself


@dataclass(frozen=True)
class Layout:
    """Where a prepared mixture set keeps split `split` (after `splits` renames train/val/test)."""

    split_dir: str  # format string over n (speakers), khz, mode, split
    mixture_dir: str
    splits: dict[str, str]
    metadata: str | None = None  # CSV with a mixture_ID column, relative to the root


LAYOUTS = {
    "librimix": Layout(
        "wav{khz}k/{mode}/{split}", "mix_clean", {"train": "train-100", "val": "dev", "test": "test"},
        "wav{khz}k/{mode}/metadata/mixture_{split}_mix_clean.csv",
    ),
    "wsj0_mix": Layout("{n}speakers/wav{khz}k/{mode}/{split}", "mix", {"train": "tr", "val": "cv", "test": "tt"}),
}  # fmt: skip


class PreparedMixtures(Dataset):
    """Mixtures and their sources from files: item i -> (mixture (T,), sources (N, T), file stem) at sample_rate.

    segment: crop to this many samples (None: whole files); a random crop per draw when `random_crop`,
    else a fixed crop per item. Shorter files are placed in silence at the crop's offset.
    """

    def __init__(
        self, mixtures: list[Path], sources: list[list[Path]], sample_rate: int, segment: int | None = None,
        random_crop: bool = False, seed: int = 0,
    ) -> None:  # fmt: skip
        self.mixtures, self.sources = mixtures, sources
        self.sample_rate, self.segment, self.random_crop, self.seed = sample_rate, segment, random_crop, seed

    @classmethod
    def from_layout(
        cls, layout: str, root: str | Path, split: str, sample_rate: int, num_speakers: int, mode: str = "min", **kwargs
    ) -> PreparedMixtures:
        """The `split` ("train", "val" or "test") of a LibriMix or wsj0-mix folder at `root`."""
        if layout not in LAYOUTS:
            raise ValueError(f"unknown mixture layout {layout!r}; known: {', '.join(LAYOUTS)}")
        if sample_rate not in (8000, 16000):
            raise ValueError(f"{layout} comes at 8000 or 16000 Hz, got data.sample_rate={sample_rate}")
        spec, root = LAYOUTS[layout], Path(root).expanduser()
        names = dict(n=num_speakers, khz=sample_rate // 1000, mode=mode, split=spec.splits[split])
        split_dir = root / spec.split_dir.format(**names)
        mixture_dir = split_dir / spec.mixture_dir
        if not mixture_dir.is_dir():
            raise FileNotFoundError(f"no {layout} {split} mixtures at {mixture_dir}; data.path must be the {layout} root")
        metadata = root / spec.metadata.format(**names) if spec.metadata else None
        if metadata is not None and metadata.is_file():
            ids = pd.read_csv(metadata)["mixture_ID"].astype(str).tolist()
        else:
            ids = [p.stem for p in sorted(mixture_dir.glob("*.wav"))]
        mixtures = [mixture_dir / f"{i}.wav" for i in ids]
        sources = [[split_dir / f"s{k + 1}" / f"{i}.wav" for k in range(num_speakers)] for i in ids]
        missing = [p for p in [*mixtures, *(s for group in sources for s in group)] if not p.is_file()]
        if missing or not ids:
            raise FileNotFoundError(f"{layout} {split} at {split_dir}: {len(missing)} files missing (first: {missing[:1]}), {len(ids)} mixtures")
        return cls(mixtures, sources, sample_rate, **kwargs)

    def __len__(self) -> int:
        return len(self.mixtures)

    def _read(self, path: Path) -> Tensor:
        waveform, rate = read_wav(path)
        check_finite(waveform, str(path))
        return resample(waveform[0], rate, self.sample_rate)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        signals = torch.stack([self._read(self.mixtures[index]), *(self._read(p) for p in self.sources[index])])
        if self.segment is not None:
            seed = int(torch.randint(0, 2**62, ()).item()) if self.random_crop else self.seed
            signals = place_together(signals, self.segment, np.random.default_rng([seed, index]))
        return signals[0], signals[1:], self.mixtures[index].stem


def place_together(signals: Tensor, length: int, rng: np.random.Generator) -> Tensor:
    """`place` applied to every row of signals (rows, T) with one shared crop or offset -> (rows, length)."""
    state = rng.bit_generator.state
    placed = []
    for row in signals:
        rng.bit_generator.state = state  # the same draw for every row
        placed.append(place(row, length, rng))
    return torch.stack(placed)
