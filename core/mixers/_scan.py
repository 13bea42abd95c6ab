"""The elementwise-recurrence call shared by the diagonal RNN mixers (LRU, RG-LRU, HGRN, minGRU, S4D)."""
from __future__ import annotations

from torch import Tensor

from core.ops import linear_scan, log_linear_scan, mask_scan_padding


def scan(
    a: Tensor, b: Tensor, state: Tensor | None, mask: Tensor | None, *, impl: str | None = None, log_space: bool = False
) -> tuple[Tensor, Tensor]:
    """h_t = a_t * h_{t-1} + b_t with padded tokens absent (a = 1, b = 0 there, so the state passes them unchanged).

    a, b: (B, T, D), real or complex; with log_space they are log a and log b of positive values
    (minGRU) and run through `log_linear_scan`. state: (B, D) or None; mask: (B, T) bool or None.
    Returns h (B, T, D) and the final state (B, D) in float32 / complex64 (64-bit for float64 inputs).
    """
    if mask is not None:
        a, b = mask_scan_padding(a, b, mask, log_space=log_space)
    op = log_linear_scan if log_space else linear_scan
    return op(a, b, initial_state=state, output_final_state=True, impl=impl)
