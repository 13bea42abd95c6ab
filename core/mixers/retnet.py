"""RetNet multi-scale retention: linear attention with a fixed decay per head and xPos-style rotation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from core.mixer import Mixer
from core.mixers._common import GatedHeadOutput, HeadProjection, check_state, gate_dtype, recur, scaled_dim, split_heads
from core.registry import register_mixer
from core.rotary import apply_rotary


@dataclass
class RetentionState:
    """State of `retnet`.

    recurrent: (B, H, K, V) float32 matrix memory.
    position: (B,) int64, valid tokens seen so far per sequence (the rotation position of the next one).
    """

    recurrent: Tensor
    position: Tensor


def retention_log_decays(
    num_heads: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> Tensor:
    """log gamma_h with gamma_h = 1 - 2^(-5-h), h = 0..num_heads-1: (num_heads,)."""
    h = torch.arange(num_heads, dtype=torch.float64, device=device)
    return torch.log1p(-(2.0 ** (-5 - h))).to(dtype)


@register_mixer(
    "retnet", paper="Retentive Network: A Successor to Transformer for Large Language Models (Sun et al., 2023)"
)
class MultiScaleRetention(Mixer):
    """o_t = sum_{j<=t} gamma_h^(t-j) (R_t q_t . R_j k_j) v_j / sqrt(K) per head, then
    y = out_proj(GroupNorm_h(o) * swish(W_g x)); x: (B, T, d_model).

    Args:
        head_dim: d_model channels per head (num_heads = d_model // head_dim); None = the largest divisor
            of d_model up to 64. Head h decays with gamma_h = 1 - 2^(-5-h).
        expand_k: key width per head = head_dim * expand_k.
        expand_v: value width per head = head_dim * expand_v (the paper uses 2).
        xpos: rotate q and k by their position (RetNet's xPos: the rotation e^{i n theta}, whose decay
            part is gamma); positions count valid tokens only. Needs an even key width.
        rope_base: base of the rotation frequencies.
        norm_eps: epsilon of the per-head group norm (RMS form, with a per-channel weight).
        impl: op implementation passed to `core.ops.linear_recurrence` ("naive", "chunk", None = auto).

    State: `RetentionState(recurrent (B, H, K, V) float32, position (B,) int64)`.
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        expand_k: float = 1.0,
        expand_v: float = 2.0,
        xpos: bool = True,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        num_heads, head_dim = split_heads("retnet", d_model, head_dim)
        key_dim = scaled_dim("retnet", "expand_k", head_dim, expand_k)
        value_dim = scaled_dim("retnet", "expand_v", head_dim, expand_v)
        if xpos and key_dim % 2:
            raise ValueError(f"retnet: xpos rotates channel pairs and needs an even key width, got {key_dim}; "
                             "change head_dim / expand_k or set xpos=False")
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.xpos, self.rope_base, self.impl = xpos, rope_base, impl
        self.proj = HeadProjection(d_model, num_heads, [key_dim, key_dim, value_dim, value_dim])
        self.output = GatedHeadOutput(num_heads, value_dim, d_model, eps=norm_eps)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, key_dim={self.key_dim}, "
            f"value_dim={self.value_dim}, xpos={self.xpos}"
        )

    def decays(self) -> Tensor:
        """gamma_h per head, (H,) float64."""
        return retention_log_decays(self.num_heads).exp()

    def mix(self, x: Tensor, state: RetentionState | None, mask: Tensor | None) -> tuple[Tensor, RetentionState]:
        check_state("retnet", state, RetentionState)
        B, T, _ = x.shape
        q, k, v, gate = self.proj(x)
        start = x.new_zeros(B, dtype=torch.long) if state is None else state.position
        seen = torch.ones(B, T, dtype=torch.long, device=x.device) if mask is None else mask.long()
        seen = seen.cumsum(1)  # [B, T] valid tokens up to and including t
        if self.xpos:
            positions = start[:, None] + seen - 1
            q, k = apply_rotary(q, positions, self.rope_base), apply_rotary(k, positions, self.rope_base)
        g = retention_log_decays(self.num_heads, gate_dtype(x), x.device).expand(B, T, -1)
        o, recurrent = recur(q, k, v, g, None if state is None else state.recurrent, mask, impl=self.impl)
        return self.output(o, gate), RetentionState(recurrent, start + seen[:, -1])
