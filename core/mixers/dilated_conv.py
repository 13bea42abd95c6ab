"""Gated stack of dilated depthwise causal convolutions (TCN / the FSMN memory of MossFormer2)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._checks import check_choice, check_positive_int, whole_width
from core.mixers._common import check_state
from core.mixers._conv_history import restore, valid_first, window_before
from core.ops.causal_conv import causal_conv
from core.registry import register_mixer

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


@dataclass
class DilatedConvState:
    """State of `dilated_conv`: per level l, the last (kernel_size - 1) * dilation_l valid inputs of
    that level, (B, (kernel_size - 1) * dilation_l, inner), zeros before the sequence start."""

    history: tuple[Tensor, ...]


@register_mixer(
    "dilated_conv",
    paper="An Empirical Evaluation of Generic Convolutional and Recurrent Networks for Sequence Modeling "
    "(Bai et al., 2018); MossFormer2 (Zhao et al., 2024)",
)
class DilatedConv(Mixer):
    """Gated dilated causal convolutions over x: (B, T, d_model) -> (B, T, d_model).

    [u, z] = W_in x; for each dilation d_l: u = u + act(dwconv_{k, d_l}(u)) (a causal depthwise
    convolution with kernel k and dilation d_l, residual per level as in FSMN memory blocks);
    y = W_out(u * SiLU(z)). Receptive field: 1 + (k - 1) * sum(dilations) tokens (127 by default).

    Args:
        expand: inner width = expand * d_model.
        kernel_size: k, taps of each convolution.
        dilations: dilation of each level, e.g. (1, 2, 4, ..., 32) doubles the reach per level.
        activation: "silu", "gelu" or "relu" after each convolution.
        bias: biases in the convolutions and projections.

    Padded tokens are absent: the convolutions run over the valid tokens only.
    State: `DilatedConvState` (O(k * sum(dilations)) memory, constant in the length).
    """

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8, 16, 32),
        activation: str = "silu",
        bias: bool = True,
    ) -> None:
        super().__init__(d_model)
        inner = whole_width("dilated_conv", "expand", d_model, expand)
        check_positive_int("dilated_conv", "kernel_size", kernel_size)
        if len(dilations) == 0:
            raise ValueError("dilated_conv: dilations is empty; give at least one level, e.g. (1, 2, 4)")
        for d in dilations:
            check_positive_int("dilated_conv", "each of dilations", d)
        check_choice("dilated_conv", "activation", activation, tuple(ACTIVATIONS))
        self.inner, self.kernel_size, self.dilations = inner, kernel_size, tuple(dilations)
        self.act = ACTIVATIONS[activation]
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        bound = kernel_size**-0.5  # nn.Conv1d's default for a depthwise kernel
        self.conv_weight = nn.Parameter(torch.empty(len(self.dilations), kernel_size, inner).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.zeros(len(self.dilations), inner)) if bias else None
        self.out_proj = nn.Linear(inner, d_model, bias=bias)

    @property
    def receptive_field(self) -> int:
        """Number of tokens (the current one included) an output can see."""
        return 1 + (self.kernel_size - 1) * sum(self.dilations)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, inner={self.inner}, kernel_size={self.kernel_size}, dilations={self.dilations}"

    def mix(self, x: Tensor, state: DilatedConvState | None, mask: Tensor | None) -> tuple[Tensor, DilatedConvState]:
        check_state("dilated_conv", state, DilatedConvState)
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u, order, lengths = valid_first(u, mask)
        history = []
        for level, dilation in enumerate(self.dilations):
            width = (self.kernel_size - 1) * dilation
            past = u.new_zeros(u.shape[0], width, self.inner) if state is None else state.history[level].to(u.dtype)
            history.append(window_before(torch.cat([past, u], dim=1), width + lengths, width))  # from [B, width + T, inner]
            bias = None if self.conv_bias is None else self.conv_bias[level]
            u = u + self.act(causal_conv(u, self.conv_weight[level], bias, past, dilation=dilation))
        y = restore(u, order) * F.silu(z)
        return self.out_proj(y), DilatedConvState(tuple(history))
