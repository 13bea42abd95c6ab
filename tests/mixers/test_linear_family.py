"""linear_attention, retnet, gla and mamba2: the mixer contract per configuration, and their spec identities."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import core
from core.state import RecurrentState
from tests.mixers.helpers import assert_close, assert_same_results, assert_states_close, outputs_states_and_gradients, randn, run_in_pieces

D_MODEL = 32
CONFIGS = {
    "linear_attention-identity": ("linear_attention", {"head_dim": 16, "feature_map": "identity", "normalize": False}),
    "linear_attention-elu1": ("linear_attention", {"head_dim": 16, "feature_map": "elu1"}),
    "linear_attention-taylor": ("linear_attention", {"head_dim": 16, "feature_map": "taylor", "feature_dim": 4}),
    "retnet-xpos": ("retnet", {"head_dim": 16, "xpos": True}),
    "retnet-no-xpos": ("retnet", {"head_dim": 16, "xpos": False}),
    "gla": ("gla", {"head_dim": 16}),
    "mamba2": ("mamba2", {"d_state": 8, "head_dim": 16, "n_groups": 2}),
}
NAMES = ["linear_attention", "retnet", "gla", "mamba2"]


def make(config: str, dtype: torch.dtype = torch.float64, seed: int = 0, **extra: object) -> core.Mixer:
    name, options = CONFIGS[config]
    torch.manual_seed(seed)
    return core.build_mixer(name, D_MODEL, **{**options, **extra}).to(dtype)


@pytest.mark.parametrize("config", CONFIGS)
def test_state_passing_at_random_splits_equals_one_call(config: str) -> None:
    mixer = make(config)
    x = randn(2, 80, D_MODEL)
    y_full, state_full = mixer(x)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        cuts = sorted(torch.randperm(79, generator=g)[:3].add(1).tolist())
        y, state = run_in_pieces(mixer, x, cuts)
        assert_close(y, y_full)
        assert_states_close(state, state_full)


@pytest.mark.parametrize("config", CONFIGS)
def test_token_by_token_decoding_equals_full_forward(config: str) -> None:
    mixer = make(config)
    x = randn(2, 20, D_MODEL)
    y_full, state_full = mixer(x)
    y, state = run_in_pieces(mixer, x, list(range(1, 20)))
    assert_close(y, y_full)
    assert_states_close(state, state_full)


@pytest.mark.parametrize("config", CONFIGS)
def test_chunk_equals_naive_outputs_states_and_gradients(config: str) -> None:
    x = randn(2, 150, D_MODEL)
    assert_same_results(*[outputs_states_and_gradients(make(config, impl=impl), x) for impl in ("naive", "chunk")])


@pytest.mark.parametrize("config", CONFIGS)
def test_causality(config: str) -> None:
    mixer = make(config)
    x = randn(1, 70, D_MODEL)
    x2 = x.clone()
    x2[:, 33:] = randn(1, 37, D_MODEL, seed=9)
    y, _ = mixer(x)
    y2, _ = mixer(x2)
    assert_close(y[:, :33], y2[:, :33])
    assert not torch.allclose(y[:, 33:], y2[:, 33:])


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_mask_equals_unpadded_sequences(config: str, side: str) -> None:
    mixer = make(config)
    lengths = [37, 20, 2]
    T = max(lengths)
    seqs = [randn(1, n, D_MODEL, seed=10 + i) for i, n in enumerate(lengths)]
    x = randn(len(lengths), T, D_MODEL, seed=99)  # garbage in the padded slots
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        where = slice(T - n, T) if side == "left" else slice(0, n)
        x[i, where] = s[0]
        mask[i, where] = True
    y, state = mixer(x, mask=mask)
    assert torch.isfinite(y).all()
    for i, s in enumerate(seqs):
        ref, ref_state = mixer(s)
        assert_close(y[i][mask[i]], ref[0])
        assert_states_close(state, ref_state, row=i)


@pytest.mark.parametrize("config", CONFIGS)
def test_bf16_runs_without_nan_with_float32_state(config: str) -> None:
    mixer = make(config, torch.bfloat16)
    x = randn(2, 65, D_MODEL, dtype=torch.bfloat16).requires_grad_()
    y, state = mixer(x)
    y2, state = mixer(x[:, :3], state)
    (y.float().square().mean() + y2.float().square().mean()).backward()
    assert y.dtype == torch.bfloat16
    assert state.recurrent.dtype == torch.float32
    assert torch.isfinite(y).all() and torch.isfinite(y2).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())


@pytest.mark.parametrize("config", CONFIGS)
def test_every_parameter_gets_a_finite_gradient(config: str) -> None:
    mixer = make(config)
    y, _ = mixer(randn(2, 30, D_MODEL))
    y.square().mean().backward()
    for pname, p in mixer.named_parameters():
        assert p.grad is not None, f"{config}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{config}: parameter {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{config}: parameter {pname} has an all-zero gradient"


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("T", [1, 63, 64, 65, 1000])
def test_awkward_lengths(config: str, T: int) -> None:
    mixer = make(config)
    x = randn(1, T, D_MODEL)
    y, _ = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    if T == 1000:
        assert_close(run_in_pieces(mixer, x, [1, 333, 777])[0], y, 1e-8)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d_model", [64, 96])
def test_default_options_scale_with_d_model(name: str, d_model: int) -> None:
    torch.manual_seed(0)
    mixer = core.build_mixer(name, d_model).double()
    x = randn(2, 21, d_model)
    y, _ = mixer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert_close(run_in_pieces(mixer, x, [8])[0], y)


@pytest.mark.parametrize("config", CONFIGS)
def test_wrong_state_type_is_rejected(config: str) -> None:
    mixer = make(config)
    with pytest.raises(TypeError, match="state must be the"):
        mixer(randn(1, 3, D_MODEL), state=torch.zeros(1))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("linear_attention", {"feature_map": "cosine"}, "unknown feature_map"),
        ("linear_attention", {"feature_map": "identity", "normalize": True}, "positive feature map"),
        ("linear_attention", {"head_dim": 48}, "not divisible by head_dim"),
        ("retnet", {"head_dim": 24}, "not divisible by head_dim"),
        ("retnet", {"head_dim": 1, "expand_k": 1.0}, "even key width"),
        ("retnet", {"expand_v": 0.3}, "whole number"),
        ("gla", {"head_dim": 0}, "positive int"),
        ("gla", {"gate_clamp_min": 1.0}, "must be < 0"),
        ("mamba2", {"head_dim": 48}, "not divisible by head_dim"),
        ("mamba2", {"head_dim": 16, "n_groups": 3}, "must divide num_heads"),
        ("mamba2", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min <= dt_max"),
    ],
)
def test_bad_options_raise_clear_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        core.build_mixer(name, 64, **options)


def test_retnet_decays_follow_the_paper() -> None:
    mixer = core.build_mixer("retnet", 128, head_dim=16)
    h = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(mixer.decays(), 1 - 2.0 ** (-5 - h), rtol=1e-15, atol=0)


def test_retnet_position_counts_valid_tokens() -> None:
    mixer = make("retnet-xpos")
    mask = torch.tensor([[True] * 5, [False, True, False, True, True]])
    _, state = mixer(randn(2, 5, D_MODEL), mask=mask)
    assert state.position.tolist() == [5, 3]


def test_taylor_feature_map_expands_exp() -> None:
    from core.mixers.linear_attention import taylor

    q, k = randn(7, 6), randn(7, 6, seed=2)
    s = (q * k).sum(-1) / math.sqrt(6)
    assert_close((taylor(q) * taylor(k)).sum(-1), 1 + s + s**2 / 2)


def test_normalised_linear_attention_equals_quadratic_form() -> None:
    mixer = make("linear_attention-elu1")
    x = randn(2, 25, D_MODEL)
    q, k, v = mixer.proj(x)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril()
    o = torch.einsum("bhts,bshv->bthv", scores, v) / (scores.sum(-1).transpose(1, 2).unsqueeze(-1) + mixer.eps)
    assert_close(mixer(x)[0], mixer.out_proj(o.flatten(-2)))


def mamba2_token_loop(m: core.Mixer, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec section 5, one token at a time: S_t = exp(dt A) S_{t-1} + B (dt x)^T, y = S^T C + D x."""
    Bsz, T, _ = u.shape
    H, G, N, P = m.num_heads, m.n_groups, m.d_state, m.head_dim
    z, xbc, dt = m.in_proj(u).split([m.d_inner, m.conv_dim, H], dim=-1)
    width = m.conv.kernel_size - 1
    xbc = F.conv1d(F.pad(xbc.transpose(1, 2), (width, 0)), m.conv.conv.weight, m.conv.conv.bias, groups=m.conv_dim)
    xs, b, c = F.silu(xbc.transpose(1, 2)).split([m.d_inner, G * N, G * N], dim=-1)
    xs, b, c = xs.view(Bsz, T, H, P), b.view(Bsz, T, G, N), c.view(Bsz, T, G, N)
    dt = F.softplus(dt + m.dt_bias)
    A = -torch.exp(m.A_log)
    group = torch.arange(H) // (H // G)
    S = torch.zeros(Bsz, H, N, P, dtype=u.dtype)
    ys = []
    for t in range(T):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        S = decay * S + b[:, t, group, :, None] * (dt[:, t, :, None] * xs[:, t])[:, :, None, :]
        ys.append(torch.einsum("bhnp,bhn->bhp", S, c[:, t, group]) + m.D[:, None] * xs[:, t])
    y = torch.stack(ys, dim=1).flatten(-2) * F.silu(z)
    y = y.unflatten(-1, (G, -1))
    y = (y * torch.rsqrt(y.square().mean(-1, keepdim=True) + m.norm.eps)).flatten(-2) * m.norm.weight
    return m.out_proj(y), S


@pytest.mark.parametrize("n_groups", [1, 2])
def test_mamba2_equals_token_loop_ssd(n_groups: int) -> None:
    mixer = make("mamba2", n_groups=n_groups)
    x = randn(2, 40, D_MODEL)
    y, state = mixer(x)
    y_ref, S_ref = mamba2_token_loop(mixer, x)
    assert isinstance(state, RecurrentState)
    assert_close(y, y_ref, 1e-6)  # GatedRMSNorm computes in float32 even for float64 inputs
    assert_close(state.recurrent, S_ref)
