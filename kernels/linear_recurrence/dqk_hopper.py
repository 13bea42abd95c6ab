"""The dQ/dK/dg pass of the chunked linear recurrence for Hopper, in Gluon: persistent and warp-specialized.

Same inputs, outputs and math as `passes._bwd_dqk_kernel` (its docstring has the formulas), for K = V = 128
and 16-bit inputs without `cu_seqlens`. One program per multiprocessor walks the (chunk, head) items; a
one-warp loader streams each item's sixteen 64 x 64 tiles (dO, V, h, dh, K, Q halves) by TMA into a ring of
shared-memory slots, ahead of the four compute warps, which run every product on the tensor cores
(`warpgroup_mma`) and free each slot when the products that read it are done. So the loads of the next
items overlap this item's products, where the Triton kernel's two programs per multiprocessor wait on theirs.
The chunk's score gradient P = s dO Vᵀ ⊙ Γ (causal) is formed once and read as P (for dQ) and as its
transposed view Pᵀ (for dK) from shared memory: no second dot for Pᵀ, and no transposed dot result.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from kernels.common.config import length_args
from kernels.common.hopper import (
    BT, MMA, MMA_COLS, MMA_ROWS, SLOTS, free_tile, issue_halves, issue_pairs, issue_state, item_coords, item_rows,
    launch_options, mma2, new_ring, program_item, program_items, store_tile, take_tile, tile_descriptor,
)


@gluon.jit
def _loader(q_desc, k_desc, v_desc, do_desc, h_desc, dh_desc, bufs, ready, empty, T, NT, n_items,
            H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, SLOTS: gl.constexpr):
    for it in range(program_items(n_items)):
        row, hrow, i_h = item_rows(program_item(it), T, NT, H, K)
        j = it * 16
        issue_pairs(do_desc, v_desc, row, i_h * V, bufs, ready, empty, j, SLOTS)  # 0..3: dO, V halves
        issue_state(h_desc, hrow, bufs, ready, empty, j + 4, SLOTS)  # 4..7: h[c]
        issue_halves(k_desc, row, i_h * K, bufs, ready, empty, j + 8, SLOTS)  # 8, 9: K
        issue_halves(q_desc, row, i_h * K, bufs, ready, empty, j + 10, SLOTS)  # 10, 11: Q
        issue_state(dh_desc, hrow, bufs, ready, empty, j + 12, SLOTS)  # 12..15: dh[c]


@gluon.jit
def _compute(q, k, gc, dq, dk, dg, p_bufs, bufs, ready, empty, T, NT, n_items, scale,
             H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, USE_G: gl.constexpr, SLOTS: gl.constexpr,
             c: gl.constexpr, NC: gl.constexpr):
    """Consumer c of NC: every NC-th item of this program's, from the c-th on, each in turn: dO Vᵀ; P; dO hᵀ; dQ;
    V dhᵀ; dK; dg. (One consumer issuing V dhᵀ with dQ's products, to overlap the elementwise work, spilled registers
    and took 635 µs instead of 560 at B16 T2048 H16, gated; H100, session 23.)"""
    p_smem = p_bufs.index(c)
    mma: gl.constexpr = MMA
    rows_l: gl.constexpr = MMA_ROWS
    cols_l: gl.constexpr = MMA_COLS
    o_r = gl.arange(0, 64, layout=rows_l)
    o_c = gl.arange(0, 64, layout=cols_l)
    for it in range(c, program_items(n_items), NC):
        bos, i_t, i_h, i_c = item_coords(program_item(it), T, NT, H)
        bos = bos.to(gl.int64)  # element offsets below pass 2^31 in large batches
        j = it * 16
        row0 = bos + i_t * 64  # the chunk's first token
        n_rows = T - i_t * 64  # its tokens inside the sequence: rows and columns from n_rows on are masked
        m_r = o_r < n_rows

        do0, v0 = take_tile(bufs, ready, j + 0, SLOTS), take_tile(bufs, ready, j + 1, SLOTS)
        do1, v1 = take_tile(bufs, ready, j + 2, SLOTS), take_tile(bufs, ready, j + 3, SLOTS)
        dA = mma2(do0, v0.permute((1, 0)), do1, v1.permute((1, 0)))  # dO Vᵀ
        dA = warpgroup_mma_wait(num_outstanding=0, deps=(dA,))

        causal = o_r[:, None] >= o_c[None, :]
        p_scale = gl.where(m_r, scale, 0.0)  # rows past the sequence's end (the next sequence's tokens) give nothing
        if USE_G:
            last = gl.minimum(n_rows, 64) - 1
            g_last = gl.load(gc + (row0 + last) * H + i_h)
            g_r = gl.load(gc + (row0 + o_r) * H + i_h, mask=m_r, other=0)
            g_c = gl.load(gc + (row0 + o_c) * H + i_h, mask=o_c < n_rows, other=0)
            p = dA * gl.exp2(gl.where(causal, g_r[:, None] - g_c[None, :], float("-inf"))) * p_scale[:, None]
            do_scale = gl.exp2(g_r) * scale
            v_scale = gl.exp2(g_last - g_r)
        else:
            p = gl.where(causal, dA * p_scale[:, None], 0.0)
            do_scale = gl.full([64], scale, gl.float32, rows_l)
            v_scale = gl.full([64], 1.0, gl.float32, rows_l)
        p_smem.store(p.to(p_smem.dtype))
        fence_async_shared()
        h00, h01 = take_tile(bufs, ready, j + 4, SLOTS), take_tile(bufs, ready, j + 5, SLOTS)
        h10, h11 = take_tile(bufs, ready, j + 6, SLOTS), take_tile(bufs, ready, j + 7, SLOTS)
        s_lo = mma2(do0, h00.permute((1, 0)), do1, h01.permute((1, 0)))  # dO hᵀ, keys 0..63
        s_hi = mma2(do0, h10.permute((1, 0)), do1, h11.permute((1, 0)))  # keys 64..127
        s_lo, s_hi = warpgroup_mma_wait(num_outstanding=0, deps=(s_lo, s_hi))
        free_tile(empty, j + 0, SLOTS)
        free_tile(empty, j + 2, SLOTS)

        k0, k1 = take_tile(bufs, ready, j + 8, SLOTS), take_tile(bufs, ready, j + 9, SLOTS)
        dq_lo = warpgroup_mma(p_smem, k0, s_lo * do_scale[:, None], is_async=True)  # P K + the state term
        dq_hi = warpgroup_mma(p_smem, k1, s_hi * do_scale[:, None], is_async=True)
        dq_lo, dq_hi = warpgroup_mma_wait(num_outstanding=0, deps=(dq_lo, dq_hi))
        store_tile(dq, row0, n_rows, H * K, i_h * K, dq_lo)
        store_tile(dq, row0, n_rows, H * K, i_h * K + 64, dq_hi)
        q0, q1 = take_tile(bufs, ready, j + 10, SLOTS), take_tile(bufs, ready, j + 11, SLOTS)
        if USE_G:
            qdq = gl.sum(q0.load(mma).to(gl.float32) * dq_lo, axis=1) + gl.sum(q1.load(mma).to(gl.float32) * dq_hi, axis=1)

        dh00, dh01 = take_tile(bufs, ready, j + 12, SLOTS), take_tile(bufs, ready, j + 13, SLOTS)
        dh10, dh11 = take_tile(bufs, ready, j + 14, SLOTS), take_tile(bufs, ready, j + 15, SLOTS)
        if USE_G:
            hdh = (gl.sum(gl.sum(h00.load(mma).to(gl.float32) * dh00.load(mma).to(gl.float32), axis=1), axis=0)
                   + gl.sum(gl.sum(h01.load(mma).to(gl.float32) * dh01.load(mma).to(gl.float32), axis=1), axis=0)
                   + gl.sum(gl.sum(h10.load(mma).to(gl.float32) * dh10.load(mma).to(gl.float32), axis=1), axis=0)
                   + gl.sum(gl.sum(h11.load(mma).to(gl.float32) * dh11.load(mma).to(gl.float32), axis=1), axis=0))
        t_lo = mma2(v0, dh00.permute((1, 0)), v1, dh01.permute((1, 0)))  # V dhᵀ, keys 0..63
        t_hi = mma2(v0, dh10.permute((1, 0)), v1, dh11.permute((1, 0)))
        t_lo, t_hi = warpgroup_mma_wait(num_outstanding=0, deps=(t_lo, t_hi))
        dk_lo = t_lo * v_scale[:, None]
        dk_hi = t_hi * v_scale[:, None]
        if USE_G:
            kdk_state = gl.sum(k0.load(mma).to(gl.float32) * dk_lo, axis=1) + gl.sum(k1.load(mma).to(gl.float32) * dk_hi, axis=1)
        for i in gl.static_range(4, 8):
            free_tile(empty, j + i, SLOTS)
        for i in gl.static_range(12, 16):
            free_tile(empty, j + i, SLOTS)
        free_tile(empty, j + 1, SLOTS)
        free_tile(empty, j + 3, SLOTS)

        dk_lo = warpgroup_mma(p_smem.permute((1, 0)), q0, dk_lo, is_async=True)  # + Pᵀ Q
        dk_hi = warpgroup_mma(p_smem.permute((1, 0)), q1, dk_hi, is_async=True)
        dk_lo, dk_hi = warpgroup_mma_wait(num_outstanding=0, deps=(dk_lo, dk_hi))
        store_tile(dk, row0, n_rows, H * K, i_h * K, dk_lo)
        store_tile(dk, row0, n_rows, H * K, i_h * K + 64, dk_hi)
        if USE_G:
            kdk = gl.sum(k0.load(mma).to(gl.float32) * dk_lo, axis=1) + gl.sum(k1.load(mma).to(gl.float32) * dk_hi, axis=1)
            b_dg = qdq - kdk
            b_dg += gl.where(o_r == last, hdh * gl.exp2(g_last) + gl.sum(gl.where(m_r, kdk_state, 0.0), axis=0), 0.0)
            b_dg_c = gl.where(o_c < n_rows, gl.convert_layout(b_dg, cols_l), 0.0)  # masked here: the row mask kept
            # live from the item's start to here spilled 24 bytes per thread when T was not specialised (sm_90 compile)
            b_dg = gl.sum(gl.where(o_c[None, :] >= o_r[:, None], b_dg_c[None, :], 0.0), axis=1)  # reverse cumsum
            gl.store(dg + (row0 + o_r) * H + i_h, b_dg, mask=m_r)
        for i in gl.static_range(8, 12):
            free_tile(empty, j + i, SLOTS)


# T stays specialised (Triton compiles one variant per class of it: 1, a multiple of 16, other; three for all lengths,
# not one per length): with `do_not_specialize` on T too this kernel took 692 us instead of 481 at B16 T2048 H16 D128,
# gated (H100, session 23; no spills either way: the unspecialised code has 13 more mask comparisons in its PTX, the
# rest is ptxas's). The chunk and item counts are not specialised: the PTX is the same as with them specialised.
@gluon.jit(do_not_specialize=length_args("NT", "n_items"))
def _bwd_dqk_hopper_kernel(q, k, gc, dq, dk, dg, q_desc, k_desc, v_desc, do_desc, h_desc, dh_desc, T, NT, n_items, scale,
                           H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, USE_G: gl.constexpr, SLOTS: gl.constexpr):
    bufs, ready, empty = new_ring(q_desc, SLOTS)
    p_bufs = gl.allocate_shared_memory(q_desc.dtype, [1, 64, 64], q_desc.layout)
    gl.warp_specialize([
        (_compute, (q, k, gc, dq, dk, dg, p_bufs, bufs, ready, empty, T, NT, n_items, scale, H, K, V, USE_G, SLOTS, 0, 1)),
        (_loader, (q_desc, k_desc, v_desc, do_desc, h_desc, dh_desc, bufs, ready, empty, T, NT, n_items, H, K, V, SLOTS)),
    ], [1], [24])


def bwd_dqk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gc: torch.Tensor | None, h: torch.Tensor, do: torch.Tensor,
            dh: torch.Tensor, scale: float, multiprocessors: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dq, dk (input dtype) and dg [1, B, T, H] (float32, None without gc) from q, k, v, dO [B, T, H, 128],
    gc [B, T, H] (the chunk-local log2 cumsum) or None, and h, dh [B * NT, H, 128, 128]."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    q, k, v, do = (x.contiguous() for x in (q, k, v, do))
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dg = q.new_empty(1, B, T, H, dtype=torch.float32) if gc is not None else None
    n_items = B * NT * H
    _bwd_dqk_hopper_kernel[(min(n_items, multiprocessors),)](
        q, k, gc, dq, dk, dg, tile_descriptor(q, H * K), tile_descriptor(k, H * K), tile_descriptor(v, H * V),
        tile_descriptor(do, H * V), tile_descriptor(h, V), tile_descriptor(dh, V),
        T, NT, n_items, scale, H=H, K=K, V=V, USE_G=gc is not None, SLOTS=SLOTS, **launch_options(1),
    )
    return dq, dk, dg
