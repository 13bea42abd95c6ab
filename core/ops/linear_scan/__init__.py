"""Elementwise linear recurrence h_t = a_t * h_{t-1} + b_t (LRU, RG-LRU, HGRN, minGRU, Mamba-1); see README.md.

Implementations register under the op names "linear_scan" and "log_linear_scan"
(`core.ops.dispatch.register`) and take normalised arguments `(a, b, initial_state)`: tensors in
the compute dtype, a zero state when none was given. They return h (B, T, D) in the compute dtype.
"""

import torch
from torch import Tensor

from core.ops.checks import check_device, check_float, check_float_or_complex, check_mask, check_shape
from core.ops.dispatch import resolve
from core.ops.linear_scan import chunk, naive  # noqa: F401  (they register themselves)

__all__ = ["linear_scan", "log_linear_scan", "mask_scan_padding"]


def linear_scan(
    a: Tensor,
    b: Tensor,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    impl: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """h_t = a_t * h_{t-1} + b_t elementwise, h_0 = initial_state (zeros by default).

    a, b: (B, T, D), real or complex (complex tensors for LRU's rotating decay; a real a with a
    complex b is fine). initial_state: (B, D). impl: "naive", "chunk", ... or None for the best one
    on the inputs' device.
    Returns h (B, T, D) in the promoted dtype of a and b and, if output_final_state, h_T (B, D) in
    float32 / complex64 (float64 / complex128 for double inputs), else None.
    """
    _check_pair("a", a, "b", b)
    if initial_state is not None:
        check_float_or_complex("initial_state", initial_state)
    return _run("linear_scan", impl, a, b, initial_state, output_final_state)


def log_linear_scan(
    log_a: Tensor,
    log_b: Tensor,
    *,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    impl: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """h_t = exp(log_a_t) * h_{t-1} + exp(log_b_t), from logs of a positive decay and input (minGRU).

    log_a, log_b: (B, T, D) real; log_b = -inf means b = 0. initial_state: (B, D) real, in linear
    space (not a log). The "chunk" implementation works in log space (spec 7.3), "naive" is the
    token loop on exp(log_a), exp(log_b). Returns h (B, T, D) in the inputs' dtype and the optional
    final state as `linear_scan` does.
    """
    _check_pair("log_a", log_a, "log_b", log_b)
    for name, x in (("log_a", log_a), ("log_b", log_b), ("initial_state", initial_state)):
        if x is not None:
            check_float(name, x)
    return _run("log_linear_scan", impl, log_a, log_b, initial_state, output_final_state)


def mask_scan_padding(a: Tensor, b: Tensor, mask: Tensor, *, log_space: bool = False) -> tuple[Tensor, Tensor]:
    """Make padded tokens (mask (B, T) False) leave the state unchanged: a = 1 and b = 0 there.

    a, b: (B, T, D); with log_space, they are log_a, log_b and get 0 and -inf.
    """
    check_mask(mask, *a.shape[:2])
    pad = ~mask[:, :, None]
    return a.masked_fill(pad, 0.0 if log_space else 1.0), b.masked_fill(pad, -torch.inf if log_space else 0.0)


def _check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Two per-token inputs of one shape (B, T, D) with T >= 1, on one device."""
    check_float_or_complex(name_a, a)
    check_float_or_complex(name_b, b)
    check_shape(name_a, a, (None, None, None), "(B, T, D)", "Flatten the channel dims into one: x.flatten(2).")
    check_shape(name_b, b, tuple(a.shape), f"(B, T, D) as {name_a}")
    if a.shape[1] == 0:
        raise ValueError(f"the sequence length T of {name_a} and {name_b} is 0; pass at least one token")
    check_device(name_b, b, a.device)


def _run(
    op: str, impl: str | None, a: Tensor, b: Tensor, initial_state: Tensor | None, output_final_state: bool
) -> tuple[Tensor, Tensor | None]:
    """Validate the state, cast to the compute dtype, dispatch; returns (h, final state or None)."""
    B, _, D = a.shape
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    dtype = torch.promote_types(out_dtype, torch.float32)  # float32 / complex64 at least
    if initial_state is not None:
        check_shape("initial_state", initial_state, (B, D), "(B, D)", "One state per sequence and channel.")
        check_device("initial_state", initial_state, a.device)
        if initial_state.is_complex() and not dtype.is_complex:
            raise TypeError(f"initial_state is complex ({initial_state.dtype}) but a and b are real; pass a real state")
    fn = resolve(op, impl, a.device)
    h0 = a.new_zeros(B, D, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    h = fn(a.to(dtype), b.to(dtype), h0)
    return h.to(out_dtype), (h[:, -1].clone() if output_final_state else None)  # a copy: h can be freed
