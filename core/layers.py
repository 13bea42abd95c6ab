"""Building blocks shared by mixers and the backbone: gated MLP, short causal convolution, gated norm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.ops.causal_conv import causal_conv
from core.ops.gated_rms_norm import gated_rms_norm


class GatedMLP(nn.Module):
    """SwiGLU MLP: W_down(act(W_gate x) * W_up x). x: (..., d_model) -> (..., d_model)."""

    def __init__(self, d_model: int, expand: float = 8 / 3, activation: str = "silu", multiple_of: int = 16) -> None:
        super().__init__()
        hidden = int(d_model * expand)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        self.w_in = nn.Linear(d_model, 2 * hidden, bias=False)
        self.w_out = nn.Linear(hidden, d_model, bias=False)
        self.act = {"silu": F.silu, "gelu": F.gelu}[activation]

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(self.act(gate) * up)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability `p` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class GatedRMSNorm(nn.Module):
    """RMSNorm with a SiLU gate over the last dim, in at least float32, normalised in groups of `group_size`.

    norm_before_gate=True:  w * rms(x) * silu(z)      (fla's FusedRMSNormGated)
    norm_before_gate=False: w * rms(x * silu(z))      (Mamba-2)
    x, z: (..., dim) -> (..., dim) in x's dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-5, norm_before_gate: bool = True, group_size: int | None = None) -> None:
        super().__init__()
        self.group_size = group_size or dim
        if dim % self.group_size:
            raise ValueError(f"GatedRMSNorm: dim={dim} is not divisible by group_size={self.group_size}")
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.norm_before_gate = norm_before_gate

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        return gated_rms_norm(x, self.weight, z, eps=self.eps, group_size=self.group_size, norm_before_gate=self.norm_before_gate)


def compact_valid(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Move the valid tokens of each sequence to the front, keeping their order.

    x: (B, T, ...), mask: (B, T) bool -> (x_compact (B, T, ...), order (B, T), lengths (B,)).
    `x_compact[b, i] = x[b, order[b, i]]`; padding lands at the end. Undo with `scatter_back`.
    """
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    index = order.view(order.shape + (1,) * (x.ndim - 2)).expand_as(x)
    return x.gather(1, index), order, mask.sum(1)


def scatter_back(y: Tensor, order: Tensor) -> Tensor:
    """Inverse of `compact_valid` for y: (B, T, ...)."""
    index = order.view(order.shape + (1,) * (y.ndim - 2)).expand_as(y)
    return torch.empty_like(y).scatter_(1, index, y)


class ShortConv(nn.Module):
    """Causal depthwise 1-D convolution over time with an explicit tail state.

    x: (B, T, C) -> y: (B, T, C); state: the last `kernel_size - 1` inputs, (B, kernel_size - 1, C).
    With a mask, padded tokens are absent: the convolution runs over the valid tokens only and the
    returned tail holds the last valid inputs.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = False, activation: str | None = "silu") -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"ShortConv kernel_size must be >= 1, got {kernel_size}")
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias)
        self.kernel_size = kernel_size
        self.activation = activation

    def forward(self, x: Tensor, state: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        B, T, C = x.shape
        width = self.kernel_size - 1
        if mask is not None:
            x, order, lengths = compact_valid(x * mask.unsqueeze(-1).to(x.dtype), mask)
        # the op casts weight and bias to x's dtype, as nn.Conv1d under autocast: bf16 inputs give a bf16 output
        y = causal_conv(x, self.conv.weight[:, 0].t(), self.conv.bias, state, activation=self.activation)
        past = x.new_zeros(B, width, C) if state is None else state.to(x.dtype)
        if mask is None:  # the last `width` inputs, some from the state when T < width
            recent = torch.cat([past, x[:, max(0, T - width) :]], dim=1)
            return y, recent[:, recent.shape[1] - width :]
        idx = lengths.view(B, 1) + torch.arange(width, device=x.device).view(1, width)
        tail = torch.cat([past, x], dim=1).gather(1, idx.unsqueeze(-1).expand(B, width, C))
        return scatter_back(y, order), tail


def token_shift(x: Tensor, last: Tensor | None, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The previous valid input of every token and the new last valid input.

    x: (B, T, D); last: (B, 1, D) from the previous call, None = zeros (start of a sequence);
    mask: (B, T) bool or None. Returns (x_prev (B, T, D), last (B, 1, D)); padded tokens are skipped,
    their own x_prev is unspecified.
    """
    B, T, D = x.shape
    if mask is not None:
        x, order, lengths = compact_valid(x, mask)
    last = x.new_zeros(B, 1, D) if last is None else last.to(x.dtype)
    full = torch.cat([last, x], dim=1)  # [B, 1 + T, D]
    if mask is None:
        return full[:, :T], full[:, T:]
    return scatter_back(full[:, :T], order), full.gather(1, lengths.view(B, 1, 1).expand(B, 1, D))
