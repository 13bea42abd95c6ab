"""The delta rule's reverse state pass for Hopper, in Gluon: warp-specialized, with the ring of tiles of
`kernels/common/hopper.py` (as `kernels/linear_recurrence/dqk_hopper.py` and `wy_hopper.py`).

Same inputs, outputs and math as `chunk._delta_dh_kernel` (its docstring has the formulas), for K = V = 128 and
16-bit inputs without `cu_seqlens`. One program per (sequence, head), sequential over its chunks in reverse, with two
compute warpgroups: each holds the 128 x 64 block of dS for one half of V in registers. A one-warp loader streams each
chunk's tiles by TMA, STEPS chunks ahead: the K and Q halves and T (float32), read by both warpgroups, and the dO and
dv_local halves of each. The Triton kernel loads them inside its chain of dependent products, one program per V half
(two per multiprocessor, each loading K, Q and T itself).

Per chunk, each warpgroup: dS (16-bit) to shared memory, stored to dh[c] by TMA and read as K dS's right operand;
dU~ = dv_local + k_scale ⊙ K dS, written over dv_local's tile; dX = Tᵀ dU~ with T (read transposed from its tile into
registers) as a 16-bit head and tail, like `chunk._dot_t`; -Y = -(w ⊙ dX) written over the same tile; then
dS <- exp(g_last) dS + Qᵀ (q_scale ⊙ dO) - Kᵀ Y, the dO tile scaled in place while K dS runs.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, tma, warpgroup_mma, warpgroup_mma_wait

from kernels.common.config import length_args
from kernels.common.hopper import (
    CONSUMER_REGS, MMA, MMA_COLS, MMA_ROWS, free_tile, issue_halves, issue_tile, launch_options, mma2, new_ring,
    store_tile, take_tile, tile_descriptor,
)

BT = 64  # chunk = tile size
STEPS = 2  # chunks of tiles the rings hold: 4 K and Q tiles, 1 T tile (float32) and 4 dO and dv_local tiles each
T_A = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2))  # Tᵀ as the left operand, in registers


@gluon.jit
def _loader(q_desc, k_desc, do_desc, du_desc, t_desc, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty,
            v_bufs, v_ready, v_empty, T, NT, H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, STEPS: gl.constexpr):
    i_b, i_h = gl.program_id(0) // H, gl.program_id(0) % H
    for n in range(NT):
        i_t = NT - 1 - n
        row = i_b * T + i_t * 64
        issue_halves(k_desc, row, i_h * K, kq_bufs, kq_ready, kq_empty, 4 * n, 4 * STEPS)  # K halves
        issue_halves(q_desc, row, i_h * K, kq_bufs, kq_ready, kq_empty, 4 * n + 2, 4 * STEPS)  # Q halves
        issue_tile(t_desc, ((i_b * NT + i_t) * H + i_h) * 64, 0, t_bufs, t_ready, t_empty, n, STEPS)  # T
        for c in gl.static_range(2):  # warpgroup c's dO and dv_local
            issue_tile(do_desc, row, i_h * V + c * 64, v_bufs, v_ready, v_empty, 4 * n + 2 * c, 4 * STEPS)
            issue_tile(du_desc, row, i_h * V + c * 64, v_bufs, v_ready, v_empty, 4 * n + 2 * c + 1, 4 * STEPS)


@gluon.jit
def _compute(beta, gc, dx, dht, dh0, dh_desc, ds_bufs, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty,
             v_bufs, v_ready, v_empty, T, NT, scale, H: gl.constexpr, K: gl.constexpr, V: gl.constexpr,
             USE_G: gl.constexpr, USE_DHT: gl.constexpr, STORE_DH0: gl.constexpr, STEPS: gl.constexpr, c: gl.constexpr):
    """Warpgroup c: dS[:, 64 c : 64 c + 64] as two 64 x 64 accumulators (keys 0..63, 64..127)."""
    mma: gl.constexpr = MMA
    o_r = gl.arange(0, 64, layout=MMA_ROWS)
    o_c = gl.arange(0, 64, layout=MMA_COLS)
    i_nh = gl.program_id(0)
    i_b, i_h = i_nh // H, i_nh % H
    ds_lo_smem, ds_hi_smem = ds_bufs.index(2 * c), ds_bufs.index(2 * c + 1)
    state = i_nh.to(gl.int64) * K * V + o_r[:, None] * V + (c * 64 + o_c[None, :])  # rows of keys 0..63, this V half
    if USE_DHT:
        ds_lo = gl.load(dht + state)
        ds_hi = gl.load(dht + state + 64 * V)
    else:
        ds_lo = gl.zeros([64, 64], gl.float32, mma)
        ds_hi = gl.zeros([64, 64], gl.float32, mma)
    for n in range(NT):
        i_t = NT - 1 - n
        row0 = (i_b * T + i_t * 64).to(gl.int64)  # the chunk's first token; element offsets pass 2^31 in large batches
        n_rows = T - i_t * 64  # its tokens inside the sequence: the rest of each tile is the next sequence's
        m_r = o_r < n_rows
        b_beta = gl.load(beta + (row0 + o_r) * H + i_h, mask=m_r, other=0).to(gl.float32)
        if USE_G:
            g_last = gl.load(gc + (row0 + gl.minimum(n_rows, 64) - 1) * H + i_h)
            b_g = gl.load(gc + (row0 + o_r) * H + i_h, mask=m_r, other=0)
            k_scale = gl.where(m_r, gl.exp2(g_last - b_g), 0.0)
            q_scale = gl.where(m_r, gl.exp2(b_g) * scale, 0.0)
            w = b_beta * gl.exp2(b_g)
            decay = gl.exp2(g_last)
        else:
            k_scale = gl.where(m_r, 1.0, 0.0)
            q_scale = gl.where(m_r, scale, 0.0)
            w = b_beta
            decay = 1.0

        # dS to shared memory: dh[c] (by TMA) and the right operand of K dS
        tma.store_wait(0)  # the previous chunk's stores have read the tiles
        ds_lo_smem.store(ds_lo.to(ds_lo_smem.dtype))
        ds_hi_smem.store(ds_hi.to(ds_hi_smem.dtype))
        fence_async_shared()
        hrow = ((i_b * NT + i_t) * H + i_h) * K
        tma.async_copy_shared_to_global(dh_desc, [hrow, c * 64], ds_lo_smem)
        tma.async_copy_shared_to_global(dh_desc, [hrow + 64, c * 64], ds_hi_smem)
        k0, k1 = take_tile(kq_bufs, kq_ready, 4 * n, 4 * STEPS), take_tile(kq_bufs, kq_ready, 4 * n + 1, 4 * STEPS)
        kds = mma2(k0, ds_lo_smem, k1, ds_hi_smem)  # K dS

        # while it runs: Tᵀ as a 16-bit head and tail in registers, dO scaled in place, dv_local
        t_t = take_tile(t_bufs, t_ready, n, STEPS).permute((1, 0)).load(T_A)
        free_tile(t_empty, n, STEPS)
        t_hi = t_t.to(k0.dtype)
        t_lo = (t_t - t_hi.to(gl.float32)).to(k0.dtype)
        do_smem = take_tile(v_bufs, v_ready, 4 * n + 2 * c, 4 * STEPS)
        do_smem.store((do_smem.load(mma).to(gl.float32) * q_scale[:, None]).to(do_smem.dtype))
        u_smem = take_tile(v_bufs, v_ready, 4 * n + 2 * c + 1, 4 * STEPS)
        du = gl.where(m_r[:, None], u_smem.load(mma).to(gl.float32), 0.0)
        kds = warpgroup_mma_wait(num_outstanding=0, deps=(kds,))

        u_smem.store((du + kds * k_scale[:, None]).to(u_smem.dtype))  # dU~ over dv_local
        fence_async_shared()
        b_dx = warpgroup_mma(t_hi, u_smem, gl.zeros([64, 64], gl.float32, mma), use_acc=False, is_async=True)
        b_dx = warpgroup_mma(t_lo, u_smem, b_dx, is_async=True)  # dX = Tᵀ dU~
        # while it runs: dS <- exp(g_last) dS + Qᵀ (q_scale ⊙ dO)
        q0, q1 = take_tile(kq_bufs, kq_ready, 4 * n + 2, 4 * STEPS), take_tile(kq_bufs, kq_ready, 4 * n + 3, 4 * STEPS)
        ds_lo = warpgroup_mma(q0.permute((1, 0)), do_smem, ds_lo * decay, is_async=True)
        ds_hi = warpgroup_mma(q1.permute((1, 0)), do_smem, ds_hi * decay, is_async=True)
        b_dx = warpgroup_mma_wait(num_outstanding=2, deps=(b_dx,))

        u_smem.store((b_dx * -w[:, None]).to(u_smem.dtype))  # -Y over dU~
        fence_async_shared()
        ds_lo = warpgroup_mma(k0.permute((1, 0)), u_smem, ds_lo, is_async=True)  # - Kᵀ Y
        ds_hi = warpgroup_mma(k1.permute((1, 0)), u_smem, ds_hi, is_async=True)
        store_tile(dx, row0, n_rows, H * V, i_h * V + c * 64, b_dx)
        ds_lo, ds_hi = warpgroup_mma_wait(num_outstanding=0, deps=(ds_lo, ds_hi))
        for i in gl.static_range(4):
            free_tile(kq_empty, 4 * n + i, 4 * STEPS)
        free_tile(v_empty, 4 * n + 2 * c, 4 * STEPS)
        free_tile(v_empty, 4 * n + 2 * c + 1, 4 * STEPS)
    if STORE_DH0:
        gl.store(dh0 + state, ds_lo)
        gl.store(dh0 + state + 64 * V, ds_hi)
    tma.store_wait(0)


@gluon.jit(do_not_specialize=length_args("T", "NT"))  # one compiled kernel for every length
def _delta_dh_hopper_kernel(beta, gc, dx, dht, dh0, q_desc, k_desc, do_desc, du_desc, t_desc, dh_desc, T, NT, scale,
                            H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, USE_G: gl.constexpr,
                            USE_DHT: gl.constexpr, STORE_DH0: gl.constexpr, STEPS: gl.constexpr):
    kq_bufs, kq_ready, kq_empty = new_ring(k_desc, 4 * STEPS, 2)
    t_bufs, t_ready, t_empty = new_ring(t_desc, STEPS, 2)
    v_bufs, v_ready, v_empty = new_ring(do_desc, 4 * STEPS)
    ds_bufs = gl.allocate_shared_memory(k_desc.dtype, [4, 64, 64], k_desc.layout)
    gl.warp_specialize([
        (_compute, (beta, gc, dx, dht, dh0, dh_desc, ds_bufs, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty,
                    v_bufs, v_ready, v_empty, T, NT, scale, H, K, V, USE_G, USE_DHT, STORE_DH0, STEPS, 0)),
        (_compute, (beta, gc, dx, dht, dh0, dh_desc, ds_bufs, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty,
                    v_bufs, v_ready, v_empty, T, NT, scale, H, K, V, USE_G, USE_DHT, STORE_DH0, STEPS, 1)),
        (_loader, (q_desc, k_desc, do_desc, du_desc, t_desc, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty,
                   v_bufs, v_ready, v_empty, T, NT, H, K, V, STEPS)),
    ], [4, 1], [CONSUMER_REGS, 24])


def delta_dh(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor, gc: torch.Tensor | None, Tm: torch.Tensor,
             do: torch.Tensor, dv_local: torch.Tensor, dht: torch.Tensor | None, need_dh0: bool, scale: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dh [B * NT, H, 128, 128] and dX (input dtype) and dh0 [B, H, 128, 128] (float32, None unless need_dh0) from q,
    k, dO, dv_local [B, T, H, 128], beta, gc [B, T, H] (gc: the chunk-local log2 cumsum, or None), T float32
    [>= B * NT, H, 64, 64] and dht [B, H, 128, 128] (float32) or None."""
    B, T, H, K = q.shape
    V = do.shape[-1]
    NT = triton.cdiv(T, BT)
    dh = q.new_empty(B * NT, H, K, V)
    dx = torch.empty_like(dv_local)
    dh0 = q.new_empty(B, H, K, V, dtype=torch.float32) if need_dh0 else None
    _delta_dh_hopper_kernel[(B * H,)](
        beta, gc, dx, dht, dh0, tile_descriptor(q, H * K), tile_descriptor(k, H * K), tile_descriptor(do, H * V),
        tile_descriptor(dv_local, H * V), tile_descriptor(Tm, BT), tile_descriptor(dh, V), T, NT, scale,
        H=H, K=K, V=V, USE_G=gc is not None, USE_DHT=dht is not None, STORE_DH0=need_dh0, STEPS=STEPS, **launch_options(2),
    )
    return dh, dx, dh0
