"""Implementation "torch" of the causal convolution, as K shifted products summed: the reference of the kernel's tests,
and the fast form on CPU (much faster there than a grouped conv1d)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ops.dispatch import register

ACTIVATIONS = {None: lambda y: y, "silu": F.silu}


def depthwise_causal_conv(full: Tensor, weight: Tensor, T: int, dilation: int = 1) -> Tensor:
    """full: (B, (K - 1) * dilation + T, C), the history followed by the T new inputs; weight: (K, C),
    tap K - 1 on the newest input -> (B, T, C)."""
    return sum(full[:, j * dilation : j * dilation + T] * w for j, w in enumerate(weight))


@register("causal_conv", "torch", priority=1)
def torch_causal_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, activation: str | None, dilation: int
) -> Tensor:
    """Same contract as `core.ops.causal_conv` (arguments checked there)."""
    B, _, C = x.shape
    width = (weight.shape[0] - 1) * dilation
    past = x.new_zeros(B, width, C) if state is None else state.to(x.dtype)
    y = depthwise_causal_conv(torch.cat([past, x], dim=1), weight.to(x.dtype), x.shape[1], dilation)
    return ACTIVATIONS[activation](y if bias is None else y + bias.to(x.dtype))
