"""mamba, s4d, lru, rglru, mingru, hgrn: parallel against sequential forms, per-mixer properties, the griffin preset."""
from __future__ import annotations


import pytest
import torch

import core
from core import presets
from core.mixers.rglru import MAX_SQRT_GRADIENT, sqrt_bounded_derivative
from tests.mixers.helpers import assert_same_results, assert_states_close, outputs_states_and_gradients, randn, run_in_pieces

D_MODEL = 32
F64 = torch.float64
CONFIGS = {
    "mamba": ("mamba", {"d_state": 8}),
    "s4d-recurrent": ("s4d", {"d_state": 16, "mode": "recurrent"}),
    "s4d-inv": ("s4d", {"d_state": 16, "mode": "recurrent", "init": "inv"}),
    "lru": ("lru", {"d_state": 24, "r_min": 0.5, "max_phase": 3.14}),
    "rglru": ("rglru", {"lru_width": 48, "head_dim": 16}),
    "mingru": ("mingru", {"expand": 1.5}),
    "hgrn": ("hgrn", {"lower_bound": 0.0}),
    "hgrn-conv": ("hgrn", {"use_short_conv": True, "lower_bound": 0.3}),
}


def make(config: str, dtype: torch.dtype = F64, seed: int = 0, **extra: object) -> core.Mixer:
    name, options = CONFIGS[config]
    torch.manual_seed(seed)
    return core.build_mixer(name, D_MODEL, **{**options, **extra}).to(dtype)


@pytest.mark.parametrize("config", CONFIGS)
def test_parallel_equals_naive_outputs_states_and_parameter_gradients(config: str) -> None:
    x = randn(2, 150, D_MODEL)
    results = [outputs_states_and_gradients(make(config, impl=impl), x) for impl in ("naive", "chunk")]
    assert_same_results(*results)


def test_s4d_convolution_equals_recurrence_with_state_and_padding() -> None:
    x = randn(3, 90, D_MODEL)
    mask = torch.ones(3, 90, dtype=torch.bool)
    mask[1, :25], mask[2, 60:] = False, False
    conv, rec = make("s4d-recurrent", mode="conv"), make("s4d-recurrent")
    assert_same_results(outputs_states_and_gradients(conv, x), outputs_states_and_gradients(rec, x))
    _, state = rec(randn(3, 17, D_MODEL, seed=2))  # a state to start from
    y_conv, s_conv = conv(x, state, mask)
    y_rec, s_rec = rec(x, state, mask)
    torch.testing.assert_close(y_conv[mask], y_rec[mask])
    assert_states_close(s_conv, s_rec)


@pytest.mark.parametrize("config", CONFIGS)
def test_state_passing_and_padding_give_the_same_results(config: str) -> None:
    mixer = make(config)
    x = randn(2, 80, D_MODEL)
    y_full, state_full = mixer(x)
    y, state = run_in_pieces(mixer, x, [1, 30, 31, 64])
    torch.testing.assert_close(y, y_full)
    assert_states_close(state, state_full)
    mask = torch.ones(2, 80, dtype=torch.bool)
    mask[0, :13], mask[1, 50:] = False, False  # left and right padding
    y_masked, state_masked = mixer(x, mask=mask)
    for i in range(2):
        ref, ref_state = mixer(x[i : i + 1, mask[i]])
        torch.testing.assert_close(y_masked[i, mask[i]], ref[0])
        assert_states_close(state_masked, ref_state, row=i)


@pytest.mark.parametrize("config", CONFIGS)
def test_bf16_runs_with_a_32_bit_state(config: str) -> None:
    mixer = make(config, torch.bfloat16)
    x = randn(2, 65, D_MODEL, dtype=torch.bfloat16).requires_grad_()
    y, state = mixer(x)
    y2, state = mixer(x[:, :3], state)
    (y.float().square().mean() + y2.float().square().mean()).backward()
    assert y.dtype == torch.bfloat16
    assert state.recurrent.dtype in (torch.float32, torch.complex64)
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_lru_starts_inside_the_unit_ring_with_normalised_inputs() -> None:
    mixer = make("lru")
    modulus = (-mixer.nu_log.exp()).exp()
    assert ((modulus >= 0.5) & (modulus < 1)).all()
    torch.testing.assert_close(mixer.gamma_log.exp(), (1 - modulus**2).sqrt())


def test_rglru_first_token_is_not_normalised() -> None:
    mixer = make("rglru")
    with torch.no_grad():
        mixer.a_param.fill_(-30.0)  # a ~ 1: later inputs are scaled by sqrt(1 - a^2) ~ 1e-6
    x = randn(1, 5, D_MODEL)
    _, state = mixer(x[:, :1])
    assert state.recurrent.abs().max() > 1e-2, "the first token enters unscaled"
    _, state2 = mixer(x[:, 1:], state)
    torch.testing.assert_close(state2.recurrent, state.recurrent, rtol=1e-4, atol=1e-4)


def test_rglru_sqrt_gradient_is_bounded() -> None:
    x = torch.tensor([0.0, 1e-12, 0.25], dtype=F64, requires_grad=True)
    sqrt_bounded_derivative(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([MAX_SQRT_GRADIENT, MAX_SQRT_GRADIENT, 1.0], dtype=F64))


def test_griffin_preset_builds_a_streaming_backbone() -> None:
    layers = presets.griffin(window=8)
    assert [layer["name"] for layer in layers] == ["rglru", "rglru", "attention"]
    torch.manual_seed(0)
    model = core.Backbone(D_MODEL, 6, layers=layers, mixer_options={"attention": {"num_heads": 2}}).double().eval()
    assert model.layer_names == ["rglru", "rglru", "attention"] * 2 and model.causal
    assert model.blocks[2].mixer.window == 8 and model.blocks[2].mixer.num_kv_heads == 1
    x = randn(2, 40, D_MODEL)
    y, _ = model(x)
    y1, state = model(x[:, :17])
    y2, state = model(x[:, 17:18], state)
    y3, _ = model(x[:, 18:], state)
    torch.testing.assert_close(torch.cat([y1, y2, y3], dim=1), y)
    with pytest.raises(ValueError, match="window must be a positive int"):
        presets.griffin(window=0)


def test_hgrn_preset_raises_the_lower_bound_with_depth() -> None:
    model = core.Backbone(D_MODEL, 4, layers=presets.hgrn(4))
    assert [block.mixer.lower_bound for block in model.blocks] == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mamba", {"d_state": 0}, "d_state must be a positive int"),
        ("mamba", {"expand": 0.01}, "positive whole number"),
        ("s4d", {"d_state": 15}, "d_state must be even"),
        ("s4d", {"mode": "fft"}, "mode must be one of"),
        ("lru", {"r_min": 0.9, "r_max": 0.5}, "r_min < r_max"),
        ("rglru", {"head_dim": 5}, "not divisible by head_dim"),
        ("hgrn", {"lower_bound": 1.0}, r"lower_bound must be in \[0, 1\)"),
    ],
)
def test_bad_options_raise_clear_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        core.build_mixer(name, D_MODEL, **options)


@pytest.mark.parametrize("name", ["mamba", "s4d", "lru", "rglru", "mingru", "hgrn"])
def test_a_foreign_state_is_rejected(name: str) -> None:
    with pytest.raises(TypeError, match="state must be the RecurrentState"):
        core.build_mixer(name, D_MODEL)(randn(1, 3, D_MODEL, dtype=torch.float32), state=(torch.zeros(1),))
