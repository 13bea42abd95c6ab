"""The `collect` verb: make a D4RL-style data set with stable-baselines3.

    python -m apps.rl collect collect.env=Hopper-v5 collect.sac_steps=100000 collect.transitions=100000

trains Soft Actor-Critic for `sac_steps` environment steps, then writes to the run directory (or
`collect.out_dir`):
    <name>-rollouts.npz   `transitions` steps of the trained, stochastic policy (the "medium" data of D4RL)
    <name>-replay.npz     the whole replay buffer of the training (D4RL's "medium_replay")
    <name>-info.json      returns of the recorded episodes and how the data was made
    <name>-sac/progress.csv   SAC's own training log (episode returns, losses)
with progress bars for both phases. An episode cut by the end of the recording is marked as a timeout.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from tqdm import tqdm

from apps.rl.sources import KEYS

log = logging.getLogger(__name__)


class ProgressBar(BaseCallback):
    """A tqdm bar over the environment steps of `SAC.learn`."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.bar = tqdm(total=total, desc="SAC training", unit="step")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def replay_arrays(agent: SAC) -> dict[str, np.ndarray]:
    """The replay buffer as D4RL arrays (actions back in the environment's units; SB3 stores them in [-1, 1])."""
    buffer = agent.replay_buffer
    if buffer.full:  # `collect` sizes the buffer one larger than the training, so this means a bug
        raise ValueError("the replay buffer wrapped around and lost its oldest transitions")
    rows = buffer.pos
    dones = buffer.dones[:rows, 0].astype(bool)
    timeouts = buffer.timeouts[:rows, 0].astype(bool) & dones
    timeouts[-1] |= not dones[-1]  # training stopped inside an episode
    return {
        "observations": buffer.observations[:rows, 0].astype(np.float32),
        "actions": agent.policy.unscale_action(buffer.actions[:rows, 0]).astype(np.float32),
        "rewards": buffer.rewards[:rows, 0].astype(np.float32),
        "terminals": dones & ~timeouts,
        "timeouts": timeouts,
    }


def record_rollouts(agent: SAC, env_id: str, transitions: int, seed: int, deterministic: bool) -> tuple[dict[str, np.ndarray], list[float]]:
    """`transitions` steps of the agent's policy in fresh episodes; (D4RL arrays, returns of finished episodes)."""
    env = gym.make(env_id)
    arrays: dict[str, list[Any]] = {key: [] for key in KEYS}
    returns, episode_return, episode = [], 0.0, 0
    observation, _ = env.reset(seed=seed)
    for _ in tqdm(range(transitions), desc="recording rollouts", unit="step"):
        action, _ = agent.predict(observation, deterministic=deterministic)
        next_observation, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(KEYS, (observation, action, reward, terminated, truncated)):
            arrays[key].append(value)
        episode_return += float(reward)
        observation = next_observation
        if terminated or truncated:
            returns.append(episode_return)
            episode, episode_return = episode + 1, 0.0
            observation, _ = env.reset(seed=seed + episode)
    env.close()
    data = {key: np.asarray(values) for key, values in arrays.items()}
    data["timeouts"][-1] |= not data["terminals"][-1]  # the recording stopped inside an episode
    return data, returns


def make_dataset(settings: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Train SAC as `settings` say (a `collect` config), write the rollout and replay data sets and their info
    to out_dir; returns {kind: path}. Also how `data=pendulum` makes its data on first use."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    agent = SAC("MlpPolicy", settings["env"], seed=settings["seed"], buffer_size=settings["sac_steps"] + 1,
                learning_starts=settings["learning_starts"], device=settings["device"], verbose=0)
    agent.set_logger(configure(str(out_dir / f"{settings['name']}-sac"), ["csv"]))  # not SB3's default /tmp/SB3-<time>
    agent.learn(settings["sac_steps"], callback=ProgressBar(settings["sac_steps"]))
    rollouts, returns = record_rollouts(agent, settings["env"], settings["transitions"], settings["seed"] + 1,
                                        settings["deterministic"])
    name = settings["name"]
    paths = {"rollouts": out_dir / f"{name}-rollouts.npz", "replay": out_dir / f"{name}-replay.npz",
             "info": out_dir / f"{name}-info.json"}
    np.savez_compressed(paths["rollouts"], **rollouts)
    np.savez_compressed(paths["replay"], **replay_arrays(agent))
    info = {"env": settings["env"], "sac_steps": settings["sac_steps"], "rollout_transitions": settings["transitions"],
            "rollout_episodes_finished": len(returns), "rollout_return_mean": float(np.mean(returns)) if returns else None,
            "deterministic": settings["deterministic"], "seed": settings["seed"],
            "seconds": round(time.perf_counter() - started, 1),
            "generator": "stable-baselines3 SAC (MlpPolicy) through apps.rl.collect"}
    paths["info"].write_text(json.dumps(info, indent=1) + "\n")
    log.info("wrote %s", ", ".join(str(path) for path in paths.values()))
    return paths


def collect(cfg: DictConfig, app: Any) -> dict[str, str]:
    """The verb: `make_dataset(cfg.collect)` into cfg.collect.out_dir or the run directory; returns {kind: path}."""
    out_dir = Path(cfg.collect.out_dir or cfg.paths.output_dir)
    return {kind: str(path) for kind, path in make_dataset(cfg.collect, out_dir).items()}
