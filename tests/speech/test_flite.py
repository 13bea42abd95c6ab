"""flite voices: the command-line driver (rate, pitch, tempo, a missing program) and the catalogue that interleaves
them with espeak-ng's (reproducible, cached by engine and voice parameters, for flite and Festival alike). Tests that
run flite or Festival skip without it."""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from apps.speech import flite
from apps.speech.flite import FliteVoice, synthesize
from apps.speech.tts import (
    cache_file, engine_speaker, f0_factor, flite_voice, sibling_voice, synthesize_into_cache, synthetic_speakers,
)  # fmt: skip

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="no flite program (sudo apt-get install flite)")
SENTENCE = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."


def median_f0(waveform: np.ndarray, rate: int) -> float:
    return AF.detect_pitch_frequency(torch.from_numpy(waveform), rate, freq_low=60).median().item()


@needs_flite
def test_flite_speaks_at_its_rate_with_the_pitch_and_tempo_asked():
    low, rate = synthesize(SENTENCE, FliteVoice("slt", f0_mean=120, f0_stddev=20, stretch=1.0))
    assert low.dtype == np.float32 and rate == 16000 and np.abs(low).max() > 0.1 and 3 < len(low) / rate < 8
    high, _ = synthesize(SENTENCE, FliteVoice("slt", f0_mean=200, f0_stddev=20, stretch=1.0))
    assert median_f0(high, rate) > 1.3 * median_f0(low, rate)
    slow, _ = synthesize(SENTENCE, FliteVoice("slt", f0_mean=120, f0_stddev=20, stretch=1.3))
    assert len(slow) / len(low) == pytest.approx(1.3, rel=0.1)
    warped, warped_rate = synthesize(SENTENCE, FliteVoice("slt", f0_mean=120, f0_stddev=20, stretch=1.0, warp=0.9))
    assert warped_rate == 14400 and np.array_equal(warped, low)  # the same samples, played slower: lower
    with pytest.raises(ValueError, match="flite has no voice 'nobody'"):
        synthesize("hello", FliteVoice("nobody", 100, 10, 1.0))


def test_a_missing_flite_program_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sudo apt-get install flite.*data.engines=\\[espeak\\]"):
        flite.run(["-lv"])


def test_a_broken_flite_install_shows_flites_message(tmp_path, monkeypatch):
    program = tmp_path / "flite"  # what a copied flite without its libraries does
    program.write_text("#!/bin/sh\necho 'flite: error while loading shared libraries: libasound.so.2' >&2\nexit 127\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="exit 127.*libasound.so.2.*data.engines=\\[espeak\\]"):
        flite.run(["-lv"])


def test_the_mixed_catalogue_interleaves_engines_reproducibly():
    assert [engine_speaker(i, ("espeak", "flite")) for i in range(4)] == [("espeak", 0), ("flite", 0), ("espeak", 1), ("flite", 1)]
    assert [engine_speaker(i, ("espeak",)) for i in range(2)] == [("espeak", 0), ("espeak", 1)]
    voices = [flite_voice(i) for i in range(100)]
    assert len(set(voices)) == 100 and {v.voice for v in voices} == {"awb", "kal16", "rms", "slt"}
    assert voices[0] == flite_voice(0) and voices[0].name == "rms_f124_s15_d0.92_w1.10"  # the same on every machine


def test_flite_f0_siblings_scale_the_f0_settings_or_for_rms_the_warp():
    for i in range(40):
        speaker, sibling, factor = flite_voice(i), sibling_voice("flite", i, 1, 0.3), f0_factor(i, 1, 0.3)
        if speaker.voice == "rms":  # it ignores the f0 settings: the warp moves its pitch (and formants and tempo)
            assert dataclasses.replace(sibling, warp=speaker.warp) == speaker
            assert sibling.warp == pytest.approx(speaker.warp * factor, abs=0.005)
        else:
            assert dataclasses.replace(sibling, f0_mean=speaker.f0_mean, f0_stddev=speaker.f0_stddev) == speaker
            assert sibling.f0_mean == pytest.approx(speaker.f0_mean * factor, abs=0.5)
            assert sibling.f0_stddev == pytest.approx(speaker.f0_stddev * factor, abs=0.5)
        assert sibling.name != speaker.name  # its own cache file


needs_festival = pytest.mark.skipif(shutil.which("text2wave") is None, reason="no Festival (see festival.FIX)")


@pytest.mark.parametrize(
    "engines",
    [("espeak",), pytest.param(("espeak", "flite"), marks=needs_flite), pytest.param(("espeak", "festival"), marks=needs_festival)],
)
def test_cache_fills_in_parallel_processes_and_serves_a_machine_without_the_synthesiser(engines, tmp_path, monkeypatch):
    synthesize_into_cache(range(4), 2, 8000, tmp_path / "here", workers=2, engines=engines)
    fresh = synthetic_speakers(range(4), 2, 8000, tmp_path / "here", engines)
    shutil.copytree(tmp_path / "here", tmp_path / "there")  # a cache copied to another machine ...
    monkeypatch.setenv("PATH", str(tmp_path))  # ... that has no flite or Festival
    copied = synthetic_speakers(range(4), 2, 8000, tmp_path / "there", engines)
    assert all(torch.equal(a, b) for x, y in zip(fresh, copied) for a, b in zip(x, y))
    for index in range(4):
        engine, own = engine_speaker(index, engines)
        assert len(np.load(cache_file(tmp_path / "there", engine, sibling_voice(engine, own), 8000)).files) == 2
        assert all(0.5 * 8000 < len(u) < 6 * 8000 and u.abs().max() > 0.05 for u in copied[index])
