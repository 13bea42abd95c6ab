"""Registers the fused Triton kernel (`kernels.layers.causal_conv`) as implementation "triton" of the op.

Used on CUDA devices when Triton is installed; `kernels` is imported on first use. float64 inputs go to the
"torch" form.
"""

import torch
from torch import Tensor

from core.ops.causal_conv.shifted import torch_causal_conv
from core.ops.dispatch import register
from core.ops.linear_recurrence.triton import triton_available


@register("causal_conv", "triton", priority=2, supports=triton_available)
def triton_causal_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None, activation: str | None, dilation: int
) -> Tensor:
    """Same contract as `core.ops.causal_conv`; weight, bias and state are cast to x's dtype, as the torch form does."""
    from kernels.layers import causal_conv

    if x.dtype == torch.float64:
        return torch_causal_conv(x, weight, bias, state, activation, dilation)
    cast = [None if t is None else t.to(x.dtype) for t in (weight, bias, state)]
    return causal_conv(x, *cast, silu=activation == "silu", dilation=dilation)
