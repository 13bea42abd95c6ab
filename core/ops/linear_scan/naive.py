"""Token-by-token elementwise linear recurrence: the readable ground truth (float64-capable)."""

import torch
from torch import Tensor

from core.ops.dispatch import register


@register("linear_scan", "naive")
def naive_linear_scan(
    a: Tensor,  # [B, T, D], real or complex, in the compute dtype
    b: Tensor,  # [B, T, D], same dtype as a
    initial_state: Tensor,  # [B, D]
) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t with h_0 = initial_state; returns h [B, T, D]."""
    h = initial_state
    states = []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):  # unbind, not a[:, t]: its backward is one stack
        h = a_t * h + b_t
        states.append(h)
    return torch.stack(states, dim=1)


@register("log_linear_scan", "naive")
def naive_log_linear_scan(log_a: Tensor, log_b: Tensor, initial_state: Tensor) -> Tensor:
    """The same recurrence with a = exp(log_a), b = exp(log_b), run in linear space; [B, T, D] -> h [B, T, D]."""
    return naive_linear_scan(log_a.exp(), log_b.exp(), initial_state)
