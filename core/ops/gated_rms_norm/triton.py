"""Registers the fused Triton kernel (`kernels.layers.rms_norm`) as implementation "triton" of the op.

Used on CUDA devices when Triton is installed; `kernels` is imported on first use. float64 inputs and groups wider
than the kernel's MAX_GROUP go to the "torch" form.
"""

import torch
from torch import Tensor

from core.ops.dispatch import register
from core.ops.linear_recurrence.triton import triton_available


@register("gated_rms_norm", "triton", priority=2, supports=triton_available)
def triton_gated_rms_norm(
    x: Tensor, weight: Tensor, z: Tensor | None, eps: float, group_size: int, norm_before_gate: bool
) -> Tensor:
    """Same contract as `core.ops.gated_rms_norm`."""
    from core.ops.gated_rms_norm import torch_gated_rms_norm
    from kernels.layers import MAX_GROUP, gated_rms_norm

    if x.dtype == torch.float64 or group_size > MAX_GROUP:
        return torch_gated_rms_norm(x, weight, z, eps, group_size, norm_before_gate)
    return gated_rms_norm(x, weight, z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
