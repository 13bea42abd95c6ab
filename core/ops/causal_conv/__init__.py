"""Depthwise causal 1-D convolution over time (the short convolution of Mamba, DeltaNet, mLSTM... and the dilated
convolutions), with an optional SiLU: implementations "torch" (shifted sums, every device) and "triton" (one fused
kernel each way, CUDA)."""

from torch import Tensor

from core.ops.causal_conv import triton  # noqa: F401  (registers the Triton kernel, imported lazily on CUDA)
from core.ops.causal_conv.shifted import ACTIVATIONS
from core.ops.checks import check_device, check_float, check_shape
from core.ops.dispatch import resolve

__all__ = ["causal_conv"]


def causal_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    state: Tensor | None = None,
    *,
    activation: str | None = None,
    dilation: int = 1,
    impl: str | None = None,
) -> Tensor:
    """y_t = act(sum_j weight[j] * full[t + j * dilation] + bias) over full = cat(state, x) along time.

    x: (B, T, C); weight: (K, C), tap K - 1 on the newest input; bias: (C,) or None; state: the
    (K - 1) * dilation inputs before x, (B, (K - 1) * dilation, C), or None for zeros; activation: None or
    "silu"; impl: "torch", "triton" or None for the best one on x's device. Returns y (B, T, C) in x's dtype.
    """
    check_float("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, T, C), got {x.dim()}-D shape {tuple(x.shape)}")
    B, T, C = x.shape
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS, key=str)}, got {activation!r}")
    if dilation < 1:
        raise ValueError(f"dilation must be a positive integer, got {dilation}")
    check_shape("weight", weight, (None, C), "(K, C)")
    for name, t, shape, layout in (("bias", bias, (C,), "(C,)"), ("state", state, (B, (weight.shape[0] - 1) * dilation, C), "(B, (K - 1) * dilation, C)")):
        if t is not None:
            check_shape(name, t, shape, layout)
            check_device(name, t, x.device)
    check_device("weight", weight, x.device)
    return resolve("causal_conv", impl, x.device)(x, weight, bias, state, activation, dilation)
