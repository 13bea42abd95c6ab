"""Festival voices: the text2wave driver (rate, f0, tempo, warp, a missing program, a Scheme error, an unknown voice)
and their place in the catalogue (reproducible, f0-siblings). Tests that run Festival skip without it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apps.speech import festival
from apps.speech.festival import FestivalVoice, synthesize
from apps.speech.tts import engine_speaker, f0_factor, festival_voice, sibling_voice
from tests.speech.test_flite import SENTENCE, median_f0, needs_festival

@needs_festival
@pytest.mark.parametrize("base", ["kal_diphone", "czech_machac"])
def test_a_diphone_voice_speaks_with_the_f0_tempo_and_warp_asked(base):
    plain, rate = synthesize(SENTENCE, FestivalVoice(base, f0=1.0, stretch=1.0))
    assert plain.dtype == np.float32 and np.abs(plain).max() > 0.1 and 3 < len(plain) / rate < 8
    high, _ = synthesize(SENTENCE, FestivalVoice(base, f0=1.3, stretch=1.0))
    assert median_f0(high, rate) / median_f0(plain, rate) == pytest.approx(1.3, rel=0.1)
    slow, _ = synthesize(SENTENCE, FestivalVoice(base, f0=1.0, stretch=1.25))
    assert len(slow) / len(plain) == pytest.approx(1.25, rel=0.05)
    warped, warped_rate = synthesize(SENTENCE, FestivalVoice(base, f0=1.0, stretch=1.0, warp=0.9))
    assert warped_rate == round(0.9 * rate) and np.array_equal(warped, plain)  # the same samples, played slower


@needs_festival
def test_an_hts_voice_takes_its_tempo_from_the_engines_speed():
    plain, rate = synthesize(SENTENCE, FestivalVoice("cmu_us_slt_arctic_hts", f0=1.0, stretch=1.0))
    slow, _ = synthesize(SENTENCE, FestivalVoice("cmu_us_slt_arctic_hts", f0=1.0, stretch=1.25))
    assert rate == 32000 and len(slow) / len(plain) == pytest.approx(1.25, rel=0.05)


@needs_festival
def test_an_unknown_voice_names_its_package_and_the_installed_ones():
    with pytest.raises(ValueError, match="no voice 'nobody'.*installed ones: .*kal_diphone"):
        synthesize("hello", FestivalVoice("nobody", 1.0, 1.0))


def test_a_missing_festival_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sudo apt-get install festival festvox-kallpc16k.*data.engines=\\[espeak\\]"):
        festival.run(["-eval", "(voice_kal_diphone)"], "hello")


def test_a_scheme_error_is_raised_though_festival_exits_0(tmp_path, monkeypatch):
    program = tmp_path / "text2wave"  # what Festival does with a voice whose files are missing
    program.write_text("#!/bin/sh\necho 'SIOD ERROR: unbound variable : voice_kal_diphone' >&2\nexit 0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="exit 0.*SIOD ERROR: unbound variable"):
        festival.run(["-eval", "(voice_kal_diphone)"], "hello")


def test_festival_voices_in_the_catalogue_are_reproducible_and_cover_every_base_voice():
    engines = ("espeak", "flite", "festival")
    assert [engine_speaker(i, engines) for i in (2, 5)] == [("festival", 0), ("festival", 1)]
    voices = [festival_voice(i) for i in range(200)]
    assert len(set(voices)) == 200 and {v.voice for v in voices} == set(festival.PACKAGES)
    assert all(v.f0 == 1.0 for v in voices if v.voice in festival.HTS)
    assert all(0.85 <= v.f0 <= 1.2 and 0.9 <= v.stretch <= 1.2 and 0.9 <= v.warp <= 1.1 for v in voices)
    assert voices[0] == festival_voice(0) and voices[0].name == "czech_dita_f1.01_d1.12_w1.03"  # the same on every machine


def test_festival_f0_siblings_scale_the_f0_or_for_hts_voices_the_warp():
    for i in range(40):
        speaker, sibling, factor = festival_voice(i), sibling_voice("festival", i, 1, 0.3), f0_factor(i, 1, 0.3)
        field = "warp" if speaker.voice in festival.HTS else "f0"
        assert dataclasses.replace(sibling, **{field: getattr(speaker, field)}) == speaker
        assert getattr(sibling, field) == pytest.approx(getattr(speaker, field) * factor, abs=0.005)
        assert sibling.name != speaker.name
