"""Kernels for a decay per key channel (GLA): the intra-chunk scores, their gradients, dq, dk and dg.

With g of shape (B, T, H, K) the intra-chunk scores A_rj = sum_c q_rc k_jc exp(gamma_rc - gamma_jc)
(j <= r, gamma the chunk-local cumsum) are not one matmul, and (Q * e^gamma)(K * e^-gamma)^T
overflows once gamma spans more than ~88 inside a chunk. Secondary chunking (spec section 1): the
chunk of BT = 64 rows is cut into sub-chunks of BC = 16. For a query row r in sub-chunk I:
* keys j in earlier sub-chunks: a tensor-core dot of Q_I * exp(gamma_I - gamma_rho) and
  K_J * exp(gamma_rho - gamma_J), rho the first row of I (both exponents <= 0);
* keys j in I (the diagonal block): in the same dot when gamma falls by at most DIAGONAL_DOT_SPAN
  (log2 units) from I's first row to its last in every channel. Then the key factors
  exp(gamma_rho - gamma_j) and the query factors lie in [2^-span, 2^span]: finite, normal, and their
  products (causal pairs <= 1, the masked ones <= 2^span) stay far from fp32's range. GLA's gates
  (logsigmoid / 16) span ~1 there; a span of 96 is g ~ -4.4 on every token of the sub-chunk.
  Steeper sub-chunks (checked per program, at run time) take the exact path: elementwise in fp32,
  one key per step, a vector reduction over K, kept in a [BC, BC] tile and stored apart from the
  rest of the row.
The gradients use the same split (the pairs (r, r) apart and exact: see _intra_grad_kernel); for the
keys' side the reference is the last row lambda of I. One
program per sub-chunk computes the score gradients of its rows once for every K tile; the elementwise
diagonal steps read columns of their diagonal blocks from a per-program scratch buffer (memory, not
a cross-thread reduction), and one exp2 serves dq and dk: gamma is non-increasing (g <= 0), so
exp2(-|gamma_r - gamma_c|) is the decay of the pair (r, c) either way round.

The sub-chunk dots take fp32 operands (tf32 for 16-bit inputs, ieee for float32): a bf16 rounding
of the decayed operands would add to the outputs' error and, through q * dq - k * dk, to dg's.
Gates are float32 in log2 units (exp2); every exponent is masked to -inf (or bounded by the span)
before exp2, so nothing overflows for any finite g. The state pass, the output pass and dv are the kernels of
passes.py with their per-channel flag (G_PER_K); the launchers are in chunk.py. Layouts as in
chunk.py; A and the intra-chunk parts of dq and dk are float32 (A is (B, T, H, BT): row r of a chunk
holds A_r. over the chunk's columns, zero above the diagonal and past the sequence's end).
"""

import triton
import triton.language as tl

from kernels.common.chunks import chunk_coords, chunk_rows
from kernels.common.config import all_configs, configs, length_args

SUB_CHUNK = 16
DIAGONAL_DOT_SPAN = tl.constexpr(96.0)  # log2 units; see the module docstring
SCORE_CHOICES = all_configs(warps=(4, 2), stages=(2, 3))
# _intra_grad_kernel at 4 warps: ptxas takes ~230 registers (two programs per SM), capped at 168 three fit, without
# spills (compiled for sm_90 with Triton 3.6, K = V = 128, 16-bit; not timed). No loop of it is pipelined: num_stages
# changes nothing.
GRAD_CHOICES = [triton.Config({}, num_warps=4, num_stages=2, maxnreg=r) for r in (168, None)]
DQKG_CHOICES = all_configs(warps=(4, 8), stages=(2, 3))
KEY = ["H", "K", "V", "BK", "BV", "IS_VARLEN"]


@triton.jit
def _span(p_first, p_last, K: tl.constexpr, BK: tl.constexpr):
    """max over the K channels of gamma(first row) - gamma(last row), >= 0: how far the gate falls between two rows
    of a chunk (p_first, p_last: pointers to their K gates)."""
    span = 0.0
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_first = tl.load(p_first + o_k, mask=m_k, other=0)
        b_last = tl.load(p_last + o_k, mask=m_k, other=0)
        span = tl.maximum(span, tl.max(b_first - b_last))
    return span


@triton.autotune(configs=configs(SCORE_CHOICES), key=["H", "K", "BK", "IS_VARLEN"])
@triton.jit(do_not_specialize=length_args("T"))
def _intra_scores_kernel(
    q, k, gc, A, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """The rows of sub-chunk I = program_id(0) of A: A_rj = sum_c q_rc k_jc exp(gamma_rc - gamma_jc) for j <= r, unscaled."""
    i_i, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, _ = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    base = (bos + i_t * BT) * H + i_h  # the chunk's first row (int64); positions below count from it
    n = T - i_t * BT  # tokens of the sequence from the chunk's start
    o_j = tl.arange(0, BC)
    o_r = i_i * BC + o_j  # query rows (positions in the chunk)
    o_c = tl.arange(0, BT)  # key columns
    m_r, m_c = o_r < n, o_c < n
    ref = i_i * BC  # rho, the first row of I
    ref_row = tl.minimum(ref, n - 1)  # where it is loaded from (a sub-chunk past the end stores nothing)
    last_row = tl.minimum(ref + BC, n) - 1
    steep = _span(gc + base * K + ref_row * H * K, gc + base * K + last_row * H * K, K, BK) > DIAGONAL_DOT_SPAN
    keys = (o_c < tl.where(steep, ref, ref + BC)) & m_c  # keys in the dot: earlier sub-chunks, and I unless steep
    b_A = tl.zeros([BC, BT], dtype=tl.float32)  # keys in the dot (zero for the others)
    b_Ad = tl.zeros([BC, BC], dtype=tl.float32)  # keys in I when steep
    for i_k in tl.static_range(0, (K + BK - 1) // BK):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_rk = m_r[:, None] & m_k[None, :]
        m_kc = m_k[:, None] & m_c[None, :]
        o_rows = (o_r * H * K)[:, None] + o_k[None, :]  # [BC, BK] (int32 inside the chunk; base is int64)
        o_cols = (o_c * H * K)[None, :] + o_k[:, None]  # [BK, BT], keys loaded transposed
        b_q = tl.load(q + base * K + o_rows, mask=m_rk, other=0)
        b_gq = tl.load(gc + base * K + o_rows, mask=m_rk, other=0)
        b_kt = tl.load(k + base * K + o_cols, mask=m_kc, other=0)
        b_gkt = tl.load(gc + base * K + o_cols, mask=m_kc, other=0)
        b_gref = tl.load(gc + base * K + ref_row * H * K + o_k, mask=m_k, other=0)  # [BK]
        b_qg = b_q * tl.exp2(tl.where(m_r[:, None], b_gq - b_gref[None, :], 0))
        b_kg = b_kt * tl.exp2(tl.where(keys[None, :], b_gref[:, None] - b_gkt, float("-inf")))
        b_A += tl.dot(b_qg, b_kg, input_precision=DOT_PREC)  # fp32 operands: tf32 for 16-bit inputs
        if steep:  # the diagonal block in fp32, one key column c = ref + j of I per step
            b_qf = b_q.to(tl.float32)
            off_c = base * K + ref * H * K  # row c
            for j in range(0, BC):
                b_kc = tl.load(k + off_c + o_k, mask=m_k & (j < n - ref), other=0).to(tl.float32)
                b_gc = tl.load(gc + off_c + o_k, mask=m_k & (j < n - ref), other=0)
                causal = (o_j >= j) & m_r
                b_decay = tl.exp2(tl.where(causal[:, None], b_gq - b_gc[None, :], float("-inf")))
                b_a = tl.sum(b_qf * b_kc[None, :] * b_decay, axis=1)  # [BC]
                b_Ad = tl.where(o_j[None, :] == j, b_Ad + b_a[:, None], b_Ad)  # a [BC, BC] update, not [BC, BT]
                off_c += H * K
    # two stores that never share an address: the dot's columns, zero above the diagonal (I's columns too unless
    # steep), then, when steep, the elementwise diagonal block. The masks take the scalar steep through tl.where:
    # Triton's interpreter cannot broadcast a scalar bool in &.
    outside_I = (o_c < ref) | (o_c >= ref + BC)
    p_A = A + base * BT + (o_r * H * BT)[:, None]
    b_A = tl.where(o_c[None, :] <= o_r[:, None], b_A, 0)
    tl.store(p_A + o_c[None, :], b_A, mask=m_r[:, None] & tl.where(steep, outside_I, True)[None, :])
    tl.store(p_A + o_r[None, :], b_Ad, mask=tl.where(steep, m_r, False)[:, None])


@triton.autotune(configs=configs(GRAD_CHOICES), key=KEY)
@triton.jit(do_not_specialize=length_args("T"))
def _intra_grad_kernel(
    q, k, v, gc, do, dq, dk, dAd, cu_seqlens, chunk_indices, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Intra-chunk parts (fp32) of dq for the rows of sub-chunk I as queries, and of dk for them as keys:
    dq_r = sum_{j <= r} dA_rj k_j exp(gamma_r - gamma_j), dk_j = sum_{r >= j} dA_rj q_r exp(gamma_r - gamma_j),
    with dA = scale dO V^T. The score gradients of I's rows, dA[I, :] = dO_I V^T and dA^T[I, :] = V_I dO^T,
    are two dots (never a transposed dot result: see passes._bwd_dv_kernel), computed once for all K tiles.
    dAd: scratch of 2 BC^2 floats per program, for their diagonal blocks."""
    i_i, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, _ = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    base = (bos + i_t * BT) * H + i_h
    n = T - i_t * BT
    o_j = tl.arange(0, BC)
    o_r = i_i * BC + o_j  # rows of I
    o_c = tl.arange(0, BT)  # every row of the chunk
    m_r, m_c = o_r < n, o_c < n
    ref = i_i * BC  # rho, I's first row: reference of the queries' side
    last = tl.minimum(ref + BC, n) - 1  # lambda, I's last row: reference of the keys' side
    ref_row = tl.minimum(ref, n - 1)  # (a sub-chunk past the end loads its reference from the last row, stores nothing)
    steep = _span(gc + base * K + ref_row * H * K, gc + base * K + last * H * K, K, BK) > DIAGONAL_DOT_SPAN

    b_dA = tl.zeros([BC, BT], dtype=tl.float32)  # b_dA[r, j] = do_r . v_j, r in I
    b_dAt = tl.zeros([BC, BT], dtype=tl.float32)  # b_dAt[j, r] = v_j . do_r, j in I
    for i_v in tl.static_range(0, (V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        o_rows = (o_r * H * V)[:, None] + o_v[None, :]  # [BC, BV]
        o_cols = (o_c * H * V)[None, :] + o_v[:, None]  # [BV, BT]
        m_rv = m_r[:, None] & m_v[None, :]
        m_vc = m_v[:, None] & m_c[None, :]
        b_do = tl.load(do + base * V + o_rows, mask=m_rv, other=0)
        b_v = tl.load(v + base * V + o_rows, mask=m_rv, other=0)
        b_vt = tl.load(v + base * V + o_cols, mask=m_vc, other=0)
        b_dot = tl.load(do + base * V + o_cols, mask=m_vc, other=0)
        b_dA += tl.dot(b_do, b_vt, input_precision=DOT_PREC)
        b_dAt += tl.dot(b_v, b_dot, input_precision=DOT_PREC)
    b_dA *= scale
    b_dAt *= scale
    # when steep, their diagonal blocks dA[I, I] and dA^T[I, I] to the scratch, column-major: a step below loads a
    # column (L1) instead of extracting it from the registers of b_dA with a cross-thread reduction
    p_s = dAd + ((i_bh * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(0) + i_i).to(tl.int64) * (2 * BC * BC)
    o_s = (o_c - ref)[None, :] * BC + o_j[:, None]
    m_s = tl.where(steep, (o_c >= ref) & (o_c < ref + BC), False)[None, :]
    tl.store(p_s + o_s, b_dA, mask=m_s)
    tl.store(p_s + BC * BC + o_s, b_dAt, mask=m_s)
    tl.debug_barrier()
    # The pairs (r, r) are not in the dots: dq_r gets dA_rr k_r and dk_r gets dA_rr q_r exactly, from one fp32 dA_rr.
    # Their terms of q * dq - k * dk cancel exactly (dg owes them nothing); tf32-rounded in a dot they would not, and
    # with steep gates, where dq and dk are mostly these terms, dg's relative error reached 3e-2 (H100, bf16, K = 16).
    b_dA_rr = tl.where(steep, 0, tl.sum(tl.where(o_c[None, :] == o_r[:, None], b_dA, 0), axis=1))  # [BC]
    b_dA = tl.where(o_c[None, :] < o_r[:, None], b_dA, 0)  # dq_r takes keys j < r
    b_dAt = tl.where(o_c[None, :] > o_r[:, None], b_dAt, 0)  # dk_j takes queries r > j

    keys = (o_c < tl.where(steep, ref, ref + BC)) & m_c  # keys in dq's dot: earlier sub-chunks, and I unless steep
    queries = (o_c >= tl.where(steep, ref + BC, ref)) & m_c  # queries in dk's dot: later sub-chunks, and I unless steep
    for i_k in range(0, K, BK):  # a loop, not unrolled: unrolled, ptxas needs more registers (spills at 168)
        o_k = i_k + tl.arange(0, BK)
        m_k = o_k < K
        m_rk = m_r[:, None] & m_k[None, :]
        o_rows = (o_r * H * K)[:, None] + o_k[None, :]  # [BC, BK]
        b_g = tl.load(gc + base * K + o_rows, mask=m_rk, other=0)

        b_dq = tl.zeros([BC, BK], dtype=tl.float32)
        b_dk = tl.zeros([BC, BK], dtype=tl.float32)
        if steep:  # the diagonal block in fp32, one row c = ref + j of I per step: a key for dq (rows r >= c) and
            # a query for dk (rows r <= c)
            off_c = base * K + ref * H * K  # row c
            for j in range(0, BC):
                m_1 = m_k & (j < n - ref)
                b_kc = tl.load(k + off_c + o_k, mask=m_1, other=0).to(tl.float32)
                b_qc = tl.load(q + off_c + o_k, mask=m_1, other=0).to(tl.float32)
                b_gc = tl.load(gc + off_c + o_k, mask=m_1, other=0)
                b_dA_c = tl.where((o_j >= j) & m_r, tl.load(p_s + j * BC + o_j), 0)  # dA[r, c]
                b_dAt_c = tl.where((o_j <= j) & (j < n - ref), tl.load(p_s + (BC + j) * BC + o_j), 0)  # dA[c, r]
                b_decay = tl.exp2(-tl.abs(b_g - b_gc[None, :]))  # exponent gamma_r - gamma_c (r >= c), gamma_c - gamma_r (r <= c)
                b_dq += b_dA_c[:, None] * b_kc[None, :] * b_decay
                b_dk += b_dAt_c[:, None] * b_qc[None, :] * b_decay
                off_c += H * K

        # the dots: keys j < r for dq with the reference rho, queries r > j for dk with lambda (k and q loaded zero
        # outside them)
        o_all = (o_c * H * K)[:, None] + o_k[None, :]  # [BT, BK]
        b_gref = tl.load(gc + base * K + ref_row * H * K + o_k, mask=m_k, other=0)
        b_glast = tl.load(gc + base * K + last * H * K + o_k, mask=m_k, other=0)
        b_ka = tl.load(k + base * K + o_all, mask=keys[:, None] & m_k[None, :], other=0)
        b_qa = tl.load(q + base * K + o_all, mask=queries[:, None] & m_k[None, :], other=0)
        b_ga = tl.load(gc + base * K + o_all, mask=m_c[:, None] & m_k[None, :], other=0)
        b_ka *= tl.exp2(tl.where(keys[:, None], b_gref[None, :] - b_ga, float("-inf")))
        b_qa *= tl.exp2(tl.where(queries[:, None], b_ga - b_glast[None, :], float("-inf")))
        b_dq_off = tl.dot(b_dA, b_ka, input_precision=DOT_PREC)  # fp32 operands: tf32 for 16-bit inputs
        b_dk_off = tl.dot(b_dAt, b_qa, input_precision=DOT_PREC)
        b_dq += b_dq_off * tl.exp2(tl.where(m_r[:, None], b_g - b_gref[None, :], 0))
        b_dk += b_dk_off * tl.exp2(tl.where(m_r[:, None], b_glast[None, :] - b_g, 0))
        b_dq += b_dA_rr[:, None] * tl.load(k + base * K + o_rows, mask=m_rk, other=0).to(tl.float32)
        b_dk += b_dA_rr[:, None] * tl.load(q + base * K + o_rows, mask=m_rk, other=0).to(tl.float32)
        tl.store(dq + base * K + o_rows, b_dq, mask=m_rk)
        tl.store(dk + base * K + o_rows, b_dk, mask=m_rk)


@triton.autotune(configs=configs(DQKG_CHOICES), key=KEY)
@triton.jit(do_not_specialize=length_args("T"))
def _dqkg_kernel(
    q, k, v, gc, h, do, dh, dq_intra, dk_intra, dq, dk, dg, cu_seqlens, chunk_indices, T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """dQ = scale e^gamma * (dO h[c]^T) + dq_intra, dK = e^{gamma_C - gamma} * (V dh[c]^T) + dk_intra, and
    dg per chunk in fp32: d(loss)/d(gamma) = q * dq - k * dk, plus at the chunk's last row the decay of
    h[c] (e^{gamma_C} sum_v h * dh) and of every write (sum_j k_j * dk_j^state), reverse-summed inside the chunk."""
    i_k, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, i_c = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t, m_t, base, r = chunk_rows(bos, i_t, T, i_h, H, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_h = h + (i_c * H + i_h) * K * V
    p_dh = dh + (i_c * H + i_h) * K * V

    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_hdh = tl.zeros([BK], dtype=tl.float32)
    for i_v in tl.static_range(0, (V + BV - 1) // BV):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v[None, :] < V)
        m_vk = (o_v[:, None] < V) & m_k[None, :]
        b_do = tl.load(do + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_v = tl.load(v + base * V + (r[:, None] * V + o_v[None, :]), mask=m_tv, other=0)  # [BT, BV]
        b_ht = tl.load(p_h + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)  # [BV, BK]
        b_dht = tl.load(p_dh + o_k[None, :] * V + o_v[:, None], mask=m_vk, other=0)  # [BV, BK]
        b_dq += tl.dot(b_do, b_ht, input_precision=DOT_PREC)
        b_dk += tl.dot(b_v, b_dht, input_precision=DOT_PREC)
        b_hdh += tl.sum(b_ht.to(tl.float32) * b_dht.to(tl.float32), axis=0)

    last = tl.minimum(i_t * BT + BT, T) - 1
    o_tk = r[:, None] * K + o_k[None, :]  # [BT, BK]
    b_g = tl.load(gc + base * K + o_tk, mask=m_tk, other=0)
    b_glast = tl.load(gc + (bos + last) * H * K + i_h * K + o_k, mask=m_k, other=0)
    b_dq *= tl.exp2(b_g) * scale
    b_dk *= tl.exp2(b_glast[None, :] - b_g)  # rows past the end: gamma 0, exponent gamma_C <= 0
    b_q = tl.load(q + base * K + o_tk, mask=m_tk, other=0).to(tl.float32)
    b_k = tl.load(k + base * K + o_tk, mask=m_tk, other=0).to(tl.float32)
    b_dg_last = b_hdh * tl.exp2(b_glast) + tl.sum(b_k * b_dk, axis=0)  # [BK]
    b_dq += tl.load(dq_intra + base * K + o_tk, mask=m_tk, other=0)
    b_dk += tl.load(dk_intra + base * K + o_tk, mask=m_tk, other=0)
    b_dg = b_q * b_dq - b_k * b_dk + tl.where(o_t[:, None] == last, b_dg_last[None, :], 0)
    b_dg = tl.cumsum(b_dg, axis=0, reverse=True)  # gamma is a chunk-local cumsum of g
    tl.store(dq + base * K + o_tk, b_dq.to(dq.dtype.element_ty), mask=m_tk)
    tl.store(dk + base * K + o_tk, b_dk.to(dk.dtype.element_ty), mask=m_tk)
    tl.store(dg + base * K + o_tk, b_dg, mask=m_tk)


AUTOTUNED = {  # every autotuned kernel of this file with all its config choices (the GPU tests try each one)
    _intra_scores_kernel: SCORE_CHOICES,
    _intra_grad_kernel: GRAD_CHOICES,
    _dqkg_kernel: DQKG_CHOICES,
}
