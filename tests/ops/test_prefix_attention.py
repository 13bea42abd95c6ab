"""prefix_attention: the parallel form against the streaming loop and explicit softmax attention over each prefix."""

import pytest
import torch

from core.ops import PrefixAttentionState, prefix_attention

IMPLS = ["naive", "chunk"]
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_inputs(B: int, T: int, H: int, V: int, *, seed: int = 0, absent: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores s (B, T, H) of spread 3 and values v (B, T, H, V); with absent, leading and inner -inf scores."""
    rng = gen(seed)
    s, v = 3 * torch.randn(B, T, H, generator=rng, dtype=F64), torch.randn(B, T, H, V, generator=rng, dtype=F64)
    if absent:
        s[0, : T // 4] = -torch.inf  # nothing seen yet
        s[-1, T // 2 : T // 2 + 5] = -torch.inf
    return s, v


def explicit(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o_t = softmax(s_1..s_t) . v_1..v_t for every t, one prefix at a time; 0 before any token."""
    outputs = []
    for t in range(s.shape[1]):
        weights = torch.softmax(s[:, : t + 1], dim=1).nan_to_num()  # all -inf: no token yet
        outputs.append((weights[..., None] * v[:, : t + 1]).sum(1))
    return torch.stack(outputs, dim=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10, msg: str = "") -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{msg} {m}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
def test_equals_explicit_softmax_over_each_prefix(impl: str, T: int) -> None:
    s, v = make_inputs(2, T, 3, 5, seed=T, absent=T > 4)
    o, _ = prefix_attention(s, v, impl=impl)
    assert_close(o, explicit(s, v))


@pytest.mark.parametrize("absent", [False, True])
def test_chunk_matches_naive_outputs_states_and_gradients(absent: bool) -> None:
    s, v = make_inputs(2, 150, 3, 5, seed=1, absent=absent)
    rng = gen(2)
    m, u, w = (torch.randn(shape, generator=rng, dtype=F64) for shape in ((2, 3), (2, 3), (2, 3, 5)))
    state = PrefixAttentionState(m, u.abs() + 0.5, w)
    leaves = [s.requires_grad_(), v.requires_grad_(), *(x.requires_grad_() for x in state)]
    weights = [torch.randn(shape, generator=rng, dtype=F64) for shape in ((2, 150, 3, 5), (2, 3), (2, 3), (2, 3, 5))]
    results = {}
    for impl in IMPLS:
        o, final = prefix_attention(s, v, initial_state=state, output_final_state=True, impl=impl)
        loss = sum((x * w).sum() for x, w in zip((o, *final), weights))
        results[impl] = (o, final, torch.autograd.grad(loss, leaves))
    (o_n, s_n, g_n), (o_c, s_c, g_c) = results["naive"], results["chunk"]
    assert_close(o_c, o_n)
    for name, a, b in zip(PrefixAttentionState._fields, s_c, s_n):
        assert_close(a, b, msg=f"state.{name}:")
    for name, a, b in zip(["s", "v", "m", "u", "w"], g_c, g_n):
        assert torch.isfinite(a).all(), name
        assert_close(a, b, msg=f"gradient of {name}:")


@pytest.mark.parametrize("impl", IMPLS)
def test_split_with_state_equals_one_call_and_absent_tokens_change_nothing(impl: str) -> None:
    s, v = make_inputs(2, 120, 2, 4, seed=3, absent=True)
    o_full, state_full = prefix_attention(s, v, output_final_state=True, impl=impl)
    for split in (1, 30, 64, 119):
        o_head, state = prefix_attention(s[:, :split], v[:, :split], output_final_state=True, impl=impl)
        o_tail, state = prefix_attention(s[:, split:], v[:, split:], initial_state=state, output_final_state=True, impl=impl)
        assert_close(torch.cat([o_head, o_tail], dim=1), o_full)
        for a, b in zip(state, state_full):
            assert_close(a, b)
    # a call of absent tokens only keeps the state, including the empty one
    _, kept = prefix_attention(torch.full_like(s, -torch.inf), v, initial_state=state_full, output_final_state=True, impl=impl)
    _, empty = prefix_attention(torch.full_like(s, -torch.inf), v, output_final_state=True, impl=impl)
    for a, b in zip(kept, state_full):
        assert_close(a, b)
    assert empty.m.isneginf().all() and not empty.u.any() and not empty.w.any()


def test_float32_stays_finite_with_large_scores() -> None:
    s, v = make_inputs(1, 150, 2, 4, seed=4)
    o, _ = prefix_attention((40 * s).float(), v.float())
    assert torch.isfinite(o).all()
    assert_close(o.double(), explicit(40 * s, v), 1e-4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(v=torch.zeros(1, 4, 2)), ValueError, r"v must have shape \(B, T, H, V\)"),
        (dict(s=torch.zeros(1, 4, 3)), ValueError, r"s must have shape \(B, T, H\) = \(1, 4, 2\)"),
        (dict(s=torch.zeros(1, 4, 2, dtype=torch.long)), TypeError, r"s must be a floating-point tensor"),
        (dict(initial_state=(torch.zeros(1, 2),)), ValueError, r"initial_state must be the \(m, u, w\) tuple returned by a previous call"),
        (
            dict(initial_state=(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2, 4))),
            ValueError,
            r"initial_state.w must have shape \(B, H, V\) = \(1, 2, 3\)",
        ),
        (dict(impl="fast"), ValueError, r"unknown implementation 'fast' of prefix_attention"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs: dict, error: type, match: str) -> None:
    inputs = dict(s=torch.zeros(1, 4, 2), v=torch.zeros(1, 4, 2, 3))
    with pytest.raises(error, match=match):
        prefix_attention(**{**inputs, **kwargs})
