"""Speech synthesis with the flite command line (CMU's small synthesiser; Debian/Ubuntu: sudo apt-get install flite).
Its voices awb, rms and slt are statistical (clustergen) models of real CMU ARCTIC speakers, kal16 is a diphone
voice; all speak at 16 kHz. One call runs one flite process (well under 0.1 s a sentence).

    voice = FliteVoice("slt", f0_mean=180, f0_stddev=25, stretch=1.1, warp=0.96)
    waveform, rate = synthesize("The birch canoe slid on the smooth planks.", voice)   # float32 numpy, 15,360 Hz
    with_f0(voice, 1.2)   # the same voice, its f0 20 % higher (f0_mean=216, f0_stddev=30)
"""
from __future__ import annotations

import dataclasses
import functools
import io
from dataclasses import dataclass

import numpy as np
import soundfile

from apps.speech.programs import run_program

PROGRAM = "flite"
FIX = "install flite (Debian/Ubuntu: sudo apt-get install flite) or use the default espeak-ng voices (data.engines=[espeak])"


@dataclass(frozen=True)
class FliteVoice:
    """A flite voice: a base voice of `flite -lv`, its f0 target mean and spread in Hz (flite's int_f0_target_mean
    and int_f0_target_stddev; rms ignores both), a duration stretch (> 1: slower) and a warp (see `synthesize`)."""

    voice: str
    f0_mean: int
    f0_stddev: int
    stretch: float
    warp: float = 1.0

    @property
    def name(self) -> str:
        """File-name-safe identity, e.g. slt_f180_s25_d1.10_w0.96."""
        return f"{self.voice}_f{self.f0_mean}_s{self.f0_stddev}_d{self.stretch:.2f}_w{self.warp:.2f}"


def run(arguments: list[str]) -> bytes:
    """Standard output of `flite *arguments`; FileNotFoundError naming the fix when flite is not installed, RuntimeError
    with flite's own message when it fails (a broken install: a shared library missing, say)."""
    return run_program(PROGRAM, arguments, FIX)


@functools.cache
def voices() -> tuple[str, ...]:
    """The voices of the installed flite (`flite -lv`: "Voices available: kal awb_time kal16 awb rms slt")."""
    return tuple(run(["-lv"]).decode().split(":", 1)[1].split())


def synthesize(text: str, voice: FliteVoice) -> tuple[np.ndarray, int]:
    """`text` spoken by `voice`: (float32 waveform (samples,) in [-1, 1], its sample rate).

    The rate is the base voice's (16,000 Hz) times `voice.warp`: played at that rate, pitch and formants scale by
    warp and durations by 1 / warp (a shorter or longer vocal tract, as in speed perturbation).
    """
    if voice.voice not in voices():  # flite would fall back to kal silently
        raise ValueError(f"flite has no voice {voice.voice!r}; `flite -lv` lists {', '.join(voices())}")
    settings = {"int_f0_target_mean": voice.f0_mean, "int_f0_target_stddev": voice.f0_stddev, "duration_stretch": voice.stretch}
    features = [argument for key, value in settings.items() for argument in ("--setf", f"{key}={value}")]
    wav = run(["-voice", voice.voice, *features, "-t", text, "-o", "/dev/stdout"])
    waveform, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return waveform, round(rate * voice.warp)


def with_f0(voice: FliteVoice, factor: float) -> FliteVoice:
    """`voice` with its f0 scaled by `factor`: f0 mean and spread (rounded to whole Hz), all else equal; for rms, which
    ignores both, the warp instead (rounded to 0.01), which scales its formants and tempo with the pitch."""
    if voice.voice == "rms":
        return dataclasses.replace(voice, warp=round(voice.warp * factor, 2))
    return dataclasses.replace(voice, f0_mean=round(voice.f0_mean * factor), f0_stddev=round(voice.f0_stddev * factor))
