"""SeparationDataModule: batches of (mixture (B, T), sources (B, N, T), names: B strings) for N-speaker separation.

Training mixtures are made on the fly (dynamic mixing: random speakers, utterances, gains and offsets) from
single-speaker speech: synthetic voices (`espeak`: espeak-ng, the offline default, and optionally flite and Festival, with
a fraction of the mixtures from a folder of real recordings if given), a folder of recordings (`folder`), or the crops of a
prepared set (`librimix`, `wsj0_mix`). Validation and test sets are
fixed (a seed per item); test mixtures are whole utterances (the shorter one's length, "min" mode), one per batch.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from apps.speech.audio import warp
from apps.speech.mixing import Room, draw_mixture, fresh, mix, seeded
from apps.speech.sources import LAYOUTS, PreparedMixtures, folder_speakers
from apps.speech.tts import ENGINES, synthetic_speakers

DEFAULT_CACHE = Path.home() / ".cache" / "seqmix" / "speech"
SPEECH = ("espeak", "folder", *LAYOUTS)
PAUSE_SECONDS = (0.1, 0.5)  # between the sentences of a passage (data.passages)

Speakers = Sequence[Sequence[Tensor]]


def check_utterances_per_speaker(speakers: Speakers, count: int, user: str) -> None:
    """ValueError unless every speaker has `count` utterances, as the same-speaker mixtures of `user` need."""
    fewest = min(map(len, speakers))
    if fewest < count:
        raise ValueError(
            f"{user} needs {count} utterances of every speaker, some have {fewest}; "
            "raise data.utterances_per_voice or give a folder with more recordings per speaker"
        )


class DynamicMixtures(Dataset):
    """`length` new random mixtures per pass (see `mixing.draw_mixture`), each `segment` samples long; a fraction
    `same_speaker_fraction` of them mixes different utterances of one speaker (source n reading them from
    `same_speaker_voices[n]`, if given: e.g. f0-siblings). With `pause` (samples, min and max) every source is a passage
    of its speaker's utterances with pauses of that length between them. `room` (a `mixing.Room`) reverberates sources."""

    def __init__(
        self, speakers: Speakers, num_speakers: int, segment: int, gain_db: float, length: int, same_speaker_fraction: float = 0.0,
        pause: tuple[int, int] | None = None, same_speaker_voices: Sequence[Speakers] | None = None, room: Room | None = None,
    ) -> None:  # fmt: skip
        self.speakers, self.num_speakers, self.segment, self.gain_db, self.length = speakers, num_speakers, segment, gain_db, length
        self.same_speaker_fraction, self.pause, self.same_speaker_voices, self.room = same_speaker_fraction, pause, same_speaker_voices, room

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        mixture = draw_mixture(
            self.speakers, self.num_speakers, self.segment, self.gain_db, fresh(), self.same_speaker_fraction, self.pause,
            self.same_speaker_voices, self.room,
        )  # fmt: skip
        return *mixture, f"dynamic{index}"


class FixedMixtures(Dataset):
    """`length` mixtures, the same every time: item i mixes the i-th speaker combination (in a seeded order,
    cycled) with a random utterance of each, gains and offsets from seed (seed, i). segment None: "min" mode.
    `same_speaker`: item i mixes different utterances of the i-th speaker (in a seeded order, cycled) instead.
    `source_voices[n][s][u]`: what source n reads for utterance u of speaker s instead of speakers[s][u] (e.g. it warped)."""

    def __init__(
        self, speakers: Speakers, num_speakers: int, segment: int | None, gain_db: float, length: int, seed: int, same_speaker: bool = False,
        source_voices: Sequence[Speakers] | None = None,
    ) -> None:  # fmt: skip
        if len(speakers) < (1 if same_speaker else num_speakers):
            raise ValueError(
                f"{num_speakers}-speaker mixtures need {num_speakers} speakers, got {len(speakers)}; "
                "raise data.val_voices / data.test_voices or give a folder with more speakers"
            )
        if same_speaker:
            check_utterances_per_speaker(speakers, num_speakers, "same-speaker mixtures")
        self.speakers, self.num_speakers, self.segment, self.gain_db, self.length, self.seed = (
            speakers, num_speakers, segment, gain_db, length, seed
        )  # fmt: skip
        self.same_speaker, self.source_voices = same_speaker, source_voices or [speakers] * num_speakers
        if same_speaker:
            combinations = [(s,) * num_speakers for s in range(len(speakers))]
        else:
            combinations = list(itertools.combinations(range(len(speakers)), num_speakers))
        order = np.random.default_rng(seed).permutation(len(combinations))
        self.combinations = [combinations[i] for i in order]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        """(mixture (T,), sources (N, T), name "<index>_<speaker>-<speaker>")."""
        rng = seeded(self.seed, index)
        chosen = self.combinations[index % len(self.combinations)]
        if self.same_speaker:
            picks = rng.choice(len(self.speakers[chosen[0]]), size=self.num_speakers, replace=False).tolist()
        else:
            picks = [int(rng.integers(len(self.speakers[s]))) for s in chosen]
        utterances = [voices[s][u] for voices, s, u in zip(self.source_voices, chosen, picks)]
        return *mix(utterances, self.segment, self.gain_db, rng), f"{index:04d}_" + "-".join(map(str, chosen))


class SeparationDataModule(L.LightningDataModule):
    """Mixtures of `num_speakers` speakers at `sample_rate`.

    Args:
        name: the run name's data part.
        train: where training speech comes from: "espeak" (synthetic voices of `engines`, cached in cache_dir),
            "folder" (train_path: a folder of recordings, see `sources.folder_speakers`), "librimix" or "wsj0_mix"
            (train_path: the prepared set's root; its train and validation splits are used).
        test: the test set: "espeak" (synthetic voices used neither in training nor validation), "folder"
            (mixtures of the recordings under test_path, e.g. ../shared/data/speech/librivox), "librimix" or "wsj0_mix".
        segment_seconds: length of training and validation mixtures.
        gain_db: each source's level is drawn uniformly in [-gain_db, gain_db] dB (relative, unit RMS).
        engines: synthesisers of the synthetic voices, interleaved: speaker i is speaker i // len(engines) of
            engines[i % len(engines)] (see `tts.engine_speaker`); "espeak" (espeak-ng, pip), "flite" and "festival"
            (programs: see `flite.FIX`, `festival.FIX`).
        train_voices, val_voices, test_voices: synthetic speakers of each set (disjoint); for "folder" training,
            the last val_voices speakers of the folder validate.
        utterances_per_voice: sentences each synthetic voice reads (at most 50).
        same_speaker_fraction: fraction of the training mixtures (dynamic mixing: espeak or folder) made of
            different utterances of one speaker; validation and test mixtures are unchanged.
        same_speaker_f0_shift: S > 0: source n of a same-speaker training mixture of synthetic voices is read by
            f0-sibling n of the speaker (`tts.sibling_voice`: sibling 0 is the speaker, sibling n its voice with f0
            scaled by f, |ln f| in [ln(1 + S/2), ln(1 + S)]), so that the sources differ in pitch but not in timbre.
        passages: every source of a training mixture (dynamic mixing) is a passage: its speaker's utterances in a
            random order with pauses of PAUSE_SECONDS between them, enough to fill the segment (else one utterance,
            cropped or placed in silence), so that both speakers talk throughout, as in whole-utterance test mixtures.
        reverb_fraction: fraction of the training sources (dynamic mixing) read in a synthetic room (`mixing.Room`:
            reverberation time uniform in reverb_rt60 seconds, direct-to-reverberant ratio in reverb_drr_db dB), the
            reverberant source being the one to estimate, as in recordings made in a room; validation and test unchanged.
        recordings: a folder of real recordings (`sources.folder_speakers`' layout) from which a fraction
            `recordings_fraction` of the training mixtures is drawn (with data.train=espeak), the rest from the synthetic
            voices; its same-speaker draws mix two recordings of one real speaker (no f0-siblings). Validation stays synthetic.
        test_same_speaker: every test mixture (espeak or folder) mixes different utterances of one speaker.
        test_warps: one factor per source of every test mixture (espeak or folder), e.g. [1.0, 0.8]: source n is played
            faster by test_warps[n] (`audio.warp`: pitch and formants times the factor, as speed perturbation), so that
            recordings of one reader (LibriVox's) become mixtures of two apparent speakers; None: as recorded.
        train_mixtures: dynamic mixtures per epoch; val_mixtures, test_mixtures: size of the fixed sets.
        mode: "min" or "max", the LibriMix / wsj0-mix variant.
        cache_dir: where synthesised speech, and training recordings decoded once (train_path of "folder", recordings),
            are kept (default ~/.cache/seqmix/speech).
    """

    def __init__(
        self,
        name: str = "espeak",
        num_speakers: int = 2,
        sample_rate: int = 8000,
        train: str = "espeak",
        train_path: str | None = None,
        test: str = "espeak",
        test_path: str | None = None,
        segment_seconds: float = 1.0,
        gain_db: float = 2.5,
        train_voices: int = 40,
        val_voices: int = 8,
        test_voices: int = 8,
        engines: Sequence[str] = ("espeak",),
        utterances_per_voice: int = 20,
        same_speaker_fraction: float = 0.0,
        same_speaker_f0_shift: float = 0.0,
        passages: bool = False,
        reverb_fraction: float = 0.0,
        reverb_rt60: Sequence[float] = (0.1, 0.5),
        reverb_drr_db: Sequence[float] = (3.0, 15.0),
        recordings: str | None = None,
        recordings_fraction: float = 0.5,
        test_same_speaker: bool = False,
        test_warps: Sequence[float] | None = None,
        train_mixtures: int = 400,
        val_mixtures: int = 32,
        test_mixtures: int = 32,
        mode: str = "min",
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("train", train), ("test", test)):
            if value not in SPEECH:
                raise ValueError(f"data.{key}={value!r} is not one of {', '.join(SPEECH)}")
            if value != "espeak" and (train_path if key == "train" else test_path) is None:
                raise ValueError(f"data.{key}={value} needs data.{key}_path=DIR")
        if num_speakers < 2:
            raise ValueError(f"data.num_speakers must be at least 2 (a mixture), got {num_speakers}")
        if sample_rate not in (8000, 16000):
            raise ValueError(f"data.sample_rate must be 8000 or 16000, got {sample_rate}")
        if not engines or len(set(engines)) < len(engines) or not set(engines) <= set(ENGINES):
            raise ValueError(f"data.engines={list(engines)} must list some of {', '.join(ENGINES)}, each once")
        if not 0 <= same_speaker_fraction <= 1 or (same_speaker_fraction and train in LAYOUTS):
            raise ValueError(
                f"data.same_speaker_fraction={same_speaker_fraction} must be in [0, 1] and needs dynamic mixing "
                f"(data.train=espeak or folder, not {train})"
            )
        if same_speaker_f0_shift < 0 or (same_speaker_f0_shift and (not same_speaker_fraction or train != "espeak")):
            raise ValueError(
                f"data.same_speaker_f0_shift={same_speaker_f0_shift} must be >= 0 and needs same-speaker mixtures of "
                f"synthetic voices: set data.same_speaker_fraction > 0 (now {same_speaker_fraction}) and data.train=espeak "
                f"(now {train}), or data.same_speaker_f0_shift=0"
            )
        if test_same_speaker and test in LAYOUTS:
            raise ValueError(f"data.test_same_speaker needs speakers to mix (data.test=espeak or folder, not {test})")
        if test_warps is not None and (len(test_warps) != num_speakers or min(test_warps) <= 0 or test in LAYOUTS):
            raise ValueError(
                f"data.test_warps={list(test_warps)} needs one positive factor per source (data.num_speakers={num_speakers}) "
                f"and speakers to mix (data.test=espeak or folder, now {test}); or data.test_warps=null"
            )
        if not 0 <= reverb_fraction <= 1 or (reverb_fraction and train in LAYOUTS):
            raise ValueError(f"data.reverb_fraction={reverb_fraction} must be in [0, 1] and needs dynamic mixing (data.train=espeak or folder, not {train})")
        if len(reverb_rt60) != 2 or not 0 < reverb_rt60[0] <= reverb_rt60[1] or len(reverb_drr_db) != 2 or reverb_drr_db[0] > reverb_drr_db[1]:
            raise ValueError(f"data.reverb_rt60={list(reverb_rt60)} (seconds, 0 < low <= high) and data.reverb_drr_db={list(reverb_drr_db)} "
                             "(dB, low <= high) must each be a range [low, high]")
        if recordings is not None and (train != "espeak" or not 0 < recordings_fraction <= 1):
            raise ValueError(
                f"data.recordings adds real speakers to the synthetic voices: it needs data.train=espeak (now {train}) and "
                f"0 < data.recordings_fraction <= 1 (now {recordings_fraction}); for training on recordings only, "
                "use data.train=folder data.train_path=DIR"
            )
        if passages and train in LAYOUTS:
            raise ValueError(f"data.passages needs dynamic mixing (data.train=espeak or folder, not {train})")
        self.name, self.num_speakers, self.sample_rate = name, num_speakers, sample_rate
        self.train, self.train_path, self.test, self.test_path = train, train_path, test, test_path
        self.segment = round(segment_seconds * sample_rate)
        self.gain_db, self.mode = gain_db, mode
        self.voices = {"train": train_voices, "val": val_voices, "test": test_voices}
        self.engines, self.utterances_per_voice, self.same_speaker_fraction = tuple(engines), utterances_per_voice, same_speaker_fraction
        self.same_speaker_f0_shift, self.test_same_speaker = same_speaker_f0_shift, test_same_speaker
        self.recordings, self.recordings_fraction = recordings, recordings_fraction
        self.test_warps = None if test_warps is None else tuple(test_warps)
        self.pause = tuple(round(seconds * sample_rate) for seconds in PAUSE_SECONDS) if passages else None
        self.room = Room(reverb_fraction, sample_rate, tuple(reverb_rt60), tuple(reverb_drr_db)) if reverb_fraction else None
        self.sizes = {"train": train_mixtures, "val": val_mixtures, "test": test_mixtures}
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE
        self.datasets: dict[str, Dataset] = {}

    def espeak_voices(self, split: str, sibling: int = 0) -> Speakers:
        """The synthetic speakers of a split (catalogue indices train, then val, then test), or their f0-siblings."""
        start = {"train": 0, "val": self.voices["train"], "test": self.voices["train"] + self.voices["val"]}[split]
        indices = range(start, start + self.voices[split])
        return synthetic_speakers(
            indices, self.utterances_per_voice, self.sample_rate, self.cache_dir, self.engines, sibling, self.same_speaker_f0_shift
        )  # fmt: skip

    def prepared(self, layout: str, path: str, split: str) -> PreparedMixtures:
        segment, random_crop = {"train": (self.segment, True), "val": (self.segment, False), "test": (None, False)}[split]
        return PreparedMixtures.from_layout(
            layout, path, split, self.sample_rate, self.num_speakers, self.mode,
            segment=segment, random_crop=random_crop, seed=self.seed,
        )  # fmt: skip

    def setup_fit(self) -> None:
        if self.train in LAYOUTS:
            self.datasets["train"] = self.prepared(self.train, self.train_path, "train")
            self.datasets["val"] = self.prepared(self.train, self.train_path, "val")
            return
        same_speaker_voices = None
        if self.train == "espeak":
            train, val = self.espeak_voices("train"), self.espeak_voices("val")
            if self.same_speaker_f0_shift:
                same_speaker_voices = [train] + [self.espeak_voices("train", n) for n in range(1, self.num_speakers)]
        else:
            speakers = folder_speakers(self.train_path, self.sample_rate, self.cache_dir)
            if len(speakers) - self.voices["val"] < self.num_speakers:
                raise ValueError(f"{self.train_path} has {len(speakers)} speakers: too few to hold out data.val_voices={self.voices['val']}")
            train, val = speakers[: -self.voices["val"]], speakers[-self.voices["val"] :]
        real = [] if self.recordings is None else folder_speakers(self.recordings, self.sample_rate, self.cache_dir)
        if self.same_speaker_fraction:
            check_utterances_per_speaker(train, self.num_speakers, "data.same_speaker_fraction")
            if real:
                check_utterances_per_speaker(real, self.num_speakers, "data.same_speaker_fraction with data.recordings")
        if 0 < len(real) < self.num_speakers and self.same_speaker_fraction < 1:
            raise ValueError(f"{self.recordings} holds {len(real)} speaker(s): {self.num_speakers}-speaker mixtures of different "
                             "speakers need more; give more speakers, or data.same_speaker_fraction=1")
        from_real = round(self.sizes["train"] * self.recordings_fraction) if real else 0
        parts = [
            DynamicMixtures(speakers, self.num_speakers, self.segment, self.gain_db, length, self.same_speaker_fraction, self.pause, voices, self.room)
            for speakers, length, voices in ((train, self.sizes["train"] - from_real, same_speaker_voices), (real, from_real, None))
            if length
        ]  # fmt: skip
        self.datasets["train"] = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        self.datasets["val"] = FixedMixtures(val, self.num_speakers, self.segment, self.gain_db, self.sizes["val"], self.seed)

    def setup_test(self) -> None:
        if self.test in LAYOUTS:
            self.datasets["test"] = self.prepared(self.test, self.test_path, "test")
            return
        speakers = self.espeak_voices("test") if self.test == "espeak" else folder_speakers(self.test_path, self.sample_rate)
        warped = None
        if self.test_warps is not None:
            warped = [[[warp(u, factor, self.sample_rate) for u in speaker] for speaker in speakers] for factor in self.test_warps]
        self.datasets["test"] = FixedMixtures(
            speakers, self.num_speakers, None, self.gain_db, self.sizes["test"], self.seed + 1, self.test_same_speaker, warped
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit", "validate") and "train" not in self.datasets:
            self.setup_fit()
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            self.setup_test()

    def loader(self, split: str, batch_size: int, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.datasets[split], batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        # Crops of a prepared set are shuffled, and synthetic and real dynamic mixtures interleaved (each alone is random).
        return self.loader("train", self.batch_size, shuffle=not isinstance(self.datasets["train"], DynamicMixtures))

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", 1)  # whole utterances of different lengths

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
