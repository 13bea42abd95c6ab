"""Per-head layers of the xLSTM blocks: a block-diagonal linear map and a layer norm within each head."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HeadwiseLinear(nn.Module):
    """Block-diagonal linear map (xLSTM's LinearHeadwiseExpand): block h maps its own channels only.

    x: (..., num_blocks * in_per_block) -> (..., num_blocks * out_per_block).
    Weights start normal with std sqrt(2 / (5 * in_features)) (xLSTM's small init).
    """

    def __init__(self, in_features: int, num_blocks: int, out_per_block: int | None = None, bias: bool = False) -> None:
        super().__init__()
        if in_features % num_blocks:
            raise ValueError(f"HeadwiseLinear: in_features={in_features} is not divisible by num_blocks={num_blocks}")
        in_per_block = in_features // num_blocks
        out_per_block = in_per_block if out_per_block is None else out_per_block
        self.num_blocks = num_blocks
        std = math.sqrt(2 / (5 * in_features))
        self.weight = nn.Parameter(torch.randn(num_blocks, out_per_block, in_per_block) * std)
        self.bias = nn.Parameter(torch.zeros(num_blocks * out_per_block)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("...hi,hoi->...ho", x.unflatten(-1, (self.num_blocks, -1)), self.weight).flatten(-2)
        return y if self.bias is None else y + self.bias


class MultiHeadNorm(nn.Module):
    """Layer norm within each head with a weight and no bias (xLSTM's MultiHeadLayerNorm / GroupNorm).

    x: (..., num_heads, head_dim) -> (..., num_heads * head_dim) in x's dtype, computed in at least float32.
    """

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        compute = torch.promote_types(x.dtype, torch.float32)
        y = F.layer_norm(x.to(compute), x.shape[-1:], eps=self.eps) * self.weight.to(compute)
        return y.flatten(-2).to(x.dtype)
