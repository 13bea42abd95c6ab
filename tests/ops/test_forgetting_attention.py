"""forgetting_attention: the blockwise form against the full logit matrix, the paper's equation, SDPA, the cache and padding."""

import pytest
import torch
import torch.nn.functional as F

from core.ops import dispatch
from core.ops.forgetting_attention import ForgettingAttentionState, chunk, forgetting_attention
from core.ops.forgetting_attention.chunk import chunk_forgetting_attention
from core.ops.varlen import mask_to_cu_seqlens, pack, unpack

IMPLS = ["naive", "chunk"]
F64 = torch.float64


def make_inputs(B: int, T: int, H: int = 2, K: int = 5, V: int = 3, *, seed: int = 0, dtype: torch.dtype = F64) -> dict:
    """q, k, v and log forget gates log_f = logsigmoid(N(2, 1)) (f mostly in 0.7..0.99, some strong forgetting)."""
    rng = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, d, generator=rng, dtype=F64) for d in (K, K, V))
    log_f = F.logsigmoid(torch.randn(B, T, H, generator=rng, dtype=F64) + 2)
    return {name: x.to(dtype) for name, x in dict(q=q, k=k, v=v, log_f=log_f).items()}


def make_mask(B: int, T: int) -> torch.Tensor:
    """Row 0 left-padded, row 1 with holes, further rows full."""
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, : T // 3] = False
    if B > 1:
        mask[1, T // 4 :: 5] = False
    return mask


def equation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_f: torch.Tensor) -> torch.Tensor:
    """The paper's multiplicative form for one head and sequence, one query at a time (q, k: (T, K), v: (T, V), log_f: (T,)):

    o_i = sum_{j<=i} F_ij exp(s_ij) v_j / sum_{j<=i} F_ij exp(s_ij), F_ij = prod_{l=j+1..i} f_l, s_ij = q_i . k_j / sqrt(K).
    """
    f = log_f.exp()
    outputs = []
    for i in range(q.shape[0]):
        forget = torch.stack([f[j + 1 : i + 1].prod() for j in range(i + 1)])
        weights = forget * (k[: i + 1] @ q[i] / q.shape[1] ** 0.5).exp()
        outputs.append(weights @ v[: i + 1] / weights.sum())
    return torch.stack(outputs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10, msg: str = "") -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{msg} {m}")


def assert_caches_close(actual: ForgettingAttentionState, expected: ForgettingAttentionState, tol: float = 1e-10) -> None:
    for name, a, e in zip(ForgettingAttentionState._fields, actual, expected):
        assert_close(a, e, tol, msg=f"state.{name}:")


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_the_papers_equation(impl: str) -> None:
    x = make_inputs(2, 23, seed=1)
    o, _ = forgetting_attention(**x, impl=impl)
    for b in range(2):
        for h in range(2):
            assert_close(o[b, :, h], equation(*(x[n][b, :, h] for n in ("q", "k", "v", "log_f"))))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [1, 17, 64])
def test_forget_gate_one_is_causal_softmax_attention(impl: str, T: int) -> None:
    x = make_inputs(2, T, K=8, V=8, seed=T)
    o, _ = forgetting_attention(**{**x, "log_f": torch.zeros_like(x["log_f"])}, impl=impl)
    q, k, v = (x[n].transpose(1, 2) for n in ("q", "k", "v"))
    assert_close(o, F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("T, block", [(1, 128), (63, 16), (65, 16), (100, 7), (130, 128), (20, 1)])
def test_blockwise_equals_full_matrix_outputs_states_and_gradients(
    T: int, block: int, masked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunk, "BLOCK_SIZE", block)
    B, H, K, V, S = 3, 2, 5, 3, 11
    x = make_inputs(B, T, H, K, V, seed=T + block)
    rng = torch.Generator().manual_seed(7)
    cache = ForgettingAttentionState(
        torch.randn(B, S, H, K, generator=rng, dtype=F64),
        torch.randn(B, S, H, V, generator=rng, dtype=F64),
        -3 * torch.rand(B, S, H, generator=rng, dtype=F64).flip(1).cumsum(1).flip(1),  # older keys decayed more
        torch.rand(B, S, generator=rng) > 0.2,
    )
    mask = make_mask(B, T) if masked else None
    leaves = [*x.values(), cache.keys, cache.values, cache.log_decay]
    for leaf in leaves:
        leaf.requires_grad_()
    weights = torch.randn(B, T, H, V, generator=rng, dtype=F64)
    results = {}
    for impl in IMPLS:
        o, final = forgetting_attention(**x, mask=mask, initial_state=cache, output_final_state=True, impl=impl)
        loss = (o * weights).sum() + 0.3 * final.log_decay.sum()
        results[impl] = (o, final, torch.autograd.grad(loss, leaves))
    (o_n, s_n, g_n), (o_c, s_c, g_c) = results["naive"], results["chunk"]
    assert_close(o_c, o_n)
    assert_caches_close(s_c, s_n)
    for name, a, b in zip(["q", "k", "v", "log_f", "cache.keys", "cache.values", "cache.log_decay"], g_c, g_n):
        assert torch.isfinite(a).all(), name
        assert_close(a, b, msg=f"gradient of {name}:")


def test_blockwise_gradients_match_finite_differences() -> None:
    x = make_inputs(1, 7, H=1, K=3, V=2, seed=5)
    c = x["log_f"].cumsum(1).requires_grad_()
    inputs = (x["q"].requires_grad_(), x["k"].requires_grad_(), x["v"].requires_grad_(), c)
    mask = torch.tensor([[False, True, True, False, True, True, True]])

    def fn(q, k, v, cq):
        return chunk_forgetting_attention(q, k, v, cq, cq, mask, 0.5, block_size=3)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_blockwise_materialises_one_tile_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = []
    logits = chunk._logits

    def recording(*args):
        tile = logits(*args)
        shapes.append(tile.shape[-2:])
        return tile

    monkeypatch.setattr(chunk, "_logits", recording)
    x = make_inputs(1, 300, seed=2)
    for leaf in x.values():
        leaf.requires_grad_()
    o, _ = forgetting_attention(**x, impl="chunk")
    o.sum().backward()
    assert shapes and all(rows <= chunk.BLOCK_SIZE and cols <= chunk.BLOCK_SIZE for rows, cols in shapes)
    n = -(-300 // chunk.BLOCK_SIZE)
    assert len(shapes) == 2 * n * (n + 1) // 2, "forward and backward visit the tiles on and below the diagonal"


@pytest.mark.parametrize("impl", IMPLS)
def test_decoding_with_the_cache_equals_one_call(impl: str) -> None:
    x = make_inputs(2, 50, seed=4)
    o_full, state_full = forgetting_attention(**x, output_final_state=True, impl=impl)
    for cuts in ([20], [1, 2, 3, 49], list(range(1, 50)), [13, 31, 32]):
        outputs, state, start = [], None, 0
        for stop in cuts + [50]:
            piece = {name: t[:, start:stop] for name, t in x.items()}
            o, state = forgetting_attention(**piece, initial_state=state, output_final_state=True, impl=impl)
            outputs.append(o)
            start = stop
        assert_close(torch.cat(outputs, dim=1), o_full)
        assert_caches_close(state, state_full)
    assert (state_full.log_decay <= 0).all() and (state_full.log_decay[:, -1] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_padded_tokens_are_absent(impl: str) -> None:
    """A padded batch equals each sequence alone, before and after a continuation call, and its outputs are 0."""
    B, T = 2, 40
    x = make_inputs(B, T, seed=6)
    mask = make_mask(B, T)
    garbage = make_inputs(B, T, seed=99)
    padded = {name: torch.where(mask.view(B, T, *[1] * (t.dim() - 2)), t, garbage[name]) for name, t in x.items()}
    o, state = forgetting_attention(**padded, mask=mask, output_final_state=True, impl=impl)
    tail = make_inputs(B, 6, seed=8)
    o_next, _ = forgetting_attention(**tail, initial_state=state, impl=impl)
    assert not o[~mask].any()
    for b in range(B):
        alone = {name: t[b : b + 1, mask[b]] for name, t in x.items()}
        ref, ref_state = forgetting_attention(**alone, output_final_state=True, impl=impl)
        ref_next, _ = forgetting_attention(**{n: t[b : b + 1] for n, t in tail.items()}, initial_state=ref_state, impl=impl)
        assert_close(o[b, mask[b]], ref[0])
        assert_close(o_next[b], ref_next[0])


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_sequences_equal_the_padded_batch(impl: str) -> None:
    B, T = 3, 30
    x = make_inputs(B, T, seed=9)
    mask = make_mask(B, T)
    o_padded, state_padded = forgetting_attention(**x, mask=mask, output_final_state=True, impl=impl)
    packed = {name: pack(t, mask) for name, t in x.items()}
    o, state = forgetting_attention(**packed, cu_seqlens=mask_to_cu_seqlens(mask), output_final_state=True, impl=impl)
    assert_close(unpack(o, mask), o_padded)
    tail = make_inputs(B, 4, seed=10)
    assert_close(
        forgetting_attention(**tail, initial_state=state, impl=impl)[0],
        forgetting_attention(**tail, initial_state=state_padded, impl=impl)[0],
    )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_keeps_dtypes_and_stays_accurate(impl: str, dtype: torch.dtype) -> None:
    x = make_inputs(1, 2000, H=1, K=8, V=4, seed=11)
    x["log_f"] = x["log_f"] * 8  # |c| reaches ~2e3, where float32 sums would be off by ~1e-4
    o, state = forgetting_attention(**{n: t.to(dtype) for n, t in x.items()}, output_final_state=True, impl=impl)
    assert o.dtype == dtype and state.keys.dtype == dtype and state.log_decay.dtype == torch.float32
    reference, _ = forgetting_attention(**{n: t.to(dtype).double() for n, t in x.items()}, impl="naive")
    assert_close(o.double(), reference, 2e-5 if dtype == torch.float32 else 2e-2)


def test_blockwise_is_the_default_on_cpu() -> None:
    assert dispatch.implementations("forgetting_attention", torch.device("cpu")) == ["chunk", "naive"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(log_f=torch.zeros(1, 4, 3)), ValueError, r"log_f must have shape \(B, T, H\) = \(1, 4, 2\)"),
        (dict(log_f=torch.zeros(1, 4, 2, dtype=torch.long)), TypeError, r"log_f must be a floating-point tensor"),
        (dict(mask=torch.ones(1, 4)), TypeError, r"mask must be a bool tensor"),
        (dict(mask=torch.ones(1, 5, dtype=torch.bool)), ValueError, r"mask must have shape \(B, T\)"),
        (dict(initial_state=(torch.zeros(1, 2, 2, 3),)), TypeError, r"ForgettingAttentionState returned by a previous call"),
        (
            dict(initial_state=ForgettingAttentionState(
                torch.zeros(1, 6, 2, 3), torch.zeros(1, 6, 2, 4), torch.zeros(1, 6, 2), torch.ones(1, 6, dtype=torch.bool)
            )),
            ValueError,
            r"initial_state.values must have shape \(B, S, H, V\) = \(1, 6, 2, 3\)",
        ),
        (
            dict(mask=torch.ones(1, 4, dtype=torch.bool), cu_seqlens=torch.tensor([0, 4])),
            ValueError,
            r"either mask .* or cu_seqlens",
        ),
        (dict(impl="flash"), ValueError, r"unknown implementation 'flash' of forgetting_attention"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs: dict, error: type, match: str) -> None:
    inputs = dict(q=torch.zeros(1, 4, 2, 3), k=torch.zeros(1, 4, 2, 3), v=torch.zeros(1, 4, 2, 3), log_f=torch.zeros(1, 4, 2))
    with pytest.raises(error, match=match):
        forgetting_attention(**{**inputs, **kwargs})
