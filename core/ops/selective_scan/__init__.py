"""Mamba-1 selective scan (spec section 4) in the layout of mamba's `selective_scan_fn`; see README.md.

Implementations register under the op name "selective_scan" (`core.ops.dispatch.register`) and
take normalised arguments `(u, delta, A, B, C, initial_state)` in the compute dtype: delta after
its bias and softplus, B and C grouped (b, G, N, T), a zero state when none was given. They return
`(y, final_state)`: the scan's output without the D skip and the z gate, and h_T.
"""

import torch.nn.functional as F
from torch import Tensor

from core.ops.checks import check_device, check_float, check_shape, check_state, state_dtype
from core.ops.dispatch import resolve
from core.ops.selective_scan import chunk, naive  # noqa: F401  (they register themselves)

__all__ = ["selective_scan"]


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    *,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    impl: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Per channel d and state index n (spec 4.1):

        delta <- softplus(delta + delta_bias) (each step only if asked)
        h_t[d, n] = exp(delta_t[d] A[d, n]) h_{t-1}[d, n] + delta_t[d] u_t[d] B_t[n]
        y_t[d] = sum_n C_t[n] h_t[d, n] + D[d] u_t[d],   then y <- y * SiLU(z)

    u, delta: (batch, channels, T); A: (channels, N), negative for a decay; B, C: (batch, N, T),
    shared by all channels, or (batch, G, N, T) with group g serving channels g*channels/G onwards;
    D: (channels,) or None; z: (batch, channels, T) or None; delta_bias: (channels,) or None.
    initial_state: (batch, channels, N). impl: "naive", "chunk", ... or None for the best one on
    the inputs' device.
    Returns y (batch, channels, T) in u's dtype and, if output_final_state, h_T (batch, channels, N)
    in float32 (float64 for float64 inputs), else None. A padded token with delta = 0 (after the
    softplus) leaves the state unchanged.
    """
    b, channels, T, N, G = _check_inputs(u, delta, A, B, C)
    for name, x, shape, layout in (("D", D, (channels,), "(channels,)"), ("z", z, (b, channels, T), "(batch, channels, T)"),
                                   ("delta_bias", delta_bias, (channels,), "(channels,)")):
        if x is not None:
            check_float(name, x)
            check_shape(name, x, shape, layout)
            check_device(name, x, u.device)
    check_state("initial_state", initial_state, (b, channels, N), "(batch, channels, N)", u.device)
    fn = resolve("selective_scan", impl, u.device)
    dtype = state_dtype(u.dtype)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = (x.to(dtype) if x.dim() == 4 else x.to(dtype)[:, None] for x in (B, C))
    h0 = u.new_zeros(b, channels, N, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    y, final_state = fn(u.to(dtype), delta, A.to(dtype), B, C, h0)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype), (final_state if output_final_state else None)


def _check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[int, int, int, int, int]:
    """The required inputs; returns (batch, channels, T, N, G)."""
    for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        check_float(name, x)
    check_shape("u", u, (None, None, None), "(batch, channels, T)", "Mamba's layout puts time last: x.transpose(1, 2).")
    b, channels, T = u.shape
    if T == 0:
        raise ValueError("the sequence length T of u is 0; pass at least one token")
    check_shape("delta", delta, (b, channels, T), "(batch, channels, T) as u")
    check_shape("A", A, (channels, None), "(channels, N)", "One row of state decays per channel of u.")
    N = A.shape[1]
    fix = "B and C are input-dependent: (batch, N, T) or (batch, G, N, T)."
    for name, x in (("B", B), ("C", C)):
        if x.dim() == 3:
            check_shape(name, x, (b, N, T), "(batch, N, T)", fix)
        else:
            check_shape(name, x, (b, None, N, T), "(batch, G, N, T)", fix)
    G = B.shape[1] if B.dim() == 4 else 1
    if (C.shape[1] if C.dim() == 4 else 1) != G:
        raise ValueError(f"B and C must have the same number of groups, got B {tuple(B.shape)} and C {tuple(C.shape)}")
    if channels % G:
        raise ValueError(f"the {G} groups of B and C must divide the {channels} channels of u")
    for name, x in (("delta", delta), ("A", A), ("B", B), ("C", C)):
        check_device(name, x, u.device)
    return b, channels, T, N, G
