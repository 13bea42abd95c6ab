"""Mamba (Mamba-1): a selective state space layer with a diagonal state per channel (spec section 4)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_positive_int, whole_width
from core.mixers._common import check_state, gate_dtype, init_dt_bias
from core.ops import selective_scan
from core.registry import register_mixer
from core.state import RecurrentState


@register_mixer("mamba", paper="Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Gu & Dao, 2023)")
class Mamba(Mixer):
    """Mamba-1 layer over x: (B, T, d_model) -> (B, T, d_model).

    [x, z] = in_proj(h); x = SiLU(conv(x)); [dt, B, C] = x_proj(x); delta = softplus(dt_proj(dt) + b_dt);
    per channel d and state index n: h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t, y_t = C_t h_t + D x_t;
    out = out_proj(y * SiLU(z)), with A = -exp(A_log).

    Args:
        d_state: N, state size per channel (width of B and C).
        d_conv: width of the causal depthwise convolution over x.
        expand: d_inner = expand * d_model channels.
        dt_rank: rank of the delta projection; None = ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor: delta starts log-uniform in [dt_min, dt_max], at least dt_init_floor.
        dt_scale: dt_proj weights start uniform in +-dt_scale / sqrt(dt_rank).
        conv_bias: bias in the convolution.
        bias: biases in in_proj and out_proj.
        impl: op implementation passed to `core.ops.selective_scan` ("naive", "chunk", None = auto).

    A_log starts at log(1..N) per channel (S4D-real) and D at 1; both, and the delta bias, are marked
    `_no_weight_decay`. State: `RecurrentState(recurrent (B, d_inner, N) float32, conv (B, d_conv - 1, d_inner))`.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2.0,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        d_inner = whole_width("mamba", "expand", d_model, expand)
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        for option, value in (("d_state", d_state), ("d_conv", d_conv), ("dt_rank", dt_rank)):
            check_positive_int("mamba", option, value)
        if not 0 < dt_min <= dt_max or dt_init_floor <= 0:
            raise ValueError(f"mamba: need 0 < dt_min <= dt_max and dt_init_floor > 0, got {dt_min}, {dt_max}, {dt_init_floor}")
        self.d_inner, self.d_state, self.dt_rank, self.impl = d_inner, d_state, dt_rank, impl
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv = ShortConv(d_inner, d_conv, bias=conv_bias, activation="silu")
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=False)
        nn.init.uniform_(self.dt_proj.weight, -dt_scale * dt_rank**-0.5, dt_scale * dt_rank**-0.5)
        self.dt_bias = nn.Parameter(init_dt_bias(d_inner, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.arange(1, d_state + 1, dtype=torch.float32).log().repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}"

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("mamba", state, RecurrentState)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs, conv = self.conv(xs, None if state is None else state.conv, mask)
        dt, b, c = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dtype = gate_dtype(x)
        delta = F.softplus(self.dt_proj(dt).to(dtype) + self.dt_bias.to(dtype))  # [B, T, d_inner]
        if mask is not None:
            delta = delta.masked_fill(~mask[..., None], 0.0)  # delta = 0: the state passes a padded token unchanged
        y, recurrent = selective_scan(
            xs.transpose(1, 2), delta.transpose(1, 2), -self.A_log.to(dtype).exp(), b.transpose(1, 2), c.transpose(1, 2),
            self.D, z.transpose(1, 2), initial_state=None if state is None else state.recurrent,
            output_final_state=True, impl=self.impl,
        )
        return self.out_proj(y.transpose(1, 2)), RecurrentState(recurrent, conv)
