"""fox: the Pro block against a literal float64 reference, naive == chunk, option variants, init and errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import core
from core.mixers.fox import FoXState, ForgettingTransformer
from tests.mixers.helpers import assert_close, assert_same_results, outputs_states_and_gradients, randn, run_in_pieces

D_MODEL = 32
CONFIGS = {
    "pro": dict(head_dim=8),
    "plain": dict(head_dim=16, output_gate=False, output_norm=False, qk_norm=False, kv_shift=False),
    "conv": dict(head_dim=8, short_conv=True, conv_size=3),
    "zero_bias": dict(head_dim=8, decay_time_min=None, decay_time_max=None),
}


def make(dtype: torch.dtype = torch.float64, seed: int = 0, **options) -> ForgettingTransformer:
    torch.manual_seed(seed)
    mixer = ForgettingTransformer(D_MODEL, **options).to(dtype).eval()
    for name, p in mixer.named_parameters():  # move the norm gains off 1 so that they are tested
        if "norm" in name:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    return mixer


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-head RMSNorm: x (T, H, D), weight (H * D,)."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight.view(x.shape[1:])


def reference(mixer: ForgettingTransformer, x: torch.Tensor) -> torch.Tensor:
    """The FoX Pro layer (spec 4.2) for one sequence x (T, d_model), token by token where the spec is."""
    T, H, K = x.shape[0], mixer.num_heads, mixer.head_dim
    q, k, v, *gate = (t.view(T, H, K) for t in mixer.proj.linear(x).split(H * K, dim=-1))
    if mixer.conv is not None:
        qkv = torch.cat([q, k, v], dim=-1).reshape(T, 3 * H * K)
        w = mixer.conv.conv.weight  # [C, 1, width]
        qkv = F.conv1d(F.pad(qkv.t(), (w.shape[-1] - 1, 0)), w, groups=qkv.shape[1]).t()
        q, k, v = qkv.view(T, H, 3 * K).split(K, dim=-1)
    if mixer.kv_shift:
        a = torch.sigmoid(mixer.shift_proj(x)).view(T, 2, H, 1)
        k_prev, v_prev = torch.zeros_like(k[0]), torch.zeros_like(v[0])
        shifted_k, shifted_v = [], []
        for t in range(T):
            shifted_k.append(a[t, 0] * k_prev + (1 - a[t, 0]) * k[t])
            shifted_v.append(a[t, 1] * v_prev + (1 - a[t, 1]) * v[t])
            k_prev, v_prev = k[t], v[t]
        k, v = torch.stack(shifted_k), torch.stack(shifted_v)
    eps = mixer.q_norm.eps if mixer.qk_norm else 0.0
    if mixer.qk_norm:
        q, k = rms_norm(q, mixer.q_norm.weight, eps), rms_norm(k, mixer.k_norm.weight, eps)
    log_f = F.logsigmoid(mixer.forget_proj(x))  # [T, H]
    D = torch.full((H, T, T), -math.inf, dtype=x.dtype)
    for i in range(T):
        for j in range(i + 1):
            D[:, i, j] = log_f[j + 1 : i + 1].sum(0)
    logits = torch.einsum("ihk,jhk->hij", q, k) / math.sqrt(K) + D
    o = torch.einsum("hij,jhk->ihk", logits.softmax(-1), v)
    if mixer.output_norm:
        o = rms_norm(o, mixer.o_norm.weight, mixer.o_norm.eps)
    if mixer.output_gate:
        o = o * torch.sigmoid(gate[0])
    return mixer.out_proj(o.reshape(T, H * K))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(config: str) -> None:
    mixer = make(**CONFIGS[config])
    x = randn(2, 37, D_MODEL)
    y, state = mixer(x)
    assert isinstance(state, FoXState) and state.cache.keys.shape == (2, 37, mixer.num_heads, mixer.head_dim)
    for b in range(2):
        assert_close(y[b], reference(mixer, x[b]))


@pytest.mark.parametrize("config", ["pro", "conv"])
def test_chunk_and_naive_give_the_same_outputs_states_and_gradients(config: str) -> None:
    x = randn(2, 70, D_MODEL)
    naive, chunk = make(impl="naive", **CONFIGS[config]), make(impl="chunk", **CONFIGS[config])
    assert_same_results(outputs_states_and_gradients(chunk, x), outputs_states_and_gradients(naive, x))


@pytest.mark.parametrize("config", ["plain", "conv"])
def test_variants_keep_the_state_and_padding_contract(config: str) -> None:
    """The contract tests run the defaults; the option variants carry other states (conv tail, no shift)."""
    mixer = make(**CONFIGS[config])
    x = randn(2, 50, D_MODEL)
    y_full, _ = mixer(x)
    assert_close(run_in_pieces(mixer, x, [1, 2, 17, 33])[0], y_full)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[0, :12] = False
    mask[1, 20::3] = False
    y, state = mixer(torch.where(mask[..., None], x, randn(2, 50, D_MODEL, seed=7)), mask=mask)
    tail = randn(2, 4, D_MODEL, seed=8)
    y_next, _ = mixer(tail, state)
    for b in range(2):
        ref, ref_state = mixer(x[b : b + 1, mask[b]])
        assert_close(y[b, mask[b]], ref[0])
        assert_close(y_next[b], mixer(tail[b : b + 1], ref_state)[0][0])


def test_forget_bias_init_gives_log_spaced_decay_times() -> None:
    mixer = ForgettingTransformer(256, head_dim=32, decay_time_min=4.0, decay_time_max=512.0)
    decay_time = -1 / F.logsigmoid(mixer.forget_proj.bias.double())
    expected = torch.logspace(math.log10(4), math.log10(512), 8, dtype=torch.float64)
    torch.testing.assert_close(decay_time, expected, rtol=1e-5, atol=0)
    assert not ForgettingTransformer(256, decay_time_min=None, decay_time_max=None).forget_proj.bias.any()


def test_registered_and_built_by_name() -> None:
    mixer = core.build_mixer("fox", 64, kv_shift=False)
    assert isinstance(mixer, ForgettingTransformer) and mixer.shift_proj is None
    assert "fox" in core.mixer_papers()


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(head_dim=5), r"d_model=32 is not divisible by head_dim=5"),
        (dict(conv_size=0), r"conv_size must be a positive int"),
        (dict(decay_time_min=10.0, decay_time_max=2.0), r"0 < min <= max"),
        (dict(decay_time_min=None), r"0 < min <= max"),
    ],
)
def test_bad_options_raise_clear_errors(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ForgettingTransformer(D_MODEL, **options)


def test_a_foreign_state_is_refused() -> None:
    mixer = make(torch.float32, **CONFIGS["pro"])
    with pytest.raises(TypeError, match="FoXState returned by a previous call"):
        mixer(torch.randn(1, 3, D_MODEL), state=(torch.zeros(1),))
    _, state = mixer(torch.randn(1, 3, D_MODEL))
    with pytest.raises(ValueError, match=r"fox state is for batch size 1 but x has batch size 2"):
        mixer(torch.randn(2, 3, D_MODEL), state=state)
