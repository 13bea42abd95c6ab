"""The Triton kernels of the chunked linear recurrence (scalar decay, none, or per key channel with G_PER_K):
the sequential state passes (h forward, dh backward) and the chunk-parallel passes (o, dv, and dq, dk, dg for
the scalar decay); the delta rule reuses the chunk-parallel ones. Launched from chunk.py, which holds the
algorithm, the layouts and the public op; the per-channel decay's own kernels are in vector_decay.py.
"""

import triton
import triton.language as tl

from kernels.common.chunks import chunk_coords, chunk_rows, sequence_coords
from kernels.common.config import all_configs, configs, length_args
from kernels.linear_recurrence import vector_decay

# Block sizes come from the head dims (see the launchers); autotuning picks warps and pipeline depth,
# the first choice being the default when not autotuning. Autotune keys leave out T, so a new
# sequence length neither recompiles nor re-tunes.
STATE_CHOICES = all_configs(warps=(4, 2), stages=(2, 3))
TILE_CHOICES = all_configs(warps=(4, 8), stages=(2, 3))  # also _bwd_dqk_kernel's: 4 warps is the H100 autotuner's pick there too
# K tile of _bwd_dqk_kernel: at 128 it spills about 1 KB per thread on sm_90 (benchmarks.kernels.registers); at 64 a
# second tile recomputes the score gradient and is still faster (H100, D = 128, fwd+bwd: scalar decay 2.21 -> 1.92 ms,
# gated delta rule 5.74 -> 5.41 ms)
DQK_K_TILE = 64
KEY = ["H", "K", "V", "BK", "BV", "USE_G", "IS_VARLEN"]


# --- state passes: one program per (K tile, V tile, sequence and head), sequential over chunks -----------


@triton.autotune(configs=configs(STATE_CHOICES), key=KEY + ["G_PER_K", "USE_H0", "STORE_HT"])
@triton.jit(do_not_specialize=length_args("T"))
def _fwd_h_kernel(
    k, v, gc, h, h0, ht, cu_seqlens, chunk_offsets, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, G_PER_K: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """h[c] = state entering chunk c; S <- exp(gamma_C) S + (K * exp(gamma_C - gamma))^T V, with gamma one
    value per row or (G_PER_K) one per row and key channel, exp(gamma_C) then scaling the rows of S."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, c0 = sequence_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    o_kv = o_k[:, None] * V + o_v[None, :]  # [BK, BV] offsets inside one K x V state
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0).to(tl.float32)
    for i_t in range(0, NT):
        tl.store(h + ((c0 + i_t) * H + i_h) * K * V + o_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
        b_k = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=(o_k[:, None] < K) & m_t[None, :], other=0)  # [BK, BT]
        b_v = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_t[:, None] & (o_v[None, :] < V), other=0)  # [BT, BV]
        if USE_G:
            last = tl.minimum(i_t * BT + BT, T) - 1
            if G_PER_K:
                b_g_last = tl.load(gc + ((bos + last) * H + i_h) * K + o_k, mask=o_k < K, other=0)  # [BK]
                b_g = tl.load(gc + base * K + (r[None, :] * K + o_k[:, None]), mask=(o_k[:, None] < K) & m_t[None, :], other=0)  # [BK, BT]
                b_h *= tl.exp2(b_g_last)[:, None]
                b_k = (b_k * tl.exp2(b_g_last[:, None] - b_g)).to(b_k.dtype)
            else:
                b_g_last = tl.load(gc + (bos + last) * H + i_h)
                b_g = tl.load(gc + base + r, mask=m_t, other=0)
                b_h *= tl.exp2(b_g_last)
                b_v = (b_v * tl.exp2(b_g_last - b_g)[:, None]).to(b_v.dtype)
        b_h += tl.dot(b_k, b_v, input_precision=DOT_PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + o_kv, b_h, mask=m_kv)


@triton.autotune(configs=configs(STATE_CHOICES), key=KEY + ["G_PER_K", "USE_DHT", "STORE_DH0"])
@triton.jit(do_not_specialize=length_args("T"))
def _bwd_dh_kernel(
    q, do, gc, dh, dht, dh0, cu_seqlens, chunk_offsets, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, G_PER_K: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, IS_VARLEN: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """dh[c] = gradient of the state leaving chunk c from later chunks and dS_T;
    dS <- exp(gamma_C) dS + scale (Q * exp(gamma))^T dO, in reverse chunk order (gamma per key channel with G_PER_K)."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, c0 = sequence_coords(i_n, T, cu_seqlens, chunk_offsets, BT, IS_VARLEN)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_kv = (o_k[:, None] < K) & (o_v[None, :] < V)
    o_kv = o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(dht + i_nh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0).to(tl.float32)
    for i_t in range(NT - 1, -1, -1):
        tl.store(dh + ((c0 + i_t) * H + i_h) * K * V + o_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
        b_q = tl.load(q + base * K + (r[None, :] * K + o_k[:, None]), mask=(o_k[:, None] < K) & m_t[None, :], other=0)  # [BK, BT]
        b_do = tl.load(do + base * V + (r[:, None] * V + o_v[None, :]), mask=m_t[:, None] & (o_v[None, :] < V), other=0)  # [BT, BV]
        if USE_G:
            last = tl.minimum(i_t * BT + BT, T) - 1
            if G_PER_K:
                b_g_last = tl.load(gc + ((bos + last) * H + i_h) * K + o_k, mask=o_k < K, other=0)  # [BK]
                b_g = tl.load(gc + base * K + (r[None, :] * K + o_k[:, None]), mask=(o_k[:, None] < K) & m_t[None, :], other=0)  # [BK, BT]
                b_dh *= tl.exp2(b_g_last)[:, None]
                b_q = (b_q * (tl.exp2(b_g) * scale)).to(b_q.dtype)
            else:
                b_g_last = tl.load(gc + (bos + last) * H + i_h)
                b_g = tl.load(gc + base + r, mask=m_t, other=0)
                b_dh *= tl.exp2(b_g_last)
                b_q = (b_q * (tl.exp2(b_g) * scale)[None, :]).to(b_q.dtype)
        else:
            b_q = (b_q * scale).to(b_q.dtype)
        b_dh += tl.dot(b_q, b_do, input_precision=DOT_PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + o_kv, b_dh, mask=m_kv)


# --- chunk-parallel passes: one program per (tile, chunk, batch and head) --------------------------------


@triton.autotune(configs=configs(TILE_CHOICES), key=KEY + ["G_PER_K"])
@triton.jit(do_not_specialize=length_args("T"))
def _fwd_o_kernel(
    q, k, v, gc, h, o, cu_seqlens, chunk_indices, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr,
    A=None, G_PER_K: tl.constexpr = False,  # defaults: the delta-rule kernels call this one without them
):
    """O = scale (Q * exp(gamma)) h[c] + (scale Q K^T * Gamma) V. With G_PER_K (gamma per key channel)
    the scores Q K^T * Gamma are read from A (fp32, from vector_decay._intra_scores_kernel)."""
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, i_c = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    p_h = h + (i_c * H + i_h) * K * V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_q = tl.load(q + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0)  # [BK, BV]
        if G_PER_K:
            b_g = tl.load(gc + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)
            b_o += tl.dot((b_q * tl.exp2(b_g)).to(b_q.dtype), b_h, input_precision=DOT_PREC)
        else:
            b_kt = tl.load(k + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)  # [BK, BT]
            b_o += tl.dot(b_q, b_h, input_precision=DOT_PREC)
            b_A += tl.dot(b_q, b_kt, input_precision=DOT_PREC)
    causal = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]  # padded rows masked too: their gamma is 0
    if G_PER_K:
        b_A = tl.load(A + base * BT + (r[:, None] * BT + tl.arange(0, BT)[None, :]), mask=m_t[:, None], other=0)
    elif USE_G:
        b_g = tl.load(gc + base + r, mask=m_t, other=0)
        b_o *= tl.exp2(b_g)[:, None]
        b_A *= tl.exp2(tl.where(causal, b_g[:, None] - b_g[None, :], float("-inf")))
    b_A = tl.where(causal, b_A * scale, 0)
    b_v = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_t[:, None] & m_v[None, :], other=0)
    b_o = b_o * scale + tl.dot(b_A.to(b_v.dtype), b_v, input_precision=DOT_PREC)
    tl.store(o + base * V + (r[:, None] * V + o_v[None, :]), b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.autotune(configs=configs(TILE_CHOICES), key=KEY + ["USE_DH", "G_PER_K"])
@triton.jit(do_not_specialize=length_args("T"))
def _bwd_dv_kernel(
    q, k, gc, do, dh, dv, cu_seqlens, chunk_indices, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, USE_DH: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr,
    A=None, G_PER_K: tl.constexpr = False,  # defaults: the delta-rule kernels call this one without them
):
    """dV = (K * exp(gamma_C - gamma)) dh[c] + (scale Q K^T * Gamma)^T dO; without USE_DH only the
    second (chunk-local) term, which the delta rule's reverse state pass completes. With G_PER_K
    (gamma per key channel) the scores are read from A, transposed by the load.

    The transposed score matrix is computed as K Q^T directly: transposing a dot result before
    another dot is miscompiled on Hopper by Triton 3.4 - 3.7.0 (fla issue 640).
    """
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, i_c = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    b_At = tl.zeros([BT, BT], dtype=tl.float32)  # b_At[j, r] = k_j . q_r
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)  # [BT, BK]
        if USE_DH:
            b_dh = tl.load(dh + (i_c * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0)  # [BK, BV]
            if G_PER_K:
                last = tl.minimum(i_t * BT + BT, T) - 1
                b_g_last = tl.load(gc + ((bos + last) * H + i_h) * K + o_k, mask=m_k, other=0)  # [BK]
                b_g = tl.load(gc + base * K + (r[:, None] * K + o_k[None, :]), mask=m_t[:, None] & m_k[None, :], other=0)
                b_dv += tl.dot((b_k * tl.exp2(b_g_last[None, :] - b_g)).to(b_k.dtype), b_dh, input_precision=DOT_PREC)
            else:
                b_dv += tl.dot(b_k, b_dh, input_precision=DOT_PREC)
        if not G_PER_K:
            b_qt = tl.load(q + base * K + (r[None, :] * K + o_k[:, None]), mask=m_k[:, None] & m_t[None, :], other=0)  # [BK, BT]
            b_At += tl.dot(b_k, b_qt, input_precision=DOT_PREC)
    anticausal = (o_t[:, None] <= o_t[None, :]) & m_t[:, None] & m_t[None, :]  # j <= r
    if G_PER_K:  # b_At[j, r] = A[r, j]
        b_At = tl.load(A + base * BT + (r[None, :] * BT + tl.arange(0, BT)[:, None]), mask=m_t[None, :], other=0)
    elif USE_G:
        last = tl.minimum(i_t * BT + BT, T) - 1
        b_g_last = tl.load(gc + (bos + last) * H + i_h)
        b_g = tl.load(gc + base + r, mask=m_t, other=0)
        if USE_DH:
            b_dv *= tl.exp2(b_g_last - b_g)[:, None]
        b_At *= tl.exp2(tl.where(anticausal, b_g[None, :] - b_g[:, None], float("-inf")))
    b_At = tl.where(anticausal, b_At * scale, 0)
    b_do = tl.load(do + base * V + (r[:, None] * V + o_v[None, :]), mask=m_t[:, None] & m_v[None, :], other=0)
    b_dv += tl.dot(b_At.to(b_do.dtype), b_do, input_precision=DOT_PREC)
    tl.store(dv + base * V + (r[:, None] * V + o_v[None, :]), b_dv.to(dv.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


@triton.autotune(configs=configs(TILE_CHOICES), key=KEY)
@triton.jit(do_not_specialize=length_args("T", "n_rows"))
def _bwd_dqk_kernel(
    q, k, v, gc, h, do, dh, dq, dk, dg, cu_seqlens, chunk_indices, T, scale, n_rows,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_G: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dQ = scale exp(gamma) dO h[c]^T + (scale dO V^T * Gamma) K;
    dK = exp(gamma_C - gamma) V dh[c]^T + (scale dO V^T * Gamma)^T Q;
    dg[i_k] = this K tile's share of the gate gradient, d(loss)/d(gamma) reverse-summed inside the chunk.

    Two passes over V keep few accumulators live: first the score gradients dA = dO V^T and
    dA^T = V dO^T (computed as such, never by transposing a dot result: see _bwd_dv_kernel), whose
    products with K and Q start dQ and dK; then the state terms, with the gates folded into the rows
    of dO and V. V^T and dO^T are transposes of the loaded tiles, not second loads (H100, gated delta rule
    B16 T2048 H16 D128, session 19: this kernel 0.70 -> 0.68 ms).
    """
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, i_c = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_h = h + (i_c * H + i_h) * K * V
    p_dh = dh + (i_c * H + i_h) * K * V

    b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # b_dA[r, j] = do_r . v_j
    b_dAt = tl.zeros([BT, BT], dtype=tl.float32)  # b_dAt[j, r] = v_j . do_r
    for i_v in tl.static_range(0, (V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        b_do = tl.load(do + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_v = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PREC)  # transposed loaded tiles, not dot results
        b_dAt += tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PREC)
    causal = (o_t[:, None] >= o_t[None, :]) & m_t[:, None] & m_t[None, :]  # padded rows masked too: their gamma is 0
    anticausal = (o_t[:, None] <= o_t[None, :]) & m_t[:, None] & m_t[None, :]
    if USE_G:
        last = tl.minimum(i_t * BT + BT, T) - 1
        b_g_last = tl.load(gc + (bos + last) * H + i_h)
        b_g = tl.load(gc + base + r, mask=m_t, other=0)
        b_dA *= tl.exp2(tl.where(causal, b_g[:, None] - b_g[None, :], float("-inf")))
        b_dAt *= tl.exp2(tl.where(anticausal, b_g[None, :] - b_g[:, None], float("-inf")))
        do_scale = tl.exp2(b_g) * scale  # [BT], rows of dO in the state term of dQ
        v_scale = tl.exp2(b_g_last - b_g)  # [BT], rows of V in the state term of dK
    else:
        do_scale = tl.full([BT], scale, dtype=tl.float32)
        v_scale = tl.full([BT], 1.0, dtype=tl.float32)
    b_q = tl.load(q + base * K + (r[:, None] * K + o_k[None, :]), mask=m_tk, other=0)  # [BT, BK]
    b_k = tl.load(k + base * K + (r[:, None] * K + o_k[None, :]), mask=m_tk, other=0)  # [BT, BK]
    b_dq = tl.dot(tl.where(causal, b_dA * scale, 0).to(b_k.dtype), b_k, input_precision=DOT_PREC)
    b_dk = tl.dot(tl.where(anticausal, b_dAt * scale, 0).to(b_q.dtype), b_q, input_precision=DOT_PREC)
    if USE_G:
        b_kdk_scores = tl.sum(b_k.to(tl.float32) * b_dk, axis=1)  # k . dk's score part, kept out of the last row's term
        b_hdh = tl.zeros([1], dtype=tl.float32)

    for i_v in tl.static_range(0, (V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        m_vk = (o_v[:, None] < V) & m_k[None, :]
        b_do = tl.load(do + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_v = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_ht = tl.load(p_h + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)  # [BV, BK]
        b_dht = tl.load(p_dh + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)  # [BV, BK]
        b_dq += tl.dot((b_do * do_scale[:, None]).to(b_do.dtype), b_ht, input_precision=DOT_PREC)
        b_dk += tl.dot((b_v * v_scale[:, None]).to(b_v.dtype), b_dht, input_precision=DOT_PREC)
        if USE_G:
            b_hdh += tl.sum(b_ht.to(tl.float32) * b_dht.to(tl.float32))
    tl.store(dq + base * K + (r[:, None] * K + o_k[None, :]), b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + base * K + (r[:, None] * K + o_k[None, :]), b_dk.to(dk.dtype.element_ty), mask=m_tk)
    if USE_G:
        # d(loss)/d(gamma_r) = q_r . dq_r - k_r . dk_r: the scores' part (rowsum(M) - colsum(M) with M = dA * A,
        # A = scale Q K^T * Gamma, is q . dq's score part - k . dk's), the read of h[c] (q . dq's state part) and the
        # writes to the next state (- k . dk's state part); at the chunk's last row the chunk's total decay of h[c]
        # and of every write
        b_kdk = tl.sum(b_k.to(tl.float32) * b_dk, axis=1)
        b_dg = tl.sum(b_q.to(tl.float32) * b_dq, axis=1) - b_kdk
        b_dg_last = tl.sum(b_hdh) * tl.exp2(b_g_last) + tl.sum(b_kdk - b_kdk_scores)
        b_dg += tl.where(o_t == last, b_dg_last, 0)
        b_dg = tl.cumsum(b_dg, axis=0, reverse=True)  # gamma is a chunk-local cumsum of g
        tl.store(dg + (i_k.to(tl.int64) * n_rows + base) + r, b_dg, mask=m_t)


AUTOTUNED = {  # every autotuned kernel with all its config choices (the GPU tests try each one)
    _fwd_h_kernel: STATE_CHOICES,
    _bwd_dh_kernel: STATE_CHOICES,
    _fwd_o_kernel: TILE_CHOICES,
    _bwd_dv_kernel: TILE_CHOICES,
    _bwd_dqk_kernel: TILE_CHOICES,
    **vector_decay.AUTOTUNED,
}
