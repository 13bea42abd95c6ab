"""Hawk's recurrent block: a gated MLP-like branch around the Real-Gated Linear Recurrent Unit (RG-LRU, spec 7.1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_positive_int
from core.mixers._common import check_state, gate_dtype, split_heads
from core.mixers._headwise import HeadwiseLinear
from core.mixers._scan import scan
from core.registry import register_mixer
from core.state import RecurrentState

MAX_SQRT_GRADIENT = 1000.0


@register_mixer(
    "rglru",
    paper="Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language Models (De et al., 2024)",
)
class RGLRU(Mixer):
    """Recurrent block over x: (B, T, d_model) -> (B, T, d_model):

        y = GeLU_tanh(W_y x);  u = Conv1D(W_x x);  out = W_out(RG-LRU(u) * y)
        RG-LRU:  r_t = sigmoid(W_a u_t + b_a),  i_t = sigmoid(W_i u_t + b_i),
                 log a_t = -c r_t softplus(Lambda),  h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t u_t)

    W_a and W_i are block-diagonal. At the first token of a sequence (state=None: the first valid
    token of each row) the input is not scaled by sqrt(1 - a^2), as in recurrentgemma.

    Args:
        lru_width: channels of the recurrence; None = d_model.
        head_dim: width of each diagonal block of W_a and W_i; None = the largest divisor of lru_width up to 64.
        d_conv: width of the causal depthwise convolution (with bias, no activation).
        c: the constant scaling the log decay (8 in the paper).
        min_rad, max_rad: a = exp(-softplus(Lambda)) starts with a^2 uniform in [min_rad^2, max_rad^2].
        bias: biases in W_y, W_x and W_out.
        impl: op implementation passed to `core.ops.linear_scan` ("naive", "chunk", None = auto).

    Lambda is marked `_no_weight_decay`; the sqrt's gradient is bounded by MAX_SQRT_GRADIENT.
    State: `RecurrentState(recurrent (B, lru_width) float32, conv (B, d_conv - 1, lru_width))`.
    """

    def __init__(
        self,
        d_model: int,
        lru_width: int | None = None,
        head_dim: int | None = None,
        d_conv: int = 4,
        c: float = 8.0,
        min_rad: float = 0.9,
        max_rad: float = 0.999,
        bias: bool = True,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        width = d_model if lru_width is None else lru_width
        check_positive_int("rglru", "lru_width", width)
        check_positive_int("rglru", "d_conv", d_conv)
        num_blocks, head_dim = split_heads("rglru", width, head_dim, what="lru_width")
        if not 0 < min_rad <= max_rad < 1:
            raise ValueError(f"rglru: need 0 < min_rad <= max_rad < 1, got {min_rad}, {max_rad}")
        if c <= 0:
            raise ValueError(f"rglru: c must be > 0, got {c}")
        self.lru_width, self.c, self.impl = width, c, impl
        self.linear_y = nn.Linear(d_model, width, bias=bias)
        self.linear_x = nn.Linear(d_model, width, bias=bias)
        self.conv = ShortConv(width, d_conv, bias=True, activation=None)
        self.gate_a = HeadwiseLinear(width, num_blocks, bias=True)
        self.gate_x = HeadwiseLinear(width, num_blocks, bias=True)
        for gate in (self.gate_a, self.gate_x):
            nn.init.normal_(gate.weight, std=head_dim**-0.5)
        a_square = torch.empty(width).uniform_(min_rad**2, max_rad**2)
        self.a_param = nn.Parameter(torch.log(a_square.rsqrt() - 1))  # softplus(Lambda) = -log(a)
        self.a_param._no_weight_decay = True
        self.linear_out = nn.Linear(width, d_model, bias=bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, lru_width={self.lru_width}, blocks={self.gate_a.num_blocks}"

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("rglru", state, RecurrentState)
        y = F.gelu(self.linear_y(x), approximate="tanh")
        u, conv = self.conv(self.linear_x(x), None if state is None else state.conv, mask)
        dtype = gate_dtype(x)
        log_a = -self.c * torch.sigmoid(self.gate_a(u).to(dtype)) * F.softplus(self.a_param.to(dtype))
        multiplier = sqrt_bounded_derivative(-torch.expm1(2 * log_a))  # sqrt(1 - a^2)
        if state is None:  # a sequence starts here: its first input is not normalised
            valid = torch.ones_like(x[..., 0], dtype=torch.bool) if mask is None else mask
            first = valid & (valid.cumsum(1) == 1)
            multiplier = multiplier.masked_fill(first[..., None], 1.0)
        b = torch.sigmoid(self.gate_x(u).to(dtype)) * u.to(dtype) * multiplier
        h, recurrent = scan(log_a.exp(), b, None if state is None else state.recurrent, mask, impl=self.impl)
        return self.linear_out(h.to(x.dtype) * y), RecurrentState(recurrent, conv)


class _SqrtBoundedDerivative(torch.autograd.Function):
    """sqrt(x) whose gradient is clipped to MAX_SQRT_GRADIENT where x is near 0 (recurrentgemma)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.sqrt()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad / (4 * x).clamp_min(MAX_SQRT_GRADIENT**-2).sqrt()


def sqrt_bounded_derivative(x: Tensor) -> Tensor:
    return _SqrtBoundedDerivative.apply(x)
