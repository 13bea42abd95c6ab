"""Speech synthesis with the Festival Speech Synthesis System (its `text2wave` script; Debian/Ubuntu:
sudo apt-get install festival and the voice packages of `PACKAGES`). Its diphone voices concatenate units recorded from
real speakers (residual-excited LPC), so their excitation is a real voice's; its HTS voices are statistical models.
The non-English voices read the English sentences by their own language's letter-to-sound rules: the same real
speakers, foreign-accented. One call runs one text2wave process (about 0.25 s a sentence).

    voice = FestivalVoice("kal_diphone", f0=1.1, stretch=1.05, warp=0.97)
    waveform, rate = synthesize("The birch canoe slid on the smooth planks.", voice)   # float32 numpy, 15,520 Hz
    with_f0(voice, 1.2)   # the same voice, its f0 20 % higher (f0=1.32)
"""
from __future__ import annotations

import dataclasses
import functools
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile

from apps.speech.programs import run_program

PROGRAM = "text2wave"
PACKAGES = {  # the voices of the catalogue (`tts.festival_voice` draws from them) and their Debian packages
    "kal_diphone": "festvox-kallpc16k",  # American English, male
    "ked_diphone": "festvox-kdlpc16k",  # American English, male
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",  # American English, female (HTS)
    "upc_ca_ona_hts": "festvox-ca-ona-hts",  # Catalan, female (HTS)
    "czech_dita": "festvox-czech-dita",  # Czech, female
    "czech_krb": "festvox-czech-krb",  # Czech, a boy
    "czech_machac": "festvox-czech-machac",  # Czech, male
    "czech_ph": "festvox-czech-ph",  # Czech, male
    "suo_fi_lj_diphone": "festvox-suopuhe-lj",  # Finnish, female
    "hy_fi_mv_diphone": "festvox-suopuhe-mv",  # Finnish, male
    "lp_diphone": "festvox-italp16k",  # Italian, female
    "pc_diphone": "festvox-itapc16k",  # Italian, male
}
HTS = frozenset({"cmu_us_slt_arctic_hts", "upc_ca_ona_hts"})  # these ignore f0 targets and Duration_Stretch
FIX = (
    f"install Festival and its voices (Debian/Ubuntu: sudo apt-get install festival {' '.join(PACKAGES.values())}) "
    "or use the default espeak-ng voices (data.engines=[espeak])"
)
SCALE_F0 = """(define (seqmix_scale_f0 utt)
  (mapcar (lambda (segment) (mapcar (lambda (point) (item.set_feat point "f0" (* seqmix_f0 (item.feat point "f0"))))
                                    (item.daughters segment)))
          (utt.relation.items utt 'Target))
  utt)"""  # multiplies every f0 target of an utterance (the Target relation the diphone voices' prosody follows)


@dataclass(frozen=True)
class FestivalVoice:
    """A Festival voice: a base voice of `PACKAGES`, an f0 factor (every f0 target times it; HTS voices ignore it), a
    duration stretch (> 1: slower) and a warp (see `synthesize`)."""

    voice: str
    f0: float
    stretch: float
    warp: float = 1.0

    @property
    def name(self) -> str:
        """File-name-safe identity, e.g. kal_diphone_f1.10_d1.05_w0.97."""
        return f"{self.voice}_f{self.f0:.2f}_d{self.stretch:.2f}_w{self.warp:.2f}"


def run(arguments: list[str], text: str = "", program: str = PROGRAM) -> bytes:
    """Standard output of `program *arguments` (text2wave or festival) with `text` on its standard input; errors name
    the fix (`programs.run_program`), also Scheme errors, which Festival reports on stderr with exit status 0."""
    return run_program(program, arguments, FIX, text, error_marker="SIOD ERROR")


@functools.cache
def voices() -> tuple[str, ...]:
    """The voices of the installed Festival (`(voice.list)`)."""
    return tuple(run(["-b", "(print (voice.list))"], program="festival").decode().strip(" ()\n").split())


def synthesize(text: str, voice: FestivalVoice) -> tuple[np.ndarray, int]:
    """`text` spoken by `voice`: (float32 waveform (samples,) in [-1, 1], its sample rate).

    The rate is the base voice's (16,000 to 44,100 Hz) times `voice.warp`: played at that rate, pitch and formants scale
    by warp and durations by 1 / warp (a shorter or longer vocal tract, as in speed perturbation).
    """
    if voice.voice not in voices():  # Festival would report it on stderr and write nothing
        package = PACKAGES.get(voice.voice, "a package that ships it")
        raise ValueError(
            f"Festival has no voice {voice.voice!r} (sudo apt-get install {package}); the installed ones: {', '.join(voices())}"
        )
    if voice.voice in HTS:  # the HTS engine's speed is 1 / stretch; f0 targets do not reach it
        settings = f"(set! hts_engine_params (append hts_engine_params '((\"-r\" {1 / voice.stretch:.4f}))))"
    else:
        settings = (
            f"(begin (Parameter.set 'Duration_Stretch {voice.stretch}) (set! seqmix_f0 {voice.f0}) {SCALE_F0}"
            " (set! after_analysis_hooks (append (if (or (null after_analysis_hooks) (consp after_analysis_hooks))"
            " after_analysis_hooks (list after_analysis_hooks)) (list seqmix_scale_f0))))"
        )
    with tempfile.TemporaryDirectory() as folder:  # to a file: the header text2wave writes to a pipe has no length
        wav = f"{folder}/speech.wav"
        run(["-eval", f"(voice_{voice.voice})", "-eval", settings, "-o", wav], text)
        waveform, rate = soundfile.read(wav, dtype="float32")
    return waveform, round(rate * voice.warp)


def with_f0(voice: FestivalVoice, factor: float) -> FestivalVoice:
    """`voice` with its f0 scaled by `factor` (rounded to 0.01); for the HTS voices, which ignore it, the warp instead,
    which scales their formants and tempo with the pitch."""
    field = "warp" if voice.voice in HTS else "f0"
    return dataclasses.replace(voice, **{field: round(getattr(voice, field) * factor, 2)})
