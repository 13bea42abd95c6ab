"""Mamba-2 (SSD): a selective state space layer whose scan is a linear recurrence with a scalar decay per head."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import GatedRMSNorm, ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_positive_int
from core.mixers._common import check_state, gate_dtype, init_dt_bias, recur, split_heads
from core.registry import register_mixer
from core.state import RecurrentState


@register_mixer(
    "mamba2",
    paper="Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space "
    "Duality (Dao & Gu, 2024)",
)
class Mamba2(Mixer):
    """Mamba-2 layer over x: (B, T, d_model) -> (B, T, d_model).

    [z, x, B, C, dt] = in_proj(u); [x, B, C] = SiLU(conv4([x, B, C])); dt = softplus(dt + dt_bias);
    per head h (group gr(h) of B and C): S_t = exp(dt_t A_h) S_{t-1} + B_t (dt_t x_t)^T,
    y_t = S_t^T C_t + D_h x_t; out = out_proj(GatedRMSNorm(y, z)) with the gate applied before the norm.

    Args:
        d_state: N, state size per head (width of B and C).
        d_conv: width of the causal depthwise convolution over [x, B, C].
        expand: d_inner = expand * d_model.
        head_dim: P, channels of d_inner per head (num_heads = d_inner // P); None = the largest divisor
            of d_inner up to 64.
        n_groups: G, groups of heads sharing B and C (like grouped-query attention); divides num_heads.
        A_init_range: A_h = -exp(A_log_h) starts uniform in -A_init_range.
        dt_min, dt_max, dt_init_floor: dt starts log-uniform in [dt_min, dt_max], at least dt_init_floor.
        dt_limit: clamp of dt after the softplus; (0, inf) = no clamp.
        conv_bias: bias in the convolution.
        bias: biases in in_proj and out_proj.
        norm_eps: epsilon of the gated RMSNorm (group size d_inner / n_groups).
        impl: op implementation passed to `core.ops.linear_recurrence` ("naive", "chunk", None = auto).

    State: `RecurrentState(recurrent (B, H, N, P) float32, conv (B, d_conv - 1, d_inner + 2 G N))`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: float = 2.0,
        head_dim: int | None = None,
        n_groups: int = 1,
        A_init_range: Sequence[float] = (1.0, 16.0),
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: Sequence[float] = (0.0, math.inf),
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        d_inner = expand * d_model
        if d_inner != int(d_inner) or d_inner < 1:
            raise ValueError(f"mamba2: expand * d_model = {expand} * {d_model} must be a positive whole number")
        d_inner = int(d_inner)
        num_heads, head_dim = split_heads("mamba2", d_inner, head_dim, what="d_inner = expand * d_model")
        for option, value in (("d_state", d_state), ("d_conv", d_conv), ("n_groups", n_groups)):
            check_positive_int("mamba2", option, value)
        if num_heads % n_groups:
            raise ValueError(
                f"mamba2: n_groups={n_groups} must divide num_heads={num_heads} "
                f"(d_inner={d_inner}, head_dim={head_dim})"
            )
        if len(A_init_range) != 2 or not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"mamba2: A_init_range must be (low, high) with 0 < low <= high, got {A_init_range!r}")
        if not 0 < dt_min <= dt_max or dt_init_floor <= 0:
            raise ValueError(
                f"mamba2: need 0 < dt_min <= dt_max and dt_init_floor > 0, got {dt_min}, {dt_max}, {dt_init_floor}"
            )
        if len(dt_limit) != 2 or not 0 <= dt_limit[0] < dt_limit[1]:
            raise ValueError(f"mamba2: dt_limit must be (low, high) with 0 <= low < high, got {dt_limit!r}")
        self.d_inner, self.d_state, self.n_groups = d_inner, d_state, n_groups
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dt_limit, self.impl = (float(dt_limit[0]), float(dt_limit[1])), impl
        self.conv_dim = d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + self.conv_dim + num_heads, bias=bias)
        self.conv = ShortConv(self.conv_dim, d_conv, bias=conv_bias, activation="silu")
        self.dt_bias = nn.Parameter(init_dt_bias(num_heads, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(num_heads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(d_inner, eps=norm_eps, norm_before_gate=False, group_size=d_inner // n_groups)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, num_heads={self.num_heads}, "
            f"head_dim={self.head_dim}, n_groups={self.n_groups}"
        )

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("mamba2", state, RecurrentState)
        H, G, N = self.num_heads, self.n_groups, self.d_state
        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, H], dim=-1)
        xbc, conv = self.conv(xbc, None if state is None else state.conv, mask)
        xs, b, c = xbc.split([self.d_inner, G * N, G * N], dim=-1)
        xs = xs.unflatten(-1, (H, self.head_dim))  # [B, T, H, P]
        b, c = (t.unflatten(-1, (G, N)).repeat_interleave(H // G, dim=2) for t in (b, c))  # [B, T, H, N]
        dtype = gate_dtype(x)
        dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))  # [B, T, H]
        if self.dt_limit != (0.0, math.inf):
            dt = dt.clamp(*self.dt_limit)
        g = dt * -self.A_log.to(dtype).exp()
        v = (xs * dt.unsqueeze(-1)).to(xs.dtype)  # the projections' dtype (bf16 under autocast), like b and c
        o, recurrent = recur(c, b, v, g, None if state is None else state.recurrent, mask, scale=1.0, impl=self.impl)
        y = o + xs * self.D.unsqueeze(-1).to(xs.dtype)
        return self.out_proj(self.norm(y.flatten(-2), z)), RecurrentState(recurrent, conv)
