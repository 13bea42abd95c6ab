"""linear_recurrence: chunk against the naive token loop, state passing, varlen, dtypes, errors, dispatch."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from core.ops import dispatch, linear_recurrence, mask_padding
from core.ops.linear_recurrence.chunk import chunk_linear_recurrence
from core.ops.varlen import mask_to_cu_seqlens, pack

GATES = ["none", "scalar", "vector"]
IMPLS = ["naive", "chunk"]
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_inputs(
    B: int, T: int, H: int, K: int, V: int, gate: str, *, dtype: torch.dtype = F64, seed: int = 0, n_states: int = 0
) -> dict[str, torch.Tensor | None]:
    """Random q, k, v [B, T, H, K|V], log decay g (None, [B, T, H] or [B, T, H, K]) and initial_state [n_states, H, K, V]."""
    rng = gen(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=rng, dtype=F64)

    q, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    g = {
        "none": None,
        "scalar": F.logsigmoid(randn(B, T, H) + 2),
        "vector": F.logsigmoid(2 * randn(B, T, H, K) + 2),
        "vector_strong": -5 * torch.rand(B, T, H, K, generator=rng, dtype=F64),  # chunk splits blocks to stay in range
    }[gate]
    state = randn(n_states, H, K, V) if n_states else None
    inputs = dict(q=q, k=k, v=v, g=g, initial_state=state)
    return {name: None if x is None else x.to(dtype) for name, x in inputs.items()}


def along_time(inputs: dict[str, torch.Tensor | None], fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """Apply fn to the per-token inputs q, k, v, g [B, T, ...]; the state passes unchanged."""
    return {name: fn(x) if name in ("q", "k", "v", "g") and x is not None else x for name, x in inputs.items()}


def run(inputs: dict[str, torch.Tensor | None], impl: str, **options) -> tuple[torch.Tensor, torch.Tensor]:
    return linear_recurrence(**inputs, output_final_state=True, impl=impl, **options)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-9, msg: str = "") -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg} {m}")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


# --- chunk against the token loop ---------------------------------------------------------------


@pytest.mark.parametrize("gate", [*GATES, "vector_strong"])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunk_matches_naive_outputs_states_and_gradients(gate: str, T: int, with_state: bool) -> None:
    B, H, K, V = 2, 2, 40, 24
    inputs = make_inputs(B, T, H, K, V, gate, seed=T, n_states=B if with_state else 0)
    leaves = {name: x.requires_grad_() for name, x in inputs.items() if x is not None}
    rng = gen(1)
    o_weight, s_weight = torch.randn(B, T, H, V, generator=rng, dtype=F64), torch.randn(B, H, K, V, generator=rng, dtype=F64)
    results = {}
    for impl in IMPLS:
        o, state = run(inputs, impl, scale=0.3)
        loss = (o * o_weight).sum() + (state * s_weight).sum()
        results[impl] = (o, state, torch.autograd.grad(loss, list(leaves.values())))
    (o_n, s_n, grads_n), (o_c, s_c, grads_c) = results["naive"], results["chunk"]
    assert_close(o_c, o_n)
    assert_close(s_c, s_n)
    for name, grad_c, grad_n in zip(leaves, grads_c, grads_n):
        assert grad_c.shape == leaves[name].shape
        assert_close(grad_c, grad_n, msg=f"gradient of {name}:")


def test_chunk_matches_naive_long_sequence() -> None:
    inputs = make_inputs(1, 1000, 2, 24, 40, "vector", seed=3, n_states=1)
    with torch.no_grad():
        (o_n, s_n), (o_c, s_c) = (run(inputs, impl) for impl in IMPLS)
    assert_close(o_c, o_n)
    assert_close(s_c, s_n)


@pytest.mark.parametrize("chunk_size", [1, 2, 16, 128])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    inputs = make_inputs(1, 77, 2, 8, 8, "vector", seed=4, n_states=1)
    args = (*(inputs[name] for name in ("q", "k", "v", "g")), 0.5, inputs["initial_state"], True)
    o_ref, s_ref = chunk_linear_recurrence(*args)
    o, s = chunk_linear_recurrence(*args, chunk_size=chunk_size)
    assert_close(o, o_ref)
    assert_close(s, s_ref)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_naive_gradcheck(gate: str) -> None:
    inputs = make_inputs(1, 5, 2, 3, 2, gate, seed=5, n_states=1)
    names = [name for name, x in inputs.items() if x is not None]

    def fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return run(dict(zip(names, tensors)), "naive")

    assert torch.autograd.gradcheck(fn, [inputs[name].requires_grad_() for name in names])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strong_vector_decay_does_not_overflow(dtype: torch.dtype) -> None:
    """Per-chunk log decays far below -88 (float32) or -709 (float64) must not produce inf or NaN."""
    inputs = make_inputs(1, 130, 2, 8, 8, "vector", seed=6, n_states=1)
    inputs["g"] = -30 * torch.rand(inputs["g"].shape, generator=gen(7), dtype=F64)
    o_ref, s_ref = run(inputs, "naive")
    o, s = run({name: x.to(dtype) for name, x in inputs.items()}, "chunk")
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    # cumulative sums near -1000 leave float32 exponents an absolute error of about 1e-4
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    assert relative_error(o, o_ref) < tol and relative_error(s, s_ref) < tol


# --- state passing and variable length ------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gate", GATES)
def test_split_with_state_equals_one_call(impl: str, gate: str) -> None:
    T = 150
    inputs = make_inputs(2, T, 2, 16, 8, gate, seed=8, n_states=2)
    o_full, s_full = run(inputs, impl)
    for split in torch.randint(1, T, (3,), generator=gen(9)).tolist():
        o_head, s_head = run(along_time(inputs, lambda x: x[:, :split]), impl)
        o_tail, s_tail = run({**along_time(inputs, lambda x: x[:, split:]), "initial_state": s_head}, impl)
        assert_close(torch.cat([o_head, o_tail], dim=1), o_full)
        assert_close(s_tail, s_full)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gate", GATES)
def test_packed_equals_separate_runs(impl: str, gate: str) -> None:
    lengths = [5, 70, 0, 1, 33]  # an empty sequence keeps its initial state
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    inputs = make_inputs(1, sum(lengths), 2, 12, 20, gate, seed=10, n_states=len(lengths))
    o_packed, s_packed = run(inputs, impl, cu_seqlens=offsets.to(torch.int32))
    for i, (start, end) in enumerate(zip(offsets.tolist(), offsets[1:].tolist())):
        if start == end:
            assert_close(s_packed[i], inputs["initial_state"][i])
            continue
        seq = along_time(inputs, lambda x: x[:, start:end])
        o_seq, s_seq = run({**seq, "initial_state": inputs["initial_state"][i : i + 1]}, impl)
        assert_close(o_packed[:, start:end], o_seq)
        assert_close(s_packed[i : i + 1], s_seq)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gate", GATES)
def test_padded_batch_with_mask_padding_equals_packed(impl: str, gate: str) -> None:
    """Padding anywhere (left, right, holes), made inert by mask_padding, equals the packed valid tokens."""
    B, T = 3, 40
    inputs = make_inputs(B, T, 2, 12, 20, gate, seed=11, n_states=B)
    mask = torch.rand(B, T, generator=gen(12)) < 0.7
    mask[0, :10] = False  # left padding
    mask[1, -10:] = False  # right padding
    k, g = mask_padding(inputs["k"], inputs["g"], mask)
    o_pad, s_pad = run({**inputs, "k": k, "g": g}, impl)
    packed = along_time(inputs, lambda x: pack(x, mask))
    o_packed, s_packed = run(packed, impl, cu_seqlens=mask_to_cu_seqlens(mask))
    assert_close(pack(o_pad, mask), o_packed)
    assert_close(s_pad, s_packed)


# --- dtypes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", GATES)
def test_float32_chunk_matches_naive(gate: str) -> None:
    inputs = make_inputs(2, 300, 2, 32, 32, gate, dtype=torch.float32, seed=13, n_states=2)
    (o_n, s_n), (o_c, s_c) = (run(inputs, impl) for impl in IMPLS)
    assert o_c.dtype == torch.float32 and s_c.dtype == torch.float32
    assert relative_error(o_c, o_n) < 1e-5 and relative_error(s_c, s_n) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gate", GATES)
def test_bfloat16_inputs_keep_float32_state(impl: str, gate: str) -> None:
    inputs = make_inputs(2, 100, 2, 32, 32, gate, dtype=torch.float32, seed=14, n_states=2)
    o_ref, s_ref = run(inputs, "naive")
    low = {name: None if x is None else x.bfloat16() for name, x in inputs.items()}
    o, s = run(low, impl)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert relative_error(o, o_ref) < 2e-2 and relative_error(s, s_ref) < 2e-2


def test_defaults_scale_and_no_final_state() -> None:
    inputs = make_inputs(1, 10, 2, 16, 8, "scalar", seed=15)
    o, state = linear_recurrence(inputs["q"], inputs["k"], inputs["v"], inputs["g"])
    assert state is None
    assert_close(o, run(inputs, "naive", scale=16**-0.5)[0])


# --- errors ---------------------------------------------------------------------------------------


def bad_inputs() -> dict[str, dict]:
    q = torch.randn(1, 6, 2, 4)
    v = torch.randn(1, 6, 2, 3)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    return {
        "rank": dict(q=q[0], k=q[0], v=v[0]),
        "k_shape": dict(q=q, k=q[:, :5], v=v),
        "v_heads": dict(q=q, k=q, v=v[:, :, :1]),
        "g_shape": dict(q=q, k=q, v=v, g=torch.zeros(1, 6, 3)),
        "g_channels": dict(q=q, k=q, v=v, g=torch.zeros(1, 6, 2, 5)),
        "state_shape": dict(q=q, k=q, v=v, initial_state=torch.zeros(1, 2, 3, 4)),
        "state_count": dict(q=q, k=q, v=v, initial_state=torch.zeros(1, 2, 4, 3), cu_seqlens=cu),
        "cu_decreasing": dict(q=q, k=q, v=v, cu_seqlens=torch.tensor([0, 4, 2, 6])),
        "cu_end": dict(q=q, k=q, v=v, cu_seqlens=torch.tensor([0, 2, 5])),
        "cu_batch": dict(q=q.expand(2, -1, -1, -1), k=q.expand(2, -1, -1, -1), v=v.expand(2, -1, -1, -1), cu_seqlens=cu),
        "impl": dict(q=q, k=q, v=v, impl="fast"),
    }


@pytest.mark.parametrize(
    "case, match",
    [
        ("rank", r"q must have shape \(B, T, H, K\).*got 3-D shape \(6, 2, 4\).*view"),
        ("k_shape", r"k must have shape \(B, T, H, K\) as q = \(1, 6, 2, 4\), got .*\(1, 5, 2, 4\)"),
        ("v_heads", r"v must have shape \(B, T, H, V\) with B, T, H as q = \(1, 6, 2, \*\), got .*\(1, 6, 1, 3\)"),
        ("g_shape", r"g must have shape \(B, T, H\) = \(1, 6, 2\) .* \(B, T, H, K\) = \(1, 6, 2, 4\) .*got \(1, 6, 3\)"),
        ("g_channels", r"per key channel, got \(1, 6, 2, 5\)"),
        ("state_shape", r"initial_state must have shape \(N, H, K, V\) = \(1, 2, 4, 3\), got .*\(1, 2, 3, 4\)"),
        ("state_count", r"initial_state must have shape \(N, H, K, V\) = \(2, 2, 4, 3\).*one state per sequence"),
        ("cu_decreasing", r"cu_seqlens must be non-decreasing.*\[0, 4, 2, 6\]"),
        ("cu_end", r"cu_seqlens must start at 0 and end at the packed length 6, got \[0, 2, 5\]"),
        ("cu_batch", r"packed into batch size 1.*got batch size 2.*pack"),
        ("impl", r"unknown implementation 'fast' of linear_recurrence; available: chunk, naive"),
    ],
)
def test_bad_input_raises_value_error(case: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        linear_recurrence(**bad_inputs()[case])


@pytest.mark.parametrize(
    "inputs, match",
    [
        (dict(q=torch.ones(1, 2, 1, 2, dtype=torch.int64)), r"q must be a floating-point tensor .* got torch.int64"),
        (dict(v=torch.ones(1, 2, 1, 2, dtype=torch.float64)), r"share one dtype, got torch.float32, torch.float32, torch.float64"),
        (dict(cu_seqlens=torch.tensor([0.0, 2.0])), r"cu_seqlens must be int32 or int64, got torch.float32"),
    ],
)
def test_bad_dtype_raises_type_error(inputs: dict, match: str) -> None:
    x = torch.ones(1, 2, 1, 2)
    with pytest.raises(TypeError, match=match):
        linear_recurrence(**{"q": x, "k": x, "v": x, **inputs})


# --- dispatch -------------------------------------------------------------------------------------


def test_best_implementation_on_cpu_is_chunk() -> None:
    assert dispatch.implementations("linear_recurrence", torch.device("cpu"))[:2] == ["chunk", "naive"]


def test_dispatch_registers_and_resolves_by_priority_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_REGISTRY", {})
    cpu = torch.device("cpu")

    @dispatch.register("op", "slow")
    def slow() -> str:
        return "slow"

    @dispatch.register("op", "gpu_only", priority=2, supports=lambda device: device.type == "cuda")
    def gpu_only() -> str:
        return "gpu_only"

    assert dispatch.resolve("op", None, cpu) is slow
    assert dispatch.resolve("op", None, torch.device("cuda")) is gpu_only
    with pytest.raises(ValueError, match=r"'gpu_only' of op does not run on device cpu; available there: slow"):
        dispatch.resolve("op", "gpu_only", cpu)
    with pytest.raises(ValueError, match=r"'slow' of op 'op' is registered twice"):
        dispatch.register("op", "slow")(slow)
    with pytest.raises(ValueError, match=r"no implementation is registered for op 'other'; registered ops: \['op'\]"):
        dispatch.resolve("other", None, cpu)
