"""HGRN: a gated elementwise linear recurrence with a forget-gate lower bound (fla's real-valued version, spec 7.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.layers import GatedRMSNorm, ShortConv
from core.mixer import Mixer
from core.mixers._checks import check_positive_int, whole_width
from core.mixers._common import check_state, gate_dtype
from core.mixers._scan import scan
from core.registry import register_mixer
from core.state import RecurrentState


@register_mixer("hgrn", paper="Hierarchically Gated Recurrent Neural Network for Sequence Modeling (Qin, Yang & Zhong, 2023)")
class HGRN(Mixer):
    """HGRN layer over x: (B, T, d_model) -> (B, T, d_model), as fla's HGRNAttention:

        lambda_t = lb + (1 - lb) sigmoid(f_t),  h_t = lambda_t h_{t-1} + SiLU(i_t) (1 - lambda_t),
        out = o_proj(RMSNorm(h) * w * SiLU(g)),   [i, f, g] = W x  (i and f optionally through a short conv)

    Args:
        expand: hidden width = expand * d_model.
        lower_bound: lb in [0, 1), the forget gate's floor. The paper learns one per layer, rising with
            depth (softmax over layers, cumsum); here it is a fixed option per layer (0 = fla's layer 0).
        use_short_conv: pass i and f through a causal depthwise convolution (no activation).
        d_conv, conv_bias: the convolution's width and bias.
        norm_eps: epsilon of the gated RMSNorm.
        impl: op implementation passed to `core.ops.linear_scan` ("naive", "chunk", None = auto).

    State: `RecurrentState(recurrent (B, hidden) float32, conv (B, d_conv - 1, 2 hidden) or None)`.
    """

    def __init__(
        self,
        d_model: int,
        expand: float = 1.0,
        lower_bound: float = 0.5,
        use_short_conv: bool = False,
        d_conv: int = 4,
        conv_bias: bool = False,
        norm_eps: float = 1e-5,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        self.hidden = whole_width("hgrn", "expand", d_model, expand)
        check_positive_int("hgrn", "d_conv", d_conv)
        if not 0 <= lower_bound < 1:
            raise ValueError(f"hgrn: lower_bound must be in [0, 1), got {lower_bound}")
        self.lower_bound, self.impl = lower_bound, impl
        self.in_proj = nn.Linear(d_model, 3 * self.hidden, bias=False)
        self.conv = ShortConv(2 * self.hidden, d_conv, bias=conv_bias, activation=None) if use_short_conv else None
        self.norm = GatedRMSNorm(self.hidden, eps=norm_eps, norm_before_gate=True)
        self.out_proj = nn.Linear(self.hidden, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, hidden={self.hidden}, lower_bound={self.lower_bound}, short_conv={self.conv is not None}"

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("hgrn", state, RecurrentState)
        if_, g = self.in_proj(x).split([2 * self.hidden, self.hidden], dim=-1)
        conv = None
        if self.conv is not None:
            if_, conv = self.conv(if_, None if state is None else state.conv, mask)
        i, f = if_.to(gate_dtype(x)).chunk(2, dim=-1)
        lb = self.lower_bound
        a = lb + (1 - lb) * torch.sigmoid(f)
        b = F.silu(i) * (1 - lb) * torch.sigmoid(-f)  # SiLU(i) (1 - lambda)
        h, recurrent = scan(a, b, None if state is None else state.recurrent, mask, impl=self.impl)
        return self.out_proj(self.norm(h.to(x.dtype), g)), RecurrentState(recurrent, conv)
