"""RMSNorm with an optional SiLU gate, normalised in groups (the output norm of Mamba-2, Gated DeltaNet, HGRN...):
implementations "torch" (every device) and "triton" (one fused kernel each way, CUDA)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ops.checks import check_device, check_float, check_shape
from core.ops.dispatch import register, resolve
from core.ops.gated_rms_norm import triton  # noqa: F401  (registers the Triton kernel, imported lazily on CUDA)

__all__ = ["gated_rms_norm"]


def gated_rms_norm(
    x: Tensor,
    weight: Tensor,
    z: Tensor | None = None,
    *,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = True,
    impl: str | None = None,
) -> Tensor:
    """RMSNorm over groups of `group_size` channels of the last dim (None: all of them), in at least float32:

    norm_before_gate=True:  weight * rms(x) * silu(z)   (fla's FusedRMSNormGated)
    norm_before_gate=False: weight * rms(x * silu(z))   (Mamba-2)
    z=None:                 weight * rms(x)
    x, z: (..., D); weight: (D,); impl: "torch", "triton" or None for the best one on x's device.
    Returns (..., D) in x's dtype.
    """
    check_float("x", x)
    D = x.shape[-1]
    group_size = group_size or D
    if D % group_size:
        raise ValueError(f"the last dim of x ({D}) is not divisible by group_size={group_size}")
    check_shape("weight", weight, (D,), "(D,)")
    check_device("weight", weight, x.device)
    if z is not None:
        check_shape("z", z, tuple(x.shape), "the shape of x")
        check_device("z", z, x.device)
    return resolve("gated_rms_norm", impl, x.device)(x, weight, z, eps, group_size, norm_before_gate)


@register("gated_rms_norm", "torch", priority=1)
def torch_gated_rms_norm(
    x: Tensor, weight: Tensor, z: Tensor | None, eps: float, group_size: int, norm_before_gate: bool
) -> Tensor:
    """Same contract as `gated_rms_norm` (arguments checked there)."""
    dtype = x.dtype
    compute = torch.promote_types(dtype, torch.float32)
    x = x.to(compute)
    gate = None if z is None else F.silu(z.to(compute))
    if gate is not None and not norm_before_gate:
        x = x * gate
    groups = x.unflatten(-1, (-1, group_size))
    x = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * weight.to(compute)
    if gate is not None and norm_before_gate:
        x = x * gate
    return x.to(dtype)
