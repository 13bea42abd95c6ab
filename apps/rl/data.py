"""Offline trajectories for sequence models: episodes, returns-to-go, training windows, rollout targets.

`OfflineRLDataModule` loads a data set (`apps.rl.sources`), cuts it into episodes, computes the state
statistics (stored in the model, hence in every checkpoint) and serves
- train: `batches_per_epoch` batches of windows of `context` steps, episodes drawn in proportion to their
  length (the Decision Transformer's sampling), windows shorter than `context` padded at the end;
- val / test: the target returns to roll the policy out at (the task runs the episodes);
- predict: whole data episodes, for the policy's actions on them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from apps.rl.sources import Transitions, load_transitions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Episode:
    """One trajectory: observations (T, obs_dim), actions (T, act_dim), rewards (T,), returns_to_go (T,)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    returns_to_go: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """R_t = sum of rewards from step t to the episode's end (undiscounted), float32; rewards (T,) -> (T,)."""
    return np.cumsum(rewards[::-1], dtype=np.float64)[::-1].astype(np.float32)


def episode_bounds(data: Transitions) -> list[tuple[int, int]]:
    """[start, stop) of every episode: one ends after each row whose terminal or timeout flag is set; rows
    after the last such flag form a final, truncated episode (kept, with a log message)."""
    ends = np.flatnonzero(data.terminals | data.timeouts) + 1
    if len(ends) == 0 or ends[-1] != len(data):
        log.info("the last %d transitions end without a terminal/timeout flag: kept as a truncated episode",
                 len(data) - (ends[-1] if len(ends) else 0))
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1]])
    return list(zip(starts.tolist(), ends.tolist()))


def split_episodes(data: Transitions) -> list[Episode]:
    """The episodes of a data set, in order, with their returns-to-go."""
    return [
        Episode(data.observations[a:b], data.actions[a:b], data.rewards[a:b], returns_to_go(data.rewards[a:b]))
        for a, b in episode_bounds(data)
    ]


class WindowDataset(Dataset):
    """Windows of `context` steps; item i is window i of `starts` = (episode, first step).

    An item is (returns_to_go (K, 1), states (K, obs_dim), actions (K, act_dim), timesteps (K,) int64,
    mask (K,) bool): steps past the episode's end are zero with mask False.
    """

    def __init__(self, episodes: list[Episode], context: int) -> None:
        self.episodes, self.context = episodes, context
        # every full window (or the whole episode if it is shorter than the context)
        self.starts = [(e, s) for e, ep in enumerate(episodes) for s in range(max(len(ep) - context, 0) + 1)]
        # an episode is drawn in proportion to its length, then one of its windows uniformly
        counts = np.array([max(len(ep) - context, 0) + 1 for ep in episodes], dtype=np.float64)
        lengths = np.array([len(ep) for ep in episodes], dtype=np.float64)
        self.weights = np.repeat(lengths / counts, counts.astype(int))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        e, start = self.starts[index]
        episode = self.episodes[e]
        stop = min(start + self.context, len(episode))
        steps = stop - start

        def padded(values: np.ndarray) -> Tensor:
            out = np.zeros((self.context, *values.shape[1:]), dtype=values.dtype)
            out[:steps] = values[start:stop]
            return torch.from_numpy(out)

        timesteps = torch.zeros(self.context, dtype=torch.int64)
        timesteps[:steps] = torch.arange(start, stop)
        mask = torch.arange(self.context) < steps
        return (padded(episode.returns_to_go)[:, None], padded(episode.observations), padded(episode.actions), timesteps, mask)


def environment_spaces(env_id: str) -> tuple[int, int, np.ndarray]:
    """(obs_dim, act_dim, action_high) of a gymnasium environment with flat Box spaces and symmetric bounds."""
    env = gym.make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, gym.spaces.Box) or not isinstance(act_space, gym.spaces.Box):
        raise ValueError(f"{env_id}: needs Box observation and action spaces (continuous control), got {obs_space} and {act_space}")
    if not np.allclose(act_space.low, -act_space.high):
        raise ValueError(f"{env_id}: action bounds must be symmetric (low = -high), got {act_space.low} .. {act_space.high}")
    return int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)), act_space.high.astype(np.float32)


class OfflineRLDataModule(L.LightningDataModule):
    """An offline data set for `env` and the rollouts that score a policy trained on it.

    Args:
        name: the data set's name (runs go under it).
        path: a .npz, D4RL .hdf5 or Minari .hdf5 file (see `apps.rl.sources`).
        env: {"id": gymnasium id, "random_return", "expert_return": reference returns of the normalised score,
            "return_scale": returns-to-go are divided by it inside the model, "max_episode_steps"}.
        targets: target returns the policy is rolled out at (validation and test).
        context: window length K in environment steps (3K tokens for the Decision Transformer); None = the
            longest episode, so every window is a whole episode from its first step (what recurrent
            inference, which carries its state from the start of an episode, sees).
        batch_size, batches_per_epoch: windows per batch and batches per training epoch.
        predict_episodes: data episodes the `predict` verb runs the policy on.
        generate: a `collect` config (SAC settings) that makes the data set when `path` does not exist yet; its
            `<name>-rollouts.npz` must be `path`. This is how the offline default `data=pendulum` needs no files.
    """

    def __init__(
        self,
        name: str,
        path: str,
        env: dict,
        targets: list[float],
        context: int | None = None,
        batch_size: int = 16,
        batches_per_epoch: int = 100,
        num_workers: int = 0,
        predict_episodes: int = 4,
        generate: dict | None = None,
    ) -> None:
        super().__init__()
        if not targets:
            raise ValueError("data.targets is empty; give at least one target return, e.g. data.targets=[3600]")
        if context is not None and context < 1:
            raise ValueError(f"data.context must be a positive number of steps or null (the longest episode), got {context}")
        self.name, self.path, self.env = name, path, dict(env)
        self.targets = [float(t) for t in targets]
        self.requested_context = context
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.num_workers, self.predict_episodes = num_workers, predict_episodes
        self.generate = dict(generate) if generate else None
        self.episodes: list[Episode] = []

    def setup(self, stage: str | None = None) -> None:
        if self.episodes:
            return
        if self.generate is not None and not Path(self.path).expanduser().is_file():
            self.make_data()
        data = load_transitions(self.path)
        self.obs_dim, self.act_dim, self.action_high = environment_spaces(self.env["id"])
        if data.observations.shape[1] != self.obs_dim or data.actions.shape[1] != self.act_dim:
            raise ValueError(
                f"{self.path}: observations have {data.observations.shape[1]} and actions {data.actions.shape[1]} "
                f"features, but {self.env['id']} has {self.obs_dim} and {self.act_dim}; pick the data set's environment "
                "(data/env=...) or another data.path"
            )
        beyond = np.abs(data.actions) > self.action_high * (1 + 1e-4)
        if beyond.any():
            raise ValueError(
                f"{self.path}: {beyond.any(1).sum()} actions lie outside {self.env['id']}'s bounds ±{self.action_high}; "
                "the tanh action head cannot reach them"
            )
        self.episodes = split_episodes(data)
        self.state_mean = data.observations.mean(0)
        self.state_std = data.observations.std(0) + 1e-6
        self.longest = max(len(ep) for ep in self.episodes)
        self.context = self.requested_context or self.longest
        returns = np.array([ep.rewards.sum() for ep in self.episodes])
        log.info("%s: %d transitions, %d episodes (%d..%d steps), return %.1f ± %.1f (max %.1f), context %d",
                 self.name, len(data), len(self.episodes), min(len(ep) for ep in self.episodes), self.longest,
                 returns.mean(), returns.std(), returns.max(), self.context)
        self.windows = WindowDataset(self.episodes, self.context)

    def make_data(self) -> None:
        """Collect the data set at `path` with `generate`'s SAC settings (once; later runs load the file)."""
        from apps.rl.collect import make_dataset  # stable-baselines3 loads only when data is generated

        path = Path(self.path).expanduser()
        expected = f"{self.generate['name']}-rollouts.npz"
        if path.name != expected:
            raise ValueError(f"data.path {path} must end in {expected} (data.generate.name) for the data it generates")
        log.info("%s does not exist yet: collecting it with SAC in %s (once)", path, self.generate["env"])
        make_dataset(self.generate, path.parent)

    def train_dataloader(self) -> DataLoader:
        sampler = WeightedRandomSampler(self.windows.weights, self.batch_size * self.batches_per_epoch, replacement=True)
        return DataLoader(self.windows, self.batch_size, sampler=sampler, num_workers=self.num_workers, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """One batch: every target return."""
        return DataLoader(torch.tensor(self.targets), batch_size=len(self.targets))

    test_dataloader = val_dataloader

    def predict_dataloader(self) -> DataLoader:
        episodes = WindowDataset(self.episodes[: self.predict_episodes], self.longest)
        return DataLoader(episodes, batch_size=1)
