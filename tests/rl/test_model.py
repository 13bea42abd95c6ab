"""The Decision Transformer: causality, recurrent stepping against the full context, rollouts, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.rl.model import DecisionTransformer
from apps.rl.rollout import WindowPolicy, normalized_score, run_episodes

OBS, ACT, T, B = 3, 1, 9, 2


def build(mixer: str = "attention", return_conditioned: bool = True, max_timestep: int = 200) -> DecisionTransformer:
    torch.manual_seed(0)
    model = DecisionTransformer(
        OBS, ACT, state_mean=np.full(OBS, 0.5), state_std=np.full(OBS, 2.0), action_high=np.full(ACT, 2.0),
        return_scale=100.0, max_timestep=max_timestep, mixer={"name": mixer, "options": {}}, layers=mixer,
        d_model=32, depth=2, mlp_expand=2.0, dropout=0.0, return_conditioned=return_conditioned,
    )
    return model.double().eval()


def episode(seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    returns = torch.randn(B, T, 1, generator=generator, dtype=torch.float64) * 100
    states = torch.randn(B, T, OBS, generator=generator, dtype=torch.float64)
    actions = torch.rand(B, T, ACT, generator=generator, dtype=torch.float64) * 4 - 2
    return returns, states, actions, torch.arange(T).expand(B, T)


@pytest.mark.parametrize("mixer", ["attention", "mamba2", "gated_deltanet"])
@pytest.mark.parametrize("return_conditioned", [True, False])
@torch.no_grad()
def test_stepping_with_state_gives_the_actions_of_the_whole_context(mixer, return_conditioned):
    """Recurrent mixers carry their state and attention its KV cache, one environment step per call."""
    model = build(mixer, return_conditioned)
    returns, states, actions, timesteps = episode()
    full = model(returns, states, actions, timesteps)
    cache, stepped = None, []
    for t in range(T):
        previous = actions[:, t - 1] if t else None
        action, cache = model.step(returns[:, t], states[:, t], t, previous, cache)
        stepped.append(action)
    torch.testing.assert_close(torch.stack(stepped, dim=1), full, rtol=1e-6, atol=1e-8)
    assert full.abs().max() <= 2.0  # tanh head scaled to the action bounds


@torch.no_grad()
def test_an_action_depends_on_the_past_only():
    model = build()
    returns, states, actions, timesteps = episode()
    changed = actions.clone()
    changed[:, 4:] += 1.0
    states_changed = states.clone()
    states_changed[:, 5:] += 1.0
    before = model(returns, states, actions, timesteps)
    for after in (model(returns, states, changed, timesteps), model(returns, states_changed, actions, timesteps)):
        torch.testing.assert_close(after[:, :5], before[:, :5])  # a_t is predicted from s_t before a_t is seen
        assert not torch.allclose(after[:, 5:], before[:, 5:])


@torch.no_grad()
def test_window_policy_runs_the_network_on_the_last_context_steps():
    model = build()
    returns, states, actions, timesteps = episode()
    context = 4
    policy, taken = WindowPolicy(model, context), []
    for t in range(T):
        taken.append(policy.act(returns[:, t], states[:, t], t))
    taken = torch.stack(taken, dim=1)
    for t in range(T):  # the reference: the forward pass on the window ending at t, fed the actions taken
        start = max(0, t - context + 1)
        expected = model(returns[:, start:t + 1], states[:, start:t + 1], taken[:, start:t + 1], timesteps[:, start:t + 1])
        torch.testing.assert_close(taken[:, t], expected[:, -1])


def test_rollouts_in_a_real_environment_and_their_score():
    model = build(max_timestep=200).float()
    for inference in ("recurrent", "window"):
        done = run_episodes(model, "Pendulum-v1", target_return=-200.0, episodes=3, seed=0, inference=inference,
                            context=5, max_episode_steps=30)
        assert done.lengths.tolist() == [30, 30, 30] and done.steps == 30 and done.returns.shape == (3,)
        assert done.policy_seconds > 0 and np.all(done.returns < 0)
    np.testing.assert_allclose(normalized_score(np.array([-20.272305, 3234.3]), -20.272305, 3234.3), [0.0, 100.0])


def test_bad_inputs_are_named():
    model = build()
    returns, states, actions, timesteps = episode()
    with pytest.raises(ValueError, match=r"states must be \(batch, time, 3\).*another environment"):
        model(returns, states[..., :2], actions, timesteps)
    with pytest.raises(ValueError, match=r"actions must be \(batch, time, 1\)"):
        model(returns, states, actions[:, :3], timesteps)
    with pytest.raises(ValueError, match="pass previous_actions and cache together"):
        model.step(returns[:, 0], states[:, 0], 1, actions[:, 0], None)
    with pytest.raises(ValueError, match=r"Hopper-v5 has observations of 11 and actions of 3 features, but the model was trained on 3 and 1"):
        run_episodes(model.float(), "Hopper-v5", 100.0, episodes=1, seed=0)
    with pytest.raises(ValueError, match="inference='beam' is not one of"):
        run_episodes(model.float(), "Pendulum-v1", 100.0, episodes=1, seed=0, inference="beam")
    with pytest.raises(ValueError, match="needs causal mixers"):
        DecisionTransformer(OBS, ACT, np.zeros(OBS), np.ones(OBS), np.ones(ACT), 1.0, 10,
                            {"name": "attention", "options": {"causal": False}}, "attention", d_model=32, depth=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mixer", ["attention", "mamba2", "gated_deltanet"])
@torch.no_grad()
def test_stepping_on_gpu_matches_the_parallel_form(mixer):
    """On CUDA the full pass takes the fast kernels and stepping the recurrent path: they must agree."""
    model = build(mixer).float().cuda()
    returns, states, actions, timesteps = (x.cuda() for x in episode())
    returns, states, actions = returns.float(), states.float(), actions.float()
    full = model(returns, states, actions, timesteps)
    cache, stepped = None, []
    for t in range(T):
        action, cache = model.step(returns[:, t], states[:, t], t, actions[:, t - 1] if t else None, cache)
        stepped.append(action)
    torch.testing.assert_close(torch.stack(stepped, dim=1), full, rtol=1e-3, atol=1e-3)
