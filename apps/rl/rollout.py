"""Roll a trained policy out in gymnasium environments, N episodes at once, and score the returns.

The policy is batched over the N environments (one network call per environment step for all of them);
an environment that has finished is no longer stepped and its rows are ignored. Two ways to act:
- `RecurrentPolicy`: the backbone carries its state from the first step (O(1) per step for recurrent
  mixers; attention keeps a growing KV cache);
- `WindowPolicy`: the original Decision Transformer evaluation, re-running the network on the last
  `context` steps at every step (what it saw in training when the context is shorter than an episode).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from apps.rl.model import DecisionTransformer

INFERENCE = ("recurrent", "window")


def normalized_score(returns: np.ndarray, random_return: float, expert_return: float) -> np.ndarray:
    """The D4RL score: 100 * (return - random) / (expert - random), elementwise."""
    return 100.0 * (np.asarray(returns) - random_return) / (expert_return - random_return)


class RecurrentPolicy:
    """Acts with `model.step`, carrying the backbone state from step to step."""

    def __init__(self, model: DecisionTransformer) -> None:
        self.model, self.cache, self.previous = model, None, None

    def act(self, returns: Tensor, states: Tensor, timestep: int) -> Tensor:
        """returns (N, 1), states (N, obs_dim) at step `timestep` -> actions (N, act_dim)."""
        actions, self.cache = self.model.step(returns, states, timestep, self.previous, self.cache)
        self.previous = actions
        return actions


class WindowPolicy:
    """Acts with the full forward pass over the last `context` steps (Decision Transformer evaluation)."""

    def __init__(self, model: DecisionTransformer, context: int) -> None:
        self.model, self.context = model, context
        self.returns, self.states, self.actions = [], [], []

    def act(self, returns: Tensor, states: Tensor, timestep: int) -> Tensor:
        self.returns.append(returns)
        self.states.append(states)
        self.actions.append(torch.zeros(len(states), self.model.act_dim, device=states.device))
        del self.returns[: -self.context], self.states[: -self.context], self.actions[: -self.context]
        window = len(self.states)
        timesteps = torch.arange(timestep - window + 1, timestep + 1, device=states.device).expand(len(states), -1)
        stacked = (torch.stack(values, dim=1) for values in (self.returns, self.states, self.actions))
        actions = self.model(*stacked, timesteps)[:, -1]
        self.actions[-1] = actions
        return actions


@dataclass(frozen=True)
class Rollouts:
    """returns (N,) and lengths (N,) of N episodes; policy_seconds and env_seconds over `steps` batched steps."""

    returns: np.ndarray
    lengths: np.ndarray
    steps: int
    policy_seconds: float
    env_seconds: float


def make_envs(env_id: str, episodes: int, max_episode_steps: int | None) -> list[gym.Env]:
    return [gym.make(env_id, max_episode_steps=max_episode_steps) for _ in range(episodes)]


@torch.no_grad()
def run_episodes(
    model: DecisionTransformer,
    env_id: str,
    target_return: float,
    episodes: int,
    seed: int,
    inference: str = "recurrent",
    context: int = 20,
    max_episode_steps: int | None = None,
) -> Rollouts:
    """`episodes` episodes of `env_id` (seeds seed, seed+1, ...) with the policy conditioned on `target_return`.

    inference: "recurrent" (`RecurrentPolicy`) or "window" (`WindowPolicy` over `context` steps).
    ValueError when the environment's observations or actions do not match the model's.
    """
    if inference not in INFERENCE:
        raise ValueError(f"inference={inference!r} is not one of {INFERENCE}")
    envs = make_envs(env_id, episodes, max_episode_steps)
    try:
        obs_dim = int(np.prod(envs[0].observation_space.shape))
        act_dim = int(np.prod(envs[0].action_space.shape))
        if (obs_dim, act_dim) != (model.obs_dim, model.act_dim):
            raise ValueError(
                f"{env_id} has observations of {obs_dim} and actions of {act_dim} features, but the model was trained on "
                f"{model.obs_dim} and {model.act_dim}: evaluate it in the environment of its data set"
            )
        return play_episodes(model, envs, target_return, seed, inference, context)
    finally:
        for env in envs:
            env.close()


def play_episodes(model: DecisionTransformer, envs: list[gym.Env], target_return: float, seed: int, inference: str, context: int) -> Rollouts:
    """One episode in each environment (reset with seed + its index), the policy batched over all of them."""
    device = model.state_mean.device
    policy = RecurrentPolicy(model) if inference == "recurrent" else WindowPolicy(model, context)
    n = len(envs)
    observations = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    to_go = np.full(n, target_return, dtype=np.float32)
    totals, lengths, done = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    policy_seconds = env_seconds = 0.0
    step = 0
    while not done.all():
        started = time.perf_counter()
        states = torch.as_tensor(observations, device=device)
        actions = policy.act(torch.as_tensor(to_go, device=device)[:, None], states, step).float().cpu().numpy()
        stepped = time.perf_counter()  # .cpu() waited for the device
        for i in np.flatnonzero(~done):
            observation, reward, terminated, truncated, _ = envs[i].step(actions[i])
            observations[i] = observation
            totals[i] += reward
            to_go[i] -= reward
            lengths[i] += 1
            done[i] = terminated or truncated
        policy_seconds += stepped - started
        env_seconds += time.perf_counter() - stepped
        step += 1
    return Rollouts(totals, lengths, step, policy_seconds, env_seconds)
