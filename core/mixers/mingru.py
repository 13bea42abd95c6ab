"""minGRU: a GRU without hidden-state dependence in its gates, gates in log space, trained with a parallel scan (spec 7.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._checks import whole_width
from core.mixers._common import check_state, gate_dtype
from core.mixers._scan import scan
from core.registry import register_mixer
from core.state import RecurrentState


@register_mixer("mingru", paper="Were RNNs All We Needed? (Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, 2024)")
class MinGRU(Mixer):
    """minGRU over x: (B, T, d_model) -> (B, T, d_model):

        z_t = sigmoid(W_z x_t + b_z),  h~_t = g(W_h x_t),  h_t = (1 - z_t) h_{t-1} + z_t h~_t,  out = W_o h

    with g(v) = v + 1/2 for v >= 0 and sigmoid(v) otherwise, so h~ > 0 and the scan runs in log
    space: log(1 - z) = -softplus(k), log z = -softplus(-k), log g(v) = log(v + 1/2) or -softplus(-v).

    Args:
        expand: hidden width = expand * d_model.
        z_bias: initial value of the trainable update-gate bias b_z. The default -1 starts z near 0.27,
            so a step keeps about 73% of the state (a GRU-style forget-bias init); with 0, as in the
            paper's code (no bias), the state halves at every step and a random init forgets within
            a few tokens.
        impl: op implementation passed to `core.ops.log_linear_scan`: "chunk" (the parallel
            scan), "naive" (the sequential mode, same g), None = auto.

    State: `RecurrentState(recurrent (B, expand * d_model) float32)`.
    """

    def __init__(self, d_model: int, expand: float = 1.0, z_bias: float = -1.0, impl: str | None = None) -> None:
        super().__init__(d_model)
        self.hidden = whole_width("mingru", "expand", d_model, expand)
        self.impl = impl
        self.in_proj = nn.Linear(d_model, 2 * self.hidden, bias=False)
        self.z_bias = nn.Parameter(torch.full((self.hidden,), float(z_bias)))
        self.out_proj = nn.Linear(self.hidden, d_model, bias=False)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, hidden={self.hidden}"

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("mingru", state, RecurrentState)
        k, v = self.in_proj(x).to(gate_dtype(x)).chunk(2, dim=-1)
        k = k + self.z_bias.to(k.dtype)
        log_g = torch.where(v >= 0, torch.log(F.relu(v) + 0.5), -F.softplus(-v))
        log_a, log_b = -F.softplus(k), -F.softplus(-k) + log_g
        h, recurrent = scan(log_a, log_b, None if state is None else state.recurrent, mask, impl=self.impl, log_space=True)
        return self.out_proj(h.to(x.dtype)), RecurrentState(recurrent)
