"""The delta rule's two state passes for Hopper, in Gluon: warp-specialized, with the ring of tiles of
`kernels/common/hopper.py` (as `kernels/linear_recurrence/dqk_hopper.py` and `wy_hopper.py`).

Same inputs, outputs and math as `chunk._delta_h_kernel` (without the output: the forward pass, states h and U~) and
`chunk._delta_dh_kernel` (the reverse pass, dh and dX): their docstrings have the formulas. For K = V = 128 and
16-bit inputs without `cu_seqlens`. One program per (sequence, head), sequential over its chunks (in reverse for the
reverse pass), with two compute warpgroups: each holds the 128 x 64 block of the state (S or dS) for one half of V in
registers, as two 64 x 64 accumulators (keys 0..63, 64..127). A one-warp loader streams each chunk's tiles by TMA,
STEPS chunks ahead: the K halves (and, reverse, the Q halves) and T (float32), read by both warpgroups, and each
warpgroup's V half (reverse: dO and dv_local halves). The Triton kernels load them inside their chains of dependent
products, one program per V half (two per multiprocessor, each loading K and T itself).

Per chunk, each warpgroup writes the state (16-bit) to shared memory, stored to h[c] / dh[c] by TMA and read as the
right operand of K S; T (read into registers, transposed for the reverse pass) enters its products as a 16-bit head
and tail, like `chunk._dot_t`; the chunk's products with T and Kᵀ read their right operands from the tile of V (dv_local)
itself, overwritten in place by the 16-bit values they need.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, tma, warpgroup_mma, warpgroup_mma_wait

from kernels.common.config import length_args
from kernels.common.hopper import (
    BT, CONSUMER_REGS, MMA, MMA_COLS, MMA_ROWS, free_tile, issue_halves, issue_tile, launch_options, mma2, new_ring,
    store_tile, take_tile, tile_descriptor,
)

STEPS = 2  # chunks of tiles the rings hold
T_A = gl.constexpr(gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2))  # T or Tᵀ as a left operand, in registers


@gluon.jit
def _loader(k_desc, q_desc, v_desc, t_desc, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty, v_bufs, v_ready,
            v_empty, T, NT, H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, STEPS: gl.constexpr, REVERSE: gl.constexpr,
            WITH_Q: gl.constexpr):
    """Per chunk (in reverse for the reverse pass): the K halves (WITH_Q: and the Q halves), T, and the V (reverse:
    dO) half of each warpgroup."""
    KQ: gl.constexpr = 4 if WITH_Q else 2  # shared tiles per chunk
    i_b, i_h = gl.program_id(0) // H, gl.program_id(0) % H
    for n in range(NT):
        i_t = NT - 1 - n if REVERSE else n
        row = i_b * T + i_t * 64
        issue_halves(k_desc, row, i_h * K, kq_bufs, kq_ready, kq_empty, KQ * n, KQ * STEPS)
        if WITH_Q:
            issue_halves(q_desc, row, i_h * K, kq_bufs, kq_ready, kq_empty, KQ * n + 2, KQ * STEPS)
        issue_tile(t_desc, ((i_b * NT + i_t) * H + i_h) * 64, 0, t_bufs, t_ready, t_empty, n, STEPS)
        issue_halves(v_desc, row, i_h * V, v_bufs, v_ready, v_empty, 2 * n, 2 * STEPS)


@gluon.jit
def _chunk_rows(beta, gc, row0, n_rows, i_h, o_r, H: gl.constexpr, USE_G: gl.constexpr):
    """The chunk's row mask (its tokens inside the sequence: the rest of each tile is the next sequence's), beta
    (float32, 0 outside) and gate: the chunk-local log2 cumsum and its last value (0 without a gate)."""
    m_r = o_r < n_rows
    b_beta = gl.load(beta + (row0 + o_r) * H + i_h, mask=m_r, other=0).to(gl.float32)
    if USE_G:
        b_g = gl.load(gc + (row0 + o_r) * H + i_h, mask=m_r, other=0)
        g_last = gl.load(gc + (row0 + gl.minimum(n_rows, 64) - 1) * H + i_h)
    else:
        b_g = gl.zeros([64], gl.float32, MMA_ROWS)
        g_last = 0.0
    return m_r, b_beta, b_g, g_last


@gluon.jit
def _stage_state(s_lo, s_hi, lo_smem, hi_smem, desc, hrow, col, STORE: gl.constexpr = True):
    """The state's 16-bit copy to shared memory (once the previous chunk's TMA stores have read it); with STORE, stored
    to desc's rows hrow.. hrow + 127 at column col by TMA."""
    tma.store_wait(0)
    lo_smem.store(s_lo.to(lo_smem.dtype))
    hi_smem.store(s_hi.to(hi_smem.dtype))
    fence_async_shared()
    if STORE:
        tma.async_copy_shared_to_global(desc, [hrow, col], lo_smem)
        tma.async_copy_shared_to_global(desc, [hrow + 64, col], hi_smem)


@gluon.jit
def _t_parts(t_bufs, t_ready, t_empty, n, dtype: gl.constexpr, STEPS: gl.constexpr, TRANSPOSED: gl.constexpr):
    """T of chunk n (or Tᵀ) as a 16-bit head and tail in registers, left operands of wgmma; frees its slot."""
    t_smem = take_tile(t_bufs, t_ready, n, STEPS)
    if TRANSPOSED:
        t = t_smem.permute((1, 0)).load(T_A)
    else:
        t = t_smem.load(T_A)
    free_tile(t_empty, n, STEPS)
    t_hi = t.to(dtype)
    return t_hi, (t - t_hi.to(gl.float32)).to(dtype)


@gluon.jit
def _initial_state(state_in, c, K: gl.constexpr, V: gl.constexpr, STATE_IN: gl.constexpr):
    """Warpgroup c's offsets into a float32 [.., K, V] state of this program's (sequence, head) (keys 0..63 of its V
    half), and its initial state: read from state_in, or zeros."""
    o_r = gl.arange(0, 64, layout=MMA_ROWS)
    o_c = gl.arange(0, 64, layout=MMA_COLS)
    state = gl.program_id(0).to(gl.int64) * K * V + o_r[:, None] * V + (c * 64 + o_c[None, :])
    if STATE_IN:
        return state, gl.load(state_in + state), gl.load(state_in + state + 64 * V)
    return state, gl.zeros([64, 64], gl.float32, MMA), gl.zeros([64, 64], gl.float32, MMA)


@gluon.jit
def _end_chunk(kq_empty, v_empty, n, c, KQ: gl.constexpr, STEPS: gl.constexpr):
    """Free chunk n's tiles: the shared ones and warpgroup c's."""
    for i in gl.static_range(KQ):
        free_tile(kq_empty, KQ * n + i, KQ * STEPS)
    free_tile(v_empty, 2 * n + c, 2 * STEPS)


@gluon.jit
def _end_pass(state_out, state, s_lo, s_hi, V: gl.constexpr, STATE_OUT: gl.constexpr):
    """Store the final state (float32) where asked, and wait for the last TMA stores."""
    if STATE_OUT:
        gl.store(state_out + state, s_lo)
        gl.store(state_out + state + 64 * V, s_hi)
    tma.store_wait(0)


@gluon.jit
def _forward(beta, gc, v_new, o, h0, ht, h_desc, s_bufs, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty,
             v_bufs, v_ready, v_empty, T, NT, scale, H: gl.constexpr, K: gl.constexpr, V: gl.constexpr,
             USE_G: gl.constexpr, USE_H0: gl.constexpr, STORE_HT: gl.constexpr, OUTPUT: gl.constexpr,
             STORE_STATES: gl.constexpr, STEPS: gl.constexpr, c: gl.constexpr):
    """Warpgroup c of the forward pass, V half c: h[c] and U~ = T Diag(beta) (V - Diag(exp(gamma)) K h[c]) (stored with
    STORE_STATES); with OUTPUT the output O = scale exp(gamma) ⊙ Q h[c] + (scale Q Kᵀ ⊙ Γ, causal) U~ (what
    `_fwd_o_kernel` gives the Triton forward); then S <- exp(gamma_C) S + Kᵀ (exp(gamma_C - gamma) ⊙ U~)."""
    KQ: gl.constexpr = 4 if OUTPUT else 2
    mma: gl.constexpr = MMA
    o_r = gl.arange(0, 64, layout=MMA_ROWS)
    o_c = gl.arange(0, 64, layout=MMA_COLS)
    i_b, i_h = gl.program_id(0) // H, gl.program_id(0) % H
    lo_smem, hi_smem, u_smem = s_bufs.index(2 * c), s_bufs.index(2 * c + 1), s_bufs.index(4 + c)
    a_smem = s_bufs.index(6 + c) if OUTPUT else u_smem
    state, s_lo, s_hi = _initial_state(h0, c, K, V, USE_H0)
    for n in range(NT):
        row0 = (i_b * T + n * 64).to(gl.int64)  # the chunk's first token; element offsets pass 2^31 in large batches
        n_rows = T - n * 64
        m_r, b_beta, b_g, g_last = _chunk_rows(beta, gc, row0, n_rows, i_h, o_r, H, USE_G)

        k0, k1 = take_tile(kq_bufs, kq_ready, KQ * n, KQ * STEPS), take_tile(kq_bufs, kq_ready, KQ * n + 1, KQ * STEPS)
        if OUTPUT:
            q0, q1 = take_tile(kq_bufs, kq_ready, 4 * n + 2, 4 * STEPS), take_tile(kq_bufs, kq_ready, 4 * n + 3, 4 * STEPS)
            qk = mma2(q0, k0.permute((1, 0)), q1, k1.permute((1, 0)))  # Q Kᵀ: off the chain of states, issued first
        _stage_state(s_lo, s_hi, lo_smem, hi_smem, h_desc, ((i_b * NT + n) * H + i_h) * K, c * 64, STORE_STATES)
        kh = mma2(k0, lo_smem, k1, hi_smem)  # K h[c]
        if OUTPUT:  # the chunk's causal scores, to their tile
            qk = warpgroup_mma_wait(num_outstanding=2, deps=(qk,))
            causal = (o_r[:, None] >= o_c[None, :]) & m_r[:, None] & (o_c < n_rows)[None, :]
            if USE_G:
                qk *= gl.exp2(gl.where(causal, b_g[:, None] - gl.convert_layout(b_g, MMA_COLS)[None, :], float("-inf")))
            a_smem.store(gl.where(causal, qk * scale, 0.0).to(a_smem.dtype))
        t_hi, t_lo = _t_parts(t_bufs, t_ready, t_empty, n, k0.dtype, STEPS, False)
        v_smem = take_tile(v_bufs, v_ready, 2 * n + c, 2 * STEPS)
        kh = warpgroup_mma_wait(num_outstanding=0, deps=(kh,))

        x = v_smem.load(mma).to(gl.float32)
        v_smem.store(((x - kh * gl.exp2(b_g)[:, None]) * b_beta[:, None]).to(v_smem.dtype))  # over V
        fence_async_shared()
        u = warpgroup_mma(t_hi, v_smem, gl.zeros([64, 64], gl.float32, mma), use_acc=False, is_async=True)
        u = warpgroup_mma(t_lo, v_smem, u, is_async=True)  # U~ = T Diag(beta) (V - ...)
        u = warpgroup_mma_wait(num_outstanding=0, deps=(u,))

        if OUTPUT:
            u_smem.store(u.to(u_smem.dtype))
        v_smem.store((u * gl.where(m_r, gl.exp2(g_last - b_g), 0.0)[:, None]).to(v_smem.dtype))  # over it
        fence_async_shared()
        decay = gl.exp2(g_last)
        s_lo = warpgroup_mma(k0.permute((1, 0)), v_smem, s_lo * decay, is_async=True)
        s_hi = warpgroup_mma(k1.permute((1, 0)), v_smem, s_hi * decay, is_async=True)
        if OUTPUT:  # the output, while they run: Q h[c] (h[c] still in its tiles) and the scores' product
            qh = mma2(q0, lo_smem, q1, hi_smem)
            b_o = warpgroup_mma(a_smem, u_smem, gl.zeros([64, 64], gl.float32, mma), use_acc=False, is_async=True)
        if STORE_STATES:
            store_tile(v_new, row0, n_rows, H * V, i_h * V + c * 64, u)
        if OUTPUT:
            qh, b_o = warpgroup_mma_wait(num_outstanding=0, deps=(qh, b_o))
            store_tile(o, row0, n_rows, H * V, i_h * V + c * 64, qh * (gl.exp2(b_g) * scale)[:, None] + b_o)
        s_lo, s_hi = warpgroup_mma_wait(num_outstanding=0, deps=(s_lo, s_hi))
        _end_chunk(kq_empty, v_empty, n, c, KQ, STEPS)
    _end_pass(ht, state, s_lo, s_hi, V, STORE_HT)


@gluon.jit
def _reverse(beta, gc, dx, dht, dh0, dh_desc, s_bufs, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty,
             v_bufs, v_ready, v_empty, T, NT, scale, H: gl.constexpr, K: gl.constexpr, V: gl.constexpr,
             USE_G: gl.constexpr, USE_DHT: gl.constexpr, STORE_DH0: gl.constexpr, STEPS: gl.constexpr, c: gl.constexpr):
    """Warpgroup c of the reverse pass, V half c, chunks in reverse: dh[c]; the chunk-local part of dU~ (what
    `_bwd_dv_kernel` gives the Triton pass), dv_local = (scale K Qᵀ ⊙ Γᵀ, anticausal) dO; dU~ = dv_local +
    exp(gamma_C - gamma) ⊙ K dS; dX = Tᵀ dU~; -Y = -(beta exp(gamma) ⊙ dX); dS <- exp(gamma_C) dS +
    Qᵀ (scale exp(gamma) ⊙ dO) - Kᵀ Y, the dO tile scaled in place once dv_local is formed."""
    mma: gl.constexpr = MMA
    o_r = gl.arange(0, 64, layout=MMA_ROWS)
    o_c = gl.arange(0, 64, layout=MMA_COLS)
    i_b, i_h = gl.program_id(0) // H, gl.program_id(0) % H
    lo_smem, hi_smem, u_smem = s_bufs.index(2 * c), s_bufs.index(2 * c + 1), s_bufs.index(4 + c)
    state, s_lo, s_hi = _initial_state(dht, c, K, V, USE_DHT)
    for n in range(NT):
        i_t = NT - 1 - n
        row0 = (i_b * T + i_t * 64).to(gl.int64)
        n_rows = T - i_t * 64
        m_r, b_beta, b_g, g_last = _chunk_rows(beta, gc, row0, n_rows, i_h, o_r, H, USE_G)

        k0, k1 = take_tile(kq_bufs, kq_ready, 4 * n, 4 * STEPS), take_tile(kq_bufs, kq_ready, 4 * n + 1, 4 * STEPS)
        q0, q1 = take_tile(kq_bufs, kq_ready, 4 * n + 2, 4 * STEPS), take_tile(kq_bufs, kq_ready, 4 * n + 3, 4 * STEPS)
        kq = mma2(k0, q0.permute((1, 0)), k1, q1.permute((1, 0)))  # K Qᵀ: off the chain of states, issued first
        _stage_state(s_lo, s_hi, lo_smem, hi_smem, dh_desc, ((i_b * NT + i_t) * H + i_h) * K, c * 64)
        kds = mma2(k0, lo_smem, k1, hi_smem)  # K dS
        kq = warpgroup_mma_wait(num_outstanding=2, deps=(kq,))

        anticausal = (o_r[:, None] <= o_c[None, :]) & m_r[:, None] & (o_c < n_rows)[None, :]
        if USE_G:
            g_c = gl.convert_layout(b_g, MMA_COLS)
            kq *= gl.exp2(gl.where(anticausal, g_c[None, :] - b_g[:, None], float("-inf")))
        a = gl.convert_layout(gl.where(anticausal, kq * scale, 0.0).to(k0.dtype), T_A)
        do_smem = take_tile(v_bufs, v_ready, 2 * n + c, 2 * STEPS)
        dv_local = warpgroup_mma(a, do_smem, gl.zeros([64, 64], gl.float32, mma), use_acc=False, is_async=True)
        kds, dv_local = warpgroup_mma_wait(num_outstanding=0, deps=(kds, dv_local))

        u_smem.store((dv_local + kds * gl.where(m_r, gl.exp2(g_last - b_g), 0.0)[:, None]).to(u_smem.dtype))  # dU~
        q_scale = gl.where(m_r, gl.exp2(b_g) * scale, 0.0)
        do_smem.store((do_smem.load(mma).to(gl.float32) * q_scale[:, None]).to(do_smem.dtype))
        fence_async_shared()
        t_hi, t_lo = _t_parts(t_bufs, t_ready, t_empty, n, k0.dtype, STEPS, True)  # here: registers for the above
        b_dx = warpgroup_mma(t_hi, u_smem, gl.zeros([64, 64], gl.float32, mma), use_acc=False, is_async=True)
        b_dx = warpgroup_mma(t_lo, u_smem, b_dx, is_async=True)  # dX = Tᵀ dU~
        decay = gl.exp2(g_last)
        s_lo = warpgroup_mma(q0.permute((1, 0)), do_smem, s_lo * decay, is_async=True)  # while it runs
        s_hi = warpgroup_mma(q1.permute((1, 0)), do_smem, s_hi * decay, is_async=True)
        b_dx = warpgroup_mma_wait(num_outstanding=2, deps=(b_dx,))

        u_smem.store((b_dx * -(b_beta * gl.exp2(b_g))[:, None]).to(u_smem.dtype))  # -Y
        fence_async_shared()
        s_lo = warpgroup_mma(k0.permute((1, 0)), u_smem, s_lo, is_async=True)
        s_hi = warpgroup_mma(k1.permute((1, 0)), u_smem, s_hi, is_async=True)
        store_tile(dx, row0, n_rows, H * V, i_h * V + c * 64, b_dx)
        s_lo, s_hi = warpgroup_mma_wait(num_outstanding=0, deps=(s_lo, s_hi))
        _end_chunk(kq_empty, v_empty, n, c, 4, STEPS)
    _end_pass(dh0, state, s_lo, s_hi, V, STORE_DH0)


@gluon.jit
def _state_pass(beta, gc, tokens_out, o, state_in, state_out, k_desc, q_desc, v_desc, t_desc, s_desc, T, NT, scale,
                H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, USE_G: gl.constexpr, STATE_IN: gl.constexpr,
                STATE_OUT: gl.constexpr, OUTPUT: gl.constexpr, STORE_STATES: gl.constexpr, STEPS: gl.constexpr,
                REVERSE: gl.constexpr):
    """The forward pass (v_desc over V; tokens_out = U~, s_desc over h, the states h0 and ht; with OUTPUT, q_desc and
    the output o) or the reverse one (q_desc, v_desc over dO; tokens_out = dX, s_desc over dh, the states dht and dh0)."""
    KQ: gl.constexpr = 4 if REVERSE or OUTPUT else 2
    kq_bufs, kq_ready, kq_empty = new_ring(k_desc, KQ * STEPS, 2)
    t_bufs, t_ready, t_empty = new_ring(t_desc, STEPS, 2)
    v_bufs, v_ready, v_empty = new_ring(v_desc, 2 * STEPS)
    # each warpgroup's state tiles, a tile for U~ (reverse: dU~ and -Y) and with OUTPUT one for the chunk's scores
    s_bufs = gl.allocate_shared_memory(k_desc.dtype, [8 if OUTPUT else 6, 64, 64], k_desc.layout)
    if REVERSE:
        gl.warp_specialize([
            (_reverse, (beta, gc, tokens_out, state_in, state_out, s_desc, s_bufs, kq_bufs, kq_ready, kq_empty, t_bufs,
                        t_ready, t_empty, v_bufs, v_ready, v_empty, T, NT, scale, H, K, V, USE_G, STATE_IN, STATE_OUT,
                        STEPS, 0)),
            (_reverse, (beta, gc, tokens_out, state_in, state_out, s_desc, s_bufs, kq_bufs, kq_ready, kq_empty, t_bufs,
                        t_ready, t_empty, v_bufs, v_ready, v_empty, T, NT, scale, H, K, V, USE_G, STATE_IN, STATE_OUT,
                        STEPS, 1)),
            (_loader, (k_desc, q_desc, v_desc, t_desc, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty, v_bufs,
                       v_ready, v_empty, T, NT, H, K, V, STEPS, True, True)),
        ], [4, 1], [CONSUMER_REGS, 24])
    else:
        gl.warp_specialize([
            (_forward, (beta, gc, tokens_out, o, state_in, state_out, s_desc, s_bufs, kq_bufs, kq_ready, kq_empty,
                        t_bufs, t_ready, t_empty, v_bufs, v_ready, v_empty, T, NT, scale, H, K, V, USE_G, STATE_IN,
                        STATE_OUT, OUTPUT, STORE_STATES, STEPS, 0)),
            (_forward, (beta, gc, tokens_out, o, state_in, state_out, s_desc, s_bufs, kq_bufs, kq_ready, kq_empty,
                        t_bufs, t_ready, t_empty, v_bufs, v_ready, v_empty, T, NT, scale, H, K, V, USE_G, STATE_IN,
                        STATE_OUT, OUTPUT, STORE_STATES, STEPS, 1)),
            (_loader, (k_desc, q_desc, v_desc, t_desc, kq_bufs, kq_ready, kq_empty, t_bufs, t_ready, t_empty, v_bufs,
                       v_ready, v_empty, T, NT, H, K, V, STEPS, False, OUTPUT)),
        ], [4, 1], [CONSUMER_REGS, 24])


@gluon.jit(do_not_specialize=length_args("T", "NT"))  # one compiled kernel for every length
def _delta_h_hopper_kernel(beta, gc, v_new, o, h0, ht, k_desc, q_desc, v_desc, t_desc, h_desc, T, NT, scale,
                           H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, USE_G: gl.constexpr, USE_H0: gl.constexpr,
                           STORE_HT: gl.constexpr, OUTPUT: gl.constexpr, STORE_STATES: gl.constexpr,
                           STEPS: gl.constexpr):
    _state_pass(beta, gc, v_new, o, h0, ht, k_desc, q_desc, v_desc, t_desc, h_desc, T, NT, scale, H, K, V, USE_G, USE_H0,
                STORE_HT, OUTPUT, STORE_STATES, STEPS, False)


@gluon.jit(do_not_specialize=length_args("T", "NT"))
def _delta_dh_hopper_kernel(beta, gc, dx, dht, dh0, k_desc, q_desc, do_desc, t_desc, dh_desc, T, NT, scale,
                            H: gl.constexpr, K: gl.constexpr, V: gl.constexpr, USE_G: gl.constexpr,
                            USE_DHT: gl.constexpr, STORE_DH0: gl.constexpr, STEPS: gl.constexpr):
    _state_pass(beta, gc, dx, dx, dht, dh0, k_desc, q_desc, do_desc, t_desc, dh_desc, T, NT, scale, H, K, V, USE_G,
                USE_DHT, STORE_DH0, False, True, STEPS, True)


def delta_h(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, gc: torch.Tensor | None, Tm: torch.Tensor,
            h0: torch.Tensor | None, output_final_state: bool, q: torch.Tensor | None = None, scale: float = 1.0,
            store_states: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The forward pass: (h [B * NT, H, 128, 128] and U~ (input dtype), None unless store_states; the final states
    [B, H, 128, 128] (float32, None unless output_final_state); the output o (like v), None without q) from k, v
    [B, T, H, 128], beta, gc [B, T, H] (gc: the chunk-local log2 cumsum, or None), T float32 [>= B * NT, H, 64, 64],
    h0 [B, H, 128, 128] (float32) or None and q [B, T, H, 128] or None."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    h = k.new_empty(B * NT, H, K, V) if store_states else None
    v_new = torch.empty_like(v) if store_states else None
    o = torch.empty_like(v) if q is not None else None
    ht = k.new_empty(B, H, K, V, dtype=torch.float32) if output_final_state else None
    k_desc = tile_descriptor(k, H * K)
    _delta_h_hopper_kernel[(B * H,)](
        beta, gc, v_new, o, h0, ht, k_desc, k_desc if q is None else tile_descriptor(q, H * K), tile_descriptor(v, H * V),
        tile_descriptor(Tm, BT), k_desc if h is None else tile_descriptor(h, V), T, NT, scale, H=H, K=K, V=V,
        USE_G=gc is not None, USE_H0=h0 is not None, STORE_HT=output_final_state, OUTPUT=q is not None,
        STORE_STATES=store_states, STEPS=STEPS, **launch_options(2),
    )
    return h, v_new, ht, o


def delta_dh(q: torch.Tensor, k: torch.Tensor, beta: torch.Tensor, gc: torch.Tensor | None, Tm: torch.Tensor,
             do: torch.Tensor, dht: torch.Tensor | None, need_dh0: bool, scale: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The reverse pass, with the chunk-local part of dU~ (the Triton backward's `_bwd_dv_kernel`): dh [B * NT, H, 128,
    128] and dX (input dtype), and dh0 [B, H, 128, 128] (float32, None unless need_dh0) from q, k, dO [B, T, H, 128],
    beta, gc [B, T, H], T and dht [B, H, 128, 128] (float32) or None."""
    B, T, H, K = q.shape
    V = do.shape[-1]
    NT = triton.cdiv(T, BT)
    dh = q.new_empty(B * NT, H, K, V)
    dx = torch.empty_like(do)
    dh0 = q.new_empty(B, H, K, V, dtype=torch.float32) if need_dh0 else None
    _delta_dh_hopper_kernel[(B * H,)](
        beta, gc, dx, dht, dh0, tile_descriptor(k, H * K), tile_descriptor(q, H * K), tile_descriptor(do, H * V),
        tile_descriptor(Tm, BT), tile_descriptor(dh, V), T, NT, scale, H=H, K=K, V=V, USE_G=gc is not None,
        USE_DHT=dht is not None, STORE_DH0=need_dh0, STEPS=STEPS, **launch_options(2),
    )
    return dh, dx, dh0
