"""Depthwise causal 1-D convolution with an optional SiLU: one kernel forward, two backward.

y[b, t, c] = act(sum_j w[j, c] * full[b, t + j * dilation, c] + bias[c]) with full = cat(state, x) along time:
tap K - 1 sits on the newest input, the state holds the (K - 1) * dilation inputs before x (zeros when absent).
x (B, T, C) with unit channel stride (a slice of a projection is read in place when its strides are multiples of
16, see aligned_rows), weight (K, C), bias (C,), state (B, (K - 1) * dilation, C). PyTorch's shifted sums take
2K + 2 elementwise kernels per direction (products, sums, the slices' backward, the concatenation). Here the forward
reads x once and writes y. The backward's first kernel recomputes the pre-activation from x and writes its gradient
dpre = dy silu'(pre) (float32) with per-tile partial sums of dw and dbias (summed in PyTorch: deterministic, no
atomics); the second sums K shifted rows of dpre into dx and d(state). One kernel could do both, but it recomputes
dpre at K shifts, K^2 + 2K + 1 tile loads against 3K + 1 here. H100, session 15, the speech app's 656 x 100 x 512
bf16 convolution in a profiled training step: that one kernel 1.04 ms per call (reading a 772-wide slice 2 bytes at a
time: not the same footing), these two 0.46 ms (from an aligned copy, 32-row tiles); timed alone on a contiguous input
at 64-row tiles, 0.36 ms. PyTorch's shifted sums: about 2.6 ms forward and backward.
"""


import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.common.config import aligned_rows, length_args
from kernels.common.ops import call, eager_function, empty_for_none, fake_grads, saved_inputs_autograd

# [time, channel] tiles per program. H100, speech app's 656 x 100 x 512 bf16 (session 15), forward / backward in us:
# 68 / 518 at 16 rows, 75 / 455 at 32, 99 / 361 at 64.
FORWARD_BLOCK_T, BACKWARD_BLOCK_T, BLOCK_C = 16, 64, 128


@triton.jit
def _load_full(x, state, i_b, rows, o_c, m_c, T, W, sx_b, sx_t, ss_b, ss_t, HAS_STATE: tl.constexpr):
    """Rows `rows` (x coordinates: -W..-1 are the state's, 0..T-1 x's, others zero) of full, float32 [BT, BC]."""
    in_x = (rows >= 0) & (rows < T)
    offsets = i_b * sx_b + rows.to(tl.int64)[:, None] * sx_t + o_c[None, :]  # int64: T x C may pass 2**31
    out = tl.load(x + offsets, mask=in_x[:, None] & m_c[None, :], other=0)
    out = out.to(tl.float32)
    if HAS_STATE:
        in_s = (rows < 0) & (rows >= -W)
        s = tl.load(state + i_b * ss_b + (rows + W)[:, None] * ss_t + o_c[None, :], mask=in_s[:, None] & m_c[None, :], other=0)
        out += s.to(tl.float32)
    return out


@triton.jit
def _pre_activation(x, state, w, bias, i_b, rows, o_c, m_c, T, C, DIL, W, sx_b, sx_t, ss_b, ss_t,
                    K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_STATE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """sum_j w[j] full[rows - (K - 1 - j) DIL] (+ bias), float32 [BT, BC]."""
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(K):
        w_j = tl.load(w + j * C + o_c, mask=m_c, other=0).to(tl.float32)
        acc += _load_full(x, state, i_b, rows - (K - 1 - j) * DIL, o_c, m_c, T, W, sx_b, sx_t, ss_b, ss_t, HAS_STATE) * w_j[None, :]
    if HAS_BIAS:
        acc += tl.load(bias + o_c, mask=m_c, other=0).to(tl.float32)[None, :]
    return acc


@triton.jit(do_not_specialize=length_args("T"))
def _conv_fwd_kernel(
    x, state, w, bias, y, T, C, DIL, sx_b, sx_t, ss_b, ss_t, n_t,
    K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_STATE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    i_bt, i_c = tl.program_id(0), tl.program_id(1)
    i_b, i_t = (i_bt // n_t).to(tl.int64), i_bt % n_t
    rows = i_t * BT + tl.arange(0, BT)
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    W = (K - 1) * DIL
    acc = _pre_activation(x, state, w, bias, i_b, rows, o_c, m_c, T, C, DIL, W, sx_b, sx_t, ss_b, ss_t, K, BT, BC, HAS_STATE, HAS_BIAS)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    mask = (rows < T)[:, None] & m_c[None, :]
    tl.store(y + (i_b * T + rows)[:, None] * C + o_c[None, :], acc.to(y.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=length_args("T"))
def _conv_dpre_kernel(
    x, state, w, bias, dy, dpre, dw_part, db_part, T, C, DIL, sx_b, sx_t, ss_b, ss_t, n_t,
    K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_STATE: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
):
    """One tile of output rows r: the gradient at the pre-activation, dpre = dy silu'(pre) (stored, float32, only with
    SILU: otherwise it is dy), and the tile's partial sums of dw[j] = sum_r dpre[r] full[r - (K - 1 - j) DIL] and of dbias."""
    i_bt, i_c = tl.program_id(0), tl.program_id(1)
    i_b, i_t = (i_bt // n_t).to(tl.int64), i_bt % n_t
    W = (K - 1) * DIL
    rows = i_t * BT + tl.arange(0, BT)
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    m = (rows < T)[:, None] & m_c[None, :]
    offsets = (i_b * T + rows)[:, None] * C + o_c[None, :]
    d = tl.load(dy + offsets, mask=m, other=0).to(tl.float32)
    if SILU:
        pre = _pre_activation(x, state, w, bias, i_b, rows, o_c, m_c, T, C, DIL, W, sx_b, sx_t, ss_b, ss_t, K, BT, BC, HAS_STATE, HAS_BIAS)
        s = tl.sigmoid(pre)
        d = d * s * (1 + pre * (1 - s))
        tl.store(dpre + offsets, d, mask=m)
    part = i_b * n_t + i_t
    for j in tl.static_range(K):
        tap = _load_full(x, state, i_b, rows - (K - 1 - j) * DIL, o_c, m_c, T, W, sx_b, sx_t, ss_b, ss_t, HAS_STATE)
        tl.store(dw_part + (part * K + j) * C + o_c, tl.sum(d * tap, axis=0), mask=m_c)
    if HAS_BIAS:
        tl.store(db_part + part * C + o_c, tl.sum(d, axis=0), mask=m_c)


@triton.jit(do_not_specialize=length_args("T"))
def _conv_dx_kernel(
    dpre, w, dx, dstate, T, C, DIL, n_t,
    K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_STATE: tl.constexpr,
):
    """One tile of rows f of full (x coordinates, from -W): d full[f] = sum_j w[j] dpre[f + (K - 1 - j) DIL], written to
    dx (f >= 0) or d(state) (f < 0)."""
    i_bt, i_c = tl.program_id(0), tl.program_id(1)
    i_b, i_t = (i_bt // n_t).to(tl.int64), i_bt % n_t
    W = (K - 1) * DIL
    rows = i_t * BT + tl.arange(0, BT) - W
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    d_full = tl.zeros([BT, BC], dtype=tl.float32)
    for j in tl.static_range(K):
        r = rows + (K - 1 - j) * DIL
        m = ((r >= 0) & (r < T))[:, None] & m_c[None, :]
        d = tl.load(dpre + (i_b * T + r)[:, None] * C + o_c[None, :], mask=m, other=0).to(tl.float32)
        d_full += d * tl.load(w + j * C + o_c, mask=m_c, other=0).to(tl.float32)[None, :]
    m_x = ((rows >= 0) & (rows < T))[:, None] & m_c[None, :]
    tl.store(dx + (i_b * T + rows)[:, None] * C + o_c[None, :], d_full.to(dx.dtype.element_ty), mask=m_x)
    if HAS_STATE:
        m_s = ((rows < 0) & (rows >= -W))[:, None] & m_c[None, :]
        tl.store(dstate + (i_b * W + rows + W)[:, None] * C + o_c[None, :], d_full.to(dstate.dtype.element_ty), mask=m_s)


def _launch_args(x: Tensor, state: Tensor | None, dilation: int, rows: int, block_t: int) -> tuple:
    B, T, C = x.shape
    n_t = triton.cdiv(rows, block_t)
    s_b, s_t = (state.stride(0), state.stride(1)) if state is not None else (0, 0)
    return (B * n_t, triton.cdiv(C, BLOCK_C)), (T, C, dilation, x.stride(0), x.stride(1), s_b, s_t, n_t)


def causal_conv_forward(x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, silu: bool, dilation: int) -> Tensor:
    """y (B, T, C), contiguous, in x's dtype; see the module docstring for the arguments."""
    x, state = aligned_rows(x), None if state is None else aligned_rows(state)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grid, args = _launch_args(x, state, dilation, x.shape[1], FORWARD_BLOCK_T)
    _conv_fwd_kernel[grid](
        x, state, weight.contiguous(), bias, y, *args,
        K=weight.shape[0], BT=FORWARD_BLOCK_T, BC=BLOCK_C, HAS_STATE=state is not None, HAS_BIAS=bias is not None, SILU=silu,
    )
    return y


def causal_conv_backward(
    x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, silu: bool, dilation: int, dy: Tensor
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(dx, dweight, dbias or None, dstate or None), each in its input's dtype: `_conv_dpre_kernel` (dpre, dw and dbias
    partials), then `_conv_dx_kernel` (dx, dstate) from dpre (from dy itself without SiLU)."""
    x, state, dy, weight = aligned_rows(x), None if state is None else aligned_rows(state), dy.contiguous(), weight.contiguous()
    B, T, C = x.shape
    K = weight.shape[0]
    W = (K - 1) * dilation
    flags = dict(K=K, BT=BACKWARD_BLOCK_T, BC=BLOCK_C, HAS_STATE=state is not None)
    grid, args = _launch_args(x, state, dilation, T, BACKWARD_BLOCK_T)
    dpre = torch.empty(x.shape, dtype=torch.float32, device=x.device) if silu else dy
    dw_part = torch.empty(grid[0], K, C, dtype=torch.float32, device=x.device)
    db_part = None if bias is None else torch.empty(grid[0], C, dtype=torch.float32, device=x.device)
    _conv_dpre_kernel[grid](x, state, weight, bias, dy, dpre, dw_part, db_part, *args, HAS_BIAS=bias is not None, SILU=silu, **flags)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dstate = None if state is None else torch.empty(state.shape, dtype=state.dtype, device=x.device)
    n_t = triton.cdiv(T + W, BACKWARD_BLOCK_T)
    _conv_dx_kernel[(B * n_t, grid[1])](dpre, weight, dx, dstate, T, C, dilation, n_t, **flags)
    db = None if bias is None else db_part.sum(0).to(bias.dtype)
    return dx, dw_part.sum(0).to(weight.dtype), db, dstate


# --- the public op: a torch.library custom op under torch.compile, an autograd.Function over the same forward and
# backward in eager mode (kernels/common/ops.py says why) -------------------------------------------------------------

_causal_conv_op = torch.library.custom_op("seqmix::causal_conv", mutates_args=())(causal_conv_forward)


@_causal_conv_op.register_fake
def _(x, weight, bias, state, silu, dilation):
    return x.new_empty(x.shape)  # contiguous, as the kernel writes it


@torch.library.custom_op("seqmix::causal_conv_backward", mutates_args=())
def _causal_conv_backward_op(
    x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, silu: bool, dilation: int, dy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias, dstate); the last two are empty tensors without bias / state (a custom op cannot return None)."""
    return empty_for_none(x, *causal_conv_backward(x, weight, bias, state, silu, dilation, dy))


@_causal_conv_backward_op.register_fake
def _(x, weight, bias, state, silu, dilation, dy):
    return fake_grads(x, x, weight, bias, state)


_setup_context, _backward = saved_inputs_autograd(tensors=4)
torch.library.register_autograd(
    _causal_conv_op, functools.partial(_backward, grads=_causal_conv_backward_op), setup_context=_setup_context
)
_CausalConv = eager_function("_CausalConv", causal_conv_forward, _setup_context, functools.partial(_backward, grads=causal_conv_backward))


def causal_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, state: Tensor | None = None, *, silu: bool = False, dilation: int = 1
) -> Tensor:
    """act(depthwise causal convolution of cat(state, x) along time) on the GPU; see the module docstring.

    x (B, T, C) float32, bfloat16 or float16; weight (K, C), tap K - 1 on the newest input; bias (C,) or None;
    state (B, (K - 1) * dilation, C) or None (zeros); silu: apply SiLU. Returns y (B, T, C) in x's dtype.
    Differentiable in x, weight, bias and state; under torch.compile the custom op "seqmix::causal_conv".
    """
    return call(_causal_conv_op, _CausalConv, aligned_rows(x), weight, bias, state, silu, dilation)
