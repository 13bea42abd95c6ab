"""Token-by-token DPLR delta rule (RWKV-7's recurrence): the readable ground truth (float64-capable)."""

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.dispatch import register


@register("dplr_delta_rule", "naive")
def naive_dplr_delta_rule(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    a: Tensor,  # [B, T, H, K]
    b: Tensor,  # [B, T, H, K]
    g: Tensor,  # [B, T, H, K], log decay per key channel
    scale: float,
    initial_state: Tensor | None,  # [B, H, K, V]
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """S_t = (Diag(exp(g_t)) + b_t a_t^T) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t).

    Returns o [B, T, H, V] in the input dtype and S_T [B, H, K, V] in the state dtype (or None).
    """
    B, T, H, K = q.shape
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    q, k, v, a, b, g = (x.to(dtype) for x in (q, k, v, a, b, g))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    outputs = []
    for t in range(T):
        read = torch.einsum("bhkv,bhk->bhv", S, a[:, t])  # a_t^T S_{t-1}, with the old state
        S = g[:, t, :, :, None].exp() * S + b[:, t, :, :, None] * read[:, :, None, :]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, scale * q[:, t]))
    o = torch.stack(outputs, dim=1)  # [B, T, H, V]
    return o.to(out_dtype), (S if output_final_state else None)
