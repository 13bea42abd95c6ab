"""Data sets: loading and validating files, episodes, returns-to-go and training windows."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from apps.rl.data import OfflineRLDataModule, WindowDataset, episode_bounds, returns_to_go, split_episodes
from apps.rl.sources import KEYS, from_arrays, load_transitions

PENDULUM = {"id": "Pendulum-v1", "random_return": -1230.0, "expert_return": -150.0, "return_scale": 100.0,
            "max_episode_steps": 200}


def arrays(lengths: list[int], obs_dim: int = 3, act_dim: int = 1, truncated_tail: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Episodes of the given lengths (the odd ones end by termination, the even ones by timeout), then
    `truncated_tail` transitions without an end flag."""
    rng = np.random.default_rng(seed)
    n = sum(lengths) + truncated_tail
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    for i, end in enumerate(np.cumsum(lengths) - 1):
        (terminals if i % 2 else timeouts)[end] = True
    return {"observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "terminals": terminals, "timeouts": timeouts}


def test_episodes_end_at_terminals_and_timeouts_and_keep_a_truncated_tail():
    data = from_arrays(arrays([3, 5, 2], truncated_tail=4), "test")
    assert episode_bounds(data) == [(0, 3), (3, 8), (8, 10), (10, 14)]
    episodes = split_episodes(data)
    assert [len(ep) for ep in episodes] == [3, 5, 2, 4]
    np.testing.assert_array_equal(episodes[1].observations, data.observations[3:8])
    np.testing.assert_array_equal(np.concatenate([ep.rewards for ep in episodes]), data.rewards)  # nothing dropped


def test_returns_to_go_sum_the_rewards_that_follow():
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0, -1.0], np.float32)), [5.0, 4.0, 2.0, -1.0])
    episode = split_episodes(from_arrays(arrays([6]), "test"))[0]
    assert episode.returns_to_go[0] == pytest.approx(episode.rewards.sum(), rel=1e-6)


def test_windows_stay_inside_one_episode_and_pad_at_the_end():
    episodes = split_episodes(from_arrays(arrays([3, 7]), "test"))
    windows = WindowDataset(episodes, context=5)
    assert windows.starts == [(0, 0), (1, 0), (1, 1), (1, 2)]
    returns, states, actions, timesteps, mask = windows[0]  # the 3-step episode, padded to 5
    assert mask.tolist() == [True, True, True, False, False] and timesteps.tolist() == [0, 1, 2, 0, 0]
    np.testing.assert_array_equal(states[:3].numpy(), episodes[0].observations)
    assert torch.all(states[3:] == 0) and returns.shape == (5, 1)
    returns, states, actions, timesteps, mask = windows[3]
    assert mask.all() and timesteps.tolist() == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(actions.numpy(), episodes[1].actions[2:7])
    np.testing.assert_allclose(returns[:, 0].numpy(), episodes[1].returns_to_go[2:7])
    # each episode is drawn in proportion to its length: weights 3 and 3 x 7/3
    np.testing.assert_allclose(windows.weights, [3, 7 / 3, 7 / 3, 7 / 3])


@pytest.mark.parametrize("layout", ["d4rl", "minari"])
def test_hdf5_layouts_load_like_the_npz(tmp_path, layout):
    source = arrays([4, 3], obs_dim=3, act_dim=1)
    npz = tmp_path / "data.npz"
    np.savez(npz, **source)
    path = tmp_path / "data.hdf5"
    with h5py.File(path, "w") as file:
        if layout == "d4rl":
            for key in KEYS:
                file[key] = source[key]
        else:
            for i, (a, b) in enumerate(episode_bounds(from_arrays(source, "test"))):
                group = file.create_group(f"episode_{i}")
                final = np.zeros((1, 3), np.float32)  # Minari keeps the observation after the last step
                group["observations"] = np.concatenate([source["observations"][a:b], final])
                for key, name in (("actions", "actions"), ("rewards", "rewards"), ("terminals", "terminations"), ("timeouts", "truncations")):
                    group[name] = source[key][a:b]
    expected, loaded = load_transitions(npz), load_transitions(path)
    for key in KEYS:
        np.testing.assert_array_equal(getattr(loaded, key), getattr(expected, key), err_msg=key)


def test_bad_files_are_named(tmp_path):
    good = arrays([4, 3])
    with pytest.raises(ValueError, match=r"missing \['timeouts'\]"):
        from_arrays({k: v for k, v in good.items() if k != "timeouts"}, "x.npz")
    with pytest.raises(ValueError, match="arrays of different lengths"):
        from_arrays({**good, "rewards": good["rewards"][:-1]}, "x.npz")
    broken = good["observations"].copy()
    broken[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"observations has NaN or infinite values at rows \[2\]"):
        from_arrays({**good, "observations": broken}, "x.npz")
    with pytest.raises(FileNotFoundError, match="set data.path"):
        load_transitions(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="unknown data set format '.csv'"):
        (tmp_path / "data.csv").write_text("1")
        load_transitions(tmp_path / "data.csv")


def datamodule(path: Path, env: dict = PENDULUM, **kwargs) -> OfflineRLDataModule:
    return OfflineRLDataModule(name="test", path=str(path), env=env, targets=[-200.0], **kwargs)


def test_datamodule_statistics_batches_and_whole_episode_context(tmp_path):
    np.savez(tmp_path / "data.npz", **arrays([30, 50, 20], obs_dim=3, act_dim=1))
    dm = datamodule(tmp_path / "data.npz", context=None, batch_size=4, batches_per_epoch=3)
    dm.setup()
    assert dm.context == 50 and len(dm.episodes) == 3 and (dm.obs_dim, dm.act_dim) == (3, 1)
    np.testing.assert_allclose(dm.state_mean, np.concatenate([ep.observations for ep in dm.episodes]).mean(0), rtol=1e-5)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and batches[0][1].shape == (4, 50, 3)
    assert all(bool((timesteps[:, 0] == 0).all()) for _, _, _, timesteps, _ in batches)  # whole episodes from step 0
    assert next(iter(dm.val_dataloader())).tolist() == [-200.0]


def test_datamodule_rejects_data_of_another_environment(tmp_path):
    np.savez(tmp_path / "data.npz", **arrays([10], obs_dim=11, act_dim=3))
    with pytest.raises(ValueError, match=r"observations have 11 and actions 3 features, but Pendulum-v1 has 3 and 1"):
        datamodule(tmp_path / "data.npz").setup()
    np.savez(tmp_path / "wide.npz", **{**arrays([10]), "actions": np.full((10, 1), 3.0, np.float32)})
    with pytest.raises(ValueError, match="outside Pendulum-v1's bounds"):
        datamodule(tmp_path / "wide.npz").setup()
    with pytest.raises(ValueError, match="data.targets is empty"):
        OfflineRLDataModule(name="test", path="x.npz", env=PENDULUM, targets=[])
