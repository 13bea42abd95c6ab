"""Speech synthesis with libespeak-ng through ctypes: the pip package `espeakng-loader` ships the library and
its data, so no system package is needed. One process holds one synthesiser (the library keeps global state).

    voice = Voice("en-us", "m3", pitch=40, rate=160, pitch_range=50)
    waveform, rate = synthesize("The birch canoe slid on the smooth planks.", voice)   # float32 numpy, 22,050 Hz
    with_f0(voice, 1.2)   # the same voice, its median f0 about 20 % higher (a new pitch parameter)
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesise into the callback, return when done
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
PARAMETER = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}  # espeak_PARAMETER
DEFAULT_PITCH = (82, 118)  # a variant's "pitch" line where it has none (espeak-ng's voices.c)
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: language, variant (espeak-ng-data/voices/!v, e.g. m3, f2, klatt), pitch (0-99),
    rate (words per minute, 80-450) and pitch range (0-99, 0 = monotone)."""

    language: str
    variant: str
    pitch: int
    rate: int
    pitch_range: int

    @property
    def name(self) -> str:
        """File-name-safe identity, e.g. en-us_m3_p40_r160_g50."""
        return f"{self.language}_{self.variant}_p{self.pitch}_r{self.rate}_g{self.pitch_range}".replace(" ", "-")


class Synthesizer:
    """libespeak-ng loaded once per process; `__call__(text, voice)` -> float32 waveform in [-1, 1], 1-D."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise ImportError(
                "speech synthesis needs the espeak-ng library: pip install espeakng-loader "
                "(or give real recordings with data.train=folder data.train_path=DIR)"
            ) from error
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.data_path = Path(espeakng_loader.get_data_path())
        path = ctypes.c_char_p(str(self.data_path).encode())
        self.sample_rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, path, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {self.sample_rate}) with data at {self.data_path}")
        self.chunks: list[np.ndarray] = []
        self.callback = SYNTH_CALLBACK(self._collect)  # kept on self: the library holds only a raw pointer
        self.lib.espeak_SetSynthCallback(self.callback)

    def _collect(self, samples: ctypes.POINTER(ctypes.c_short), count: int, events: ctypes.c_void_p) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0  # 0: continue synthesis

    def _set(self, voice: Voice) -> None:
        if not (self.data_path / "voices" / "!v" / voice.variant).is_file():  # espeak falls back silently
            raise ValueError(f"espeak-ng has no voice variant {voice.variant!r}; see {self.data_path / 'voices' / '!v'}")
        identifier = f"{voice.language}+{voice.variant}".encode()
        if self.lib.espeak_SetVoiceByName(ctypes.c_char_p(identifier)) != 0:
            raise ValueError(f"espeak-ng has no language {voice.language!r}; see {self.data_path / 'lang'}")
        for key, value in (("rate", voice.rate), ("pitch", voice.pitch), ("range", voice.pitch_range)):
            self.lib.espeak_SetParameter(PARAMETER[key], int(value), 0)

    def __call__(self, text: str, voice: Voice) -> np.ndarray:
        self._set(voice)
        self.chunks = []
        encoded = text.encode() + b"\0"
        status = self.lib.espeak_Synth(
            ctypes.c_char_p(encoded), len(encoded), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None
        )
        self.lib.espeak_Synchronize()
        if status != 0 or not self.chunks:
            raise RuntimeError(f"espeak_Synth failed (status {status}) for voice {voice.name} and text {text!r}")
        return np.concatenate(self.chunks).astype(np.float32) / 32768.0


@functools.cache
def synthesizer() -> Synthesizer:
    """The process's synthesiser (created on first use)."""
    return Synthesizer()


def synthesize(text: str, voice: Voice) -> tuple[np.ndarray, int]:
    """`text` spoken by `voice`: (float32 waveform (samples,), its sample rate: 22,050 Hz), as `flite.synthesize`."""
    return synthesizer()(text, voice), synthesizer().sample_rate


def variant_pitch(variant: str) -> tuple[int, int]:
    """The `pitch P1 P2` line of a voice variant (espeak-ng-data/voices/!v): its f0 base and top in espeak's units."""
    for line in (synthesizer().data_path / "voices" / "!v" / variant).read_text().splitlines():
        words = line.split()
        if words[:1] == ["pitch"]:
            return int(words[1]), int(words[2])
    return DEFAULT_PITCH


def with_f0(voice: Voice, factor: float) -> Voice:
    """`voice` with its median f0 scaled by about `factor`: a new pitch parameter (clipped to 0..99), all else equal.

    espeak-ng scales the variant's base f0 by 2 ** ((pitch - 50) / 50) and adds the intonation on top, which the pitch
    parameter leaves alone. Fitted on 48 catalogue voices (README): median f0 = A 2 ** ((pitch - 50) / 50) + B, with
    B / A = (P2 - P1) (0.42 + 0.009 pitch_range) / (P1 - 9) for the variant's pitch line P1 P2 (`variant_pitch`).
    """
    low, high = variant_pitch(voice.variant)
    offset = (high - low) * (0.42 + 0.009 * voice.pitch_range) / (low - 9)  # B / A
    scale = factor * 2 ** ((voice.pitch - 50) / 50) + (factor - 1) * offset  # the new 2 ** ((pitch - 50) / 50)
    pitch = 50 + 50 * math.log2(max(scale, 0.5))
    return dataclasses.replace(voice, pitch=min(max(round(pitch), 0), 99))
