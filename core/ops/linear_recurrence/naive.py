"""Token-by-token linear recurrence: the readable ground truth (float64-capable)."""

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.dispatch import register


@register("linear_recurrence", "naive")
def naive_linear_recurrence(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    g: Tensor,  # [B, T, H] or [B, T, H, K], log decay
    scale: float,
    initial_state: Tensor | None,  # [B, H, K, V]
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t); returns o [B, T, H, V] and S_T [B, H, K, V]."""
    B, T, H, K = q.shape
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    q, k, v, g = (x.to(dtype) for x in (q, k, v, g))
    decay = g.exp() if g.dim() == 4 else g.exp()[..., None]  # [B, T, H, K or 1], acts on the rows of S
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    outputs = []
    for t in range(T):
        S = decay[:, t, :, :, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, scale * q[:, t]))
    o = torch.stack(outputs, dim=1)  # [B, T, H, V]
    return o.to(out_dtype), (S if output_final_state else None)
