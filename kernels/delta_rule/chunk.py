"""Chunked (gated) delta rule: DeltaNet and Gated DeltaNet, forward and backward; see README.md. This file holds
the sequential state passes, the launchers and the custom op; the per-chunk WY kernels are in wy.py.

S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t). Per chunk
(WY / UT form of spec 2.2): T = (I + A)^-1 with A = strict_lower(Diag(beta) (K K^T * Gamma)),
W = T Diag(beta) (K * exp(gamma)), U = T Diag(beta) V, pseudo-values U~ = U - W h[c]; the output and
the next state are then those of the linear recurrence with U~ in place of V, so its output and
score-gradient kernels (kernels.linear_recurrence.chunk) serve here unchanged. W and U are never formed (since
session 13): the state pass computes U~ = T Diag(beta) (V - Diag(exp(gamma)) K h[c]) from T, and the reverse pass
W^T dU~ = K^T Diag(beta exp(gamma)) T^T dU~, so T is the only per-chunk tensor between the WY kernels and the passes.

Forward: chunk-local cumsum of g, `_inverse_kernel` (T), `_delta_h_kernel` (h and U~, sequential
over chunks), the linear recurrence's output kernel (or, see output_in_state_pass, the output in the state pass);
under autograd the op also returns T for the backward, and h and U~ where it formed them. Backward: the state pass
again only where h and U~ were not saved (from the saved T; T is recomputed only when none was saved), the linear
recurrence's chunk-local dV, `_delta_dh_kernel` (dh and dX = T^T dU~,
reverse), the linear recurrence's dQ/dK/dg kernel, then `_wy_bwd_kernel` (dK, dV, dbeta, dg through X and T).

Every dot takes 16-bit operands for 16-bit inputs, as fla's (T, float32, enters as a 16-bit head and tail: _dot_t).
Until session 12 the ungated passes kept float32 recurrent operands, against the compounding of bf16 rounding in
the differences of nearly equal terms U - W h (0.502 % output error at T = 4096, beta in (0, 2), in that form). In
this form V - exp(gamma) K h is formed in float32 from the 16-bit V and K, and that case's output error is 0.487 %
(H100, session 13) against the 0.5 % tolerance.

Layout as in kernels.linear_recurrence: q, k (B, T, H, K); v (B, T, H, V); beta, g (B, T, H); states
(N, H, K, V) float32; per-chunk h, dh (total_chunks, H, K, V) in the input dtype; T per chunk and
head (saved_chunks(...) >= total_chunks, H, C, C) float32. No dot result is ever transposed before another dot (Triton
3.4 - 3.7.0 miscompiles that on Hopper, fla issue 640): transposed operands are loaded transposed.
"""

import functools
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.common.chunks import ChunkLayout, chunk_layout, chunk_rows, sequence_coords
from kernels.common.config import all_configs, configs, keep_states, length_args, multiprocessors
from kernels.common.cumsum import LOG2E, chunk_local_cumsum
from kernels.common.hopper import serves
from kernels.common.ops import call, eager_function, empty_for_none
from kernels.delta_rule import state_hopper, wy_hopper
from kernels.delta_rule.wy import INVERSE_CHOICES, WY_CHOICES, _inverse_kernel, _wy_bwd_kernel
from kernels.linear_recurrence.chunk import (
    CHUNK_SIZE, DTYPES, MAX_HEAD_DIM, _block, _common, _tile_grid, check_inputs, dqk_pass, head_dims_supported, saved_chunks,
)
from kernels.linear_recurrence.passes import KEY, _bwd_dv_kernel, _fwd_o_kernel

# Config lists of the state passes, best first on the H100 at H16 D128 (session 13), one per launch kind (deeper: see
# deeper_pipeline). With 64-wide V tiles (B8 T4096, two programs per multiprocessor) the forward pass took 0.34 ms at
# two stages against 0.47 at three, the reverse one 0.53 ms at one stage against 0.72 at two (two stages take more
# shared memory than two programs per multiprocessor can share); with 32-wide ones (B2 T16384) the forward pass 0.62 ms
# at three stages against 0.78 at two, the reverse one 1.04 ms at two against 1.26 at one; DeltaNet's forward pass with
# the output (B8 T4096) 0.44 ms at three stages against 0.53 at two.
STATE_CHOICES = {False: all_configs(warps=(4, 2), stages=(2, 3)), True: all_configs(warps=(4, 2), stages=(3, 2))}
DH_CHOICES = {False: all_configs(warps=(4,), stages=(1, 2, 3)), True: all_configs(warps=(4,), stages=(2, 3, 1))}


# --- state passes: one program per (V tile, sequence and head) with the whole K, sequential over chunks ---


@triton.jit
def _dot_t(t, x, dt: tl.constexpr, DOT_PREC: tl.constexpr):
    """t @ x for float32 t (T or T^T, [BT, BT]) and x: for 16-bit inputs (dt) t split into a 16-bit head and tail and x
    rounded to 16 bits, two 16-bit dots; one exact dot for float32 inputs. (One tf32 dot instead: H100, gated
    B8 T4096 H16 D128, session 13, the state pass 0.33 -> 0.50 ms and illegal memory accesses with 32-wide V tiles.)"""
    if DOT_PREC == "ieee":
        return tl.dot(t, x, input_precision=DOT_PREC)
    hi = t.to(dt)
    x = x.to(dt)
    return tl.dot(hi, x, input_precision=DOT_PREC) + tl.dot((t - hi.to(tl.float32)).to(dt), x, input_precision=DOT_PREC)


@triton.jit(do_not_specialize=length_args("T"))
def _delta_h_kernel(
    q, k, v, beta, gc, Tm, h, v_new, o, h0, ht, cu_seqlens, chunk_offsets, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr, OUTPUT: tl.constexpr,
):
    """h[c] = state entering chunk c; U~ = T Diag(beta) (V - Diag(exp(gamma)) K h[c]) (= U - W h[c], with T read
    from Tm: W and U are never formed); S <- exp(gamma_C) S + (K * exp(gamma_C - gamma))^T U~.
    OUTPUT (the forward, ungated only): the output O = scale Q h[c] + (scale Q K^T, causal) U~ of the chunk from h[c] and
    U~ in registers, instead of storing h and U~ (the backward's pass) for the output kernel."""
    tl.static_assert(not (OUTPUT and USE_G), "the output in the state pass is ungated")
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, c0 = sequence_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, BT)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0).to(tl.float32)
    for i_t in range(0, NT):
        if not OUTPUT:
            tl.store(h + ((c0 + i_t) * H + i_h) * K * V + o_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
        m_tv = m_t[:, None] & m_v[None, :]
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
        b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)  # [BK, BT]
        b_x = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0).to(tl.float32)  # [BT, BV]
        b_beta = tl.load(beta + base + r, mask=m_t, other=0).to(tl.float32)
        b_T = tl.load(Tm + ((c0 + i_t) * H + i_h) * BT * BT + (o_c[:, None] * BT + o_c[None, :]))  # [BT, BT] float32
        b_kh = tl.dot(b_k, b_h.to(b_k.dtype), input_precision=DOT_PREC)
        if USE_G:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_g_last = tl.load(gc + (bos + last) * H + i_h)
            b_g = tl.load(gc + base + r, mask=m_t, other=0)
            b_kh *= tl.exp2(b_g)[:, None]
        b_u = _dot_t(b_T, (b_x - b_kh) * b_beta[:, None], b_k.dtype, DOT_PREC)  # U~, float32 [BT, BV]
        if OUTPUT:
            b_q = tl.load(q + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
            b_o = tl.dot(b_q, b_h.to(b_q.dtype), input_precision=DOT_PREC)
            b_A = tl.dot(b_q, b_kt, input_precision=DOT_PREC)
            b_A = tl.where((o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :], b_A * scale, 0)
            b_o = b_o * scale + tl.dot(b_A.to(b_q.dtype), b_u.to(b_q.dtype), input_precision=DOT_PREC)
            tl.store(o + base * V + (r[:, None] * V + o_v[None, :]), b_o.to(o.dtype.element_ty), mask=m_tv)
        else:
            tl.store(v_new + base * V + (r[:, None] * V + o_v[None, :]), b_u.to(v_new.dtype.element_ty), mask=m_tv)
        if USE_G:
            b_h *= tl.exp2(b_g_last)
            b_u *= tl.exp2(b_g_last - b_g)[:, None]
        b_h += tl.dot(b_kt, b_u.to(b_kt.dtype), input_precision=DOT_PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


@triton.jit(do_not_specialize=length_args("T"))
def _delta_dh_kernel(
    q, k, beta, gc, Tm, do, dv_local, dh, dx, dht, dh0, cu_seqlens, chunk_offsets, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """In reverse chunk order, with dS the gradient of the state leaving chunk c (stored as dh[c]):
    dU~ = dv_local + (K * exp(gamma_C - gamma)) dS (summed in float32), dX = T^T dU~ (X = T^-1 U~ = Diag(beta)
    (V - Diag(exp(gamma)) K h[c]): stored in the input dtype for _wy_bwd_kernel);
    dS <- exp(gamma_C) dS + scale (Q * exp(gamma))^T dO - W^T dU~, with W^T dU~ = K^T Diag(beta exp(gamma)) dX.
    Always gated: without a gate the launch passes gamma = 0. Compiled without
    the gate's terms (session 13, Triton 3.6, H100) this pass gave wrong gradients and illegal memory accesses with
    32-wide V tiles and one pipeline stage, and two stages exceed the shared memory at K = 256; the gated variant
    passes every test, and at B8 T4096 H16 D128 it took 0.53 ms for DeltaNet against 0.62 ms (ungated, two stages)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, c0 = sequence_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_c = tl.arange(0, BT)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0).to(tl.float32)
    for i_t in range(NT - 1, -1, -1):
        tl.store(dh + ((c0 + i_t) * H + i_h) * K * V + o_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        _, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
        m_tv = m_t[:, None] & m_v[None, :]
        m_kt = m_k[:, None] & m_t[None, :]
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
        b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_kt, other=0)  # [BK, BT]
        b_qt = tl.load(q + base * K + (r[None, :] * K + o_k[:, None]), mask=m_kt, other=0)  # [BK, BT]
        b_Tt = tl.load(Tm + ((c0 + i_t) * H + i_h) * BT * BT + (o_c[None, :] * BT + o_c[:, None]))  # [BT, BT] T^T, float32
        b_do = tl.load(do + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_du = tl.load(dv_local + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0).to(tl.float32)  # [BT, BV]
        last = tl.minimum(i_t * BT + BT, T) - 1
        b_g_last = tl.load(gc + (bos + last) * H + i_h)
        b_g = tl.load(gc + base + r, mask=m_t, other=0)
        b_k = (b_k * tl.exp2(b_g_last - b_g)[:, None]).to(b_kt.dtype)
        b_qt = (b_qt * (tl.exp2(b_g) * scale)[None, :]).to(b_qt.dtype)
        w_scale = tl.load(beta + base + r, mask=m_t, other=0).to(tl.float32) * tl.exp2(b_g)  # W = T Diag(w_scale) K
        b_du += tl.dot(b_k, b_dh.to(b_k.dtype), input_precision=DOT_PREC)
        b_dx = _dot_t(b_Tt, b_du, b_kt.dtype, DOT_PREC)
        tl.store(dx + base * V + (r[:, None] * V + o_v[None, :]), b_dx.to(dx.dtype.element_ty), mask=m_tv)
        b_y = b_dx * w_scale[:, None]
        b_dh = b_dh * tl.exp2(b_g_last) + tl.dot(b_qt, b_do, input_precision=DOT_PREC)
        b_dh -= tl.dot(b_kt, b_y.to(b_kt.dtype), input_precision=DOT_PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + o_kv, b_dh, mask=m_kv)


# the state passes, each autotuned over one config list per launch kind (deeper_pipeline)
STATE_KEY, DH_KEY = KEY + ["USE_H0", "STORE_HT", "OUTPUT"], ["H", "K", "V", "BK", "BV", "IS_VARLEN", "USE_DHT", "STORE_DH0"]
_delta_h = {deeper: triton.autotune(configs=configs(c), key=STATE_KEY)(_delta_h_kernel) for deeper, c in STATE_CHOICES.items()}
_delta_dh = {deeper: triton.autotune(configs=configs(c), key=DH_KEY)(_delta_dh_kernel) for deeper, c in DH_CHOICES.items()}

AUTOTUNED = {  # the kernels of this file with all their config choices (the GPU tests try each one)
    _inverse_kernel: INVERSE_CHOICES,
    _wy_bwd_kernel: WY_CHOICES,
    **{_delta_h[deeper]: c for deeper, c in STATE_CHOICES.items()},
    **{_delta_dh[deeper]: c for deeper, c in DH_CHOICES.items()},
}


# --- launchers ---------------------------------------------------------------------------------------


def state_block_v(K: int, V: int, sequence_heads: int, multiprocessors: int) -> int:
    """V tile of the state passes, which hold the whole K and run sequentially over chunks: 32 for wide keys (to
    bound registers) and where 64-wide tiles would leave multiprocessors idle (few sequences x heads: twice the
    programs, each half as long), else 64. Measured on the H100 (132 multiprocessors) at B2 T16384 H16 D128
    (64 programs with 64-wide tiles): DeltaNet 5.86 -> 5.12 ms forward + backward, Gated DeltaNet 6.88 -> 5.72 ms."""
    return 32 if K > 128 or sequence_heads * triton.cdiv(V, 64) < multiprocessors else 64


def deeper_pipeline(K: int, BV: int, output: bool = False) -> bool:
    """Whether a state pass takes its config list with one pipeline stage more first (STATE_CHOICES, DH_CHOICES): with
    32-wide V tiles chosen for want of programs (few sequences x heads, K <= 128) and for the forward pass with the
    output. Wide keys keep the other lists: at K = 256 two stages of the reverse pass exceed the H100's shared memory."""
    return (BV == 32 and K <= 128) or output


def output_in_state_pass(gated: bool, K: int, V: int, sequence_heads: int, multiprocessors: int) -> bool:
    """Whether the forward computes the output in the state pass (no h and U~ through memory, no output kernel).
    Measured on the H100, DeltaNet: at B8 T4096 H16 D128 (256 programs) the forward 1.17 -> 1.06 ms and its peak
    0.62 -> 0.38 GiB, but at B2 T16384 (64 programs) 1.62 -> 2.06 ms: the pass is sequential over chunks and each
    step does more, which pays only with a program per multiprocessor. Not gated (the gate's terms make the pass
    spill: 1.26 -> 1.49 ms at B8 T4096) and not with 32-wide V tiles (illegal memory accesses on the H100)."""
    return not gated and state_block_v(K, V, sequence_heads, multiprocessors) == 64


def gluon_state_passes(k: Tensor, v: Tensor, cu_seqlens: Tensor | None, sequence_heads: int) -> bool:
    """Whether the state passes run as the Gluon kernels of state_hopper.py (the forward's with the output in it, and
    the reverse one with the chunk-local dV): where those serve the inputs (kernels.common.hopper.serves) and with
    enough sequences x heads for 64-wide V tiles in the Triton passes (state_block_v): the Gluon kernels run one
    program per sequence and head, two V halves in it."""
    K, V = k.shape[-1], v.shape[-1]
    return serves(k, v, cu_seqlens) and state_block_v(K, V, sequence_heads, multiprocessors(k.device)) == 64


def _chunk_grid(q: Tensor, layout: ChunkLayout) -> tuple[int, int]:
    B, _, H, _ = q.shape
    return (layout.n_chunks, (B if layout.cu_seqlens is None else 1) * H)


def _inverse(k, beta, gc, layout, common):
    """T = (I + A)^-1 per chunk and head: float32 [saved_chunks(...) >= total_chunks, H, C, C]."""
    B, T, H, K = k.shape
    Tm = k.new_empty(saved_chunks(B, T, layout.n_seqs, layout.cu_seqlens is not None), H, CHUNK_SIZE, CHUNK_SIZE, dtype=torch.float32)
    _inverse_kernel[_chunk_grid(k, layout)](
        k, beta, gc, Tm, layout.cu_seqlens, layout.chunk_indices, T,
        BK=_block(K, 64), USE_G=gc is not None, **common,
    )
    return Tm


def _state_pass(k, v, beta, gc, Tm, h0, layout, output_final_state, common, q=None, scale=1.0):
    """Sequential over chunks. Without q (the backward): the states entering every chunk h (input dtype) and
    the pseudo-values U~ (input dtype). With q (the forward): the output o instead, computed in the same pass.
    Returns (h, U~, final states) or (o, final states); final states (fp32) or None."""
    _, T, H, K = k.shape
    V = v.shape[-1]
    output = q is not None
    BV = state_block_v(K, V, layout.n_seqs * H, multiprocessors(k.device))
    if not output and gluon_state_passes(k, v, layout.cu_seqlens, layout.n_seqs * H):
        return state_hopper.delta_h(k, v, beta, gc, Tm, h0, output_final_state)[:3]
    varlen = layout.cu_seqlens is not None  # h has saved_chunks rows, as the fake implementation says when it is saved
    h = None if output else k.new_empty(saved_chunks(k.shape[0], T, layout.n_seqs, varlen), H, K, V)
    v_new = None if output else torch.empty_like(v)
    o = torch.empty_like(v) if output else None
    ht = k.new_empty(layout.n_seqs, H, K, V, dtype=torch.float32) if output_final_state else None
    _delta_h[deeper_pipeline(K, BV, output)][(triton.cdiv(V, BV), layout.n_seqs * H)](
        q, k, v, beta, gc, Tm, h, v_new, o, h0, ht, layout.cu_seqlens, layout.chunk_offsets, T, scale,
        BK=_block(K, MAX_HEAD_DIM), BV=BV, USE_G=gc is not None, USE_H0=h0 is not None, STORE_HT=output_final_state,
        OUTPUT=output, **common,
    )
    return (o, ht) if output else (h, v_new, ht)


def _forward(q, k, v, beta, gc, scale, h0, layout, output_final_state, save=False, save_states=False):
    """(o, final states or None, T, h, U~). With save, what the backward then reads instead of recomputing it: T = (I +
    A)^-1 per chunk, and with save_states h and U~ where the forward forms them (None where the output is computed in
    the state pass); else None for all three."""
    common = _common(q, v, layout)
    Tm = _inverse(k, beta, gc, layout, common)
    keep = save and save_states
    if gluon_state_passes(k, v, layout.cu_seqlens, layout.n_seqs * q.shape[2]):  # the output in the state pass
        h, v_new, ht, o = state_hopper.delta_h(k, v, beta, gc, Tm, h0, output_final_state, q, scale, store_states=keep)
        return o, ht, Tm if save else None, h, v_new
    if output_in_state_pass(gc is not None, q.shape[-1], v.shape[-1], layout.n_seqs * q.shape[2], multiprocessors(q.device)):
        o, ht = _state_pass(k, v, beta, gc, Tm, h0, layout, output_final_state, common, q=q, scale=scale)
        return o, ht, Tm if save else None, None, None
    h, v_new, ht = _state_pass(k, v, beta, gc, Tm, h0, layout, output_final_state, common)
    if not save:
        Tm = None  # freed now: not held through the output kernel
    o = torch.empty_like(v)
    K, V = q.shape[-1], v.shape[-1]
    BK, BV = _block(K, 128), _block(V, 128)
    _fwd_o_kernel[_tile_grid(triton.cdiv(V, BV), q, layout)](
        q, k, v_new, gc, h, o, layout.cu_seqlens, layout.chunk_indices, q.shape[1], scale,
        BK=BK, BV=BV, USE_G=gc is not None, **common,
    )
    return o, ht, Tm, h if keep else None, v_new if keep else None


def _backward(q, k, v, beta, gc, scale, h0, layout, do, dht, need_dh0, Tm=None, dg_dtype=torch.float32, h=None, v_new=None):
    """Tm, h, v_new: T, the chunks' states and U~ saved by the forward (None: recomputed). dg comes back in dg_dtype."""
    common = _common(q, v, layout)
    Tm = _inverse(k, beta, gc, layout, common) if Tm is None else Tm
    if h is None:
        h, v_new, _ = _state_pass(k, v, beta, gc, Tm, h0, layout, False, common)

    dh, dx, dh0 = _reverse_pass(q, k, beta, gc, Tm, do, dht, need_dh0, scale, layout, common)

    # dk_acc: the linear recurrence's part of dK, in the input dtype (summed in float32 below)
    dq, dk_acc, dg_lr = dqk_pass(q, k, v_new, gc, h, do, dh, scale, layout)
    del dh

    dk, dv, dbeta, dg = _wy_backward(k, v, beta, gc, h, v_new, dx, dk_acc, dg_lr, dg_dtype, layout, common)
    return dq, dk, dv, dbeta, dg, dh0


def _reverse_pass(q, k, beta, gc, Tm, do, dht, need_dh0, scale, layout, common):
    """(dh, dX, dh0 or None): the linear recurrence's chunk-local dV (the scores' part of dU~), then
    `_delta_dh_kernel`; or the Gluon kernel that does both on Hopper GPUs (gluon_state_passes)."""
    B, T, H, K = q.shape
    V = do.shape[-1]
    BV = state_block_v(K, V, layout.n_seqs * H, multiprocessors(q.device))
    if gluon_state_passes(k, do, layout.cu_seqlens, layout.n_seqs * H):
        return state_hopper.delta_dh(q, k, beta, gc, Tm, do, dht, need_dh0, scale)
    dv_local = torch.empty_like(do)
    _bwd_dv_kernel[_tile_grid(triton.cdiv(V, _block(V, 128)), q, layout)](
        q, k, gc, do, None, dv_local, layout.cu_seqlens, layout.chunk_indices, T, scale,
        BK=_block(K, 128), BV=_block(V, 128), USE_G=gc is not None, USE_DH=False, **common,
    )
    dh = q.new_empty(layout.total_chunks, H, K, V)
    dx = torch.empty_like(dv_local)  # dX = T^T dU~
    dh0 = q.new_empty(layout.n_seqs, H, K, V, dtype=torch.float32) if need_dh0 else None
    gc_dh = gc if gc is not None else q.new_zeros(B, T, H, dtype=torch.float32)  # the Triton pass always runs gated
    _delta_dh[deeper_pipeline(K, BV)][(triton.cdiv(V, BV), layout.n_seqs * H)](
        q, k, beta, gc_dh, Tm, do, dv_local, dh, dx, dht, dh0, layout.cu_seqlens, layout.chunk_offsets, T, scale,
        BK=_block(K, MAX_HEAD_DIM), BV=BV, USE_DHT=dht is not None, STORE_DH0=need_dh0, **common,
    )
    return dh, dx, dh0


def _wy_backward(k, v, beta, gc, h, v_new, dx, dk_acc, dg_lr, dg_dtype, layout, common):
    """dK, dV, dbeta and dg through X and T (see `_wy_bwd_kernel`): the Gluon kernel on Hopper GPUs where it applies."""
    if serves(k, v, layout.cu_seqlens):
        return wy_hopper.wy_bwd(k, v, beta, gc, h, v_new, dx, dk_acc, dg_lr, dg_dtype, multiprocessors(k.device))
    B, T, H, K = k.shape
    V = v.shape[-1]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty_like(beta)
    dg = k.new_empty(B, T, H, dtype=dg_dtype) if gc is not None else None
    # K tiles of 128: P = dX h^T in one pass over V (H100, B16 T2048 H16 D128, session 17, autotuned, one call: forward +
    # backward 2.97 -> 2.92 ms gated, 2.72 -> 2.64 ms DeltaNet against K tiles of 64); 4 warps and 3 stages, the default,
    # 2.91 / 2.63 ms in another call where 8 warps took 3.00 / 2.79
    _wy_bwd_kernel[_chunk_grid(k, layout)](
        k, v, beta, gc, h, v_new, dx, dk_acc, dk, dv, dbeta, dg_lr, dg, layout.cu_seqlens, layout.chunk_indices, T,
        B * T * H, BK=_block(K, 128), BV=_block(V, 64), USE_G=gc is not None, NK_LR=1 if dg_lr is None else dg_lr.shape[0],
        **common,
    )
    return dk, dv, dbeta, dg


# --- the public op: a torch.library custom op (opaque to torch.compile, with fake implementations) under
# torch.compile, an autograd.Function over the same forward and backward in eager mode (kernels/common/ops.py) -----


def _delta_rule_forward(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, scale: float,
    initial_state: Tensor | None, output_final_state: bool, cu_seqlens: Tensor | None, save_for_backward: bool = False,
    save_states: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(o, final state, T, h, U~), each of the last four an empty tensor when not returned (a custom op cannot return
    None). With save_for_backward, what the backward then skips recomputing comes back: T = (I + A)^-1 per chunk
    (float32 [saved_chunks, H, C, C]; the inversion is the expensive part of the WY kernel) and, with save_states too
    (kernels.common.config.keep_states) and where the forward forms them (saves_states), the chunks' states h
    ([saved_chunks, H, K, V]) and U~ (like v), in the input dtype: the backward's state pass, 0.3 ms of Gated
    DeltaNet's 3.3 at B8 T4096 H16 D128 on the H100."""
    layout = chunk_layout(q.shape[0], q.shape[1], CHUNK_SIZE, cu_seqlens)
    gc = None if g is None else chunk_local_cumsum(g, layout, CHUNK_SIZE, scale=LOG2E)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, *rest = _forward(q, k, v, beta, gc, scale, h0, layout, output_final_state, save_for_backward, save_states)
    return o, *empty_for_none(q.new_empty(0, dtype=torch.float32), *rest)


_delta_rule_op = torch.library.custom_op("seqmix::chunk_delta_rule", mutates_args=())(_delta_rule_forward)


def saves_states(k: Tensor, v: Tensor, gated: bool, cu_seqlens: Tensor | None, sequence_heads: int) -> bool:
    """Whether a forward that saves for the backward also saves h and U~: where it forms them, i.e. unless the output
    is computed in the Triton state pass (the Gluon one stores them when asked)."""
    K, V = k.shape[-1], v.shape[-1]
    return (gluon_state_passes(k, v, cu_seqlens, sequence_heads)
            or not output_in_state_pass(gated, K, V, sequence_heads, multiprocessors(k.device)))


@_delta_rule_op.register_fake
def _(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, save_for_backward=False, save_states=False):
    B, T, H, K = q.shape
    V = v.shape[3]
    n = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    chunks = saved_chunks(B, T, n, cu_seqlens is not None)
    empty = q.new_empty(0, dtype=torch.float32)
    ht = q.new_empty((n, H, K, V), dtype=torch.float32) if output_final_state else empty
    if not save_for_backward:
        return torch.empty_like(v), ht, empty.clone(), empty.clone(), empty.clone()
    Tm = q.new_empty((chunks, H, CHUNK_SIZE, CHUNK_SIZE), dtype=torch.float32)
    if not (save_states and saves_states(k, v, g is not None, cu_seqlens, n * H)):
        return torch.empty_like(v), ht, Tm, empty.clone(), empty.clone()
    return torch.empty_like(v), ht, Tm, q.new_empty((chunks, H, K, V)), torch.empty_like(v)


def _delta_rule_backward_impl(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, scale: float, initial_state: Tensor | None,
    cu_seqlens: Tensor | None, do: Tensor, dht: Tensor | None, need_dg: bool, need_dh0: bool, saved_t: Tensor | None = None,
    saved_h: Tensor | None = None, saved_u: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dbeta, dg, dh0); dg and dh0 are empty tensors unless asked for. saved_t, saved_h, saved_u: the
    forward's T, h and U~ (read only), or None / empty tensors to recompute them."""
    layout = chunk_layout(q.shape[0], q.shape[1], CHUNK_SIZE, cu_seqlens)
    gc = None if g is None else chunk_local_cumsum(g, layout, CHUNK_SIZE, scale=LOG2E)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    dht = None if dht is None else dht.float().contiguous()
    Tm, h, v_new = (None if t is None or t.numel() == 0 else t for t in (saved_t, saved_h, saved_u))
    dg_dtype = g.dtype if need_dg else torch.float32
    dq, dk, dv, dbeta, dg, dh0 = _backward(q, k, v, beta, gc, scale, h0, layout, do.contiguous(), dht, need_dh0, Tm, dg_dtype, h, v_new)
    dg = dg if need_dg else q.new_empty(0)  # distinct empty tensors: outputs may not alias
    return dq, dk, dv, dbeta, dg, dh0.to(initial_state.dtype) if need_dh0 else q.new_empty(0)


_delta_rule_backward_op = torch.library.custom_op("seqmix::chunk_delta_rule_backward", mutates_args=())(_delta_rule_backward_impl)


@_delta_rule_backward_op.register_fake
def _(q, k, v, beta, g, scale, initial_state, cu_seqlens, do, dht, need_dg, need_dh0, saved_t=None, saved_h=None, saved_u=None):
    grads = (torch.empty_like(x) for x in (q, k, v, beta))
    return *grads, torch.empty_like(g) if need_dg else q.new_empty(0), torch.empty_like(initial_state) if need_dh0 else q.new_empty(0)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, beta, g, scale, initial_state, _, cu_seqlens, *_ = inputs
    saved = output[2:]  # T, h, U~
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)  # else autograd fills zero gradients of their sizes for the backward (40 us for T on the H100)
    ctx.save_for_backward(q, k, v, beta, g, initial_state, cu_seqlens, *saved)
    ctx.scale = scale


def _delta_rule_backward(ctx, do, dht, *_, backward: Callable = _delta_rule_backward_op):
    q, k, v, beta, g, initial_state, cu_seqlens, *saved = ctx.saved_tensors
    do = torch.zeros_like(v) if do is None else do
    dht = None if dht is None or dht.numel() == 0 else dht
    need_dg = g is not None and ctx.needs_input_grad[4]
    need_dh0 = initial_state is not None and ctx.needs_input_grad[6]
    dq, dk, dv, dbeta, dg, dh0 = backward(q, k, v, beta, g, ctx.scale, initial_state, cu_seqlens, do, dht, need_dg, need_dh0, *saved)
    return dq, dk, dv, dbeta, dg if need_dg else None, None, dh0 if need_dh0 else None, None, None, None, None


torch.library.register_autograd(_delta_rule_op, _delta_rule_backward, setup_context=_setup_context)
_DeltaRule = eager_function(
    "_DeltaRule", _delta_rule_forward, _setup_context, functools.partial(_delta_rule_backward, backward=_delta_rule_backward_impl)
)


def chunk_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T and o_t = S_t^T (scale q_t), on the GPU.

    q, k: (B, T, H, K); v: (B, T, H, V), float32, bfloat16 or float16, K, V <= 256; beta: (B, T, H)
    step sizes in [0, 2] (any float dtype; its gradient comes back in it); g: log decay <= 0 of shape
    (B, T, H), or None (DeltaNet); scale defaults to K ** -0.5. initial_state: (N, H, K, V);
    cu_seqlens: int32/int64 (N + 1,) offsets of N sequences packed into B = 1.
    Returns o (B, T, H, V) in the input dtype and the final state (N, H, K, V) in float32 or None.
    Differentiable in q, k, v, beta, g and initial_state. A torch.library custom op ("seqmix::chunk_delta_rule")
    with a fake implementation, so torch.compile traces models that call it (without graph breaks); eager calls take an
    autograd.Function over the same forward and backward.
    """
    check_inputs(q, k, v, g, initial_state, cu_seqlens)
    if beta.shape != q.shape[:3] or not beta.is_floating_point():
        raise ValueError(f"beta must be a float tensor of shape (B, T, H) = {tuple(q.shape[:3])}, got {beta.dtype} {tuple(beta.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    # keep T, h and U~ for the backward only when one will run (T: C * 4 bytes per token and head, h: K V * 2 / C, U~:
    # 2 V; at B = 8, T = 4096, H = 16, D = 128: 134 + 268 + 134 MB; without them the backward recomputes T, about
    # 0.2 ms on the H100 at that size, and runs the state pass again, about 0.3 ms; SEQMIX_RECOMPUTE_STATES=1 keeps T only)
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, beta, g, initial_state))
    o, final_state, *_ = call(
        _delta_rule_op, _DeltaRule, q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, save,
        save and keep_states(),
    )
    return o, final_state if output_final_state else None


def supports(q: Tensor, v: Tensor) -> bool:
    """Whether these kernels take the inputs (otherwise use the PyTorch chunk form): float32 or 16-bit
    inputs and head dims K, V up to MAX_HEAD_DIM."""
    return q.dtype in DTYPES and head_dims_supported(q, v)
