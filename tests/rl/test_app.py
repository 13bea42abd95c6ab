"""The RL app end to end through its command line, on data it collects itself (Pendulum-v1, no files needed).

`collect` trains SAC for a few hundred steps; a tiny Decision Transformer trains for a few batches on the
recorded rollouts and is rolled out in the real environment.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apps.common.cli import QUIET, main
from apps.rl.__main__ import APP
from apps.rl.sources import load_transitions

TINY = ["model.d_model=16", "model.depth=1", "data.batch_size=8", "data.batches_per_epoch=3", "data.context=10",
        "trainer.max_epochs=2", "task.val_episodes=2", "task.test_episodes=2", "data.env.max_episode_steps=40", *QUIET]


def cli(*args: str):
    return main(APP, list(args))


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory) -> Path:
    """rollouts and replay data sets of a briefly trained SAC agent on Pendulum-v1."""
    out = tmp_path_factory.mktemp("collect")
    written = cli("collect", "collect.sac_steps=200", "collect.learning_starts=150", "collect.transitions=250",
                  "collect.device=cpu", f"collect.out_dir={out}", f"paths.runs={out / 'runs'}")
    assert set(written) == {"rollouts", "replay", "info"}
    return out


def test_collect_writes_d4rl_style_data(pendulum):
    rollouts, replay = load_transitions(pendulum / "pendulum-rollouts.npz"), load_transitions(pendulum / "pendulum-replay.npz")
    assert len(rollouts) == 250 and len(replay) == 200 and rollouts.observations.shape == (250, 3)
    assert rollouts.timeouts[199] and rollouts.timeouts[-1] and rollouts.timeouts.sum() == 2  # 200-step episodes, cut tail
    assert np.abs(replay.actions).max() <= 2.0 and np.abs(replay.actions).max() > 1.0  # environment units, not SB3's [-1, 1]
    info = json.loads((pendulum / "pendulum-info.json").read_text())
    assert info["env"] == "Pendulum-v1" and info["rollout_episodes_finished"] == 1
    assert (pendulum / "pendulum-sac" / "progress.csv").is_file()  # SAC's log beside the data, nothing left in /tmp


def test_train_eval_rollout_predict(pendulum, tmp_path):
    data = ["data=file", "data/env=pendulum", f"data.path={pendulum / 'pendulum-rollouts.npz'}", "data.targets=[-150,-400]"]
    train_dir = tmp_path / "train"
    trained = cli("train", *data, *TINY, f"paths.runs={tmp_path}", f"hydra.run.dir={train_dir}")
    for name in ("metrics.json", "evaluations.csv", "returns_over_training.png", "test_episodes.csv", "loss_curves.png",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (train_dir / name).is_file(), name
    metrics = json.loads((train_dir / "metrics.json").read_text())["metrics"]
    assert set(metrics) >= {"test/score", "test/score@-150", "test/return@-400", "test/ms_per_step", "test/score_last", "test/score_best"}
    assert metrics["test/length@-150"] == 40 and metrics["test/score"] == max(metrics["test/score@-150"], metrics["test/score@-400"])
    evaluations = pd.read_csv(train_dir / "evaluations.csv")
    assert evaluations["epoch"].tolist() == [0, 0, 1, 1] and evaluations["step"].tolist() == [3, 3, 6, 6]
    assert len(pd.read_csv(train_dir / "test_episodes.csv")) == 4
    assert trained["test/score"] == pytest.approx(metrics["test/score"])

    # eval replays the checkpoint's overrides: the same test episodes give the same returns
    evaluated = cli("eval", f"ckpt_path={train_dir}")
    assert evaluated["test/return@-150"] == pytest.approx(trained["test/return@-150"], rel=1e-4)

    # rollout: no Lightning; here with the original Decision Transformer's sliding window
    rolled = cli("rollout", f"ckpt_path={train_dir}", "task.inference=window", "data.targets=[-150]")
    (rollout_dir,) = (tmp_path / "rl" / "file" / "rollout").iterdir()
    assert set(rolled) >= {"test/score@-150", "test/ms_per_step"} and (rollout_dir / "rollout_episodes.csv").is_file()
    assert json.loads((rollout_dir / "metrics.json").read_text())["inference"] == "window"

    errors = cli("predict", f"ckpt_path={train_dir}")
    (predict_dir,) = (tmp_path / "rl" / "file" / "predict").iterdir()
    saved = np.load(predict_dir / "predictions.npz")
    assert len(errors) == 2 and saved["predicted_actions"].shape == saved["actions"].shape == (250, 1)


def test_behaviour_cloning_rolls_out_once(pendulum, tmp_path):
    data = ["data=file", "data/env=pendulum", f"data.path={pendulum / 'pendulum-replay.npz'}", "data.targets=[-150,-400]"]
    trained = cli("train", "model=bc", *data, *TINY, "trainer.max_epochs=1", f"paths.runs={tmp_path}")
    assert "test/score@-150" in trained and "test/score@-400" not in trained  # the target is ignored


def test_data_of_another_environment_is_refused(pendulum, tmp_path, capsys):
    data = ["data=file", "data/env=hopper", f"data.path={pendulum / 'pendulum-rollouts.npz'}", "data.targets=[1000]"]
    with pytest.raises(SystemExit):
        cli("train", *data, *TINY, f"paths.runs={tmp_path}")
    assert "but Hopper-v5 has 11 and 3; pick the data set's environment" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="rollout needs a checkpoint"):
        cli("rollout")


def test_default_data_is_collected_once_when_missing(tmp_path):
    """The offline default (data=pendulum) makes its data set with SAC on first use, then reuses the file."""
    small = ["data.generate.sac_steps=200", "data.generate.learning_starts=150", "data.generate.transitions=250"]
    trained = cli("train", *small, *TINY, "trainer.max_epochs=1", f"paths.runs={tmp_path}")
    data_file = tmp_path / "rl" / "data" / "pendulum-medium-rollouts.npz"
    assert data_file.is_file() and len(load_transitions(data_file)) == 250 and "test/score" in trained
    made = data_file.stat().st_mtime_ns
    cli("train", *small, *TINY, "trainer.max_epochs=1", f"paths.runs={tmp_path}")
    assert data_file.stat().st_mtime_ns == made  # loaded, not collected again
    with pytest.raises(SystemExit):  # a path that the generated name cannot produce
        cli("train", *small, *TINY, f"paths.runs={tmp_path}", f"data.path={tmp_path / 'other.npz'}")
