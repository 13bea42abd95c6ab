"""Image-specific layers: patch stems (images -> tokens) and the gated convolution of the CNN control."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import core

STEMS = ("patch", "conv")


class PatchStem(nn.Module):
    """ViT patch embedding: one linear map per non-overlapping patch (a strided convolution).
    (B, C, H, W) -> (B, H/p * W/p, embed_dim), patches row-major."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ConvStem(nn.Module):
    """Overlapping convolutional stem (Xiao et al., "Early convolutions help transformers see better", 2021):
    log2(p) 3x3 stride-2 convolutions with BatchNorm and GELU, channels doubling up to embed_dim, then a 1x1
    projection. Same token grid as PatchStem(p). (B, C, H, W) -> (B, H/p * W/p, embed_dim), patches row-major."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        steps = int(math.log2(patch_size))
        if patch_size < 2 or 2**steps != patch_size:
            raise ValueError(f"stem='conv' needs patch_size a power of 2 (2, 4, 8, 16), got {patch_size}; use stem='patch'")
        layers: list[nn.Module] = []
        channels = in_chans
        for i in range(steps):
            out = max(embed_dim // 2 ** (steps - 1 - i), 16)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.GELU()]
            channels = out
        layers.append(nn.Conv2d(channels, embed_dim, 1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def build_stem(stem: str, in_chans: int, embed_dim: int, patch_size: int) -> nn.Module:
    """The stem named `stem` ("patch" or "conv")."""
    if stem not in STEMS:
        raise ValueError(f"stem={stem!r} is not one of {', '.join(STEMS)}; pass model.stem=patch or conv")
    return (PatchStem if stem == "patch" else ConvStem)(in_chans, embed_dim, patch_size)


class GatedConvMixer(core.Mixer):
    """Gated CNN token mixer of MambaOut (Yu & Wang, 2024), the control without any sequence mixer.

    [g, i, c] = W_in x; c = depthwise k x k convolution of c over the (height, width) grid of tokens;
    y = W_out(GELU(g) * [i, c]). x: (B, height * width, d_model) row-major patch tokens -> same shape.
    With a padding mask, absent tokens are zeroed before the convolution.

    Args:
        grid: (height, width) of the token grid.
        expand: hidden width over d_model (MambaOut: 8/3).
        kernel_size: the convolution's size (MambaOut: 7).
        conv_ratio: share of d_model channels that are convolved (MambaOut: 1.0); the others pass through.
    """

    causal = False

    def __init__(
        self, d_model: int, grid: tuple[int, int], expand: float = 8 / 3, kernel_size: int = 7, conv_ratio: float = 1.0
    ) -> None:
        super().__init__(d_model)
        hidden = int(expand * d_model)
        conv_channels = int(conv_ratio * d_model)
        if not 0 < conv_channels <= hidden or kernel_size % 2 == 0:
            raise ValueError(
                f"gated_cnn: need 0 < conv_ratio * d_model <= expand * d_model and an odd kernel_size, got "
                f"conv_ratio={conv_ratio}, expand={expand}, kernel_size={kernel_size}"
            )
        self.grid, self.split = tuple(grid), (hidden, hidden - conv_channels, conv_channels)
        self.w_in = nn.Linear(d_model, 2 * hidden)
        self.conv = nn.Conv2d(conv_channels, conv_channels, kernel_size, padding=kernel_size // 2, groups=conv_channels)
        self.w_out = nn.Linear(hidden, d_model)

    def mix(self, x: Tensor, state: Any, mask: Tensor | None) -> tuple[Tensor, None]:
        height, width = self.grid
        if x.shape[1] != height * width:
            raise ValueError(
                f"gated_cnn mixes a {height}x{width} grid of patch tokens, got {x.shape[1]} tokens; "
                "it takes no class token (model.class_token=false) and the image size the model was built for"
            )
        gate, identity, conv = self.w_in(x).split(self.split, dim=-1)
        if mask is not None:
            conv = conv * mask.unsqueeze(-1).to(conv.dtype)
        conv = self.conv(conv.transpose(1, 2).unflatten(2, (height, width))).flatten(2).transpose(1, 2)
        return self.w_out(F.gelu(gate) * torch.cat([identity, conv], dim=-1)), None
