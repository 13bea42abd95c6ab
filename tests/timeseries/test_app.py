"""The timeseries app end to end, in-process through the real command line (`apps.common.cli.main`).

Every run is tiny (a few batches, d_model 16) and writes under pytest's tmp_path.
"""
from __future__ import annotations

import functools
import json
import signal
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

import core
from apps.common.cli import QUIET, main, register_mixers, register_resolvers
from apps.common.trainer import checkpoint_overrides
from apps.timeseries.__main__ import APP
from apps.timeseries.data import ForecastDataModule
from apps.timeseries.model import DLinear, MixerForecaster, PatchTokens, RLinear, VariateTokens
from apps.timeseries.task import build_task

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "timeseries"
needs_ett = pytest.mark.skipif(not (DATA / "ETTh1.csv").is_file(), reason=f"no ETTh1.csv under {DATA}")

TINY_DATA = [
    "data.lookback=48", "data.horizon=24", "data.batch_size=32",
    "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
    *QUIET,
]
TINY = ["model.d_model=16", "model.depth=1", *TINY_DATA]
FAST_DEV_DATA = ["data.lookback=32", "data.horizon=8", "data.batch_size=4", "trainer.fast_dev_run=true", *QUIET]
FAST_DEV = ["model.d_model=16", "model.depth=1", *FAST_DEV_DATA]


def cli(*args: str):
    return main(APP, list(args))


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def only_run(parent: Path) -> Path:
    (run_dir,) = [path.parent for path in parent.glob("**/metrics.json")]
    return run_dir


# ---------------------------------------------------------------- command line


def test_help_lists_verbs_groups_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    expected = ["train", "eval", "predict", "aggregate", "model/mixer:", "trainer:", "experiment:", "== Examples =="]
    assert all(text in out for text in expected)
    assert all(name in out for name in core.available_mixers())


def test_typo_in_override_gives_hydras_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli("train", "trainer.max_epoch=3", f"paths.runs={Path('/nonexistent')}")
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "Could not override 'trainer.max_epoch'" in err
    assert "Traceback" not in err


def test_unknown_mixer_and_verb_are_named(capsys):
    with pytest.raises(SystemExit):
        cli("train", "model/mixer=atention")
    assert "Could not find 'model/mixer/atention'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="Did you mean 'train'"):
        cli("trian")
    with pytest.raises(SystemExit, match="needs a checkpoint"):
        cli("eval")


# ---------------------------------------------------------------- train, eval, predict


def test_train_eval_predict_on_default_data(tmp_path):
    train_dir = tmp_path / "train"
    trained = cli("train", *TINY, f"paths.runs={tmp_path}", f"hydra.run.dir={train_dir}")
    for name in ("metrics.json", "loss_curves.png", "per_step_error.csv", "per_step_error.png", "test_forecasts.png",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv", ".hydra/config.yaml"):
        assert (train_dir / name).is_file(), name
    record = metrics_of(train_dir)
    assert record["verb"] == "train" and record["name"] == "weather"
    assert set(record["metrics"]) >= {"test/mse", "test/mae", "test/mse_original", "test/mae_original"}
    assert record["metrics"]["test/mse"] == pytest.approx(trained["test/mse"])
    assert len(pd.read_csv(train_dir / "per_step_error.csv")) == 24

    # eval rebuilds the model from the overrides stored in the checkpoint and reproduces the test metrics
    evaluated = cli("eval", f"ckpt_path={train_dir}")
    for key in ("test/mse", "test/mae", "test/mse_original"):
        assert evaluated[key] == pytest.approx(trained[key], rel=1e-5)
    eval_dir = only_run(tmp_path / "timeseries" / "weather" / "eval")
    assert metrics_of(eval_dir)["checkpoint"].endswith("best.ckpt")

    forecast = cli("predict", f"ckpt_path={train_dir}")
    predict_dir = next((tmp_path / "timeseries" / "weather" / "predict").iterdir())
    written = pd.read_csv(predict_dir / "predictions.csv", index_col=0, parse_dates=True)
    assert written.shape == (24, forecast.shape[1]) and list(written.columns) == list(forecast.columns)
    assert written.index[0] > pd.Timestamp("2001-12-31 23:00") and (predict_dir / "predictions.png").is_file()


@needs_ett
def test_etth1_single_target_train_eval_predict(tmp_path):
    """ETTh1 with features=MS: all 7 channels in, OT out (n_outputs < n_inputs). The data path is given as an
    interpolation, which the checkpoint stores as typed and eval/predict resolve again."""
    data = "data.path=${paths.data}/timeseries"  # ../shared/data (or $SEQMIX_DATA), where DATA lies
    overrides = ["experiment=etth1", data, "data.features=MS", *TINY, f"paths.runs={tmp_path}"]
    trained = cli("train", *overrides)
    train_dir = only_run(tmp_path)
    assert metrics_of(train_dir)["name"] == "etth1"
    assert data in checkpoint_overrides(train_dir / "checkpoints" / "best.ckpt")
    evaluated = cli("eval", f"ckpt_path={train_dir / 'checkpoints' / 'best.ckpt'}")
    assert evaluated["test/mse"] == pytest.approx(trained["test/mse"], rel=1e-5)
    forecast = cli("predict", f"ckpt_path={train_dir}")
    assert list(forecast.columns) == ["OT"] and len(forecast) == 24
    assert forecast.index[0] == pd.Timestamp("2018-06-26 20:00:00")


class InterruptAt(L.Callback):
    """Simulates Ctrl-C after optimizer step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_from_last_checkpoint(tmp_path):
    overrides = [*TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=4", f"paths.runs={tmp_path}",
                 f"+callbacks.interrupt._target_={__name__}.InterruptAt", "+callbacks.interrupt.step=5"]
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning exits after saving on KeyboardInterrupt
            cli("train", *overrides)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    (interrupted,) = (tmp_path / "timeseries" / "weather" / "train").iterdir()
    last = interrupted / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert "trainer.limit_train_batches=4" in checkpoint_overrides(last)

    cli("train", "ckpt_path=last", f"paths.runs={tmp_path}")  # the stored overrides come back with the checkpoint
    resumed = only_run(tmp_path / "timeseries" / "weather" / "train")
    assert metrics_of(resumed)["resumed_from"] == str(last.resolve())
    final_step = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert final_step == 8  # 2 epochs of 4 steps: the 3 steps left after step 5, none repeated or lost
    logged_steps = pd.read_csv(resumed / "csv" / "metrics.csv")["step"]
    assert logged_steps[logged_steps > 0].min() >= 5


def test_ddp_spawn_two_processes_reduce_metrics(tmp_path):
    """Two CPU processes (gloo) each test 4 batches of 16 windows: rank r takes windows r, r + 2, ..., so together
    they see the first 128 windows, the same as one process with 4 batches of 32. Reduced metrics must agree."""
    two = cli("train", *TINY, "trainer=ddp_cpu", "trainer.limit_test_batches=4", "data.batch_size=16",
              f"paths.runs={tmp_path}", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert metrics_of(tmp_path / "ddp")["metrics"]["test/mse"] == pytest.approx(two["test/mse"])
    one = cli("eval", f"ckpt_path={tmp_path / 'ddp'}", "trainer=default", "data.batch_size=32")
    for key in ("test/mse", "test/mae", "test/loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5)


# ---------------------------------------------------------------- models and mixers


@pytest.mark.parametrize("mixer", core.available_mixers())
def test_every_registered_mixer_trains_one_step(mixer, tmp_path):
    metrics = cli("train", f"model/mixer={mixer}", *FAST_DEV, f"paths.runs={tmp_path}")
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))


@pytest.mark.parametrize(
    "model, sizes", [("itransformer", FAST_DEV), ("dlinear", FAST_DEV_DATA), ("rlinear", FAST_DEV_DATA)]
)
def test_other_models_train_one_step(model, sizes, tmp_path):
    metrics = cli("train", f"model={model}", *sizes, f"paths.runs={tmp_path}")
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))


def composed_task(*overrides: str):
    register_mixers(APP.config_dir)
    register_resolvers()
    with initialize_config_dir(config_dir=str(APP.config_dir), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    datamodule = ForecastDataModule(lookback=cfg.data.lookback, horizon=cfg.data.horizon)
    datamodule.setup()
    return build_task(cfg, datamodule)


def test_hybrid_layers_from_the_command_line(tmp_path):
    other = next((name for name in core.available_mixers() if name != "attention"), "attention")
    layers = f"model.layers=[{other},attention]"
    task = composed_task(layers, "model.depth=2", "model.d_model=16", "data.lookback=32", "data.horizon=8")
    assert task.model.backbone.layer_names == [other, "attention"]
    metrics = cli("train", layers, *FAST_DEV, "model.depth=2", f"paths.runs={tmp_path}")
    assert torch.isfinite(torch.tensor(metrics["test/mse"]))


def test_variate_tokens_mix_causal_mixers_both_ways():
    causal = next((name for name in core.available_mixers() if core.build_mixer(name, 16).causal), None)
    if causal is None:
        pytest.skip("no causal mixer registered")
    task = composed_task("model=itransformer", f"model/mixer={causal}", "model.d_model=16", "data.lookback=32", "data.horizon=8")
    assert not task.model.backbone.causal


def test_forecasters_map_windows_to_horizons():
    x = torch.randn(3, 32, 5)
    mixer = {"name": "attention", "options": {"causal": False, "num_heads": 2}}
    models = [
        MixerForecaster(5, 32, 8, functools.partial(PatchTokens, patch_len=8, stride=4), mixer, "attention", d_model=16, depth=1),
        MixerForecaster(5, 32, 8, VariateTokens, mixer, "attention", d_model=16, depth=1),
        DLinear(5, 32, 8, kernel_size=5),
        RLinear(5, 32, 8),
    ]
    for model in models:
        assert model(x).shape == (3, 8, 5)
        with pytest.raises(ValueError, match="lookback=32, channels=5"):
            model(x[:, :20])


# ---------------------------------------------------------------- results


def test_aggregate_over_a_multirun(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    cli("train", "-m", "model=dlinear,rlinear", "seed=1,2", *TINY_DATA, f"paths.runs={tmp_path}", f"hydra.sweep.dir={sweep}")
    assert len(list(sweep.glob("*/metrics.json"))) == 4
    table = cli("aggregate", str(sweep))
    assert list(table["model"]) == ["dlinear", "rlinear"]
    assert list(table["test/mse count"]) == [2, 2] and table["test/mse std"].notna().all()
    assert (sweep / "aggregate.csv").is_file() and "±" in (sweep / "aggregate.md").read_text()
    averaged = cli("aggregate", str(sweep), "--mean-over", "model", "--out", str(tmp_path / "mean"))
    assert len(averaged) == 1 and averaged["test/mse count"].item() == 2  # one value per seed
    assert averaged["test/mse mean"].item() == pytest.approx(table["test/mse mean"].mean())
