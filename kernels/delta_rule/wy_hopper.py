"""The delta rule's WY backward for Hopper, in Gluon: persistent and warp-specialized, like
`kernels/linear_recurrence/dqk_hopper.py` (same ring of tiles, `kernels/common/hopper.py`).

Same inputs, outputs and math as `wy._wy_bwd_kernel` (its docstring has the formulas), for K = V = 128 and 16-bit
inputs without `cu_seqlens`. Per (chunk, head) item the loader streams fourteen 64 x 64 tiles (dX, U~, K, V halves,
the four blocks of h[c], the two halves of the linear recurrence's dK); the compute warps form dA = -dX U~ᵀ, K Kᵀ and
P = dX h[c]ᵀ on the tensor cores, B = dA ⊙ Γ ⊙ β_row once in shared memory, and (B + Bᵀ) K as two products that read
B and its transposed view: no second dot for dAᵀ, and no transposed dot result.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from kernels.common.config import length_args
from kernels.common.hopper import (
    BT, CONSUMER_REGS, MMA, MMA_COLS, MMA_ROWS, SLOTS, free_tile, issue_halves, issue_pairs, issue_state, item_coords,
    item_rows, launch_options, mma2, new_ring, program_item, program_items, store_tile, take_tile, tile_descriptor,
)


@gluon.jit
def _loader(k_desc, v_desc, u_desc, dx_desc, h_desc, a_desc, bufs, ready, empty, T, NT, n_items,
            H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, SLOTS: gl.constexpr):
    for it in range(program_items(n_items)):
        row, hrow, i_h = item_rows(program_item(it), T, NT, H, K)
        j = it * 14
        issue_pairs(dx_desc, u_desc, row, i_h * V, bufs, ready, empty, j, SLOTS)  # 0..3: dX, U~ halves
        issue_halves(k_desc, row, i_h * K, bufs, ready, empty, j + 4, SLOTS)  # 4, 5: K
        issue_state(h_desc, hrow, bufs, ready, empty, j + 6, SLOTS)  # 6..9: h[c]
        issue_halves(v_desc, row, i_h * V, bufs, ready, empty, j + 10, SLOTS)  # 10, 11: V
        issue_halves(a_desc, row, i_h * K, bufs, ready, empty, j + 12, SLOTS)  # 12, 13: the linear recurrence's dK


@gluon.jit
def _compute(beta, gc, dk, dv, dbeta, dg_lr, dg, b_bufs, bufs, ready, empty, T, NT, n_items, n_rows,
             H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, USE_G: gl.constexpr, NK_LR: gl.constexpr,
             SLOTS: gl.constexpr, c: gl.constexpr, NC: gl.constexpr):
    """Consumer c of NC: every NC-th item of this program's, from the c-th on."""
    b_smem = b_bufs.index(c)
    mma: gl.constexpr = MMA
    rows_l: gl.constexpr = MMA_ROWS
    cols_l: gl.constexpr = MMA_COLS
    o_r = gl.arange(0, 64, layout=rows_l)
    o_c = gl.arange(0, 64, layout=cols_l)
    for it in range(c, program_items(n_items), NC):
        bos, i_t, i_h, i_c = item_coords(program_item(it), T, NT, H)
        bos = bos.to(gl.int64)  # element offsets below pass 2^31 in large batches
        j = it * 14
        t_r = i_t * 64 + o_r
        t_c = i_t * 64 + o_c
        m_r = t_r < T
        m_c = t_c < T
        rows = (bos + t_r) * H + i_h  # [64] offsets in (B, T, H) tensors

        dx0, u0 = take_tile(bufs, ready, j + 0, SLOTS), take_tile(bufs, ready, j + 1, SLOTS)
        dx1, u1 = take_tile(bufs, ready, j + 2, SLOTS), take_tile(bufs, ready, j + 3, SLOTS)
        dA = mma2(dx0, u0.permute((1, 0)), dx1, u1.permute((1, 0)))  # dX U~ᵀ = -dA
        k0, k1 = take_tile(bufs, ready, j + 4, SLOTS), take_tile(bufs, ready, j + 5, SLOTS)
        kk = mma2(k0, k0.permute((1, 0)), k1, k1.permute((1, 0)))  # K Kᵀ
        dA, kk = warpgroup_mma_wait(num_outstanding=0, deps=(dA, kk))
        free_tile(empty, j + 1, SLOTS)
        free_tile(empty, j + 3, SLOTS)

        strict = (t_r[:, None] > t_c[None, :]) & m_r[:, None]  # then the column is inside the sequence too
        b_beta = gl.load(beta + rows, mask=m_r, other=0).to(gl.float32)
        if USE_G:
            g_r = gl.load(gc + rows, mask=m_r, other=0)
            g_c = gl.load(gc + (bos + t_c) * H + i_h, mask=m_c, other=0)
            e_g = gl.exp2(g_r)
            dA = -dA * gl.exp2(gl.where(strict, g_r[:, None] - g_c[None, :], float("-inf")))  # dA ⊙ Γ
        else:
            e_g = gl.full([64], 1.0, gl.float32, rows_l)
            dA = gl.where(strict, -dA, 0.0)
        b_G = dA * kk  # d(loss)/d(A_rj) A_rj / beta_r
        b_dbeta = gl.sum(b_G, axis=1)
        if USE_G:
            b_M = b_G * b_beta[:, None]
            b_dgam = gl.sum(b_M, axis=1) - gl.convert_layout(gl.sum(b_M, axis=0), rows_l)
        b_smem.store((dA * b_beta[:, None]).to(b_smem.dtype))  # B; (B + Bᵀ) K reads it and its transpose
        fence_async_shared()

        v0, v1 = take_tile(bufs, ready, j + 10, SLOTS), take_tile(bufs, ready, j + 11, SLOTS)
        row0 = bos + i_t * 64
        dx_r = dx0.load(mma).to(gl.float32)
        b_dbeta += gl.sum(dx_r * v0.load(mma).to(gl.float32), axis=1)
        store_tile(dv, row0, T - i_t * 64, H * V, i_h * V, dx_r * b_beta[:, None])
        dx_r = dx1.load(mma).to(gl.float32)
        b_dbeta += gl.sum(dx_r * v1.load(mma).to(gl.float32), axis=1)
        store_tile(dv, row0, T - i_t * 64, H * V, i_h * V + 64, dx_r * b_beta[:, None])
        free_tile(empty, j + 10, SLOTS)
        free_tile(empty, j + 11, SLOTS)
        h00, h01 = take_tile(bufs, ready, j + 6, SLOTS), take_tile(bufs, ready, j + 7, SLOTS)
        h10, h11 = take_tile(bufs, ready, j + 8, SLOTS), take_tile(bufs, ready, j + 9, SLOTS)
        p_lo = mma2(dx0, h00.permute((1, 0)), dx1, h01.permute((1, 0)))  # P = dX h[c]ᵀ, keys 0..63
        p_hi = mma2(dx0, h10.permute((1, 0)), dx1, h11.permute((1, 0)))  # keys 64..127

        p_lo, p_hi = warpgroup_mma_wait(num_outstanding=0, deps=(p_lo, p_hi))
        free_tile(empty, j + 0, SLOTS)
        free_tile(empty, j + 2, SLOTS)
        for i in gl.static_range(6, 10):
            free_tile(empty, j + i, SLOTS)
        k_scale = b_beta * e_g
        b_pk = gl.sum(p_lo * k0.load(mma).to(gl.float32), axis=1) + gl.sum(p_hi * k1.load(mma).to(gl.float32), axis=1)
        b_dbeta -= b_pk * e_g
        a0, a1 = take_tile(bufs, ready, j + 12, SLOTS), take_tile(bufs, ready, j + 13, SLOTS)
        acc_lo = a0.load(mma).to(gl.float32) - p_lo * k_scale[:, None]
        acc_hi = a1.load(mma).to(gl.float32) - p_hi * k_scale[:, None]
        free_tile(empty, j + 12, SLOTS)
        free_tile(empty, j + 13, SLOTS)
        acc_lo = warpgroup_mma(b_smem, k0, acc_lo, is_async=True)  # + B K
        acc_lo = warpgroup_mma(b_smem.permute((1, 0)), k0, acc_lo, is_async=True)  # + Bᵀ K
        acc_hi = warpgroup_mma(b_smem, k1, acc_hi, is_async=True)
        acc_hi = warpgroup_mma(b_smem.permute((1, 0)), k1, acc_hi, is_async=True)
        gl.store(dbeta + rows, b_dbeta.to(dbeta.dtype.element_ty), mask=m_r)
        acc_lo, acc_hi = warpgroup_mma_wait(num_outstanding=0, deps=(acc_lo, acc_hi))
        free_tile(empty, j + 4, SLOTS)
        free_tile(empty, j + 5, SLOTS)
        store_tile(dk, row0, T - i_t * 64, H * K, i_h * K, acc_lo)
        store_tile(dk, row0, T - i_t * 64, H * K, i_h * K + 64, acc_hi)
        if USE_G:
            b_dgam = gl.where(m_r, b_dgam - b_pk * k_scale, 0.0)
            b_dgam_c = gl.convert_layout(b_dgam, cols_l)
            b_dg = gl.sum(gl.where(o_c[None, :] >= o_r[:, None], b_dgam_c[None, :], 0.0), axis=1)  # reverse cumsum
            for i_lr in gl.static_range(NK_LR):  # the linear recurrence's shares
                b_dg += gl.load(dg_lr + (n_rows * i_lr + rows), mask=m_r, other=0)
            gl.store(dg + rows, b_dg.to(dg.dtype.element_ty), mask=m_r)


@gluon.jit(do_not_specialize=length_args("T", "NT", "n_items", "n_rows"))  # one compiled kernel for every length
def _wy_bwd_hopper_kernel(beta, gc, dk, dv, dbeta, dg_lr, dg, k_desc, v_desc, u_desc, dx_desc, h_desc, a_desc,
                          T, NT, n_items, n_rows, H: gl.constexpr, K: gl.constexpr, V: gl.constexpr,
                          USE_G: gl.constexpr, NK_LR: gl.constexpr, SLOTS: gl.constexpr):
    bufs, ready, empty = new_ring(k_desc, SLOTS)
    b_bufs = gl.allocate_shared_memory(k_desc.dtype, [2, 64, 64], k_desc.layout)
    gl.warp_specialize([
        (_compute, (beta, gc, dk, dv, dbeta, dg_lr, dg, b_bufs, bufs, ready, empty, T, NT, n_items, n_rows, H, K, V, USE_G, NK_LR, SLOTS, 0, 2)),
        (_compute, (beta, gc, dk, dv, dbeta, dg_lr, dg, b_bufs, bufs, ready, empty, T, NT, n_items, n_rows, H, K, V, USE_G, NK_LR, SLOTS, 1, 2)),
        (_loader, (k_desc, v_desc, u_desc, dx_desc, h_desc, a_desc, bufs, ready, empty, T, NT, n_items, H, K, V, SLOTS)),
    ], [4, 1], [CONSUMER_REGS, 24])


def wy_bwd(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, gc: torch.Tensor | None, h: torch.Tensor, v_new: torch.Tensor,
           dx: torch.Tensor, dk_acc: torch.Tensor, dg_lr: torch.Tensor | None, dg_dtype: torch.dtype,
           multiprocessors: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dk, dv (input dtype), dbeta (beta's dtype) and dg [B, T, H] (dg_dtype; None without gc) from k, v, U~ (v_new),
    dX, the linear recurrence's dK part [B, T, H, 128], beta, gc [B, T, H], h [B * NT, H, 128, 128] and dg's shares
    dg_lr [NK_LR, B, T, H] (float32)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    k, v, v_new, dx, dk_acc, beta = (x.contiguous() for x in (k, v, v_new, dx, dk_acc, beta))
    dk, dv, dbeta = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta)
    dg = k.new_empty(B, T, H, dtype=dg_dtype) if gc is not None else None
    n_items = B * NT * H
    _wy_bwd_hopper_kernel[(min(n_items, multiprocessors),)](
        beta, gc, dk, dv, dbeta, dg_lr, dg, tile_descriptor(k, H * K), tile_descriptor(v, H * V),
        tile_descriptor(v_new, H * V), tile_descriptor(dx, H * V), tile_descriptor(h, V), tile_descriptor(dk_acc, H * K),
        T, NT, n_items, B * T * H, H=H, K=K, V=V, USE_G=gc is not None, NK_LR=1 if dg_lr is None else dg_lr.shape[0],
        SLOTS=SLOTS, **launch_options(2),
    )
    return dk, dv, dbeta, dg
