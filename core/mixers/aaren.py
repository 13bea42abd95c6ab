"""Aaren: attention with a learned query per head, run as a many-to-many RNN (Feng et al., 2024)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._common import check_state, split_heads
from core.ops.prefix_attention import PrefixAttentionState, prefix_attention
from core.registry import register_mixer


@register_mixer("aaren", paper="Attention as an RNN (Feng et al., 2024)")
class Aaren(Mixer):
    """Aaren over x: (B, T, d_model) -> (B, T, d_model) (spec 9).

    Per head h with a learned query q_h (not computed from x): s_t = q_h . (W_k x_t) * scale,
    o_t = sum_{i<=t} softmax(s_1..s_t)_i W_v x_i, i.e. softmax attention of q_h over every prefix;
    y = W_out o. Parallel form: a cumulative logsumexp and a chunked linear recurrence; streaming
    keeps the softmax statistics (m, u, w) per head, O(1) memory (`core.ops.prefix_attention`).

    Args:
        head_dim: channels per head (num_heads = d_model // head_dim); None = the largest divisor of
            d_model up to 64.
        scale: score scale; None = head_dim ** -0.5 (the paper's scale is not confirmed).
        bias: biases in the key, value and output projections.
        impl: op implementation ("naive" = the streaming loop, "chunk", None = auto).

    Padded tokens are absent (score -inf). State: `PrefixAttentionState` (m (B, H), u (B, H), w (B, H, head_dim)).
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        scale: float | None = None,
        bias: bool = False,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        self.num_heads, self.head_dim = split_heads("aaren", d_model, head_dim)
        self.scale = self.head_dim**-0.5 if scale is None else scale
        self.impl = impl
        self.query = nn.Parameter(torch.randn(self.num_heads, self.head_dim))
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}"

    def mix(
        self, x: Tensor, state: PrefixAttentionState | None, mask: Tensor | None
    ) -> tuple[Tensor, PrefixAttentionState]:
        check_state("aaren", state, PrefixAttentionState)
        heads = (self.num_heads, self.head_dim)
        k, v = self.k_proj(x).unflatten(-1, heads), self.v_proj(x).unflatten(-1, heads)
        s = (k * self.query).sum(-1) * self.scale  # [B, T, H]
        if mask is not None:
            s = s.masked_fill(~mask[..., None], -torch.inf)
        o, state = prefix_attention(s, v, initial_state=state, output_final_state=True, impl=self.impl)
        return self.out_proj(o.flatten(-2)), state
