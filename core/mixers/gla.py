"""Gated linear attention: a data-dependent decay per key channel from a low-rank gate."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._common import GatedHeadOutput, HeadProjection, check_state, gate_dtype, recur, scaled_dim, split_heads
from core.registry import register_mixer
from core.state import RecurrentState


@register_mixer(
    "gla",
    paper="Gated Linear Attention Transformers with Hardware-Efficient Training (Yang et al., 2024)",
)
class GatedLinearAttention(Mixer):
    """S_t = Diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t / sqrt(K), with
    g_t = logsigmoid(W2 W1 x_t + b) / gate_logit_normalizer, per head and key channel;
    y = out_proj(RMSNorm_h(o) * w * SiLU(W_g x)); x: (B, T, d_model).

    Args:
        head_dim: d_model channels per head (num_heads = d_model // head_dim); None = the largest divisor
            of d_model up to 64.
        expand_k: key width per head = head_dim * expand_k (the paper uses 0.5).
        expand_v: value width per head = head_dim * expand_v.
        gate_low_rank_dim: rank of the decay projection W2 W1.
        gate_logit_normalizer: tau in logsigmoid(.) / tau; larger = slower forgetting.
        gate_clamp_min: optional lower bound on the log-decay g (None = no clamp).
        norm_eps: epsilon of the per-head RMSNorm.
        impl: op implementation passed to `core.ops.linear_recurrence` ("naive", "chunk", None = auto).

    State: `RecurrentState(recurrent (B, H, K, V) float32, conv=None)`.
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        gate_clamp_min: float | None = None,
        norm_eps: float = 1e-5,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        num_heads, head_dim = split_heads("gla", d_model, head_dim)
        key_dim = scaled_dim("gla", "expand_k", head_dim, expand_k)
        value_dim = scaled_dim("gla", "expand_v", head_dim, expand_v)
        if not isinstance(gate_low_rank_dim, int) or gate_low_rank_dim < 1:
            raise ValueError(f"gla: gate_low_rank_dim must be a positive int, got {gate_low_rank_dim!r}")
        if gate_logit_normalizer <= 0:
            raise ValueError(f"gla: gate_logit_normalizer must be > 0, got {gate_logit_normalizer}")
        if gate_clamp_min is not None and gate_clamp_min >= 0:
            raise ValueError(f"gla: gate_clamp_min bounds a log-decay and must be < 0, got {gate_clamp_min}")
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.gate_logit_normalizer, self.gate_clamp_min, self.impl = gate_logit_normalizer, gate_clamp_min, impl
        self.proj = HeadProjection(d_model, num_heads, [key_dim, key_dim, value_dim, value_dim])
        self.gk_proj = nn.Sequential(
            nn.Linear(d_model, gate_low_rank_dim, bias=False),
            nn.Linear(gate_low_rank_dim, num_heads * key_dim, bias=True),
        )
        self.output = GatedHeadOutput(num_heads, value_dim, d_model, eps=norm_eps)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, key_dim={self.key_dim}, value_dim={self.value_dim}"

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("gla", state, RecurrentState)
        q, k, v, gate = self.proj(x)
        g = F.logsigmoid(self.gk_proj(x).to(gate_dtype(x))) / self.gate_logit_normalizer
        if self.gate_clamp_min is not None:
            g = g.clamp_min(self.gate_clamp_min)
        g = g.unflatten(-1, (self.num_heads, self.key_dim))
        o, recurrent = recur(q, k, v, g, None if state is None else state.recurrent, mask, impl=self.impl)
        return self.output(o, gate), RecurrentState(recurrent)
