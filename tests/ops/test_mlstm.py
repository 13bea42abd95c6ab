"""mlstm: chunkwise against the token loop, the unstabilised form, state passing, padding, dtypes and errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.ops import MLSTMState, dispatch, mlstm, neutral_gates
from core.ops.mlstm.chunk import chunk_mlstm

IMPLS = ["naive", "chunk"]
GATES = ["sigmoid", "exp"]
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_inputs(
    B: int, T: int, H: int, K: int, V: int, forget_gate: str, *, dtype: torch.dtype = F64, seed: int = 0, with_state: bool = False
) -> dict:
    """q, k, v, gate pre-activations i, f and optionally an initial MLSTMState.

    The exp forget gate gets f ~ N(-0.5, 1): log f is sometimes positive, so the stabiliser both grows and shrinks.
    """
    rng = gen(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=rng, dtype=F64)

    q, k, v, i = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V), 2 * randn(B, T, H)
    f = randn(B, T, H) + (2.0 if forget_gate == "sigmoid" else -0.5)
    state = MLSTMState(randn(B, H, K, V), randn(B, H, K), randn(B, H)) if with_state else None
    inputs = dict(q=q, k=k, v=v, i=i, f=f)
    return {**{name: x.to(dtype) for name, x in inputs.items()}, "initial_state": state, "forget_gate": forget_gate}


def run(inputs: dict, impl: str, **options) -> tuple[torch.Tensor, MLSTMState]:
    return mlstm(**inputs, output_final_state=True, impl=impl, **options)


def along_time(inputs: dict, fn) -> dict:
    return {name: fn(x) if name in ("q", "k", "v", "i", "f") else x for name, x in inputs.items()}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-9, msg: str = "") -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{msg} {m}")


def assert_states_close(actual: MLSTMState, expected: MLSTMState, tol: float = 1e-9) -> None:
    for name, a, e in zip(MLSTMState._fields, actual, expected):
        assert_close(a, e, tol, msg=f"state.{name}:")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


# --- chunk against the token loop ---------------------------------------------------------------


@pytest.mark.parametrize("forget_gate", GATES)
@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_matches_naive_outputs_states_and_gradients(forget_gate: str, T: int, with_state: bool) -> None:
    B, H, K, V = 2, 2, 12, 10
    inputs = make_inputs(B, T, H, K, V, forget_gate, seed=T, with_state=with_state)
    leaves = {name: x.requires_grad_() for name, x in inputs.items() if isinstance(x, torch.Tensor)}
    if with_state:
        inputs["initial_state"] = MLSTMState(*(x.requires_grad_() for x in inputs["initial_state"]))
        leaves.update({f"state.{n}": x for n, x in zip("Cnm", inputs["initial_state"])})
    rng = gen(1)
    weights = [torch.randn(shape, generator=rng, dtype=F64) for shape in ((B, T, H, V), (B, H, K, V), (B, H, K), (B, H))]
    results = {}
    for impl in IMPLS:
        h, state = run(inputs, impl, scale=0.4)
        loss = sum((x * w).sum() for x, w in zip((h, *state), weights))
        results[impl] = (h, state, torch.autograd.grad(loss, list(leaves.values())))
    (h_n, s_n, grads_n), (h_c, s_c, grads_c) = results["naive"], results["chunk"]
    tol = 1e-9 if forget_gate == "sigmoid" else 1e-7  # exp gates make the normaliser ill-conditioned at places
    assert_close(h_c, h_n, tol)
    assert_states_close(s_c, s_n, tol)
    for name, grad_c, grad_n in zip(leaves, grads_c, grads_n):
        assert_close(grad_c, grad_n, tol, msg=f"gradient of {name}:")


@pytest.mark.parametrize("forget_gate", GATES)
def test_chunk_matches_naive_long_sequence(forget_gate: str) -> None:
    inputs = make_inputs(1, 1000, 2, 8, 8, forget_gate, seed=3, with_state=True)
    with torch.no_grad():
        (h_n, s_n), (h_c, s_c) = (run(inputs, impl) for impl in IMPLS)
    assert relative_error(h_c, h_n) < 1e-12
    assert_states_close(s_c, s_n, 1e-9)


@pytest.mark.parametrize("chunk_size", [1, 16, 128])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    inputs = make_inputs(1, 77, 2, 8, 8, "sigmoid", seed=4, with_state=True)
    args = (*(inputs[n] for n in "qkv"), inputs["i"], F.logsigmoid(inputs["f"]), 0.5, inputs["initial_state"], True, 1e-6)
    h_ref, s_ref = chunk_mlstm(*args)
    h, s = chunk_mlstm(*args, chunk_size=chunk_size)
    assert_close(h, h_ref)
    assert_states_close(MLSTMState(*s), MLSTMState(*s_ref))


def test_naive_gradcheck() -> None:
    inputs = make_inputs(1, 5, 2, 3, 2, "sigmoid", seed=5, with_state=True)
    state = inputs.pop("initial_state")
    names = ["q", "k", "v", "i", "f"]

    def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, final = mlstm(*tensors[:5], initial_state=tensors[5:], output_final_state=True, impl="naive")
        return (h, *final)

    leaves = [inputs[n].requires_grad_() for n in names] + [x.requires_grad_() for x in state]
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


# --- the stabiliser only matters through eps -------------------------------------------------------


def unstabilised(q, k, v, i, f, forget_gate: str, scale: float) -> torch.Tensor:
    """Parallel form in unstabilised units, eps = 0: h_t = sum_j w_tj (q_t.k_j) v_j / max(|sum_j w_tj q_t.k_j|, 1)."""
    log_f = F.logsigmoid(f) if forget_gate == "sigmoid" else f
    cum = log_f.cumsum(1).transpose(1, 2)  # [B, H, T]
    T = q.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    log_w = (cum[..., :, None] - cum[..., None, :] + i.transpose(1, 2)[..., None, :]).masked_fill(~causal, -math.inf)
    scores = torch.einsum("bthk,bshk->bhts", q * scale, k) * log_w.exp()
    den = scores.sum(-1).abs().clamp_min(1.0)  # [B, H, T]
    return torch.einsum("bhts,bshv->bthv", scores, v) / den.transpose(1, 2)[..., None]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("forget_gate", GATES)
def test_stabilised_equals_unstabilised_form_with_eps_zero(impl: str, forget_gate: str) -> None:
    """Spec 6.1: h does not depend on m except through eps, so compare with eps = 0."""
    inputs = make_inputs(2, 50, 2, 6, 5, forget_gate, seed=6)
    h, _ = run(inputs, impl, eps=0.0)
    expected = unstabilised(*(inputs[n] for n in ("q", "k", "v", "i", "f")), forget_gate, 6**-0.5)
    assert_close(h, expected, 1e-10)


def test_huge_gates_stay_finite_in_float32() -> None:
    """Input gates of +-60 and exp forget gates of +-10 would overflow an unstabilised float32 form."""
    inputs = make_inputs(1, 150, 2, 8, 8, "exp", seed=7, with_state=True)
    inputs["i"], inputs["f"] = 60 * torch.randn(1, 150, 2, generator=gen(8)), 10 * torch.randn(1, 150, 2, generator=gen(9))
    h_ref, s_ref = run(inputs, "naive")
    low = {**along_time(inputs, lambda x: x.float()), "initial_state": MLSTMState(*(x.float() for x in inputs["initial_state"]))}
    for impl in IMPLS:
        h, s = run(low, impl)
        assert torch.isfinite(h).all() and all(torch.isfinite(x).all() for x in s)
        assert relative_error(h, h_ref) < 1e-4


# --- state passing and padding ----------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("forget_gate", GATES)
def test_split_with_state_equals_one_call(impl: str, forget_gate: str) -> None:
    T = 150
    inputs = make_inputs(2, T, 2, 8, 6, forget_gate, seed=10, with_state=True)
    h_full, s_full = run(inputs, impl)
    for split in torch.randint(1, T, (3,), generator=gen(11)).tolist():
        h_head, s_head = run(along_time(inputs, lambda x: x[:, :split]), impl)
        h_tail, s_tail = run({**along_time(inputs, lambda x: x[:, split:]), "initial_state": s_head}, impl)
        assert_close(torch.cat([h_head, h_tail], dim=1), h_full, 1e-8)
        assert_states_close(s_tail, s_full, 1e-8)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("forget_gate", GATES)
def test_neutral_gates_make_padded_tokens_absent(impl: str, forget_gate: str) -> None:
    """Padding anywhere (left, right, holes) equals running each sequence's valid tokens alone."""
    B, T = 3, 40
    inputs = make_inputs(B, T, 2, 6, 5, forget_gate, seed=12, with_state=True)
    mask = torch.rand(B, T, generator=gen(13)) < 0.7
    mask[0, :10] = False
    mask[1, -10:] = False
    i, f = neutral_gates(inputs["i"], inputs["f"], mask, forget_gate)
    h, state = run({**inputs, "i": i, "f": f}, impl)
    for b in range(B):
        alone = along_time(inputs, lambda x: x[b : b + 1, mask[b]])
        h_b, s_b = run({**alone, "initial_state": MLSTMState(*(x[b : b + 1] for x in inputs["initial_state"]))}, impl)
        assert_close(h[b : b + 1, mask[b]], h_b, 1e-8)
        assert_states_close(MLSTMState(*(x[b : b + 1] for x in state)), s_b, 1e-8)


# --- dtypes and defaults ----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_inputs_keep_float32_state(impl: str) -> None:
    low = along_time(make_inputs(2, 100, 2, 16, 16, "sigmoid", seed=14), lambda x: x.bfloat16())
    h_ref, s_ref = run(along_time(low, lambda x: x.double()), "naive")  # the same rounded inputs, in float64
    h, s = run(low, impl)
    assert h.dtype == torch.bfloat16 and all(x.dtype == torch.float32 for x in s)
    assert torch.isfinite(h).all()
    assert relative_error(h, h_ref) < 2e-2 and relative_error(s.C, s_ref.C) < 2e-2


def test_defaults_and_no_final_state() -> None:
    inputs = make_inputs(1, 10, 2, 16, 8, "sigmoid", seed=15)
    h, state = mlstm(*(inputs[n] for n in ("q", "k", "v", "i", "f")))
    assert state is None
    assert_close(h, run(inputs, "naive", scale=16**-0.5, eps=1e-6)[0])


def test_best_implementation_on_cpu_is_chunk() -> None:
    assert dispatch.implementations("mlstm", torch.device("cpu")) == ["chunk", "naive"]


# --- errors ---------------------------------------------------------------------------------------


def bad_inputs() -> dict[str, dict]:
    q, v, g = torch.randn(1, 6, 2, 4), torch.randn(1, 6, 2, 3), torch.zeros(1, 6, 2)
    ok = dict(q=q, k=q, v=v, i=g, f=g)
    return {
        "rank": {**ok, "q": q[0], "k": q[0], "v": v[0]},
        "i_shape": {**ok, "i": torch.zeros(1, 6, 2, 1)},
        "f_shape": {**ok, "f": torch.zeros(1, 5, 2)},
        "gate": {**ok, "forget_gate": "tanh"},
        "eps": {**ok, "eps": -1.0},
        "state_len": {**ok, "initial_state": (torch.zeros(1, 2, 4, 3),)},
        "state_C": {**ok, "initial_state": (torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2))},
        "state_m": {**ok, "initial_state": (torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, 1))},
        "impl": {**ok, "impl": "fast"},
    }


@pytest.mark.parametrize(
    "case, match",
    [
        ("rank", r"q must have shape \(B, T, H, K\).*got 3-D shape"),
        ("i_shape", r"i must have shape \(B, T, H\) = \(1, 6, 2\), got 4-D shape \(1, 6, 2, 1\)"),
        ("f_shape", r"f must have shape \(B, T, H\) = \(1, 6, 2\), got 3-D shape \(1, 5, 2\)"),
        ("gate", r"forget_gate must be one of \('sigmoid', 'exp'\), got 'tanh'"),
        ("eps", r"eps must be >= 0, got -1.0"),
        ("state_len", r"initial_state must be the \(C, n, m\) tuple returned by a previous call, got 1 tensors"),
        ("state_C", r"initial_state.C must have shape \(B, H, K, V\) = \(1, 2, 4, 3\)"),
        ("state_m", r"initial_state.m must have shape \(B, H\) = \(1, 2\)"),
        ("impl", r"unknown implementation 'fast' of mlstm; available: chunk, naive"),
    ],
)
def test_bad_input_raises_value_error(case: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mlstm(**bad_inputs()[case])


def test_bad_dtype_raises_type_error() -> None:
    x = torch.ones(1, 2, 1, 2)
    with pytest.raises(TypeError, match=r"i must be a floating-point tensor .* got torch.int64"):
        mlstm(x, x, x, torch.ones(1, 2, 1, dtype=torch.int64), torch.ones(1, 2, 1))
    with pytest.raises(TypeError, match=r"mask must be a bool tensor"):
        neutral_gates(torch.ones(1, 2, 1), torch.ones(1, 2, 1), torch.ones(1, 2))
