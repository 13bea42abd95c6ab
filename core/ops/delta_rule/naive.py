"""Token-by-token (gated) delta rule: the readable ground truth (float64-capable)."""

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.dispatch import register


@register("delta_rule", "naive")
def naive_delta_rule(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    beta: Tensor,  # [B, T, H]
    g: Tensor,  # [B, T, H], log decay
    scale: float,
    initial_state: Tensor | None,  # [B, H, K, V]
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T (scale q_t).

    Returns o [B, T, H, V] in the input dtype and S_T [B, H, K, V] in the state dtype (or None).
    """
    B, T, H, K = q.shape
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    q, k, v, beta, g = (x.to(dtype) for x in (q, k, v, beta, g))
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.to(dtype)
    outputs = []
    for t in range(T):
        S = g[:, t, :, None, None].exp() * S
        prediction = torch.einsum("bhkv,bhk->bhv", S, k[:, t])
        update = beta[:, t, :, None] * (v[:, t] - prediction)  # [B, H, V]
        S = S + k[:, t, :, :, None] * update[:, :, None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", S, scale * q[:, t]))
    o = torch.stack(outputs, dim=1)  # [B, T, H, V]
    return o.to(out_dtype), (S if output_final_state else None)
