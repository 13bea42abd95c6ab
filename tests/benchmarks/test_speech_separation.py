"""The speech benchmark checks its real-speech test folder before it spends minutes synthesising and training."""
from __future__ import annotations

import sys

import pytest

from benchmarks import speech_separation


def test_a_missing_librivox_folder_fails_before_any_synthesis(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speech_separation", "--runs-dir", str(tmp_path), "--", f"paths.data={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="speech/librivox; .*paths.data"):
        speech_separation.main()
    assert not any((tmp_path / "speech_cache").rglob("*.npz"))  # nothing was synthesised
