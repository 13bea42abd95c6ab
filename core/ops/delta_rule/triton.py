"""Registers the Triton kernels (`kernels.delta_rule`) as implementation "triton" of the op.

Used on CUDA devices when Triton is installed. `kernels` (and so Triton) is imported on first use,
never when `core` is imported. Inputs the kernels do not take (float64, head dims above 256) go to
the PyTorch chunk form instead, so impl=None never fails for them; so do float32 inputs, for the
reason given in `core/ops/linear_recurrence/triton.py` (exact-fp32 kernels compile for minutes;
cuBLAS runs the chunk form's float32 matmuls well). bfloat16 and float16 go to the kernels.
"""

import torch
from torch import Tensor

from core.ops.delta_rule.chunk import chunk_delta_rule
from core.ops.dispatch import register
from core.ops.linear_recurrence.triton import triton_available


@register("delta_rule", "triton", priority=2, supports=triton_available)
def triton_delta_rule(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    beta: Tensor,  # [B, T, H]
    g: Tensor,  # [B, T, H], log decay
    scale: float,
    initial_state: Tensor | None,  # [B, H, K, V]
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """Same contract as `chunk_delta_rule`; delegates to it for inputs the kernels do not take."""
    from kernels.delta_rule import chunk_delta_rule as kernel, supports

    if not supports(q, v) or q.dtype == torch.float32:
        return chunk_delta_rule(q, k, v, beta, g, scale, initial_state, output_final_state)
    return kernel(q, k, v, beta, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
