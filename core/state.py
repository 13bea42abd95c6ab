"""Typed states shared by mixers (each mixer may also define its own)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class RecurrentState:
    """State of a mixer built on a matrix recurrence.

    recurrent: (B, H, K, V) float32 matrix memory.
    conv: (B, kernel_size - 1, C) last inputs of the short causal convolution, or None without one.
    """

    recurrent: Tensor
    conv: Tensor | None = None
