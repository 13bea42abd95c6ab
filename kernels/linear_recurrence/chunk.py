"""Chunked linear recurrence with a decay per (token, head) or per key channel: Simple GLA, RetNet,
Mamba-2 SSD, linear attention, GLA.

S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t); chunk algorithm of spec section 1, schedule
in README.md. Forward: chunk-local cumsum of g, state pass (h), output pass (o). Backward: the state
pass again (h is recomputed, not stored), reverse state pass (dh), dv, then dq, dk and dg. dg is
computed per chunk (d loss / d gamma from the score matrices in fp32, the read of h and the writes
to the next state, reverse-summed inside the chunk): never as a reverse cumsum of q.dq - k.dk over
the whole sequence, whose terms cancel over long ranges and leave bf16 rounding errors growing with T.
A decay per key channel (flag G_PER_K) runs the same state, output and dv kernels; its intra-chunk
scores and dq, dk, dg come from vector_decay.py (secondary chunking).

Layout: q, k (B, T, H, K); v, o (B, T, H, V); g (B, T, H) or (B, T, H, K); states (N, H, K, V) float32. Per-chunk
states h, dh are (total_chunks, H, K, V) in the input dtype (they feed tensor-core matmuls in that
dtype; the state carried along the sequence stays float32). Cumulative gates are float32 in log2
units, used with exp2. Offsets are int64; T is a run-time argument (no recompilation per length).
"""

import functools
from collections.abc import Callable

import torch
import triton
from torch import Tensor

from kernels.common.chunks import ChunkLayout, chunk_layout
from kernels.common.config import keep_states, multiprocessors
from kernels.common.cumsum import LOG2E, chunk_local_cumsum
from kernels.common.hopper import serves
from kernels.common.ops import call, eager_function, empty_for_none
from kernels.linear_recurrence import dqk_hopper
from kernels.linear_recurrence.passes import DQK_K_TILE, _bwd_dh_kernel, _bwd_dqk_kernel, _bwd_dv_kernel, _fwd_h_kernel, _fwd_o_kernel
from kernels.linear_recurrence.vector_decay import SUB_CHUNK, _dqkg_kernel, _intra_grad_kernel, _intra_scores_kernel

CHUNK_SIZE = 64
MAX_HEAD_DIM = 256
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --- launchers (the kernels are in passes.py and vector_decay.py) ---------------------------------------------------------------------------------------


def _block(dim: int, cap: int) -> int:
    """Tile width for a head dimension: the next power of two, at least 64, at most `cap`. Head dims below 64
    run in masked 64-wide tiles: with 32-wide K tiles the backward kernels made illegal memory accesses on the
    H100 (Triton 3.6; K = 32, the Vision Mamba shape), in the interpreter they were correct. The 64-wide tiles
    pass the GPU tests at K = 16 and 32 (H200, 2026-11-23)."""
    return min(max(triton.next_power_of_2(dim), 64), cap)


def _common(q: Tensor, v: Tensor, layout: ChunkLayout) -> dict:
    return dict(
        H=q.shape[2], K=q.shape[3], V=v.shape[-1], BT=CHUNK_SIZE, IS_VARLEN=layout.cu_seqlens is not None,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )


def _tile_grid(n_tiles: int, q: Tensor, layout: ChunkLayout) -> tuple[int, int, int]:
    B, _, H, _ = q.shape
    return (n_tiles, layout.n_chunks, (B if layout.cu_seqlens is None else 1) * H)


def _gates(gc: Tensor | None) -> dict:
    """The gate flags of the kernels: no gate, one per (token, head), or (G_PER_K) one per key channel."""
    return dict(USE_G=gc is not None, G_PER_K=gc is not None and gc.dim() == 4)


def saved_chunks(batch: int, T: int, n_seqs: int, varlen: bool) -> int:
    """Rows of the per-chunk tensors a forward saves for the backward (h; the delta rule's T): known from shapes alone
    (the fake implementations need that), so exact without cu_seqlens and an upper bound with it:
    sum(ceil(T_i / C)) <= T // C + N."""
    return T // CHUNK_SIZE + n_seqs if varlen else batch * triton.cdiv(T, CHUNK_SIZE)


def _state_pass(
    k: Tensor, v: Tensor, gc: Tensor | None, h0: Tensor | None, layout: ChunkLayout, output_final_state: bool
) -> tuple[Tensor, Tensor | None]:
    """States entering every chunk [saved_chunks >= total_chunks, H, K, V] (input dtype) and the final states
    [N, H, K, V] (fp32)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    h = k.new_empty(saved_chunks(B, T, layout.n_seqs, layout.cu_seqlens is not None), H, K, V)
    ht = k.new_empty(layout.n_seqs, H, K, V, dtype=torch.float32) if output_final_state else None
    BK, BV = _block(K, 64), _block(V, 64)
    _fwd_h_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), layout.n_seqs * H)](
        k, v, gc, h, h0, ht, layout.cu_seqlens, layout.chunk_offsets, T,
        BK=BK, BV=BV, USE_H0=h0 is not None, STORE_HT=output_final_state, **_gates(gc), **_common(k, v, layout),
    )
    return h, ht


def _intra_scores(q: Tensor, k: Tensor, gc: Tensor, layout: ChunkLayout) -> Tensor:
    """Decay per key channel: the unscaled intra-chunk scores A [B, T, H, CHUNK_SIZE] (fp32), sub-chunked."""
    common = {name: x for name, x in _common(q, q, layout).items() if name != "V"}  # the scores never see V
    A = q.new_empty(*q.shape[:3], CHUNK_SIZE, dtype=torch.float32)
    _intra_scores_kernel[_tile_grid(CHUNK_SIZE // SUB_CHUNK, q, layout)](
        q, k, gc, A, layout.cu_seqlens, layout.chunk_indices, q.shape[1], BC=SUB_CHUNK, BK=_block(q.shape[-1], 64), **common,
    )
    return A


def _forward(q, k, v, gc, scale, h0, layout, output_final_state):
    """(o, final states or None, the per-channel decay's intra-chunk scores A or None, the chunks' states h)."""
    h, ht = _state_pass(k, v, gc, h0, layout, output_final_state)
    gates = _gates(gc)
    A = _intra_scores(q, k, gc, layout) if gates["G_PER_K"] else None
    o = torch.empty_like(v)
    K, V = q.shape[-1], v.shape[-1]
    BK, BV = _block(K, 128), _block(V, 128)
    _fwd_o_kernel[_tile_grid(triton.cdiv(V, BV), q, layout)](
        q, k, v, gc, h, o, layout.cu_seqlens, layout.chunk_indices, q.shape[1], scale,
        BK=BK, BV=BV, A=A, **gates, **_common(q, v, layout),
    )
    return o, ht, A, h


def _backward(q, k, v, gc, scale, h0, layout, do, dht, need_dh0, A=None, h=None):
    """A, h: the per-channel decay's scores and the chunks' states saved by the forward (None: recomputed)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    common = _common(q, v, layout)
    gates = _gates(gc)
    if h is None:
        h, _ = _state_pass(k, v, gc, h0, layout, False)

    dh = q.new_empty(layout.total_chunks, H, K, V)
    dh0 = q.new_empty(layout.n_seqs, H, K, V, dtype=torch.float32) if need_dh0 else None
    BK, BV = _block(K, 64), _block(V, 64)
    _bwd_dh_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), layout.n_seqs * H)](
        q, do, gc, dh, dht, dh0, layout.cu_seqlens, layout.chunk_offsets, T, scale,
        BK=BK, BV=BV, USE_DHT=dht is not None, STORE_DH0=need_dh0, **gates, **common,
    )

    if gates["G_PER_K"] and A is None:
        A = _intra_scores(q, k, gc, layout)
    dv = torch.empty_like(v)
    BK, BV = _block(K, 128), _block(V, 128)
    _bwd_dv_kernel[_tile_grid(triton.cdiv(V, BV), q, layout)](
        q, k, gc, do, dh, dv, layout.cu_seqlens, layout.chunk_indices, T, scale,
        BK=BK, BV=BV, USE_DH=True, A=A, **gates, **common,
    )
    del A
    if gates["G_PER_K"]:
        dq, dk, dg = _vector_decay_dqkg(q, k, v, gc, h, do, dh, scale, layout)
        return dq, dk, dv, dg, dh0

    dq, dk, dg = dqk_pass(q, k, v, gc, h, do, dh, scale, layout)
    return dq, dk, dv, (None if dg is None else dg.sum(0)), dh0


def dqk_pass(q: Tensor, k: Tensor, v: Tensor, gc: Tensor | None, h: Tensor, do: Tensor, dh: Tensor, scale: float,
             layout: ChunkLayout) -> tuple[Tensor, Tensor, Tensor | None]:
    """dQ, dK (input dtype) and dg's shares [NK, B, T, H] (float32, to be summed; None without a gate) for a scalar
    decay gc [B, T, H] or none, from the states h and their gradients dh (also the delta rule's, with U~ for v).
    Hopper GPUs run the warp-specialized Gluon kernel where it applies (one share), others `_bwd_dqk_kernel`."""
    if serves(q, v, layout.cu_seqlens):
        return dqk_hopper.bwd_dqk(q, k, v, gc, h, do, dh, scale, multiprocessors(q.device))
    B, T, H, K = q.shape
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    BK, BV = _block(K, DQK_K_TILE), _block(v.shape[-1], 64)
    NK = triton.cdiv(K, BK)
    dg = q.new_empty(NK, B, T, H, dtype=torch.float32) if gc is not None else None
    _bwd_dqk_kernel[_tile_grid(NK, q, layout)](
        q, k, v, gc, h, do, dh, dq, dk, dg, layout.cu_seqlens, layout.chunk_indices, T, scale, B * T * H,
        BK=BK, BV=BV, USE_G=gc is not None, **_common(q, v, layout),
    )
    return dq, dk, dg


def _vector_decay_dqkg(q, k, v, gc, h, do, dh, scale, layout):
    """Decay per key channel: dq, dk (input dtype) and dg [B, T, H, K] (fp32). The intra-chunk parts of
    dq and dk (fp32, sub-chunked), then the state parts, the sums and dg per chunk."""
    common = _common(q, v, layout)
    K, V = q.shape[-1], v.shape[-1]
    BK, BV = _block(K, 64), _block(V, 64)
    NK = triton.cdiv(K, BK)
    dq_intra, dk_intra = (q.new_empty(q.shape, dtype=torch.float32) for _ in range(2))
    grid = _tile_grid(CHUNK_SIZE // SUB_CHUNK, q, layout)  # one program per sub-chunk, every K tile
    scratch = q.new_empty(grid[0] * grid[1] * grid[2] * 2 * SUB_CHUNK**2, dtype=torch.float32)  # dA's diagonal blocks
    _intra_grad_kernel[grid](
        q, k, v, gc, do, dq_intra, dk_intra, scratch, layout.cu_seqlens, layout.chunk_indices, q.shape[1], scale,
        BC=SUB_CHUNK, BK=BK, BV=BV, **common,
    )
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dg = q.new_empty(q.shape, dtype=torch.float32)
    _dqkg_kernel[_tile_grid(NK, q, layout)](
        q, k, v, gc, h, do, dh, dq_intra, dk_intra, dq, dk, dg, layout.cu_seqlens, layout.chunk_indices, q.shape[1], scale,
        BK=BK, BV=BV, **common,
    )
    return dq, dk, dg


# --- the public op: a torch.library custom op (opaque to torch.compile, with fake implementations) under
# torch.compile, an autograd.Function over the same forward and backward in eager mode (kernels/common/ops.py) -----


def _linear_recurrence_forward(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float,
    initial_state: Tensor | None, output_final_state: bool, cu_seqlens: Tensor | None, save_for_backward: bool = False,
    save_states: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(o, final state, scores, gate cumsum, states), each of the last four an empty tensor when not returned: a custom
    op cannot return None. With save_for_backward the backward's inputs come back: with save_states too
    (kernels.common.config.keep_states) the chunks' states h ([saved_chunks, H, K, V], input dtype: the backward then
    skips its state pass, 0.19 of the scalar decay's 1.91 ms at B8 T4096 H16 D128 on the H100), for a decay per key
    channel the intra-chunk scores A (float32 [B, T, H, CHUNK_SIZE]), and for a float32 g its chunk-local cumsum gc
    (the size of g, which the backward then needs no more: fla keeps g_cumsum the same way)."""
    layout = chunk_layout(q.shape[0], q.shape[1], CHUNK_SIZE, cu_seqlens)
    gc = None if g is None else chunk_local_cumsum(g, layout, CHUNK_SIZE, scale=LOG2E)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, ht, A, h = _forward(q, k, v, gc, scale, h0, layout, output_final_state)
    saved = (None,) * 3
    if save_for_backward:
        saved = (A, gc if _saves_gate_cumsum(g, save_for_backward) else None, h if save_states else None)
    return o, *empty_for_none(q.new_empty(0, dtype=torch.float32), ht, *saved)


_linear_recurrence_op = torch.library.custom_op("seqmix::chunk_linear_recurrence", mutates_args=())(_linear_recurrence_forward)


def _saved_scores_shape(q: Tensor, g: Tensor | None, save: bool) -> tuple[int, ...]:
    return (*q.shape[:3], CHUNK_SIZE) if save and g is not None and g.dim() == 4 else (0,)


def _saves_gate_cumsum(g: Tensor | None, save: bool) -> bool:
    """The forward returns gc for the backward in place of g when they have one size (g float32)."""
    return save and g is not None and g.dtype == torch.float32


@_linear_recurrence_op.register_fake
def _(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, save_for_backward=False, save_states=False):
    B, T, H, K = q.shape
    n = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    shape = (n, H, K, v.shape[3]) if output_final_state else (0,)
    scores = q.new_empty(_saved_scores_shape(q, g, save_for_backward), dtype=torch.float32)
    gc = torch.empty_like(g) if _saves_gate_cumsum(g, save_for_backward) else q.new_empty(0, dtype=torch.float32)
    h_shape = (saved_chunks(B, T, n, cu_seqlens is not None), H, K, v.shape[3])
    h = q.new_empty(h_shape) if save_for_backward and save_states else q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(v), q.new_empty(shape, dtype=torch.float32), scores, gc, h


def _linear_recurrence_backward_impl(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float, initial_state: Tensor | None,
    cu_seqlens: Tensor | None, do: Tensor, dht: Tensor | None, need_dg: bool, need_dh0: bool, saved_scores: Tensor | None = None,
    g_is_cumsum: bool = False, saved_h: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dg, dh0); dg and dh0 are empty tensors unless asked for. saved_scores, saved_h: the forward's A
    and h (read only), or None / empty tensors to recompute them. g_is_cumsum: g is the forward's gc (float32), not
    the gates."""
    layout = chunk_layout(q.shape[0], q.shape[1], CHUNK_SIZE, cu_seqlens)
    gc = g if g is None or g_is_cumsum else chunk_local_cumsum(g, layout, CHUNK_SIZE, scale=LOG2E)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    dht = None if dht is None else dht.float().contiguous()
    A, h = (None if t is None or t.numel() == 0 else t for t in (saved_scores, saved_h))
    dq, dk, dv, dg, dh0 = _backward(q, k, v, gc, scale, h0, layout, do.contiguous(), dht, need_dh0, A, h)
    dg = dg.to(g.dtype) if need_dg else q.new_empty(0)  # distinct empty tensors: outputs may not alias
    return dq, dk, dv, dg, dh0.to(initial_state.dtype) if need_dh0 else q.new_empty(0)


_linear_recurrence_backward_op = torch.library.custom_op("seqmix::chunk_linear_recurrence_backward", mutates_args=())(
    _linear_recurrence_backward_impl
)


@_linear_recurrence_backward_op.register_fake
def _(q, k, v, g, scale, initial_state, cu_seqlens, do, dht, need_dg, need_dh0, saved_scores=None, g_is_cumsum=False, saved_h=None):
    grads = (torch.empty_like(x) for x in (q, k, v))
    return *grads, torch.empty_like(g) if need_dg else q.new_empty(0), torch.empty_like(initial_state) if need_dh0 else q.new_empty(0)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, g, scale, initial_state, _, cu_seqlens, *_ = inputs
    _, _, saved_scores, saved_gc, saved_h = output
    ctx.mark_non_differentiable(saved_scores, saved_gc, saved_h)
    ctx.set_materialize_grads(False)  # else autograd fills zero gradients of their sizes for the backward
    ctx.g_is_cumsum = saved_gc.numel() > 0
    ctx.save_for_backward(q, k, v, saved_gc if ctx.g_is_cumsum else g, initial_state, cu_seqlens, saved_scores, saved_h)
    ctx.scale = scale


def _linear_recurrence_backward(ctx, do, dht, *_, backward: Callable = _linear_recurrence_backward_op):
    q, k, v, g, initial_state, cu_seqlens, saved_scores, saved_h = ctx.saved_tensors
    do = torch.zeros_like(v) if do is None else do
    dht = None if dht is None or dht.numel() == 0 else dht
    need_dg = g is not None and ctx.needs_input_grad[3]
    need_dh0 = initial_state is not None and ctx.needs_input_grad[5]
    dq, dk, dv, dg, dh0 = backward(
        q, k, v, g, ctx.scale, initial_state, cu_seqlens, do, dht, need_dg, need_dh0, saved_scores, ctx.g_is_cumsum, saved_h
    )
    return dq, dk, dv, dg if need_dg else None, None, dh0 if need_dh0 else None, None, None, None, None


torch.library.register_autograd(_linear_recurrence_op, _linear_recurrence_backward, setup_context=_setup_context)
_LinearRecurrence = eager_function(
    "_LinearRecurrence", _linear_recurrence_forward, _setup_context,
    functools.partial(_linear_recurrence_backward, backward=_linear_recurrence_backward_impl),
)


def chunk_linear_recurrence(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T and o_t = S_t^T (scale q_t), read after the update, on the GPU.

    q, k: (B, T, H, K); v: (B, T, H, V), float32, bfloat16 or float16, K, V <= 256; g: log decay
    <= 0 (finite) of shape (B, T, H) (one per head: Simple GLA, RetNet, Mamba-2), (B, T, H, K) (one per
    key channel, scaling the rows of S: GLA), or None for no decay; scale defaults to K ** -0.5.
    initial_state: (N, H, K, V); cu_seqlens: int32/int64 (N + 1,) offsets of N sequences packed
    into B = 1 (chunks never cross a boundary; each has its own initial and final state).
    Returns o (B, T, H, V) in the input dtype and the final state (N, H, K, V) in float32 or None.
    Differentiable in q, k, v, g and initial_state. A torch.library custom op
    ("seqmix::chunk_linear_recurrence") with a fake implementation, so torch.compile traces models that call it; eager
    calls take an autograd.Function over the same forward and backward.
    """
    check_inputs(q, k, v, g, initial_state, cu_seqlens, per_channel_g=True)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v = (x.contiguous() for x in (q, k, v))
    # keep what the backward would recompute only when one will run: the chunks' states h (K V * 2 / C bytes per token
    # and head: 268 MB at B = 8, T = 4096, H = 16, D = 128; unless SEQMIX_RECOMPUTE_STATES=1), a decay per key channel's intra-chunk scores (C * 4 bytes:
    # 134 MB there; recomputed, about 0.4 ms on the H100 at that size) and a float32 g's chunk-local cumsum in place
    # of g (0.18 ms there for a decay per key channel)
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, g, initial_state))
    o, final_state, *_ = call(
        _linear_recurrence_op, _LinearRecurrence, q, k, v, g, scale, initial_state, output_final_state, cu_seqlens, save,
        save and keep_states(),
    )
    return o, final_state if output_final_state else None


def head_dims_supported(q: Tensor, v: Tensor) -> bool:
    """K, V <= MAX_HEAD_DIM (shared with the delta-rule kernels; head dims below 64 run in masked 64-wide
    tiles, see _block)."""
    return max(q.shape[-1], v.shape[-1]) <= MAX_HEAD_DIM


def supports(q: Tensor, v: Tensor, g: Tensor | None) -> bool:
    """Whether these kernels take the inputs (otherwise use the PyTorch chunk form): float32 or 16-bit
    inputs, head dims K, V up to MAX_HEAD_DIM, and no decay, one per (token, head)
    or one per key channel."""
    return q.dtype in DTYPES and head_dims_supported(q, v) and (g is None or g.dim() in (3, 4))


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, initial_state: Tensor | None, cu_seqlens: Tensor | None,
    *, per_channel_g: bool = False,
) -> None:
    """Clear errors for inputs the kernels cannot take (shared with the delta-rule kernels, which take no
    decay per key channel: per_channel_g=False)."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, T, H, K) and v (B, T, H, V) with the same B, T, H; got {q.shape}, {k.shape}, {v.shape}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in DTYPES:
        raise TypeError(f"q, k, v must share one dtype among {DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}")
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        raise ValueError(f"head dims above {MAX_HEAD_DIM} are not supported by the Triton kernel, got K={q.shape[-1]}, V={v.shape[-1]}")
    if per_channel_g and g is not None and g.shape not in (q.shape[:3], q.shape):
        raise ValueError(f"g must have shape (B, T, H) = {tuple(q.shape[:3])} or (B, T, H, K) = {tuple(q.shape)}, got {tuple(g.shape)}")
    if not per_channel_g and g is not None and g.shape != q.shape[:3]:
        raise ValueError(
            f"the Triton kernel takes g of shape (B, T, H) = {tuple(q.shape[:3])} (one decay per head), got {tuple(g.shape)}; "
            "use the PyTorch chunk implementation for a decay per key channel"
        )
    if q.shape[1] == 0:
        raise ValueError("the sequence length T is 0; pass at least one token")
    if cu_seqlens is not None and q.shape[0] != 1:
        raise ValueError(f"with cu_seqlens the sequences must be packed into batch size 1, got batch size {q.shape[0]}")
    n = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    expected = (n, q.shape[2], q.shape[3], v.shape[3])
    if initial_state is not None and tuple(initial_state.shape) != expected:
        raise ValueError(f"initial_state must have shape (N, H, K, V) = {expected}, got {tuple(initial_state.shape)}")
