"""Fused kernels for the layers around the mixers' recurrences: the short causal convolution (with SiLU) and the
gated RMSNorm, each one kernel forward and one backward where PyTorch runs a dozen elementwise ones."""

from kernels.layers.causal_conv import causal_conv
from kernels.layers.rms_norm import MAX_GROUP, gated_rms_norm

__all__ = ["MAX_GROUP", "causal_conv", "gated_rms_norm"]
