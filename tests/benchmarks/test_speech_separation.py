"""The speech benchmark checks its real-speech test folder before it spends minutes synthesising and training, and
its results say what the models trained on."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from benchmarks import speech_separation


def test_a_missing_librivox_folder_fails_before_any_synthesis(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speech_separation", "--runs-dir", str(tmp_path), "--", f"paths.data={tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="speech/librivox; .*paths.data"):
        speech_separation.main()
    assert not any((tmp_path / "speech_cache").rglob("*.npz"))  # nothing was synthesised


def test_the_results_name_the_training_voices_and_same_speaker_share():
    data = OmegaConf.create({"engines": ["espeak"], "same_speaker_fraction": 0.0, "segment_seconds": 2.0, "passages": False})
    assert speech_separation.training_data(data) == "espeak dynamic mixtures of 2 s"
    data = OmegaConf.create({"engines": ["espeak", "flite"], "same_speaker_fraction": 0.3, "segment_seconds": 4.0, "passages": True})
    assert speech_separation.training_data(data) == (
        "espeak + flite dynamic mixtures of 4 s, 30% of them same-speaker, sources read on sentence after sentence"
    )
    data.same_speaker_f0_shift = 0.3
    assert "30% of them same-speaker (f0-siblings, shift 0.3)," in speech_separation.training_data(data)
    data.reverb_fraction, data.reverb_rt60 = 0.5, [0.1, 0.5]
    assert speech_separation.training_data(data).endswith(", 50% of the sources in a synthetic room (rt60 0.1-0.5 s)")
    data.recordings, data.recordings_fraction = "/data/fillets", 0.25
    assert speech_separation.training_data(data).startswith("espeak + flite (75%) and recordings in /data/fillets (25%) dynamic mixtures")


def test_the_cache_is_filled_with_the_f0_siblings_the_runs_read(tmp_path, monkeypatch):
    filled = []
    monkeypatch.setattr(speech_separation, "synthesize_into_cache", lambda indices, *args: filled.append((list(indices), args[5:])))
    overrides = [f"data.cache_dir={tmp_path}", "data.train_voices=3", "data.val_voices=2", "data.test_voices=2"]
    speech_separation.presynthesize(overrides, workers=1)
    assert filled == [([0, 1, 2, 3, 4], ()), ([5, 6], ())]  # training and validation voices, then the test voices
    filled.clear()
    speech_separation.presynthesize([*overrides, "data.same_speaker_fraction=1.0", "data.same_speaker_f0_shift=0.2"], workers=1)
    assert filled[-1] == ([0, 1, 2], (1, 0.2))  # sibling 1 of each training voice
    decoded = []
    monkeypatch.setattr(speech_separation, "folder_speakers", lambda *args: decoded.append(args))
    speech_separation.presynthesize([*overrides, "data.recordings=/recordings"], workers=1)
    assert decoded == [("/recordings", 8000, str(tmp_path))]  # the training recordings, into the runs' cache


def test_the_table_has_a_column_and_a_gap_per_test():
    rows = [{"model": model, "parameters": 1.5e6, "steps": 10, "run_seconds": 60.0, "test/si_snri": base, "test/sdri": 0.0,
             "test/si_snr": 0.0, "espeak/si_snri": base + 1, "espeak_same/si_snri": base + 2, "librivox_warped/si_snri": base + 3}
            for model, base in (("attention", 1.0), ("convtasnet", -0.5))]  # fmt: skip
    table = speech_separation.markdown(rows)
    assert "held-out espeak-ng same-speaker SI-SNRi (dB)" in table and "| attention | 1.50 M | 10 | 1.00 | 0.00 | 0.00 | 2.00 | 3.00 | 4.00 | 60 |" in table
    assert table.count("minus Conv-TasNet: +1.50 dB") == 4
    assert "LibriVox, second source warped x1.25 SI-SNRi (dB)" in table
    assert "held-out espeak-ng same-speaker: best mixer (attention)" in table and "per mixture" not in table


def test_the_gap_comes_with_its_per_mixture_spread(tmp_path):
    rows = []
    for model, scores in (("attention", [1.0, 2.0, 0.5]), ("convtasnet", [0.0, 0.0, 1.0])):
        (tmp_path / model).mkdir()
        pd.DataFrame({"mixture": ["a", "b", "c"], "si_snri": scores}).to_csv(tmp_path / model / "test_per_utterance.csv", index=False)
        per_mixture = speech_separation.per_mixture({"run_dir": str(tmp_path / model)})
        rows.append({"model": model, "test/si_snri": float(np.mean(list(per_mixture.values()))), "per_mixture": {"test/si_snri": per_mixture}})
    # differences 1, 2, -0.5: mean 0.83, standard deviation 1.26, standard error 0.73
    assert speech_separation.paired(rows[0], rows[1], "test/si_snri") == " (per mixture: +0.83 ± 0.73 dB standard error, ahead on 2 of 3)"
    assert speech_separation.per_mixture({"run_dir": str(tmp_path / "none")}) == {} == speech_separation.per_mixture({})


def test_a_second_start_runs_only_what_is_missing(tmp_path, monkeypatch):
    """Trainings and tests faked (each writes its run folder's metrics.json, a checkpoint and per-mixture scores): a
    start after one whose Conv-TasNet test was cut off runs that test only; a changed budget trains and tests again."""
    ran = []

    def fake_run_parallel(jobs, logs, parallel, threads=None, keep_going=False):
        for name, command in jobs.items():
            ran.append(name)
            run_dir = Path(next(a for a in command if a.startswith("hydra.run.dir=")).split("=", 1)[1])
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "checkpoints" / "best.ckpt").touch()
            metrics = {key: 1.0 for key in [*speech_separation.METRICS, "test/si_snri"]}
            (run_dir / "metrics.json").write_text(json.dumps({"metrics": metrics, "steps": 5, "seconds": 1.0, "run_dir": str(run_dir)}))
            pd.DataFrame({"mixture": ["a"], "si_snri": [1.0]}).to_csv(run_dir / "test_per_utterance.csv", index=False)
        return []

    monkeypatch.setattr(speech_separation, "run_parallel", fake_run_parallel)
    monkeypatch.setattr(speech_separation, "presynthesize", lambda overrides, workers: None)
    monkeypatch.setattr(speech_separation, "RESULTS", tmp_path / "results")
    librivox = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not (librivox / "speech" / "librivox").is_dir():
        pytest.skip(f"no recordings under {librivox}")

    def start(*overrides):
        ran.clear()
        argv = ["speech_separation", "--runs-dir", str(tmp_path / "runs"), "--models", "attention", "convtasnet", "--steps", "5",
                "--", f"paths.data={librivox}", *overrides]
        monkeypatch.setattr(sys, "argv", argv)
        speech_separation.main()
        return sorted(ran)

    tests = list(speech_separation.HELD_OUT)
    assert start() == sorted(["attention", "convtasnet", *(f"{m}_{t}" for m in ("attention", "convtasnet") for t in tests)])
    (tmp_path / "runs" / "convtasnet_librivox_warped" / "metrics.json").unlink()  # that test was cut off
    assert start() == ["convtasnet_librivox_warped"]
    table = (tmp_path / "results" / "speech_separation.md").read_text()
    assert "| convtasnet | " in table and "(this start; trained in an earlier one: attention, convtasnet)" in table
    assert start("data.gain_db=3.0") == sorted(["attention", "convtasnet", *(f"{m}_{t}" for m in ("attention", "convtasnet") for t in tests)])
    assert "trained in an earlier one" not in (tmp_path / "results" / "speech_separation.md").read_text()
