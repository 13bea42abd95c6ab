"""OfflineRLTask: action regression on data windows, scored by rollouts in the environment.

Training minimises the mean squared error between predicted and data actions over the real (unpadded)
steps. Validation and test roll the policy out at each of the data module's target returns; per target T
they log `<stage>/return@T`, `return_std@T`, `score@T`, `score_std@T` (D4RL normalised score) and
`length@T`; `<stage>/score` is the best target's score (it picks the best checkpoint) and
`<stage>/ms_per_step` the policy's latency per environment step (batched over the episodes). Test also
logs `test/data_score` (the data set's mean normalised episode score) and, after a training run,
`test/score_last` and `test/score_best` (validation scores of the last and the best epoch). Every
validation appends to evaluations.csv and redraws returns_over_training.png in the run directory.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from apps.common.module import OptimizerFactory, SchedulerFactory, Task
from apps.rl.data import OfflineRLDataModule
from apps.rl.model import DecisionTransformer
from apps.rl.plots import plot_returns_over_training
from apps.rl.rollout import normalized_score, run_episodes

log = logging.getLogger(__name__)


class OfflineRLTask(Task):
    """Args:
        model: a `DecisionTransformer` (or its behaviour-cloning form).
        env: the data module's environment config (id, random_return, expert_return, max_episode_steps).
        context: the training window, for `inference="window"`.
        val_episodes, test_episodes: episodes per target return.
        rollout_seed: validation episodes use seeds rollout_seed + i, test episodes rollout_seed + 10_000 + i.
        inference: "recurrent" or "window" (see `apps.rl.rollout`).
        data_score: the data set's mean normalised episode score, drawn in the plot for reference.
    """

    def __init__(
        self,
        model: DecisionTransformer,
        optimizer: OptimizerFactory,
        env: dict,
        context: int,
        scheduler: SchedulerFactory | None = None,
        val_episodes: int = 5,
        test_episodes: int = 10,
        rollout_seed: int = 0,
        inference: str = "recurrent",
        data_score: float | None = None,
    ) -> None:
        super().__init__(model, optimizer, scheduler, monitor="val/score")
        self.env, self.context, self.inference = dict(env), context, inference
        self.episodes = {"val": val_episodes, "test": test_episodes}
        self.seeds = {"val": rollout_seed, "test": rollout_seed + 10_000}
        self.data_score = data_score
        self.results: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []

    def prediction_and_target(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        returns, states, actions, timesteps, mask = batch
        return self.model(returns, states, actions, timesteps)[mask], actions[mask]

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(prediction, target)

    def evaluate_target(self, target: float, stage: str) -> dict[str, Any]:
        """Roll out `episodes[stage]` episodes at `target`; a row of returns, scores, lengths and timings."""
        done = run_episodes(self.model, self.env["id"], target, self.episodes[stage], self.seeds[stage],
                            self.inference, self.context, self.env.get("max_episode_steps"))
        scores = normalized_score(done.returns, self.env["random_return"], self.env["expert_return"])
        return {"target": target, "return": done.returns.mean(), "return_std": done.returns.std(),
                "score": scores.mean(), "score_std": scores.std(), "length": done.lengths.mean(),
                "ms_per_step": 1000 * done.policy_seconds / done.steps, "env_ms_per_step": 1000 * done.env_seconds / done.steps,
                "episode_returns": done.returns.tolist()}

    def evaluate_targets(self, targets: list[float], stage: str) -> list[dict[str, Any]]:
        """A row of `evaluate_target` per target; once only without return conditioning (the targets are ignored)."""
        return [self.evaluate_target(target, stage) for target in (targets if self.model.return_conditioned else targets[:1])]

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.results = self.evaluate_targets(batch.tolist(), "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.results = self.evaluate_targets(batch.tolist(), "test")

    def rollout_metrics(self, stage: str) -> dict[str, float]:
        """The metrics of the last `evaluate_targets` (see the module docstring)."""
        metrics = {}
        for row in self.results:
            for key in ("return", "return_std", "score", "score_std", "length"):
                metrics[f"{stage}/{key}@{row['target']:g}"] = float(row[key])
        metrics[f"{stage}/score"] = max(float(row["score"]) for row in self.results)
        metrics[f"{stage}/ms_per_step"] = float(np.mean([row["ms_per_step"] for row in self.results]))
        return metrics

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.log_dict(self.rollout_metrics("val"))
        self.history += [{"step": self.global_step, "epoch": self.current_epoch, **{k: v for k, v in row.items() if k != "episode_returns"}}
                         for row in self.results]
        if self.trainer.is_global_zero:
            output_dir = Path(self.trainer.default_root_dir)
            history = pd.DataFrame(self.history)
            history.to_csv(output_dir / "evaluations.csv", index=False)
            plot_returns_over_training(history, output_dir / "returns_over_training.png", self.data_score)

    def on_test_epoch_end(self) -> None:
        metrics = self.rollout_metrics("test")
        if self.data_score is not None:
            metrics["test/data_score"] = self.data_score
        if self.history:
            by_epoch = pd.DataFrame(self.history).groupby("epoch")["score"].max()
            metrics["test/score_last"], metrics["test/score_best"] = float(by_epoch.iloc[-1]), float(by_epoch.max())
        self.log_dict(metrics)
        if self.trainer.is_global_zero:
            write_episodes(self.results, Path(self.trainer.default_root_dir) / "test_episodes.csv")

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> tuple[Tensor, Tensor]:
        """(predicted actions, data actions) of one whole data episode, each (T, act_dim)."""
        return self.prediction_and_target(batch)


def write_episodes(results: list[dict[str, Any]], path: Path) -> pd.DataFrame:
    """One row per rolled-out episode: target, episode, return."""
    rows = [{"target": row["target"], "episode": i, "return": value}
            for row in results for i, value in enumerate(row["episode_returns"])]
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False)
    return frame


def build_task(cfg: DictConfig, datamodule: OfflineRLDataModule) -> OfflineRLTask:
    """The network of `cfg.model` sized and normalised for the data, inside the task of `cfg.task`."""
    env = datamodule.env
    model = instantiate(
        cfg.model, obs_dim=datamodule.obs_dim, act_dim=datamodule.act_dim, state_mean=datamodule.state_mean,
        state_std=datamodule.state_std, action_high=datamodule.action_high, return_scale=env["return_scale"],
        max_timestep=env["max_episode_steps"], _convert_="all",
    )
    returns = np.array([episode.rewards.sum() for episode in datamodule.episodes])
    data_score = float(normalized_score(returns, env["random_return"], env["expert_return"]).mean())
    return instantiate(
        cfg.task, model=model, optimizer=instantiate(cfg.optimizer), scheduler=instantiate(cfg.get("scheduler")),
        env=env, context=datamodule.context, data_score=data_score,
    )


def write_predictions(predictions: list[tuple[Tensor, Tensor]], datamodule: OfflineRLDataModule, output_dir: Path) -> pd.DataFrame:
    """predictions.npz (predicted and data actions of the first data episodes, with their episode index) and
    predictions.csv (action MSE per episode)."""
    predicted = torch.cat([p for p, _ in predictions]).float().numpy()
    actions = torch.cat([a for _, a in predictions]).float().numpy()
    episode = np.concatenate([np.full(len(p), i) for i, (p, _) in enumerate(predictions)])
    np.savez(output_dir / "predictions.npz", predicted_actions=predicted, actions=actions, episode=episode)
    errors = pd.DataFrame({"episode": range(len(predictions)),
                           "steps": [len(p) for p, _ in predictions],
                           "action_mse": [float(((p - a) ** 2).mean()) for p, a in predictions]})
    errors.to_csv(output_dir / "predictions.csv", index=False)
    log.info("action MSE on %d data episodes: %s", len(errors), errors["action_mse"].round(4).tolist())
    return errors
