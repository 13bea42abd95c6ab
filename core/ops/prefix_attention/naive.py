"""Token-by-token prefix softmax attention (spec 9.1): the streaming (m, u, w) recurrence, float64-capable."""

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.dispatch import register

Triple = tuple[Tensor, Tensor, Tensor]  # m [B, H], u [B, H], w [B, H, V]


@register("prefix_attention", "naive")
def naive_prefix_attention(
    s: Tensor,  # [B, T, H], scores; -inf = absent token
    v: Tensor,  # [B, T, H, V]
    initial_state: Triple | None,
    output_final_state: bool,
) -> tuple[Tensor, Triple | None]:
    """m_t = max(m_{t-1}, s_t); u_t = u_{t-1} e^{m_{t-1} - m_t} + e^{s_t - m_t}; w_t likewise with v_t; o_t = w_t / u_t.

    Before any token (m = -inf) the exponents are taken against 0 instead of m, so -inf - -inf never
    occurs, and o = 0. Returns o [B, T, H, V] and (m, u, w).
    """
    B, T, H, V = v.shape
    out_dtype, dtype = v.dtype, state_dtype(v.dtype)
    s, v = s.to(dtype), v.to(dtype)
    if initial_state is None:
        m, u, w = s.new_full((B, H), -torch.inf), s.new_zeros(B, H), s.new_zeros(B, H, V)
    else:
        m, u, w = (x.to(dtype) for x in initial_state)
    outputs = []
    for t in range(T):
        m_new = torch.maximum(m, s[:, t])
        ref = torch.where(m_new.isneginf(), 0, m_new)
        old, new = (m - ref).exp(), (s[:, t] - ref).exp()  # [B, H]
        u = u * old + new
        w = w * old[..., None] + new[..., None] * v[:, t]
        m = m_new
        outputs.append(w / torch.where(u > 0, u, 1)[..., None])
    o = torch.stack(outputs, dim=1)  # [B, T, H, V]
    return o.to(out_dtype), ((m, u, w) if output_final_state else None)
