"""Single-token (decode) step of the linear recurrence and the delta rule, one kernel launch.

Linear recurrence: S <- exp(g) S + k v^T. Delta rule: S <- exp(g) S, then S <- S + beta k (v - S^T k)^T.
Both then read o = S^T (scale q). The state (B, H, K, V) float32 is updated in place and nothing is
synchronised with the host or reallocated, so the step can be captured in a CUDA graph (with `out`
given, nothing is allocated at all). No autograd: decoding only.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_HEAD_DIM = 256


@triton.jit
def _step_kernel(
    q, k, v, beta, g, state, o, scale,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr, DELTA: tl.constexpr,
):
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_bh = i_bh.to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    b_q = tl.load(q + i_bh * K + o_k, mask=m_k, other=0).to(tl.float32) * scale
    b_k = tl.load(k + i_bh * K + o_k, mask=m_k, other=0).to(tl.float32)
    b_v = tl.load(v + i_bh * V + o_v, mask=m_v, other=0).to(tl.float32)
    p_s = state + i_bh * K * V + (o_k[:, None] * V + o_v[None, :])
    m_s = m_k[:, None] & m_v[None, :]
    b_s = tl.load(p_s, mask=m_s, other=0)  # [BK, BV] float32
    if USE_G:
        b_s *= tl.exp(tl.load(g + i_bh).to(tl.float32))
    if DELTA:
        b_v = tl.load(beta + i_bh).to(tl.float32) * (b_v - tl.sum(b_s * b_k[:, None], 0))
    b_s += b_k[:, None] * b_v[None, :]
    tl.store(p_s, b_s, mask=m_s)
    tl.store(o + i_bh * V + o_v, tl.sum(b_s * b_q[:, None], 0).to(o.dtype.element_ty), mask=m_v)


def recurrent_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    state: Tensor,
    *,
    beta: Tensor | None = None,
    scale: float | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """One token for B sequences: q, k (B, 1, H, K); v (B, 1, H, V); g log decay (B, 1, H) or None;
    beta (B, 1, H) for the delta rule, None for the linear recurrence; state (B, H, K, V) float32,
    updated in place; scale defaults to K ** -0.5. Returns o (B, 1, H, V) in v's dtype (written to
    `out` if given). K, V <= 256, any size.
    """
    B, one, H, K = q.shape
    V = v.shape[-1]
    if one != 1 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"one token: q, k must be (B, 1, H, K) and v (B, 1, H, V); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if state.shape != (B, H, K, V) or state.dtype != torch.float32 or not state.is_contiguous():
        raise ValueError(f"state must be a contiguous float32 tensor of shape {(B, H, K, V)}, got {state.dtype} {tuple(state.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if x is not None and x.shape != (B, 1, H):
            raise ValueError(f"{name} must have shape (B, 1, H) = {(B, 1, H)}, got {tuple(x.shape)}")
    if max(K, V) > MAX_HEAD_DIM:
        raise ValueError(f"head dims above {MAX_HEAD_DIM} are not supported by the step kernel, got K={K}, V={V}")
    out = torch.empty_like(v) if out is None else out
    BK = max(triton.next_power_of_2(K), 16)
    BV = min(max(triton.next_power_of_2(V), 16), 8192 // BK)  # at most 8192 state elements per program
    q, k, v = (x.contiguous() for x in (q, k, v))
    g, beta = (None if x is None else x.contiguous() for x in (g, beta))
    _step_kernel[(triton.cdiv(V, BV), B * H)](
        q, k, v, beta, g, state, out, K**-0.5 if scale is None else float(scale),
        K=K, V=V, BK=BK, BV=BV, USE_G=g is not None, DELTA=beta is not None,
    )
    return out
