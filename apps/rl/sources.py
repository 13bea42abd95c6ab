"""Offline RL data sets from files: D4RL-style `.npz`, D4RL HDF5 and Minari HDF5, as one `Transitions`.

All three become flat arrays, one row per transition, episodes in order; an episode ends where
`terminals` (the environment terminated it) or `timeouts` (a time limit truncated it) is true.
    .npz          keys observations, actions, rewards, terminals, timeouts (what `collect` writes)
    D4RL .hdf5    the same keys as top-level data sets
    Minari .hdf5  groups episode_<i> with observations (T+1 rows, the last is the final observation),
                  actions, rewards, terminations, truncations (T rows)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


@dataclass(frozen=True)
class Transitions:
    """observations (N, obs_dim) float32, actions (N, act_dim) float32, rewards (N,) float32,
    terminals (N,) bool, timeouts (N,) bool."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


def from_arrays(arrays: dict[str, np.ndarray], source: str) -> Transitions:
    """Transitions from the five D4RL arrays; ValueError naming the problem (missing key, lengths, NaNs)."""
    missing = [key for key in KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{source}: missing {missing}; a D4RL-style data set needs the keys {list(KEYS)}")
    lengths = {key: len(arrays[key]) for key in KEYS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{source}: arrays of different lengths {lengths}; every key needs one row per transition")
    if lengths["rewards"] == 0:
        raise ValueError(f"{source}: the data set has no transitions")
    observations = np.asarray(arrays["observations"], dtype=np.float32)
    actions = np.asarray(arrays["actions"], dtype=np.float32)
    observations = observations.reshape(len(observations), -1) if observations.ndim == 1 else observations
    actions = actions.reshape(len(actions), -1) if actions.ndim == 1 else actions
    if observations.ndim != 2 or actions.ndim != 2:
        raise ValueError(
            f"{source}: observations {observations.shape} and actions {actions.shape} must be 2-D (transitions, features)"
        )
    rewards = np.asarray(arrays["rewards"], dtype=np.float32).reshape(-1)
    if len(rewards) != len(observations):
        raise ValueError(f"{source}: rewards must be one number per transition, got shape {np.shape(arrays['rewards'])}")
    for key, values in (("observations", observations), ("actions", actions), ("rewards", rewards)):
        if not np.isfinite(values).all():
            raise ValueError(f"{source}: {key} has NaN or infinite values at rows {np.flatnonzero(~np.isfinite(values).reshape(len(values), -1).all(1))[:5].tolist()}")
    return Transitions(
        observations, actions, rewards,
        np.asarray(arrays["terminals"]).astype(bool).reshape(-1),
        np.asarray(arrays["timeouts"]).astype(bool).reshape(-1),
    )


def load_npz(path: Path) -> Transitions:
    with np.load(path) as data:
        return from_arrays({key: data[key] for key in data.files}, str(path))


def load_hdf5(path: Path) -> Transitions:
    """A D4RL HDF5 file (top-level KEYS) or a Minari one (episode_<i> groups)."""
    import h5py

    with h5py.File(path, "r") as file:
        episodes = sorted((key for key in file if key.startswith("episode_")), key=lambda key: int(key.split("_")[1]))
        if not episodes:
            return from_arrays({key: file[key][()] for key in KEYS if key in file}, str(path))
        return from_arrays(minari_arrays([file[key] for key in episodes], str(path)), str(path))


def minari_arrays(episodes: list, source: str) -> dict[str, np.ndarray]:
    """The D4RL arrays of Minari episode groups (each: observations T+1 rows, the rest T rows)."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in KEYS}
    for episode in episodes:
        needed = ("observations", "actions", "rewards", "terminations", "truncations")
        missing = [key for key in needed if key not in episode]
        if missing:
            raise ValueError(f"{source}: Minari group {episode.name} lacks {missing}")
        if not hasattr(episode["observations"], "shape"):
            raise ValueError(f"{source}: {episode.name}/observations is a dict observation space; only flat Box observations are supported")
        steps = len(episode["actions"])
        observations = episode["observations"][()]
        if len(observations) != steps + 1:
            raise ValueError(
                f"{source}: {episode.name} has {len(observations)} observations for {steps} actions; Minari stores T+1"
            )
        parts["observations"].append(observations[:-1])
        parts["actions"].append(episode["actions"][()])
        parts["rewards"].append(episode["rewards"][()])
        parts["terminals"].append(episode["terminations"][()])
        truncations = episode["truncations"][()].astype(bool)
        truncations[-1] |= not bool(episode["terminations"][-1])  # the episode ends here either way
        parts["timeouts"].append(truncations)
    return {key: np.concatenate(values) for key, values in parts.items()}


LOADERS = {".npz": load_npz, ".hdf5": load_hdf5, ".h5": load_hdf5}


def load_transitions(path: str | Path) -> Transitions:
    """Transitions from a .npz, .hdf5 or .h5 file; FileNotFoundError / ValueError saying what to do."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"no data set at {path}; set data.path=FILE (.npz, D4RL or Minari .hdf5) or make one with "
            "`python -m apps.rl collect`"
        )
    if path.suffix not in LOADERS:
        raise ValueError(f"{path}: unknown data set format {path.suffix!r}; use one of {sorted(LOADERS)}")
    return LOADERS[path.suffix](path)
