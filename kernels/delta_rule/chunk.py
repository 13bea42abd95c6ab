"""Chunked (gated) delta rule: DeltaNet and Gated DeltaNet, forward and backward; see README.md.

S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t). Per chunk
(WY / UT form of spec 2.2): T = (I + A)^-1 with A = strict_lower(Diag(beta) (K K^T * Gamma)),
W = T Diag(beta) (K * exp(gamma)), U = T Diag(beta) V, pseudo-values U~ = U - W h[c]; the output and
the next state are then those of the linear recurrence with U~ in place of V, so its output and
score-gradient kernels (kernels.linear_recurrence.chunk) serve here unchanged.

Forward: chunk-local cumsum of g, `_wy_fwd_kernel` (T, W, U), `_delta_h_kernel` (h and U~, sequential
over chunks), the linear recurrence's output kernel; under autograd the op also returns T for the
backward. Backward: W and U from the saved T (`_wy_fwd_kernel` with HAVE_T; T itself is recomputed
only when none was saved), the state pass again, the linear recurrence's chunk-local dV,
`_delta_dh_kernel` (dh and dU~, reverse), the linear recurrence's
dQ/dK/dg kernel, then `_wy_bwd_kernel` (dK, dV, dbeta, dg through T, W and U).

The sequential state passes keep their recurrent operands in float32 (tf32 dots for 16-bit inputs;
the reverse pass only where K <= 128, for shared memory): the
pseudo-values U - W h are differences of nearly equal terms, and bf16 rounding of h or U~ there
compounds over the chunks (measured 0.5 % output error at T = 4096 with bf16 operands).

Layout as in kernels.linear_recurrence: q, k (B, T, H, K); v (B, T, H, V); beta, g (B, T, H); states
(N, H, K, V) float32; per-chunk h, dh (total_chunks, H, K, V) in the input dtype; T per chunk and
head (saved_chunks(...) >= total_chunks, H, C, C) float32. No dot result is ever transposed before another dot (Triton
3.4 - 3.7.0 miscompiles that on Hopper, fla issue 640): transposed operands are loaded transposed.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.common.chunks import ChunkLayout, chunk_coords, chunk_layout, sequence_coords
from kernels.common.config import all_configs, configs
from kernels.common.cumsum import LOG2E, chunk_local_cumsum
from kernels.linear_recurrence.chunk import (
    CHUNK_SIZE,
    DTYPES,
    MAX_HEAD_DIM,
    _block,
    _bwd_dqk_kernel,
    _bwd_dv_kernel,
    _common,
    _fwd_o_kernel,
    _tile_grid,
    check_inputs,
)

STATE_CHOICES = all_configs(warps=(4, 2), stages=(2, 3))
WY_CHOICES = all_configs(warps=(4, 8), stages=(2, 3))
KEY = ["H", "K", "V", "BK", "BV", "USE_G", "IS_VARLEN"]


# --- per chunk: the WY representation ------------------------------------------------------------------


@triton.jit
def _substitution_step(p, blk: tl.constexpr, i, X, o16, row, below, BT: tl.constexpr):
    # row i of the working matrix is still row i of -A (rows >= i are untouched): read it from memory
    # (A is there, L1/L2-resident) instead of extracting it from X with a cross-thread reduction
    b_a = -tl.load(p + (blk * 16 + i) * BT + blk * 16 + o16)
    b_a += tl.where(below, tl.sum(b_a[:, None] * X, 0), 0)
    return tl.where(row[:, None], b_a, X)


@triton.jit
def _invert_unit_lower_16x4(p, A0, A1, A2, A3, o16, BT: tl.constexpr):
    """(I + A)^-1 of the four strictly lower-triangular 16 x 16 float32 diagonal blocks A of the 64 x 64
    matrix at p, passed negated (-A): forward substitution row by row (rows < i hold rows of the
    inverse minus I, rows >= i still -A); the four interleaved in one loop, whose steps are
    latency-bound. Row i of each block comes from memory (one reduction per step, not two)."""
    for i in range(1, 16):
        row, below = o16 == i, o16 < i
        A0 = _substitution_step(p, 0, i, A0, o16, row, below, BT)
        A1 = _substitution_step(p, 1, i, A1, o16, row, below, BT)
        A2 = _substitution_step(p, 2, i, A2, o16, row, below, BT)
        A3 = _substitution_step(p, 3, i, A3, o16, row, below, BT)
    eye = (o16[:, None] == o16[None, :]).to(tl.float32)
    return A0 + eye, A1 + eye, A2 + eye, A3 + eye


@triton.jit
def _block16(p, i: tl.constexpr, j: tl.constexpr, BT: tl.constexpr):
    o16 = tl.arange(0, 16)
    return tl.load(p + (i * 16 + o16[:, None]) * BT + (j * 16 + o16[None, :]))


@triton.jit
def _store16(p, i: tl.constexpr, j: tl.constexpr, x, BT: tl.constexpr):
    o16 = tl.arange(0, 16)
    tl.store(p + (i * 16 + o16[:, None]) * BT + (j * 16 + o16[None, :]), x)


@triton.jit
def _mm(a, b):
    return tl.dot(a, b, input_precision="ieee")  # 16 x 16 blocks of T: exact fp32, cheap at this size


@triton.jit
def _invert_unit_lower_64(p, BT: tl.constexpr):
    """Overwrites the strictly lower-triangular 64 x 64 float32 A at p with (I + A)^-1: the four diagonal
    16 x 16 blocks by substitution, then block forward substitution X_ij = -X_ii sum_k A_ik X_kj.
    Much faster than 63 substitution steps on the whole matrix. The caller synchronises around it."""
    tl.static_assert(BT == 64, "the block inversion is written for chunks of 64 tokens")
    o16 = tl.arange(0, 16)
    X00, X11, X22, X33 = _invert_unit_lower_16x4(
        p, -_block16(p, 0, 0, BT), -_block16(p, 1, 1, BT), -_block16(p, 2, 2, BT), -_block16(p, 3, 3, BT), o16, BT
    )
    A10, A20, A30 = _block16(p, 1, 0, BT), _block16(p, 2, 0, BT), _block16(p, 3, 0, BT)
    A21, A31, A32 = _block16(p, 2, 1, BT), _block16(p, 3, 1, BT), _block16(p, 3, 2, BT)
    X10 = -_mm(X11, _mm(A10, X00))
    X21 = -_mm(X22, _mm(A21, X11))
    X32 = -_mm(X33, _mm(A32, X22))
    X20 = -_mm(X22, _mm(A20, X00) + _mm(A21, X10))
    X31 = -_mm(X33, _mm(A31, X11) + _mm(A32, X21))
    X30 = -_mm(X33, _mm(A30, X00) + _mm(A31, X10) + _mm(A32, X20))
    tl.debug_barrier()  # every block of A is read before the first is overwritten
    zero = tl.zeros([16, 16], dtype=tl.float32)
    _store16(p, 0, 0, X00, BT)
    _store16(p, 0, 1, zero, BT)
    _store16(p, 0, 2, zero, BT)
    _store16(p, 0, 3, zero, BT)
    _store16(p, 1, 0, X10, BT)
    _store16(p, 1, 1, X11, BT)
    _store16(p, 1, 2, zero, BT)
    _store16(p, 1, 3, zero, BT)
    _store16(p, 2, 0, X20, BT)
    _store16(p, 2, 1, X21, BT)
    _store16(p, 2, 2, X22, BT)
    _store16(p, 2, 3, zero, BT)
    _store16(p, 3, 0, X30, BT)
    _store16(p, 3, 1, X31, BT)
    _store16(p, 3, 2, X32, BT)
    _store16(p, 3, 3, X33, BT)


@triton.autotune(configs=configs(WY_CHOICES), key=KEY + ["HAVE_T"])
@triton.jit(do_not_specialize=["T"])
def _wy_fwd_kernel(
    k, v, beta, gc, Tm, w, u, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, HAVE_T: tl.constexpr,
):
    """T = (I + A)^-1 (float32, stored), W = T (K * beta exp(gamma)), U = T (V * beta).
    HAVE_T: T is read from Tm (saved by the forward) and only W and U are computed (the backward)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, i_c = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    base, r = (bos + i_t * BT) * H + i_h, tl.arange(0, BT) * H
    o_c = tl.arange(0, BT)
    b_beta = tl.load(beta + base + r, mask=m_t, other=0).to(tl.float32)
    k_scale = b_beta
    if USE_G:
        b_g = tl.load(gc + base + r, mask=m_t, other=0)
        k_scale = b_beta * tl.exp2(b_g)
    p_T = Tm + (i_c * H + i_h) * BT * BT
    if not HAVE_T:
        b_A = tl.zeros([BT, BT], dtype=tl.float32)
        for i_k in tl.static_range(0, (K + BK - 1) // BK):
            o_k = i_k * BK + tl.arange(0, BK)
            m_k = o_k < K
            b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
            b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)  # [BK, BT]
            b_A += tl.dot(b_k, b_kt, input_precision=DOT_PREC)
        strict = (o_c[:, None] > o_c[None, :]) & m_t[:, None] & m_t[None, :]  # padded rows have gamma 0
        if USE_G:
            b_A *= tl.exp2(tl.where(strict, b_g[:, None] - b_g[None, :], float("-inf")))
        b_A = tl.where(strict, b_A * b_beta[:, None], 0)
        tl.store(p_T + (o_c[:, None] * BT + o_c[None, :]), b_A)
        tl.debug_barrier()  # A goes through memory to be read back as 16 x 16 blocks
        _invert_unit_lower_64(p_T, BT)
        tl.debug_barrier()
    b_A = tl.load(p_T + (o_c[:, None] * BT + o_c[None, :]))  # T = (I + A)^-1
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_tk, other=0).to(tl.float32)
        b_w = tl.dot(b_A, b_k * k_scale[:, None], input_precision=DOT_PREC)
        tl.store(w + base * K + (r[:, None] * K + o_k[None, :]), b_w.to(w.dtype.element_ty), mask=m_tk)
    for i_v in tl.static_range(0, (V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        b_v = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0).to(tl.float32)
        b_u = tl.dot(b_A, b_v * b_beta[:, None], input_precision=DOT_PREC)
        tl.store(u + base * V + (r[:, None] * V + o_v[None, :]), b_u.to(u.dtype.element_ty), mask=m_tv)


@triton.autotune(configs=configs(WY_CHOICES), key=KEY + ["NK_LR"], restore_value=["dk_acc"])  # updated in place
@triton.jit(do_not_specialize=["T", "n_rows"])
def _wy_bwd_kernel(
    k, v, beta, gc, Tm, scratch, h, du, dk_acc, dk, dv, dbeta, dg_lr, dg, cu_seqlens, chunk_indices, T, n_rows,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, NK_LR: tl.constexpr,
):
    """Gradients through T, W = T Kb and U = T Vb (Kb = K * beta exp(gamma), Vb = V * beta), given
    dU = dU~ and dW = -dU~ h[c]^T: dKb = T^T dW, dVb = T^T dU, dT = dW Kb^T + dU Vb^T,
    dA = -T^T dT T^T (strictly lower part). dk = dk_acc (the linear recurrence's part) + the rest;
    dg = this chunk's share, reverse-summed over the chunk like the linear recurrence's, plus the
    linear recurrence's NK_LR per-K-tile shares dg_lr [NK_LR, n_rows], written in dg's dtype.
    T is only read (it may be the forward's saved copy); B^T goes through this chunk's slot of
    `scratch` (same shape as Tm); dk_acc is overwritten with partial sums.
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, i_c = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    base, r = (bos + i_t * BT) * H + i_h, tl.arange(0, BT) * H
    o_c = tl.arange(0, BT)
    p_T = Tm + (i_c * H + i_h) * BT * BT
    p_S = scratch + (i_c * H + i_h) * BT * BT
    p_h = h + (i_c * H + i_h) * K * V
    b_Tt = tl.load(p_T + (o_c[None, :] * BT + o_c[:, None]))  # [BT, BT], T transposed
    b_beta = tl.load(beta + base + r, mask=m_t, other=0).to(tl.float32)
    e_g = tl.full([BT], 1.0, dtype=tl.float32)
    if USE_G:
        b_g = tl.load(gc + base + r, mask=m_t, other=0)
        e_g = tl.exp2(b_g)
    k_scale = b_beta * e_g
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    b_dgam = tl.zeros([BT], dtype=tl.float32)
    for i_v in tl.static_range(0, (V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        b_du = tl.load(du + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV] fp32
        b_v = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0).to(tl.float32)
        b_vbt = tl.load(v + base * V + (r[None, :] * V + o_v[:, None]), mask=(o_v[:, None] < V) & m_t[None, :], other=0)
        b_dT += tl.dot(b_du, b_vbt.to(tl.float32) * b_beta[None, :], input_precision=DOT_PREC)
        b_dvb = tl.dot(b_Tt, b_du, input_precision=DOT_PREC)
        b_dbeta += tl.sum(b_dvb * b_v, 1)
        tl.store(dv + base * V + (r[:, None] * V + o_v[None, :]), (b_dvb * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_dw = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in tl.static_range(0, (V + BV - 1) // BV):
            o_v = i_v * BV + tl.arange(0, BV)
            b_du = tl.load(du + base * V + (r[:, None] * V + o_v[None, :]), mask=m_t[:, None] & (o_v[None, :] < V), other=0)
            b_ht = tl.load(p_h + o_k[None, :] * V + o_v[:, None], mask=(o_v[:, None] < V) & m_k[None, :], other=0)  # [BV, BK]
            b_dw -= tl.dot(b_du, b_ht.to(tl.float32), input_precision=DOT_PREC)
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_tk, other=0).to(tl.float32)
        b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)
        b_dT += tl.dot(b_dw, b_kt.to(tl.float32) * k_scale[None, :], input_precision=DOT_PREC)
        b_dkb = tl.dot(b_Tt, b_dw, input_precision=DOT_PREC)
        b_kdkb = tl.sum(b_dkb * b_k, 1)
        b_dbeta += b_kdkb * e_g
        b_dgam += b_kdkb * k_scale
        p_acc = dk_acc + base * K + (r[:, None] * K + o_k[None, :])
        tl.store(p_acc, tl.load(p_acc, mask=m_tk, other=0) + b_dkb * k_scale[:, None], mask=m_tk)
    # dA = -T^T (dT T^T), then through A = strict_lower(beta_r (k_r . k_j) Gamma_rj)
    b_dA = tl.dot(b_dT, b_Tt, input_precision=DOT_PREC)
    b_dA = -tl.dot(b_Tt, b_dA, input_precision=DOT_PREC)
    strict = (o_c[:, None] > o_c[None, :]) & m_t[:, None] & m_t[None, :]  # padded rows have gamma 0
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)
        b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)
        b_kk += tl.dot(b_k, b_kt, input_precision=DOT_PREC)
    if USE_G:
        b_gam = tl.exp2(tl.where(strict, b_g[:, None] - b_g[None, :], float("-inf")))
    else:
        b_gam = strict.to(tl.float32)
    b_dA = tl.where(strict, b_dA, 0) * b_gam  # dA * Gamma
    b_G = b_dA * b_kk  # d(loss)/d(A_rj) * A_rj / beta_r
    b_dbeta += tl.sum(b_G, 1)
    if USE_G:
        b_M = b_G * b_beta[:, None]
        b_dgam += tl.sum(b_M, 1) - tl.sum(b_M, 0)
    b_B = b_dA * b_beta[:, None]  # dk = dk + B K + B^T K
    # B^T by a round trip through memory (this chunk's scratch slot), not by transposing in registers
    tl.store(p_S + (o_c[:, None] * BT + o_c[None, :]), b_B)
    tl.debug_barrier()  # B and dk_acc, written by other threads of this program, are read below
    b_Bt = tl.load(p_S + (o_c[None, :] * BT + o_c[:, None]))
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k[None, :] < K)
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_tk, other=0).to(tl.float32)
        b_dk = tl.load(dk_acc + base * K + (r[:, None] * K + o_k[None, :]), mask=m_tk, other=0)
        b_dk += tl.dot(b_B, b_k, input_precision=DOT_PREC) + tl.dot(b_Bt, b_k, input_precision=DOT_PREC)
        tl.store(dk + base * K + (r[:, None] * K + o_k[None, :]), b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dbeta + base + r, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
    if USE_G:
        b_dg = tl.cumsum(b_dgam, axis=0, reverse=True)
        for i_lr in tl.static_range(0, NK_LR):  # the linear recurrence's shares, one per K tile of its kernel
            b_dg += tl.load(dg_lr + (base + n_rows.to(tl.int64) * i_lr) + r, mask=m_t, other=0)
        tl.store(dg + base + r, b_dg.to(dg.dtype.element_ty), mask=m_t)


# --- state passes: one program per (V tile, sequence and head) with the whole K, sequential over chunks ---


@triton.autotune(configs=configs(STATE_CHOICES), key=KEY + ["USE_H0", "STORE_HT"])
@triton.jit(do_not_specialize=["T"])
def _delta_h_kernel(
    k, w, u, gc, h, v_new, h0, ht, cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """h[c] = state entering chunk c; U~ = U - W h[c]; S <- exp(gamma_C) S + (K * exp(gamma_C - gamma))^T U~."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, c0 = sequence_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0).to(tl.float32)
    for i_t in range(0, NT):
        tl.store(h + ((c0 + i_t) * H + i_h) * K * V + o_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        m_t = i_t * BT + tl.arange(0, BT) < T
        base, r = (bos + i_t * BT) * H + i_h, tl.arange(0, BT) * H
        m_tv = m_t[:, None] & m_v[None, :]
        b_w = tl.load(w + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
        b_u = tl.load(u + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0).to(tl.float32)  # [BT, BV]
        b_u -= tl.dot(b_w.to(tl.float32), b_h, input_precision=DOT_PREC)
        tl.store(v_new + base * V + (r[:, None] * V + o_v[None, :]), b_u.to(v_new.dtype.element_ty), mask=m_tv)
        b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)  # [BK, BT]
        if USE_G:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_g_last = tl.load(gc + (bos + last) * H + i_h)
            b_g = tl.load(gc + base + r, mask=m_t, other=0)
            b_h *= tl.exp2(b_g_last)
            b_u *= tl.exp2(b_g_last - b_g)[:, None]
        b_h += tl.dot(b_kt.to(tl.float32), b_u, input_precision=DOT_PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


@triton.autotune(configs=configs(STATE_CHOICES), key=KEY + ["USE_DHT", "STORE_DH0", "F32_OPERANDS"])
@triton.jit(do_not_specialize=["T"])
def _delta_dh_kernel(
    q, k, w, gc, do, dv_local, dh, du, dht, dh0, cu_seqlens, chunk_offsets, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr, F32_OPERANDS: tl.constexpr,
):
    """In reverse chunk order, with dS the gradient of the state leaving chunk c (stored as dh[c]):
    dU~ = dv_local + (K * exp(gamma_C - gamma)) dS (stored, float32);
    dS <- exp(gamma_C) dS + scale (Q * exp(gamma))^T dO - W^T dU~.
    F32_OPERANDS: float32 operands in the two recurrent dots (16-bit ones where K > 128: float32
    [K, 64] operands exceed the H100's shared memory there)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, c0 = sequence_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0).to(tl.float32)
    for i_t in range(NT - 1, -1, -1):
        tl.store(dh + ((c0 + i_t) * H + i_h) * K * V + o_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        m_t = i_t * BT + tl.arange(0, BT) < T
        base, r = (bos + i_t * BT) * H + i_h, tl.arange(0, BT) * H
        m_tv = m_t[:, None] & m_v[None, :]
        m_kt = m_k[:, None] & m_t[None, :]
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
        b_qt = tl.load(q + base * K + (r[None, :] * K + o_k[:, None]), mask=m_kt, other=0)  # [BK, BT]
        b_wt = tl.load(w + base * K + (r[None, :] * K + o_k[:, None]), mask=m_kt, other=0)  # [BK, BT]
        b_do = tl.load(do + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_du = tl.load(dv_local + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV] fp32
        if USE_G:
            last = tl.minimum(i_t * BT + BT, T) - 1
            b_g_last = tl.load(gc + (bos + last) * H + i_h)
            b_g = tl.load(gc + base + r, mask=m_t, other=0)
            b_k = b_k * tl.exp2(b_g_last - b_g)[:, None]
            b_qt = (b_qt * (tl.exp2(b_g) * scale)[None, :]).to(b_qt.dtype)
        else:
            b_qt = (b_qt * scale).to(b_qt.dtype)
        if F32_OPERANDS:
            b_du += tl.dot(b_k.to(tl.float32), b_dh, input_precision=DOT_PREC)
        else:
            b_du += tl.dot(b_k.to(b_wt.dtype), b_dh.to(b_wt.dtype), input_precision=DOT_PREC)
        tl.store(du + base * V + (r[:, None] * V + o_v[None, :]), b_du, mask=m_tv)
        if USE_G:
            b_dh *= tl.exp2(b_g_last)
        b_dh += tl.dot(b_qt, b_do, input_precision=DOT_PREC)  # the read-out term: no cancellation, 16-bit operands
        if F32_OPERANDS:
            b_dh -= tl.dot(b_wt.to(tl.float32), b_du, input_precision=DOT_PREC)
        else:
            b_dh -= tl.dot(b_wt, b_du.to(b_wt.dtype), input_precision=DOT_PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + o_kv, b_dh, mask=m_kv)


AUTOTUNED = {  # the kernels of this file with all their config choices (the GPU tests try each one)
    _wy_fwd_kernel: WY_CHOICES,
    _wy_bwd_kernel: WY_CHOICES,
    _delta_h_kernel: STATE_CHOICES,
    _delta_dh_kernel: STATE_CHOICES,
}


# --- launchers ---------------------------------------------------------------------------------------


def _state_block_v(K: int) -> int:
    """V tile of the state passes, which hold the whole K: smaller for wide keys to bound registers."""
    return 64 if K <= 128 else 32


def _chunk_grid(q: Tensor, layout: ChunkLayout) -> tuple[int, int]:
    B, _, H, _ = q.shape
    return (layout.n_chunks, (B if layout.cu_seqlens is None else 1) * H)


def saved_chunks(batch: int, T: int, n_seqs: int, varlen: bool) -> int:
    """Rows of the per-chunk T that the forward saves for the backward: known from shapes alone (the fake
    implementation needs that), so exact without cu_seqlens and an upper bound with it:
    sum(ceil(T_i / C)) <= T // C + N."""
    return T // CHUNK_SIZE + n_seqs if varlen else batch * triton.cdiv(T, CHUNK_SIZE)


def _wy(k, v, beta, gc, layout, common, Tm=None):
    """T [chunks, H, C, C] float32, W like k, U like v. Given T (saved by the forward), only W and U are
    computed from it; otherwise T is computed and allocated with saved_chunks(...) rows (>= total_chunks)."""
    B, T, H, K = k.shape
    have_t = Tm is not None
    if not have_t:
        Tm = k.new_empty(saved_chunks(B, T, layout.n_seqs, layout.cu_seqlens is not None), H, CHUNK_SIZE, CHUNK_SIZE, dtype=torch.float32)
    w, u = torch.empty_like(k), torch.empty_like(v)
    _wy_fwd_kernel[_chunk_grid(k, layout)](
        k, v, beta, gc, Tm, w, u, layout.cu_seqlens, layout.chunk_indices, T,
        BK=_block(K, 64), BV=_block(v.shape[-1], 64), USE_G=gc is not None, HAVE_T=have_t, **common,
    )
    return Tm, w, u


def _state_pass(k, w, u, gc, h0, layout, output_final_state, common):
    """States entering every chunk (input dtype), the pseudo-values U~ (input dtype), final states (fp32)."""
    _, T, H, K = k.shape
    V = u.shape[-1]
    h = k.new_empty(layout.total_chunks, H, K, V)
    v_new = torch.empty_like(u)
    ht = k.new_empty(layout.n_seqs, H, K, V, dtype=torch.float32) if output_final_state else None
    BV = _state_block_v(K)
    _delta_h_kernel[(triton.cdiv(V, BV), layout.n_seqs * H)](
        k, w, u, gc, h, v_new, h0, ht, layout.cu_seqlens, layout.chunk_offsets, T,
        BK=_block(K, MAX_HEAD_DIM), BV=BV, USE_G=gc is not None, USE_H0=h0 is not None, STORE_HT=output_final_state, **common,
    )
    return h, v_new, ht


def _forward(q, k, v, beta, gc, scale, h0, layout, output_final_state, save_t=False):
    """(o, final states or None, T or None): with save_t, T = (I + A)^-1 per chunk, for the backward."""
    common = _common(q, v, layout)
    Tm, w, u = _wy(k, v, beta, gc, layout, common)
    if not save_t:
        Tm = None  # freed now: not held through the rest of the forward
    h, v_new, ht = _state_pass(k, w, u, gc, h0, layout, output_final_state, common)
    del w, u
    o = torch.empty_like(v)
    K, V = q.shape[-1], v.shape[-1]
    BK, BV = _block(K, 128), _block(V, 128)
    _fwd_o_kernel[_tile_grid(triton.cdiv(V, BV), q, layout)](
        q, k, v_new, gc, h, o, layout.cu_seqlens, layout.chunk_indices, q.shape[1], scale,
        BK=BK, BV=BV, USE_G=gc is not None, **common,
    )
    return o, ht, Tm


def _backward(q, k, v, beta, gc, scale, h0, layout, do, dht, need_dh0, Tm=None, dg_dtype=torch.float32):
    """Tm: T saved by the forward (None: recomputed). dg comes back in dg_dtype."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    common = _common(q, v, layout)
    use_g = gc is not None
    Tm, w, u = _wy(k, v, beta, gc, layout, common, Tm)
    h, v_new, _ = _state_pass(k, w, u, gc, h0, layout, False, common)
    del u

    dv_local = v.new_empty(v.shape, dtype=torch.float32)  # scores part of dU~
    _bwd_dv_kernel[_tile_grid(triton.cdiv(V, _block(V, 128)), q, layout)](
        q, k, gc, do, None, dv_local, layout.cu_seqlens, layout.chunk_indices, T, scale,
        BK=_block(K, 128), BV=_block(V, 128), USE_G=use_g, USE_DH=False, **common,
    )

    dh = q.new_empty(layout.total_chunks, H, K, V)
    du = torch.empty_like(dv_local)
    dh0 = q.new_empty(layout.n_seqs, H, K, V, dtype=torch.float32) if need_dh0 else None
    BV = _state_block_v(K)
    _delta_dh_kernel[(triton.cdiv(V, BV), layout.n_seqs * H)](
        q, k, w, gc, do, dv_local, dh, du, dht, dh0, layout.cu_seqlens, layout.chunk_offsets, T, scale,
        BK=_block(K, MAX_HEAD_DIM), BV=BV, USE_G=use_g, USE_DHT=dht is not None, STORE_DH0=need_dh0,
        F32_OPERANDS=K <= 128, **common,
    )
    del dv_local, w

    dq = torch.empty_like(q)
    dk_acc = q.new_empty(q.shape, dtype=torch.float32)
    BK, BV = _block(K, 128), _block(V, 64)
    NK = triton.cdiv(K, BK)
    dg_lr = q.new_empty(NK, B, T, H, dtype=torch.float32) if use_g else None
    _bwd_dqk_kernel[_tile_grid(NK, q, layout)](
        q, k, v_new, gc, h, do, dh, dq, dk_acc, dg_lr, layout.cu_seqlens, layout.chunk_indices, T, scale, B * T * H,
        BK=BK, BV=BV, USE_G=use_g, **common,
    )
    del v_new, dh

    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dbeta = torch.empty_like(beta)
    dg = q.new_empty(B, T, H, dtype=dg_dtype) if use_g else None
    scratch = torch.empty_like(Tm)  # for B^T inside _wy_bwd_kernel (allocated after dh and v_new are freed)
    _wy_bwd_kernel[_chunk_grid(q, layout)](
        k, v, beta, gc, Tm, scratch, h, du, dk_acc, dk, dv, dbeta, dg_lr, dg,
        layout.cu_seqlens, layout.chunk_indices, T, B * T * H,
        BK=_block(K, 64), BV=_block(V, 64), USE_G=use_g, NK_LR=NK, **common,
    )
    return dq, dk, dv, dbeta, dg, dh0


# --- the public op: a torch.library custom op (opaque to torch.compile, with fake implementations) -----


@torch.library.custom_op("seqmix::chunk_delta_rule", mutates_args=())
def _delta_rule_op(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, scale: float,
    initial_state: Tensor | None, output_final_state: bool, cu_seqlens: Tensor | None, save_for_backward: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(o, final state or an empty tensor, T or an empty tensor): a custom op cannot return None.
    With save_for_backward, T = (I + A)^-1 per chunk (float32 [saved_chunks, H, C, C]) comes back for
    the backward, which then skips recomputing it (the inversion is the expensive part of the WY kernel)."""
    layout = chunk_layout(q.shape[0], q.shape[1], CHUNK_SIZE, cu_seqlens)
    gc = None if g is None else chunk_local_cumsum(g, layout, CHUNK_SIZE, scale=LOG2E)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, ht, Tm = _forward(q, k, v, beta, gc, scale, h0, layout, output_final_state, save_for_backward)
    empty = q.new_empty(0, dtype=torch.float32)
    return o, empty if ht is None else ht, q.new_empty(0, dtype=torch.float32) if Tm is None else Tm


def _saved_t_shape(q: Tensor, cu_seqlens: Tensor | None, save: bool) -> tuple[int, ...]:
    if not save:
        return (0,)
    n = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    return (saved_chunks(q.shape[0], q.shape[1], n, cu_seqlens is not None), q.shape[2], CHUNK_SIZE, CHUNK_SIZE)


@_delta_rule_op.register_fake
def _(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, save_for_backward=False):
    n = q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    shape = (n, q.shape[2], q.shape[3], v.shape[3]) if output_final_state else (0,)
    Tm = q.new_empty(_saved_t_shape(q, cu_seqlens, save_for_backward), dtype=torch.float32)
    return torch.empty_like(v), q.new_empty(shape, dtype=torch.float32), Tm


@torch.library.custom_op("seqmix::chunk_delta_rule_backward", mutates_args=())
def _delta_rule_backward_op(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None, scale: float, initial_state: Tensor | None,
    cu_seqlens: Tensor | None, do: Tensor, dht: Tensor | None, need_dg: bool, need_dh0: bool, saved_t: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dbeta, dg, dh0); dg and dh0 are empty tensors unless asked for. saved_t: the
    forward's T (read only), or None / an empty tensor to recompute it."""
    layout = chunk_layout(q.shape[0], q.shape[1], CHUNK_SIZE, cu_seqlens)
    gc = None if g is None else chunk_local_cumsum(g, layout, CHUNK_SIZE, scale=LOG2E)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    dht = None if dht is None else dht.float().contiguous()
    Tm = None if saved_t is None or saved_t.numel() == 0 else saved_t
    dg_dtype = g.dtype if need_dg else torch.float32
    dq, dk, dv, dbeta, dg, dh0 = _backward(q, k, v, beta, gc, scale, h0, layout, do.contiguous(), dht, need_dh0, Tm, dg_dtype)
    dg = dg if need_dg else q.new_empty(0)  # distinct empty tensors: outputs may not alias
    return dq, dk, dv, dbeta, dg, dh0.to(initial_state.dtype) if need_dh0 else q.new_empty(0)


@_delta_rule_backward_op.register_fake
def _(q, k, v, beta, g, scale, initial_state, cu_seqlens, do, dht, need_dg, need_dh0, saved_t=None):
    grads = (torch.empty_like(x) for x in (q, k, v, beta))
    return *grads, torch.empty_like(g) if need_dg else q.new_empty(0), torch.empty_like(initial_state) if need_dh0 else q.new_empty(0)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, beta, g, scale, initial_state, _, cu_seqlens, *_ = inputs
    saved_t = output[2]
    ctx.mark_non_differentiable(saved_t)
    ctx.save_for_backward(q, k, v, beta, g, initial_state, cu_seqlens, saved_t)
    ctx.scale = scale


def _delta_rule_backward(ctx, do, dht, _):
    q, k, v, beta, g, initial_state, cu_seqlens, saved_t = ctx.saved_tensors
    do = torch.zeros_like(v) if do is None else do
    dht = None if dht is None or dht.numel() == 0 else dht
    need_dg = g is not None and ctx.needs_input_grad[4]
    need_dh0 = initial_state is not None and ctx.needs_input_grad[6]
    dq, dk, dv, dbeta, dg, dh0 = _delta_rule_backward_op(
        q, k, v, beta, g, ctx.scale, initial_state, cu_seqlens, do, dht, need_dg, need_dh0, saved_t
    )
    return dq, dk, dv, dbeta, dg if need_dg else None, None, dh0 if need_dh0 else None, None, None, None


torch.library.register_autograd(_delta_rule_op, _delta_rule_backward, setup_context=_setup_context)


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
    with a fake implementation, so torch.compile traces models that call it (without graph breaks).
    """
    check_inputs(q, k, v, g, initial_state, cu_seqlens)
    if beta.shape != q.shape[:3] or not beta.is_floating_point():
        raise ValueError(f"beta must be a float tensor of shape (B, T, H) = {tuple(q.shape[:3])}, got {beta.dtype} {tuple(beta.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    # keep T for the backward only when one will run (about C * 4 bytes per token and head: 134 MB at
    # B = 8, T = 4096, H = 16; without it the backward recomputes T, about 1 ms on the H100 at that size)
    save = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, beta, g, initial_state))
    o, final_state, _ = _delta_rule_op(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, save)
    return o, final_state if output_final_state else None


def supports(q: Tensor, v: Tensor) -> bool:
    """Whether these kernels take the inputs (otherwise use the PyTorch chunk form): float32 or 16-bit
    inputs and head dims K, V <= MAX_HEAD_DIM."""
    return q.dtype in DTYPES and max(q.shape[-1], v.shape[-1]) <= MAX_HEAD_DIM
