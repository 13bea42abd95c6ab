"""Linear attention: softmax replaced by a feature map phi, so attention becomes a running sum of phi(k) v^T."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.mixer import Mixer
from core.mixers._common import HeadProjection, check_state, gate_dtype, recur, split_heads
from core.registry import register_mixer
from core.state import RecurrentState


def taylor(x: Tensor) -> Tensor:
    """BASED's 2nd-order Taylor map of exp: (..., F) -> (..., 1 + F + F^2).

    phi(q).phi(k) = 1 + q.k / sqrt(F) + (q.k)^2 / (2F), the expansion of exp(q.k / sqrt(F)).
    """
    x = x * x.shape[-1] ** -0.25
    square = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / math.sqrt(2)
    return torch.cat([torch.ones_like(x[..., :1]), x, square], dim=-1)


def elu1(x: Tensor) -> Tensor:
    """elu(x) + 1 > 0 (Katharopoulos et al.)."""
    return F.elu(x) + 1


def identity(x: Tensor) -> Tensor:
    """No feature map."""
    return x


FEATURE_MAPS = {"identity": identity, "elu1": elu1, "taylor": taylor}
POSITIVE_MAPS = ("elu1", "taylor")


@register_mixer(
    "linear_attention",
    paper="Transformers are RNNs (Katharopoulos et al., 2020); "
    "Simple linear attention language models balance the recall-throughput tradeoff (BASED, Arora et al., 2024)",
)
class LinearAttention(Mixer):
    """y = out_proj(sum_{j<=t} (phi(q_t).phi(k_j)) v_j [/ sum_{j<=t} phi(q_t).phi(k_j)]) over x: (B, T, d_model).

    Args:
        head_dim: value channels per head (num_heads = d_model // head_dim); None = the largest divisor
            of d_model up to 64.
        feature_map: "elu1" (elu + 1), "taylor" (BASED's [1, x, x(x)x / sqrt 2]) or "identity".
        feature_dim: per-head width of q and k before the feature map; None = head_dim, or 16 for "taylor"
            (whose map gives 1 + F + F^2 features).
        normalize: divide by the running sum phi(q_t).sum_j phi(k_j); needs a positive map ("elu1",
            "taylor"). The sum rides the op as an extra ones-column of v, so it lives in the state.
        eps: added to the normaliser.
        impl: op implementation passed to `core.ops.linear_recurrence` ("naive", "chunk", None = auto).

    State: `RecurrentState(recurrent (B, H, K, V [+1 with normalize]) float32, conv=None)`, where K is the
    feature-mapped key width.
    """

    def __init__(
        self,
        d_model: int,
        head_dim: int | None = None,
        feature_map: str = "elu1",
        feature_dim: int | None = None,
        normalize: bool = True,
        eps: float = 1e-6,
        impl: str | None = None,
    ) -> None:
        super().__init__(d_model)
        num_heads, head_dim = split_heads("linear_attention", d_model, head_dim)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"linear_attention: unknown feature_map {feature_map!r}; choose one of {sorted(FEATURE_MAPS)}"
            )
        if normalize and feature_map not in POSITIVE_MAPS:
            raise ValueError(
                f"linear_attention: normalize=True needs a positive feature map {POSITIVE_MAPS}, "
                f"got {feature_map!r}; its normaliser could be zero. Set normalize=False or change feature_map"
            )
        if feature_dim is None:
            feature_dim = 16 if feature_map == "taylor" else head_dim
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"linear_attention: feature_dim must be a positive int, got {feature_dim!r}")
        self.num_heads, self.head_dim, self.feature_dim = num_heads, head_dim, feature_dim
        self.feature_map, self.normalize, self.eps, self.impl = feature_map, normalize, eps, impl
        self.phi = FEATURE_MAPS[feature_map]
        self.proj = HeadProjection(d_model, num_heads, [feature_dim, feature_dim, head_dim])
        self.out_proj = nn.Linear(num_heads * head_dim, d_model, bias=False)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
            f"feature_map={self.feature_map}, feature_dim={self.feature_dim}, normalize={self.normalize}"
        )

    def mix(self, x: Tensor, state: RecurrentState | None, mask: Tensor | None) -> tuple[Tensor, RecurrentState]:
        check_state("linear_attention", state, RecurrentState)
        q, k, v = self.proj(x)
        q, k = self.phi(q), self.phi(k)
        if self.normalize:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        # the Taylor map carries its own 1/sqrt(F) temperature; a normaliser cancels any scale
        scale = 1.0 if self.feature_map == "taylor" or self.normalize else None
        initial = None if state is None else state.recurrent
        o, recurrent = recur(q, k, v, None, initial, mask, scale=scale, impl=self.impl)
        if self.normalize:
            num, den = o.to(gate_dtype(o)).split([o.shape[-1] - 1, 1], dim=-1)
            o = (num / (den + self.eps)).to(o.dtype)
        return self.out_proj(o.flatten(-2)), RecurrentState(recurrent)
