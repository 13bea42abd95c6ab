"""Rotary position embedding (RoPE, Su et al., 2021) at explicit integer positions.

Channel i of the first half of a head is paired with channel i + D/2 (the GPT-NeoX / Llama layout) and the
pair is rotated by the angle `position * base^(-2i/D)`. Rotating queries and keys makes their dot product a
function of the position difference only.
"""
from __future__ import annotations

import torch
from torch import Tensor


def apply_rotary(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate x: (..., T, H, D) at positions broadcastable to x.shape[:-2] (e.g. (B, T) or (T,)), integer.

    D must be even. The angles are computed in float32 (float64 for float64 x); the result has x's dtype.
    """
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"rotary embedding needs an even head dimension, got {dim}; choose an even head_dim")
    if positions.is_floating_point() or positions.is_complex():
        raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=dtype) / dim)  # [D/2]
    angles = (positions.to(dtype).unsqueeze(-1) * inv_freq).unsqueeze(-2)  # [..., T, 1, D/2]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.to(dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
