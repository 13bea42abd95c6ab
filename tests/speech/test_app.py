"""The speech app end to end, in-process through the real command line (`apps.common.cli.main`).

Every run is tiny (quarter-second mixtures, a few espeak-ng voices, width 8) and writes under tmp_path.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import soundfile
import torch

from apps.common.cli import QUIET, main
from apps.speech.__main__ import APP
from apps.speech.audio import read_wav

LIBRIVOX = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech" / "librivox"
needs_librivox = pytest.mark.skipif(not LIBRIVOX.is_dir(), reason=f"no recordings under {LIBRIVOX}")

TINY_DATA = [
    "data.train_voices=4", "data.val_voices=2", "data.test_voices=2", "data.utterances_per_voice=3",
    "data.segment_seconds=0.25", "data.train_mixtures=8", "data.val_mixtures=2", "data.test_mixtures=2", "data.batch_size=4",
    "trainer.max_epochs=1", *QUIET,
]  # fmt: skip
TINY_MODEL = ["model.num_filters=8", "model.d_model=8", "model.chunk_size=10", "model.num_blocks=1", "model.mlp_expand=1.0"]
TINY_CONVTASNET = ["model=convtasnet", "model.enc_num_feats=8", "model.msk_num_feats=8", "model.msk_num_hidden_feats=8",
                   "model.msk_num_layers=2", "model.msk_num_stacks=1"]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One speech cache for the module's runs (synthesised once)."""
    return f"data.cache_dir={tmp_path_factory.mktemp('speech_cache')}"


def cli(*args: str):
    return main(APP, list(args))


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_train_eval_predict_separate(tmp_path, cache, capsys):
    train_dir = tmp_path / "train"
    trained = cli("train", *TINY_DATA, *TINY_MODEL, cache, f"paths.runs={tmp_path}", f"hydra.run.dir={train_dir}")
    for name in ("metrics.json", "loss_curves.png", "test_per_utterance.csv", "test_example_0.png", "checkpoints/best.ckpt"):
        assert (train_dir / name).is_file(), name
    record = metrics_of(train_dir)
    assert record["steps"] == 2  # 8 training mixtures in batches of 4
    assert set(record["metrics"]) >= {"test/loss", "test/si_snr", "test/si_snri", "test/sdri"}
    per_utterance = pd.read_csv(train_dir / "test_per_utterance.csv")
    assert len(per_utterance) == 2 and set(per_utterance.columns) >= {"mixture", "seconds", "si_snri", "sdri"}
    assert per_utterance["si_snri"].mean() == pytest.approx(trained["test/si_snri"], abs=1e-3)
    assert trained["test/si_snr"] == pytest.approx(-trained["test/loss"], abs=1e-4)

    evaluated = cli("eval", f"ckpt_path={train_dir}")  # the model and data come back from the checkpoint
    for key in ("test/si_snr", "test/si_snri", "test/sdri"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-3)

    written = cli("predict", f"ckpt_path={train_dir}")
    assert len(written) == 2 * 3 and all(path.is_file() for path in written)  # mixture + 2 estimates, 2 mixtures

    mixture, rate = read_wav(written[0])
    stereo = tmp_path / "two_channels.wav"
    soundfile.write(stereo, torch.cat([mixture, mixture]).T.numpy(), rate)
    with pytest.raises(SystemExit):  # Hydra prints the error and exits
        cli("separate", f"ckpt_path={train_dir}", f"separate.input={stereo}", f"hydra.run.dir={tmp_path / 'refused'}")
    assert "has 2 channels; the model separates one channel" in capsys.readouterr().err
    separate_dir = tmp_path / "separated"
    outputs = cli("separate", f"ckpt_path={train_dir}", f"separate.input={stereo}", "separate.channel=0",
                  "separate.chunk_seconds=0.5", "separate.overlap_seconds=0.1", f"hydra.run.dir={separate_dir}")  # fmt: skip
    assert [p.name for p in outputs] == ["two_channels_s1.wav", "two_channels_s2.wav"]
    for path in outputs:
        estimate, estimate_rate = read_wav(path)
        assert estimate_rate == 8000 and estimate.shape == mixture.shape
    assert (separate_dir / "two_channels_spectrograms.png").is_file()


@pytest.mark.parametrize(
    "model",
    [TINY_CONVTASNET, ["model/mixer=mamba2", *TINY_MODEL], ["model/mixer=gated_deltanet", "model.bidirectional_inter=false", *TINY_MODEL],
     ["model.layers=[mamba2,attention]", "model.intra_depth=2", *TINY_MODEL]],
    ids=["convtasnet", "mamba2", "gated_deltanet_streaming", "hybrid"],
)  # fmt: skip
def test_models_train_one_step(model, tmp_path, cache):
    metrics = cli("train", *model, *TINY_DATA, "trainer.fast_dev_run=true", cache, f"paths.runs={tmp_path}")
    assert torch.isfinite(torch.tensor(metrics["test/si_snri"]))


def test_passages_f0_siblings_rooms_and_max_steps_inside_the_first_epoch(tmp_path, cache):
    # one step of two: the epoch ends before validation, and early stopping (checked after validations) lets it end
    metrics = cli("train", *TINY_MODEL, *TINY_DATA, "data.passages=true", "data.same_speaker_fraction=0.5", "trainer.max_steps=1",
                  "data.reverb_fraction=0.5", "data.reverb_rt60=[0.2,0.3]",
                  "data.same_speaker_f0_shift=0.3", cache, f"paths.runs={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert metrics_of(tmp_path / "run")["steps"] == 1 and torch.isfinite(torch.tensor(metrics["test/si_snri"]))


@needs_librivox
@pytest.mark.parametrize("warps", [None, "[1.0,1.25,0.8]"])
def test_three_speakers_tested_on_real_librivox_mixtures(warps, tmp_path, cache):
    warped = [] if warps is None else [f"data.test_warps={warps}"]  # three apparent speakers from one reader
    metrics = cli("train", "data=librivox", "data.num_speakers=3", *TINY_MODEL, *TINY_DATA, "data.val_voices=3", "trainer.fast_dev_run=true",
                  *warped, cache, f"paths.runs={tmp_path}", f"paths.data={LIBRIVOX.parents[1]}", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    rows = pd.read_csv(tmp_path / "run" / "test_per_utterance.csv")
    assert len(rows) == 1 and rows["seconds"].iloc[0] > 2  # fast_dev_run: one whole real mixture of 3 recordings
    assert torch.isfinite(torch.tensor(metrics["test/sdri"]))


def test_separate_needs_a_checkpoint_and_an_input(tmp_path, cache, capsys):
    with pytest.raises(SystemExit, match="separate needs a checkpoint"):
        cli("separate", "separate.input=x.wav")
    run_dir = tmp_path / "run"
    cli("train", *TINY_DATA, *TINY_MODEL, "trainer.limit_train_batches=1", cache, f"paths.runs={tmp_path}", f"hydra.run.dir={run_dir}")
    with pytest.raises(SystemExit):
        cli("separate", f"ckpt_path={run_dir}", f"hydra.run.dir={tmp_path / 'separate'}")
    assert "separate needs an audio file: separate.input=PATH.wav" in capsys.readouterr().err
