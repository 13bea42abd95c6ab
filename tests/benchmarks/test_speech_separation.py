"""The speech benchmark checks its real-speech test folder before it spends minutes synthesising and training, and
its results say what the models trained on."""
from __future__ import annotations

import sys

import pytest
from omegaconf import OmegaConf

from benchmarks import speech_separation


def test_a_missing_librivox_folder_fails_before_any_synthesis(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speech_separation", "--runs-dir", str(tmp_path), "--", f"paths.data={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="speech/librivox; .*paths.data"):
        speech_separation.main()
    assert not any((tmp_path / "speech_cache").rglob("*.npz"))  # nothing was synthesised


def test_the_results_name_the_training_voices_and_same_speaker_share():
    data = OmegaConf.create({"engines": ["espeak"], "same_speaker_fraction": 0.0})
    assert speech_separation.training_data(data) == "espeak dynamic mixtures"
    data = OmegaConf.create({"engines": ["espeak", "flite"], "same_speaker_fraction": 0.3})
    assert speech_separation.training_data(data) == "espeak + flite dynamic mixtures, 30% of them same-speaker"
