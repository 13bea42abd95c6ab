"""Registers the Triton kernels (`kernels.linear_recurrence`) as implementation "triton" of the op.

Used on CUDA devices when Triton is installed. `kernels` (and so Triton) is imported on first use,
never when `core` is imported. bfloat16 and float16 inputs go to the kernels, with g of shape
(B, T, H) (one decay per head: Simple GLA, RetNet, Mamba-2, and zeros for no decay) or (B, T, H, K)
(one per key channel: GLA, through the sub-chunked kernels of kernels/linear_recurrence/vector_decay.py).
Inputs the kernels do not take (float64, head dims above 256) go to the PyTorch chunk form instead,
so impl=None never fails for them; so do float32 inputs: the kernels take them (exact fp32 dots on CUDA cores), but the backward kernel then compiles for many minutes at head dims above 64, while the
chunk form runs float32 matmuls through cuBLAS.
"""

import importlib.util

import torch
from torch import Tensor

from core.ops.dispatch import register
from core.ops.linear_recurrence.chunk import chunk_linear_recurrence


def triton_available(device: torch.device) -> bool:
    """`supports` test: a CUDA device and an importable Triton."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


@register("linear_recurrence", "triton", priority=2, supports=triton_available)
def triton_linear_recurrence(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, T, H, K]
    v: Tensor,  # [B, T, H, V]
    g: Tensor,  # [B, T, H] or [B, T, H, K], log decay
    scale: float,
    initial_state: Tensor | None,  # [B, H, K, V]
    output_final_state: bool,
) -> tuple[Tensor, Tensor | None]:
    """Same contract as `chunk_linear_recurrence`; delegates to it for inputs the kernels do not take."""
    from kernels.linear_recurrence import chunk_linear_recurrence as kernel, supports

    if not supports(q, v, g) or q.dtype == torch.float32:
        return chunk_linear_recurrence(q, k, v, g, scale, initial_state, output_final_state)
    return kernel(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
