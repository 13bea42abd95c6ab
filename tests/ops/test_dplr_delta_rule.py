"""dplr_delta_rule: chunk against the naive token loop, state passing, varlen, padding, errors, spec identities."""

import pytest
import torch
import torch.nn.functional as F

from core.ops import delta_rule, dispatch, dplr_delta_rule
from core.ops.dplr_delta_rule.chunk import chunk_dplr_delta_rule
from tests.ops.test_delta_rule import IMPLS, along_time, assert_close, assert_same_outputs_and_gradients, gen
from tests.ops.test_delta_rule import make_inputs as delta_inputs

F64 = torch.float64


def make_inputs(B: int, T: int, H: int, K: int, V: int, *, seed: int = 0, n_states: int = 0) -> dict[str, torch.Tensor]:
    """RWKV-7-like random inputs [B, T, H, K|V]: a = -kappa, b = kappa * eta with L2-normalised kappa and
    eta in (0, 1), log decay g in (-0.61, 0); initial_state [n_states, H, K, V]; float64."""
    rng = gen(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=rng, dtype=F64)

    kappa = F.normalize(randn(B, T, H, K), dim=-1)
    eta = torch.rand(B, T, H, K, generator=rng, dtype=F64)
    g = -0.6065 * torch.sigmoid(randn(B, T, H, K))
    state = randn(n_states, H, K, V) if n_states else None
    return dict(q=randn(B, T, H, K), k=0.5 * randn(B, T, H, K), v=randn(B, T, H, V), a=-kappa, b=kappa * eta, g=g,
                initial_state=state)


def run(inputs: dict[str, torch.Tensor | None], impl: str, **options) -> tuple[torch.Tensor, torch.Tensor]:
    return dplr_delta_rule(**inputs, output_final_state=True, impl=impl, **options)


# --- chunk against the token loop ---------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
def test_chunk_matches_naive_outputs_states_and_gradients(T: int) -> None:
    inputs = make_inputs(2, T, 2, 12, 20, seed=T, n_states=2)
    assert_same_outputs_and_gradients(lambda x, impl: run(x, impl, scale=0.7), inputs)


def test_chunk_matches_naive_long_sequence() -> None:
    inputs = make_inputs(1, 1000, 1, 24, 40, seed=3, n_states=1)
    with torch.no_grad():
        (o_n, s_n), (o_c, s_c) = (run(inputs, impl) for impl in IMPLS)
    assert_close(o_c, o_n)
    assert_close(s_c, s_n)


@pytest.mark.parametrize("chunk_size", [1, 2, 16, 128])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    inputs = make_inputs(1, 77, 2, 8, 8, seed=4, n_states=1)
    args = (*(inputs[name] for name in ("q", "k", "v", "a", "b", "g")), 0.5, inputs["initial_state"], True)
    o_ref, s_ref = chunk_dplr_delta_rule(*args)
    o, s = chunk_dplr_delta_rule(*args, chunk_size=chunk_size)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


def test_naive_gradcheck() -> None:
    inputs = make_inputs(1, 5, 2, 3, 2, seed=5, n_states=1)
    names = list(inputs)

    def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run(dict(zip(names, tensors)), "naive")

    assert torch.autograd.gradcheck(fn, [inputs[name].requires_grad_() for name in names])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strong_vector_decay_does_not_overflow(dtype: torch.dtype) -> None:
    """Per-chunk log decays far below -88 (float32) or -709 (float64) must not produce inf or NaN."""
    inputs = make_inputs(1, 130, 2, 8, 8, seed=6, n_states=1)
    inputs["g"] = -30 * torch.rand(inputs["g"].shape, generator=gen(7), dtype=F64)
    o_ref, s_ref = run(inputs, "naive", scale=0.5)
    o, s = run({name: x.to(dtype) for name, x in inputs.items()}, "chunk", scale=0.5)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    assert_close(o.double(), o_ref, tol)
    assert_close(s.double(), s_ref, tol)


def test_bfloat16_inputs_give_float32_state_close_to_float64() -> None:
    inputs = make_inputs(2, 100, 2, 16, 16, seed=8, n_states=2)
    o_ref, s_ref = run(inputs, "naive")
    o, s = run({name: x.bfloat16() for name, x in inputs.items()}, "chunk")
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert ((o.double() - o_ref).norm() / o_ref.norm()) < 2e-2
    assert ((s.double() - s_ref).norm() / s_ref.norm()) < 2e-2


# --- state passing, variable length and padding ---------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_split_with_state_equals_one_call(impl: str) -> None:
    T = 150
    inputs = make_inputs(2, T, 2, 16, 8, seed=10, n_states=2)
    o_full, s_full = run(inputs, impl)
    for split in torch.randint(1, T, (3,), generator=gen(11)).tolist():
        o_head, s_head = run(along_time(inputs, lambda x: x[:, :split]), impl)
        o_tail, s_tail = run({**along_time(inputs, lambda x: x[:, split:]), "initial_state": s_head}, impl)
        assert_close(torch.cat([o_head, o_tail], dim=1), o_full)
        assert_close(s_tail, s_full)


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_equals_separate_runs(impl: str) -> None:
    lengths = [5, 70, 0, 1, 33]  # an empty sequence keeps its initial state
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    states = torch.randn(len(lengths), 2, 8, 6, generator=gen(13), dtype=F64)
    inputs = {**make_inputs(1, sum(lengths), 2, 8, 6, seed=12), "initial_state": states}
    o, s = run(inputs, impl, cu_seqlens=cu_seqlens)
    for i, (start, stop) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        if stop == start:
            assert_close(s[i], states[i])
            continue
        o_i, s_i = run({**along_time(inputs, lambda x: x[:, start:stop]), "initial_state": states[i : i + 1]}, impl)
        assert_close(o[:, start:stop], o_i)
        assert_close(s[i : i + 1], s_i)


@pytest.mark.parametrize("impl", IMPLS)
def test_padded_tokens_with_zero_key_write_and_decay_leave_the_state_unchanged(impl: str) -> None:
    inputs = make_inputs(1, 40, 2, 8, 8, seed=14, n_states=1)
    pad = torch.zeros(40, dtype=torch.bool)
    pad[[0, 7, 8, 30, 39]] = True
    padded = {name: x.masked_fill(pad[None, :, None, None], 0) if name in "kbg" else x for name, x in inputs.items()}
    o, s = run(padded, impl)
    o_ref, s_ref = run(along_time(inputs, lambda x: x[:, ~pad]), impl)
    assert_close(o[:, ~pad], o_ref)
    assert_close(s, s_ref)


# --- spec identities (section 10) -----------------------------------------------------------------


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_delta_rule_is_dplr_with_a_minus_k_and_b_beta_k(gated: bool, impl: str) -> None:
    """(Gated) DeltaNet == DPLR with D = exp(g) I (scalar g broadcast), a = -k, b = exp(g) beta k, v' = beta v.

    exp(g) (I - beta k k^T) = exp(g) I + (exp(g) beta k)(-k)^T: the decay also scales the rank-one part.
    """
    x = delta_inputs(2, 70, 2, 6, 5, gated, seed=20, n_states=2)
    o, s = delta_rule(**x, scale=0.4, output_final_state=True, impl=impl)
    beta, K = x["beta"][..., None], x["k"].shape[-1]
    g = torch.zeros_like(x["k"]) if x["g"] is None else x["g"][..., None].expand(-1, -1, -1, K)
    o_dplr, s_dplr = dplr_delta_rule(x["q"], x["k"], beta * x["v"], -x["k"], g.exp() * beta * x["k"], g, scale=0.4,
                                     initial_state=x["initial_state"], output_final_state=True, impl=impl)
    assert_close(o_dplr, o)
    assert_close(s_dplr, s)


# --- dispatch and bad input -----------------------------------------------------------------------


def test_implementations_are_registered_and_chunk_is_the_default() -> None:
    assert dispatch.implementations("dplr_delta_rule", torch.device("cpu")) == ["chunk", "naive"]


def test_bad_inputs_raise_clear_errors() -> None:
    x = make_inputs(1, 6, 2, 4, 3)
    q, k, v, a, b, g = (x[name] for name in ("q", "k", "v", "a", "b", "g"))
    with pytest.raises(ValueError, match=r"g must have shape \(B, T, H, K\)"):
        dplr_delta_rule(q, k, v, a, b, g[..., 0])
    with pytest.raises(ValueError, match=r"a must have shape"):
        dplr_delta_rule(q, k, v, a[:, :5], b, g)
    with pytest.raises(TypeError, match="b must be a floating-point"):
        dplr_delta_rule(q, k, v, a, (b > 0).long(), g)
    with pytest.raises(TypeError, match="q, k and v must share one dtype"):
        dplr_delta_rule(q.float(), k, v, a, b, g)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        dplr_delta_rule(q, k, v, a, b, g, initial_state=torch.zeros(2, 2, 4, 3, dtype=F64))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0 and end at the packed length 6"):
        dplr_delta_rule(q, k, v, a, b, g, cu_seqlens=torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match="unknown implementation"):
        dplr_delta_rule(q, k, v, a, b, g, impl="triton-ish")
