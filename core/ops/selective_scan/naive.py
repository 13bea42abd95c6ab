"""Token-by-token selective scan (Mamba-1, spec 4.1): the readable ground truth (float64-capable)."""

import torch
from torch import Tensor

from core.ops.dispatch import register


@register("selective_scan", "naive")
def naive_selective_scan(
    u: Tensor,  # [b, D, T]
    delta: Tensor,  # [b, D, T], step sizes after bias and softplus
    A: Tensor,  # [D, N]
    B: Tensor,  # [b, G, N, T], group g serves channels g * D/G ... (g + 1) * D/G - 1
    C: Tensor,  # [b, G, N, T]
    initial_state: Tensor,  # [b, D, N]
) -> tuple[Tensor, Tensor]:
    """h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t and y_t = h_t C_t per channel; returns y [b, D, T] and h_T [b, D, N]."""
    G = B.shape[1]
    A = A.unflatten(0, (G, -1))  # [G, D/G, N]
    h = initial_state.unflatten(1, (G, -1))  # [b, G, D/G, N]
    outputs = []
    for u_t, delta_t, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1)):
        delta_t = delta_t.unflatten(1, (G, -1))[..., None]  # [b, G, D/G, 1]
        h = (delta_t * A).exp() * h + delta_t * u_t.unflatten(1, (G, -1))[..., None] * B_t[:, :, None]
        outputs.append((h * C_t[:, :, None]).sum(-1).flatten(1))
    return torch.stack(outputs, dim=-1), h.flatten(1, 2)
