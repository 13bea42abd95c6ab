"""Typed states shared by mixers (each mixer may also define its own)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class RecurrentState:
    """State of a mixer built on one recurrence plus an optional short convolution.

    recurrent: the recurrence's state in float32 (or complex64): (B, H, K, V) for matrix memories,
        (B, D, N) or (B, D) for elementwise ones.
    conv: (B, kernel_size - 1, C) last inputs of the short causal convolution, or None without one.
    """

    recurrent: Tensor
    conv: Tensor | None = None
