"""Causal convolutions over the valid tokens only, with the input history as state (hyena, dilated_conv).

A padded batch is compacted so each row's valid tokens come first (`core.layers.compact_valid`);
trailing padding cannot reach a valid output of a causal convolution. The history of a row is kept
right-aligned, its oldest entries zero, so `cat([history, compacted])` holds each row's valid tokens
back to back and a convolution over it is a convolution over the valid tokens.
"""
from __future__ import annotations

import torch
from torch import Tensor

from core.layers import compact_valid, scatter_back


def valid_first(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
    """x (B, T, C) -> (x with each row's valid tokens first and padding zeroed, order for `restore`, lengths (B,))."""
    if mask is None:
        return x, None, torch.full((x.shape[0],), x.shape[1], device=x.device)
    return compact_valid(x * mask.unsqueeze(-1).to(x.dtype), mask)


def restore(y: Tensor, order: Tensor | None) -> Tensor:
    """Undo `valid_first` on y (B, T, C)."""
    return y if order is None else scatter_back(y, order)


def window_before(x: Tensor, ends: Tensor, width: int) -> Tensor:
    """Row b's entries x[b, ends[b] - width : ends[b]], zeros where the index is negative.

    x: (B, L, C), ends: (B,) int -> (B, width, C); used to keep the last `width` valid inputs.
    """
    index = ends[:, None] - width + torch.arange(width, device=x.device)  # [B, width]
    window = x.gather(1, index.clamp_min(0)[..., None].expand(-1, -1, x.shape[-1]))
    return window.masked_fill((index < 0)[..., None], 0)
