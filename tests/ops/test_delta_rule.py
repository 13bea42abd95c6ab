"""delta_rule and delta_product: chunk against the naive token loop, state passing, varlen, padding, errors."""

import pytest
import torch
import torch.nn.functional as F

from core.ops import delta_product, delta_rule, dispatch
from core.ops.delta_rule.chunk import chunk_delta_rule

IMPLS = ["naive", "chunk"]
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_inputs(
    B: int, T: int, H: int, K: int, V: int, gated: bool, *, seed: int = 0, n_states: int = 0, beta_max: float = 2.0
) -> dict[str, torch.Tensor | None]:
    """Random q, v, L2-normalised k [B, T, H, K|V], beta in [0, beta_max] [B, T, H], log decay g [B, T, H] or None
    and initial_state [n_states, H, K, V], in float64."""
    rng = gen(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=rng, dtype=F64)

    q, k, v = randn(B, T, H, K), F.normalize(randn(B, T, H, K), dim=-1), randn(B, T, H, V)
    beta = beta_max * torch.rand(B, T, H, generator=rng, dtype=F64)
    g = F.logsigmoid(randn(B, T, H) + 2) if gated else None
    state = randn(n_states, H, K, V) if n_states else None
    return dict(q=q, k=k, v=v, beta=beta, g=g, initial_state=state)


def along_time(inputs: dict[str, torch.Tensor | None], fn) -> dict[str, torch.Tensor | None]:
    """Apply fn to the per-token inputs [B, T, ...]; the state passes unchanged."""
    return {name: fn(x) if name != "initial_state" and x is not None else x for name, x in inputs.items()}


def run(inputs: dict[str, torch.Tensor | None], impl: str, **options) -> tuple[torch.Tensor, torch.Tensor]:
    return delta_rule(**inputs, output_final_state=True, impl=impl, **options)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-9, msg: str = "") -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{msg} {m}")


def assert_same_outputs_and_gradients(fn, inputs: dict[str, torch.Tensor | None], tol: float = 1e-9) -> None:
    """fn(inputs, impl) -> (o, state); outputs, final states and the gradients of every input agree across impls."""
    leaves = {name: x.requires_grad_() for name, x in inputs.items() if x is not None}
    results = []
    for impl in IMPLS:
        o, state = fn(inputs, impl)
        rng = gen(1)
        o_weight, s_weight = (torch.randn(x.shape, generator=rng, dtype=F64) for x in (o, state))
        loss = (o * o_weight).sum() + (state * s_weight).sum()
        results.append((o, state, torch.autograd.grad(loss, list(leaves.values()))))
    (o_ref, s_ref, grads_ref), (o, s, grads) = results
    assert_close(o, o_ref, tol)
    assert_close(s, s_ref, tol)
    for name, grad, grad_ref in zip(leaves, grads, grads_ref):
        assert_close(grad, grad_ref, tol, msg=f"gradient of {name}:")


# --- chunk against the token loop ---------------------------------------------------------------


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
def test_chunk_matches_naive_outputs_states_and_gradients(gated: bool, T: int) -> None:
    inputs = make_inputs(2, T, 2, 12, 20, gated, seed=T, n_states=2)
    assert_same_outputs_and_gradients(lambda x, impl: run(x, impl, scale=0.7), inputs)


def test_chunk_matches_naive_long_sequence() -> None:
    inputs = make_inputs(1, 1000, 1, 24, 40, True, seed=3, n_states=1)
    with torch.no_grad():
        (o_n, s_n), (o_c, s_c) = (run(inputs, impl) for impl in IMPLS)
    assert_close(o_c, o_n)
    assert_close(s_c, s_n)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 128])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    inputs = make_inputs(1, 77, 2, 8, 8, True, seed=4, n_states=1)
    args = (*(inputs[name] for name in ("q", "k", "v", "beta", "g")), 0.5, inputs["initial_state"], True)
    o_ref, s_ref = chunk_delta_rule(*args)
    o, s = chunk_delta_rule(*args, chunk_size=chunk_size)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


@pytest.mark.parametrize("gated", [False, True])
def test_naive_gradcheck(gated: bool) -> None:
    inputs = make_inputs(1, 5, 2, 3, 2, gated, seed=5, n_states=1)
    names = [name for name, x in inputs.items() if x is not None]

    def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run(dict(zip(names, tensors)), "naive")

    assert torch.autograd.gradcheck(fn, [inputs[name].requires_grad_() for name in names])


def test_strong_decay_does_not_overflow_in_float32() -> None:
    inputs = make_inputs(1, 130, 2, 8, 8, True, seed=6, n_states=1)
    inputs["g"] = -30 * torch.rand(inputs["g"].shape, generator=gen(7), dtype=F64)
    o_ref, s_ref = run(inputs, "naive")
    o, s = run({name: x.float() for name, x in inputs.items()}, "chunk")
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert_close(o.double(), o_ref, 1e-4)
    assert_close(s.double(), s_ref, 1e-4)


def test_bfloat16_inputs_give_float32_state_close_to_float64() -> None:
    inputs = make_inputs(2, 100, 2, 16, 16, True, seed=8, n_states=2)
    o_ref, s_ref = run(inputs, "naive")
    o, s = run({name: x.bfloat16() for name, x in inputs.items()}, "chunk")
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert ((o.double() - o_ref).norm() / o_ref.norm()) < 2e-2
    assert ((s.double() - s_ref).norm() / s_ref.norm()) < 2e-2


def test_default_scale_is_inverse_sqrt_key_width() -> None:
    inputs = make_inputs(1, 9, 1, 16, 4, True, seed=9)
    assert_close(run(inputs, "chunk")[0], run(inputs, "chunk", scale=0.25)[0])


# --- state passing, variable length and padding ---------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gated", [False, True])
def test_split_with_state_equals_one_call(impl: str, gated: bool) -> None:
    T = 150
    inputs = make_inputs(2, T, 2, 16, 8, gated, seed=10, n_states=2)
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
    inputs = make_inputs(1, sum(lengths), 2, 8, 6, True, seed=12)
    states = torch.randn(len(lengths), 2, 8, 6, generator=gen(13), dtype=F64)
    o, s = run({**inputs, "initial_state": states}, impl, cu_seqlens=cu_seqlens)
    for i, (start, stop) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        piece = {**along_time(inputs, lambda x: x[:, start:stop]), "initial_state": states[i : i + 1]}
        if stop > start:
            o_i, s_i = run(piece, impl)
            assert_close(o[:, start:stop], o_i)
        else:
            s_i = states[i : i + 1]
        assert_close(s[i : i + 1], s_i)


@pytest.mark.parametrize("impl", IMPLS)
def test_padded_tokens_with_zero_key_and_decay_leave_the_state_unchanged(impl: str) -> None:
    inputs = make_inputs(1, 40, 2, 8, 8, True, seed=14, n_states=1)
    pad = torch.zeros(40, dtype=torch.bool)
    pad[[0, 7, 8, 30, 39]] = True
    padded = dict(inputs)
    padded["k"] = inputs["k"].masked_fill(pad[None, :, None, None], 0)
    padded["g"] = inputs["g"].masked_fill(pad[None, :, None], 0)  # beta and v stay: they must not matter
    o, s = run(padded, impl)
    o_ref, s_ref = run(along_time(inputs, lambda x: x[:, ~pad]), impl)
    assert_close(o[:, ~pad], o_ref)
    assert_close(s, s_ref)


# --- DeltaProduct ---------------------------------------------------------------------------------


def householder_loop(q, k, v, beta, g, scale):
    """Spec 2.3 literally: S <- exp(g_t) S, then n_h steps S <- (I - b k k^T) S + b k v^T; o_t = S^T (s q_t)."""
    B, T, n_h, H, K = k.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    eye = torch.eye(K, dtype=q.dtype)
    outputs = []
    for t in range(T):
        S = g[:, t, :, None, None].exp() * S
        for j in range(n_h):
            kj, bj = k[:, t, j], beta[:, t, j, :, None, None]
            S = (eye - bj * kj[..., :, None] * kj[..., None, :]) @ S + bj * kj[..., :, None] * v[:, t, j, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, scale * q[:, t]))
    return torch.stack(outputs, dim=1), S


def product_inputs(B: int, T: int, n_h: int, H: int, K: int, V: int, seed: int) -> dict[str, torch.Tensor]:
    rng = gen(seed)
    return dict(
        q=torch.randn(B, T, H, K, generator=rng, dtype=F64),
        k=F.normalize(torch.randn(B, T, n_h, H, K, generator=rng, dtype=F64), dim=-1),
        v=torch.randn(B, T, n_h, H, V, generator=rng, dtype=F64),
        beta=2 * torch.rand(B, T, n_h, H, generator=rng, dtype=F64),
        g=F.logsigmoid(torch.randn(B, T, H, generator=rng, dtype=F64) + 2),
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_delta_product_equals_householder_products(impl: str) -> None:
    inputs = product_inputs(2, 21, 3, 2, 6, 5, seed=15)
    o, s = delta_product(**inputs, scale=0.5, output_final_state=True, impl=impl)
    o_ref, s_ref = householder_loop(**inputs, scale=0.5)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


def test_delta_product_with_one_step_is_the_gated_delta_rule() -> None:
    inputs = product_inputs(2, 30, 1, 2, 6, 5, seed=16)
    o, s = delta_product(**inputs, output_final_state=True)
    squeezed = {name: x[:, :, 0] if name in ("k", "v", "beta") else x for name, x in inputs.items()}
    o_ref, s_ref = delta_rule(**squeezed, output_final_state=True)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


def test_delta_product_chunk_matches_naive_with_gradients_and_packing() -> None:
    lengths = [7, 30, 12]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    states = torch.randn(3, 2, 5, 3, generator=gen(18), dtype=F64)
    inputs = {**product_inputs(1, sum(lengths), 2, 2, 5, 3, seed=17), "initial_state": states}

    def fn(x: dict[str, torch.Tensor], impl: str) -> tuple[torch.Tensor, torch.Tensor]:
        return delta_product(**x, output_final_state=True, cu_seqlens=cu_seqlens, impl=impl)

    assert_same_outputs_and_gradients(fn, inputs)
    o, s = fn(inputs, "chunk")
    start = lengths[0]
    piece = {name: x[:, start : start + lengths[1]] for name, x in inputs.items() if name != "initial_state"}
    o_1, s_1 = delta_product(**piece, initial_state=inputs["initial_state"][1:2], output_final_state=True)
    assert_close(o[:, start : start + lengths[1]], o_1)
    assert_close(s[1:2], s_1)


# --- dispatch and bad input -----------------------------------------------------------------------


def test_implementations_are_registered_and_chunk_is_the_default() -> None:
    assert dispatch.implementations("delta_rule", torch.device("cpu")) == ["chunk", "naive"]


def test_bad_inputs_raise_clear_errors() -> None:
    x = make_inputs(1, 6, 2, 4, 3, True)
    q, k, v, beta, g = (x[name] for name in ("q", "k", "v", "beta", "g"))
    with pytest.raises(ValueError, match=r"beta must have shape \(B, T, H\)"):
        delta_rule(q, k, v, beta[..., None])
    with pytest.raises(ValueError, match="one log decay per head"):
        delta_rule(q, k, v, beta, g[..., None].expand(1, 6, 2, 4))
    with pytest.raises(TypeError, match="beta must be a floating-point"):
        delta_rule(q, k, v, (beta > 1).long())
    with pytest.raises(ValueError, match=r"k must have shape"):
        delta_rule(q, k[..., :3], v, beta)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        delta_rule(q, k, v, beta, initial_state=torch.zeros(1, 2, 3, 4, dtype=F64))
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        delta_rule(q, k, v, beta, impl="fast")
    with pytest.raises(ValueError, match="packed into batch size 1"):
        delta_rule(q.expand(2, -1, -1, -1), k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1), beta.expand(2, -1, -1),
                   cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"k must have shape \(B, T, n_h, H, K\)"):
        delta_product(q, k, v[:, :, None], beta[:, :, None])
    with pytest.raises(ValueError, match=r"beta must have shape \(B, T, n_h, H\)"):
        delta_product(q, k[:, :, None], v[:, :, None], beta)
