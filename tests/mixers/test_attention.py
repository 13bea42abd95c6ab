"""Softmax attention against an explicit float64 reference, plus state, padding, dtype and error checks."""
from __future__ import annotations

import math

import pytest
import torch

import core
from core.mixers.attention import AttentionMixer
from core.rotary import apply_rotary
from tests.mixers.helpers import assert_close, randn, run_in_pieces

D_MODEL = 32
CONFIGS = {
    "causal": dict(num_heads=4),
    "noncausal": dict(num_heads=4, causal=False),
    "window": dict(num_heads=4, window=5),
    "window_noncausal": dict(num_heads=2, causal=False, window=4),
    "gqa_window": dict(num_heads=4, num_kv_heads=2, window=7),
    "mqa_bias_norope": dict(num_heads=4, num_kv_heads=1, rope=False, bias=True),
    "sinks_window": dict(num_heads=4, window=5, num_sinks=3),
    "sinks_gqa_window": dict(num_heads=4, num_kv_heads=2, window=7, num_sinks=1),
    "sinks_window_noncausal": dict(num_heads=2, causal=False, window=4, num_sinks=2),
}
CAUSAL = ["causal", "window", "gqa_window", "mqa_bias_norope", "sinks_window", "sinks_gqa_window"]


def make(d_model: int = D_MODEL, dtype: torch.dtype = torch.float64, seed: int = 0, **options) -> AttentionMixer:
    torch.manual_seed(seed)
    mixer = AttentionMixer(d_model, **options).to(dtype).eval()
    if options.get("bias"):
        for proj in (mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.out_proj):
            torch.nn.init.normal_(proj.bias)
    return mixer


def rope_reference(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """x: (T, H, D) rotated as complex numbers x[:D/2] + i x[D/2:] times exp(i * pos * base^(-2j/D))."""
    half = x.shape[-1] // 2
    freq = base ** (-2 * torch.arange(half, dtype=torch.float64) / x.shape[-1])
    angle = positions.double()[:, None, None] * freq
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1)


def reference(mixer: AttentionMixer, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(D) + mask) V for one unpadded sequence x: (T, d_model), float64."""
    T, H, Hkv, D = x.shape[0], mixer.num_heads, mixer.num_kv_heads, mixer.head_dim
    q, k, v = mixer.q_proj(x).view(T, H, D), mixer.k_proj(x).view(T, Hkv, D), mixer.v_proj(x).view(T, Hkv, D)
    pos = torch.arange(T)
    if mixer.rope:
        q, k = rope_reference(q, pos, mixer.rope_base), rope_reference(k, pos, mixer.rope_base)
    k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D)
    distance = pos[:, None] - pos[None, :]
    allowed = torch.ones(T, T, dtype=torch.bool)
    if mixer.causal:
        allowed &= distance >= 0
    if mixer.window is not None:  # the first num_sinks tokens are exempt from the window
        allowed &= (distance.abs() < mixer.window) | (pos[None, :] < mixer.num_sinks)
    y = torch.einsum("hts,shd->thd", scores.masked_fill(~allowed, -math.inf).softmax(-1), v)
    return mixer.out_proj(y.reshape(T, H * D))


@pytest.mark.parametrize("T", [1, 63, 64, 65])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(config: str, T: int) -> None:
    mixer = make(**CONFIGS[config])
    x = randn(2, T, D_MODEL)
    y, state = mixer(x)
    assert (state is None) == (not mixer.causal)
    for b in range(2):
        assert_close(y[b], reference(mixer, x[b]))


@pytest.mark.parametrize(
    "options",
    [dict(num_heads=2), dict(num_heads=4, num_kv_heads=2, window=100), dict(num_heads=2, window=50, num_sinks=4)],
)
def test_matches_reference_long(options: dict) -> None:
    mixer = make(**options)
    x = randn(1, 1000, D_MODEL)
    assert_close(mixer(x)[0][0], reference(mixer, x[0]))


def test_head_dim_not_a_power_of_two() -> None:
    mixer = make(96, num_heads=4, window=9)
    assert mixer.head_dim == 24
    x = randn(2, 65, 96)
    y, _ = mixer(x)
    assert_close(y[1], reference(mixer, x[1]))
    assert_close(run_in_pieces(mixer, x, [10, 11, 40])[0], y)


def test_defaults() -> None:
    mixer = core.build_mixer("attention", 128)
    assert isinstance(mixer, AttentionMixer) and mixer.causal
    assert (mixer.num_heads, mixer.num_kv_heads, mixer.head_dim, mixer.window, mixer.rope) == (2, 2, 64, None, True)
    assert make(32).num_heads == 1


@pytest.mark.parametrize("config", CAUSAL)
def test_state_passing_at_random_splits_equals_one_call(config: str) -> None:
    mixer = make(**CONFIGS[config])
    x = randn(2, 80, D_MODEL)
    y_full, state_full = mixer(x)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        cuts = sorted(torch.randperm(79, generator=g)[:3].add(1).tolist())
        y, state = run_in_pieces(mixer, x, cuts)
        assert_close(y, y_full)
        assert torch.equal(state.positions, state_full.positions)


@pytest.mark.parametrize("config", ["causal", "window", "gqa_window", "sinks_window", "sinks_gqa_window"])
def test_token_by_token_decoding_equals_full_forward(config: str) -> None:
    mixer = make(**CONFIGS[config])
    x = randn(2, 30, D_MODEL)
    y_full, _ = mixer(x)
    y, state = run_in_pieces(mixer, x, list(range(1, 30)))
    assert_close(y, y_full)
    if mixer.window is not None:  # bounded memory: past the window the cache stops growing
        assert state.keys.shape[2] == mixer.num_sinks + mixer.window - 1
        assert state.valid.all()


@torch.no_grad()
@pytest.mark.parametrize("config", ["causal", "gqa_window", "mqa_bias_norope"])
def test_inference_appends_in_place_and_branches_stay_intact(config: str) -> None:
    """Without autograd the cache grows inside a KVStore (no copy of the whole cache per step); a state stepped
    twice (two branches) must leave the first branch's entries as they were."""
    mixer = make(**CONFIGS[config])
    x = randn(2, 100, D_MODEL)
    y, state = run_in_pieces(mixer, x, list(range(1, 100)))
    assert_close(y, mixer(x)[0])
    if mixer.window is None:
        assert state.store is not None and state.store.holds(state)
        _, longer = mixer(x[:, :1], state)
        assert longer.keys.data_ptr() == state.keys.data_ptr()  # written behind the same buffer
    _, prefix = mixer(x[:, :60])
    _, branch_a = mixer(x[:, 60:70], prefix)
    y_b, _ = mixer(x[:, 70:80], prefix)  # the second branch from the same state
    assert_close(y_b, mixer(torch.cat([x[:, :60], x[:, 70:80]], dim=1))[0][:, 60:])
    y_a, _ = mixer(x[:, 80:90], branch_a)  # the first branch still holds its own entries
    assert_close(y_a, mixer(torch.cat([x[:, :70], x[:, 80:90]], dim=1))[0][:, 70:])


def test_training_steps_keep_no_store() -> None:
    mixer = make(num_heads=4)
    _, state = mixer(randn(1, 5, D_MODEL))
    assert state.store is None  # autograd on: appends concatenate (in-place writes would break the backward)


def test_sinks_stay_visible_beyond_the_window() -> None:
    mixer = make(num_heads=4, window=4, num_sinks=2)
    x = randn(1, 40, D_MODEL)
    y = mixer(x)[0]
    sink, other = x.clone(), x.clone()
    sink[:, 1] += 1.0
    other[:, 2] += 1.0
    assert (mixer(sink)[0][:, 30:] - y[:, 30:]).abs().amin() > 0  # every late output sees the sink
    assert_close(mixer(other)[0][:, 2 + mixer.window :], y[:, 2 + mixer.window :])  # the third token drops out
    assert (make(num_heads=4, window=4)(sink)[0][:, 30:] - y[:, 30:]).abs().amax() > 0  # another mixer: sanity
    _, state = run_in_pieces(mixer, x, list(range(1, 40)))  # the decoding cache keeps the sinks' entries
    _, first = mixer(x[:, :2])
    assert_close(state.keys[:, :, :2], first.keys)
    assert_close(state.values[:, :, :2], first.values)


def test_sinks_without_a_window_change_nothing() -> None:
    x = randn(2, 20, D_MODEL)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[0, :6] = False
    for options in (dict(num_heads=4), dict(num_heads=4, causal=False)):
        assert_close(make(num_sinks=3, **options)(x, mask=mask)[0], make(**options)(x, mask=mask)[0])


def test_window_one_sees_only_itself() -> None:
    mixer = make(num_heads=2, window=1)
    x = randn(1, 6, D_MODEL)
    y, state = run_in_pieces(mixer, x, [1, 2, 4])
    assert state.keys.shape[2] == 0
    assert_close(y, mixer(x)[0])
    assert_close(y, torch.cat([mixer(x[:, t : t + 1])[0] for t in range(6)], dim=1))


@pytest.mark.parametrize("config", CAUSAL)
def test_causal_outputs_ignore_the_future(config: str) -> None:
    mixer = make(**CONFIGS[config])
    x = randn(2, 40, D_MODEL)
    x_perturbed = x.clone()
    x_perturbed[:, 25:] += randn(2, 15, D_MODEL, seed=5)
    y, y_perturbed = mixer(x)[0], mixer(x_perturbed)[0]
    assert_close(y[:, :25], y_perturbed[:, :25])
    assert not torch.allclose(y[:, 25:], y_perturbed[:, 25:])


def test_window_outputs_ignore_tokens_out_of_the_window() -> None:
    mixer = make(**CONFIGS["window"])
    x = randn(1, 20, D_MODEL)
    x_perturbed = x.clone()
    x_perturbed[:, :10] += 1.0
    y, y_perturbed = mixer(x)[0], mixer(x_perturbed)[0]
    assert_close(y[:, 10 + mixer.window - 1 :], y_perturbed[:, 10 + mixer.window - 1 :])
    assert not torch.allclose(y[:, 10 : 10 + mixer.window - 1], y_perturbed[:, 10 : 10 + mixer.window - 1])


def test_noncausal_outputs_see_the_future() -> None:
    mixer = make(**CONFIGS["noncausal"])
    x = randn(2, 10, D_MODEL)
    x_perturbed = x.clone()
    x_perturbed[:, -1] += 1.0
    assert not torch.allclose(mixer(x)[0][:, 0], mixer(x_perturbed)[0][:, 0])


def padded_batch(seqs: list[torch.Tensor], T: int, layout: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Place each (L, d) sequence in a (T, d) row with junk around it; mask (B, T) True where it lies."""
    g = torch.Generator().manual_seed(seed)
    x = 100 * torch.randn(len(seqs), T, seqs[0].shape[-1], generator=g, dtype=torch.float64)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for b, seq in enumerate(seqs):
        L = seq.shape[0]
        if layout == "left":
            mask[b, T - L :] = True
        elif layout == "right":
            mask[b, :L] = True
        else:
            mask[b, torch.randperm(T, generator=g)[:L]] = True
        x[b, mask[b]] = seq
    return x, mask


@pytest.mark.parametrize("layout", ["left", "right", "scattered"])
@pytest.mark.parametrize(
    "config",
    ["causal", "window", "gqa_window", "noncausal", "window_noncausal", "sinks_window", "sinks_window_noncausal"],
)
def test_padding_equals_unpadded_runs(config: str, layout: str) -> None:
    mixer = make(**CONFIGS[config])
    firsts = [randn(L, D_MODEL, seed=10 + L) for L in (7, 12, 1)]
    seconds = [randn(L, D_MODEL, seed=20 + L) for L in (3, 9, 5)]
    x, mask = padded_batch(firsts, 15, layout, seed=1)
    y, state = mixer(x, mask=mask)
    for b, seq in enumerate(firsts):
        assert_close(y[b, mask[b]], mixer(seq[None])[0][0])
    assert torch.isfinite(y).all()
    if not mixer.causal:
        return
    x2, mask2 = padded_batch(seconds, 10, layout, seed=2)
    y2, _ = mixer(x2, state, mask2)
    for b, (first, second) in enumerate(zip(firsts, seconds)):
        y_ref = mixer(torch.cat([first, second])[None])[0][0, first.shape[0] :]
        assert_close(y2[b, mask2[b]], y_ref)


@pytest.mark.parametrize("config", ["causal", "window", "noncausal", "sinks_window"])
def test_fully_masked_rows_are_finite(config: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa_without_empty_rows(q, k, v, attn_mask=None, **kw):  # CPU returns 0 there, other backends NaN
        assert attn_mask is None or attn_mask.any(-1).all(), "a query row with no visible key reached SDPA"
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_without_empty_rows)
    mixer = make(dtype=torch.float32, **CONFIGS[config])
    x = randn(2, 9, D_MODEL, dtype=torch.float32).requires_grad_()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0] = False
    y, state = mixer(x, mask=mask)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    if mixer.causal:  # the fully padded row starts afresh in the next call
        assert state.positions.tolist() == [0, 9]
        x2 = randn(2, 4, D_MODEL, dtype=torch.float32, seed=2)
        torch.testing.assert_close(mixer(x2, state)[0][0], mixer(x2[:1])[0][0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("config", ["causal", "gqa_window", "noncausal"])
def test_low_precision_runs_without_nan(config: str, dtype: torch.dtype) -> None:
    mixer = make(dtype=dtype, **CONFIGS[config])
    x = randn(2, 65, D_MODEL, dtype=dtype)
    mask = torch.ones(2, 65, dtype=torch.bool)
    mask[0, :20] = False
    y, state = mixer(x, mask=mask)
    assert y.dtype == dtype and torch.isfinite(y).all()
    if mixer.causal:
        y2, _ = mixer(x[:, :3], state)
        assert torch.isfinite(y2).all()
    y64 = make(**CONFIGS[config])(x.double(), mask=mask)[0].to(dtype)
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(y[mask], y64[mask], rtol=tol, atol=tol)


def test_bad_options_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="num_heads=5 does not divide d_model=32"):
        AttentionMixer(32, num_heads=5)
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        AttentionMixer(32, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="window must be a positive int"):
        AttentionMixer(32, window=0)
    for num_sinks in (-1, 2.0, True, None):
        with pytest.raises(ValueError, match=r"num_sinks must be an int >= 0"):
            AttentionMixer(32, window=4, num_sinks=num_sinks)
    with pytest.raises(ValueError, match="even head_dim"):
        AttentionMixer(30, num_heads=2)
    with pytest.raises(ValueError, match="dropout"):
        AttentionMixer(32, dropout=1.0)
    AttentionMixer(30, num_heads=2, rope=False)  # odd head_dim is fine without RoPE
    AttentionMixer(30, num_heads=4, head_dim=8)  # head_dim given: num_heads need not divide d_model


def test_bad_state_raises_clear_errors() -> None:
    mixer = make(num_heads=4)
    _, state = mixer(randn(2, 5, D_MODEL))
    with pytest.raises(TypeError, match="KVCache"):
        mixer(randn(2, 5, D_MODEL), state=(state.keys, state.values))
    with pytest.raises(ValueError, match="batch size 2 but x has batch size 3"):
        mixer(randn(3, 5, D_MODEL), state)
    with pytest.raises(ValueError, match=r"expects \(B, 2, S, 16\)"):
        make(num_heads=2)(randn(2, 5, D_MODEL), state)
    with pytest.raises(ValueError, match="non-causal"):
        make(num_heads=4, causal=False)(randn(2, 5, D_MODEL), state)


def test_rotary_matches_complex_rotation() -> None:
    x = randn(2, 7, 3, 10)
    positions = torch.randint(0, 500, (2, 7), generator=torch.Generator().manual_seed(0))
    expected = torch.stack([rope_reference(x[b], positions[b], 500.0) for b in range(2)])
    assert_close(apply_rotary(x, positions, base=500.0), expected)
    assert_close(apply_rotary(x, torch.zeros(7, dtype=torch.long)), x)


def test_rotary_scores_depend_only_on_position_differences() -> None:
    q, k = randn(1, 1, 1, 16, seed=1), randn(1, 1, 1, 16, seed=2)

    def score(p_q: int, p_k: int) -> torch.Tensor:
        rotated_q = apply_rotary(q, torch.tensor([p_q]))
        rotated_k = apply_rotary(k, torch.tensor([p_k]))
        return (rotated_q * rotated_k).sum()

    for p_q, p_k in [(5, 2), (9, 9), (3, 11)]:
        for shift in (1, 17, 1000):
            assert_close(score(p_q + shift, p_k + shift), score(p_q, p_k))
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rotary_rejects_bad_inputs() -> None:
    with pytest.raises(TypeError, match="integer"):
        apply_rotary(randn(1, 2, 1, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="even head dimension"):
        apply_rotary(randn(1, 2, 1, 5), torch.tensor([0, 1]))
