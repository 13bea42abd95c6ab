"""The per-chunk WY representation of the delta rule, forward and backward kernels; see README.md.

Per chunk: A = strict_lower(Diag(beta) (K K^T * Gamma)), T = (I + A)^-1 (`_inverse_kernel`: the four diagonal
16 x 16 blocks by doubling, the rest by block substitution); the state passes in chunk.py apply T in place of
W = T Diag(beta) (K * exp(gamma)) and U = T Diag(beta) V. `_wy_bwd_kernel` takes the gradients of X (see chunk.py) and A
back to K, V, beta and gamma. Launched from chunk.py.
"""

import triton
import triton.language as tl

from kernels.common.chunks import chunk_coords, chunk_rows
from kernels.common.config import all_configs, configs, length_args
from kernels.linear_recurrence.passes import KEY

WY_CHOICES = all_configs(warps=(4, 8), stages=(3, 2))
# One warp first: the inversion is a chain of dependent 16 x 16 dots, and one-warp programs (255 registers; no spills
# gated, 8 bytes per thread without the gate) let eight share a multiprocessor. H100, B16 T2048 H16 K128, gated, one
# call (session 18): 154 us at 1 warp, 180 at 2, 224 at 4 (the default until then), 386 at 8; the pipeline depth
# changed nothing (no loop to pipeline).
INVERSE_CHOICES = all_configs(warps=(1, 2, 4), stages=(1,))


# --- per chunk: the WY representation ------------------------------------------------------------------


@triton.jit
def _invert_unit_lower_16(A, PREC: tl.constexpr):
    """(I + A)^-1 of a strictly lower-triangular 16 x 16 float32 block, by doubling: X, the inverse of the
    diagonal blocks of size b, becomes that of size 2b as X - X L X, L the part of A in the lower-left
    b x b blocks inside each 2b x 2b one (the 2 x 2 block inverse [[X1, 0], [-X2 A21 X1, X2]]).
    Six fp32 dots (see _mm) in three dependent steps (after X = I - L for b = 1), with no memory round trip,
    instead of 15 dependent substitution steps."""
    i = tl.arange(0, 16)[:, None]
    j = tl.arange(0, 16)[None, :]
    X = tl.where(i == j, 1.0, 0.0) - tl.where((i // 2 == j // 2) & (i > j), A, 0)
    for b in tl.static_range(1, 4):  # blocks of 2, 4, 8 become blocks of 4, 8, 16
        L = tl.where((i >> (b + 1) == j >> (b + 1)) & (i >> b != j >> b), A, 0)
        X -= _mm(X, _mm(L, X, PREC), PREC)
    return X


@triton.jit
def _block16(p, i: tl.constexpr, j: tl.constexpr, BT: tl.constexpr):
    o16 = tl.arange(0, 16)
    return tl.load(p + (i * 16 + o16[:, None]) * BT + (j * 16 + o16[None, :]))


@triton.jit
def _store16(p, i: tl.constexpr, j: tl.constexpr, x, BT: tl.constexpr):
    o16 = tl.arange(0, 16)
    tl.store(p + (i * 16 + o16[:, None]) * BT + (j * 16 + o16[None, :]), x)


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    """A product of 16 x 16 float32 blocks of T in PREC, the op's DOT_PREC: exact ("ieee") for float32 inputs, tf32
    for 16-bit ones (where "ieee" was used until session 11). tf32 (H100,
    gated B8 T4096 H16 D128, session 12): the inverting kernel 0.60 -> 0.55 ms, T's relative error against float64
    6.7e-9 -> 3.1e-5."""
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _invert_unit_lower_64(p, BT: tl.constexpr, PREC: tl.constexpr):
    """Overwrites the strictly lower-triangular 64 x 64 float32 A at p with (I + A)^-1: the four diagonal
    16 x 16 blocks by substitution, then block forward substitution X_ij = -X_ii sum_k A_ik X_kj.
    Much faster than 63 substitution steps on the whole matrix. The caller synchronises around it."""
    tl.static_assert(BT == 64, "the block inversion is written for chunks of 64 tokens")
    X00 = _invert_unit_lower_16(_block16(p, 0, 0, BT), PREC)
    X11 = _invert_unit_lower_16(_block16(p, 1, 1, BT), PREC)
    X22 = _invert_unit_lower_16(_block16(p, 2, 2, BT), PREC)
    X33 = _invert_unit_lower_16(_block16(p, 3, 3, BT), PREC)
    A10, A20, A30 = _block16(p, 1, 0, BT), _block16(p, 2, 0, BT), _block16(p, 3, 0, BT)
    A21, A31, A32 = _block16(p, 2, 1, BT), _block16(p, 3, 1, BT), _block16(p, 3, 2, BT)
    X10 = -_mm(X11, _mm(A10, X00, PREC), PREC)
    X21 = -_mm(X22, _mm(A21, X11, PREC), PREC)
    X32 = -_mm(X33, _mm(A32, X22, PREC), PREC)
    X20 = -_mm(X22, _mm(A20, X00, PREC) + _mm(A21, X10, PREC), PREC)
    X31 = -_mm(X33, _mm(A31, X11, PREC) + _mm(A32, X21, PREC), PREC)
    X30 = -_mm(X33, _mm(A30, X00, PREC) + _mm(A31, X10, PREC) + _mm(A32, X20, PREC), PREC)
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


@triton.autotune(configs=configs(INVERSE_CHOICES), key=["H", "K", "BK", "USE_G", "IS_VARLEN"])
@triton.jit(do_not_specialize=length_args("T"))
def _inverse_kernel(
    k, beta, gc, Tm, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """T = (I + A)^-1 per chunk (float32, stored at Tm), A = strict_lower(Diag(beta) (K K^T * Gamma)). W and U are
    never formed: the state passes apply T to their chunk's rows (see chunk.py)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, i_c = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
    o_c = tl.arange(0, BT)
    b_beta = tl.load(beta + base + r, mask=m_t, other=0).to(tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
        b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)  # [BK, BT]
        b_A += tl.dot(b_k, b_kt, input_precision=DOT_PREC)
    strict = (o_c[:, None] > o_c[None, :]) & m_t[:, None] & m_t[None, :]  # padded rows have gamma 0
    if USE_G:
        b_g = tl.load(gc + base + r, mask=m_t, other=0)
        b_A *= tl.exp2(tl.where(strict, b_g[:, None] - b_g[None, :], float("-inf")))
    b_A = tl.where(strict, b_A * b_beta[:, None], 0)
    p_T = Tm + (i_c * H + i_h) * BT * BT
    tl.store(p_T + (o_c[:, None] * BT + o_c[None, :]), b_A)
    tl.debug_barrier()  # A goes through memory to be read back as 16 x 16 blocks
    _invert_unit_lower_64(p_T, BT, DOT_PREC)


@triton.autotune(configs=configs(WY_CHOICES), key=KEY + ["NK_LR"])
@triton.jit(do_not_specialize=length_args("T", "n_rows"))
def _wy_bwd_kernel(
    k, v, beta, gc, h, v_new, dx, dk_acc, dk, dv, dbeta, dg_lr, dg, cu_seqlens, chunk_indices, T, n_rows,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr, NK_LR: tl.constexpr,
):
    """Gradients through X = Diag(beta) (V - Diag(exp(gamma)) K h[c]) and A = strict_lower(Diag(beta) (K K^T * Gamma)),
    where U~ = T X and T = (I + A)^-1, given dX = T^T dU~ (dx, from the reverse pass): dV = beta dX; dT = dU~ X^T, so
    dA = -T^T dT T^T = -dX (T X)^T = -dX U~^T, without T; with P = dX h[c]^T and B = dA * Gamma * beta_row,
    dK = dk_acc (the linear recurrence's part) - beta exp(gamma) P + (B + B^T) K,
    dbeta = rowsum(dX * V) - exp(gamma) rowsum(P * K) + rowsum(dA * Gamma * K K^T),
    d(gamma) = -beta exp(gamma) rowsum(P * K) + rowsum(M) - colsum(M) with M = dA * A, reverse-summed over the chunk
    like the linear recurrence's, plus its NK_LR per-K-tile shares dg_lr [NK_LR, n_rows]; written in dbeta's and dg's
    dtypes. dA^T = -U~ dX^T is a dot of its own: no dot result is transposed (see README.md, Hopper). Every dot takes
    16-bit operands for 16-bit inputs (B + B^T rounded to the input dtype), as fla's WY backward.
    """
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, i_c = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
    o_c = tl.arange(0, BT)
    p_h = h + (i_c * H + i_h) * K * V
    b_beta = tl.load(beta + base + r, mask=m_t, other=0).to(tl.float32)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # b_dA[r, j] = -dx_r . u_j
    b_dAt = tl.zeros([BT, BT], dtype=tl.float32)  # b_dAt[j, r] = -u_j . dx_r
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    # plain `range` loops, not unrolled: unrolled, the tiles' live values spilled (session 7)
    for i_v in range(0, (V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        m_vt = (o_v[:, None] < V) & m_t[None, :]
        b_dx = tl.load(dx + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_u = tl.load(v_new + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_dxt = tl.load(dx + base * V + (r[None, :] * V + o_v[:, None]), mask=m_vt, other=0)  # [BV, BT]
        b_ut = tl.load(v_new + base * V + (r[None, :] * V + o_v[:, None]), mask=m_vt, other=0)  # [BV, BT]
        b_dA -= tl.dot(b_dx, b_ut, input_precision=DOT_PREC)
        b_dAt -= tl.dot(b_u, b_dxt, input_precision=DOT_PREC)
        b_dx = b_dx.to(tl.float32)
        b_v = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0).to(tl.float32)
        b_dbeta += tl.sum(b_dx * b_v, 1)
        tl.store(dv + base * V + (r[:, None] * V + o_v[None, :]), (b_dx * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)
        b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)
        b_kk += tl.dot(b_k, b_kt, input_precision=DOT_PREC)
    strict = (o_c[:, None] > o_c[None, :]) & m_t[:, None] & m_t[None, :]  # padded rows have gamma 0
    strict_t = (o_c[:, None] < o_c[None, :]) & m_t[:, None] & m_t[None, :]
    e_g = tl.full([BT], 1.0, dtype=tl.float32)
    if USE_G:
        b_g = tl.load(gc + base + r, mask=m_t, other=0)
        e_g = tl.exp2(b_g)
        b_dA *= tl.exp2(tl.where(strict, b_g[:, None] - b_g[None, :], float("-inf")))  # dA * Gamma
        b_dAt *= tl.exp2(tl.where(strict_t, b_g[None, :] - b_g[:, None], float("-inf")))  # (dA * Gamma)^T
    else:
        b_dA = tl.where(strict, b_dA, 0)
        b_dAt = tl.where(strict_t, b_dAt, 0)
    b_G = b_dA * b_kk  # d(loss)/d(A_rj) * A_rj / beta_r
    b_dbeta += tl.sum(b_G, 1)
    if USE_G:
        b_M = b_G * b_beta[:, None]
        b_dgam = tl.sum(b_M, 1) - tl.sum(b_M, 0)
    b_B = (b_dA * b_beta[:, None] + b_dAt * b_beta[None, :]).to(k.dtype.element_ty)  # B + B^T
    k_scale = b_beta * e_g
    for i_k in range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_p = tl.zeros([BT, BK], dtype=tl.float32)  # P = dX h[c]^T, this K tile
        for i_v in range(0, (V + BV - 1) // BV):
            o_v = i_v * BV + tl.arange(0, BV)
            b_dx = tl.load(dx + base * V + (r[:, None] * V + o_v[None, :]), mask=m_t[:, None] & (o_v[None, :] < V), other=0)
            b_ht = tl.load(p_h + o_k[None, :] * V + o_v[:, None], mask=(o_v[:, None] < V) & m_k[None, :], other=0)  # [BV, BK]
            b_p += tl.dot(b_dx, b_ht, input_precision=DOT_PREC)
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_tk, other=0)
        b_pk = tl.sum(b_p * b_k.to(tl.float32), 1)
        b_dbeta -= b_pk * e_g
        if USE_G:
            b_dgam -= b_pk * k_scale
        b_dk = tl.load(dk_acc + base * K + (r[:, None] * K + o_k[None, :]), mask=m_tk, other=0).to(tl.float32)
        b_dk += tl.dot(b_B, b_k, input_precision=DOT_PREC) - b_p * k_scale[:, None]
        tl.store(dk + base * K + (r[:, None] * K + o_k[None, :]), b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dbeta + base + r, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
    if USE_G:
        b_dg = tl.cumsum(b_dgam, axis=0, reverse=True)
        for i_lr in tl.static_range(0, NK_LR):  # the linear recurrence's shares, one per K tile of its kernel
            b_dg += tl.load(dg_lr + (base + n_rows.to(tl.int64) * i_lr) + r, mask=m_t, other=0)
        tl.store(dg + base + r, b_dg.to(dg.dtype.element_ty), mask=m_t)
