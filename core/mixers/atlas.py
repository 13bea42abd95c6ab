"""ATLAS (Behrouz et al., 2025): a deep memory optimised over a sliding window of past tokens (the Omega
rule) with Muon, over polynomial features of the keys and queries; spec memory_mixers.md, section 3."""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.mixers._checks import check_positive_int
from core.mixers.titans_memory import MemoryMixer, default_head_dim
from core.registry import register_mixer


class PolynomialFeatures(nn.Module):
    """phi(x) = concat_{i=0..degree} sqrt(a_i) x^{(x) i}, monomials packed symmetrically, so that
    phi(q) . phi(k) = sum_i a_i (q . k)^i; a_i = softplus(.) per head, initially 1/i! (Taylor of exp).

    x: (B, T, H, d) -> (B, T, H, feature_dim), feature_dim = sum_i C(d + i - 1, i).
    """

    def __init__(self, num_heads: int, dim: int, degree: int) -> None:
        super().__init__()
        self.degree = degree
        for i in range(1, degree + 1):
            combos = list(itertools.combinations_with_replacement(range(dim), i))
            counts = [math.prod(math.factorial(c.count(j)) for j in set(c)) for c in combos]
            self.register_buffer(f"index_{i}", torch.tensor(combos), persistent=False)
            scale = torch.tensor([math.sqrt(math.factorial(i) / n) for n in counts], dtype=torch.float64)
            self.register_buffer(f"scale_{i}", scale, persistent=False)
        taylor = torch.tensor([1 / math.factorial(i) for i in range(degree + 1)])
        self.raw_coefficients = nn.Parameter(torch.log(torch.expm1(taylor)).repeat(num_heads, 1))  # (H, degree + 1)
        self.feature_dim = sum(math.comb(dim + i - 1, i) for i in range(degree + 1))

    def forward(self, x: Tensor) -> Tensor:
        root = F.softplus(self.raw_coefficients.to(x.dtype)).sqrt()  # [H, degree + 1]
        parts = [root[:, 0, None].expand(x.shape[:-1] + (1,))]
        for i in range(1, self.degree + 1):
            index, scale = getattr(self, f"index_{i}"), getattr(self, f"scale_{i}").to(x.dtype)
            monomials = x[..., index].prod(-1)  # [B, T, H, C(d + i - 1, i)]
            parts.append(monomials * scale * root[:, i, None])
        return torch.cat(parts, dim=-1)


@register_mixer("atlas", paper="ATLAS: Learning to Optimally Memorize the Context at Test Time (Behrouz et al., 2025)")
class Atlas(MemoryMixer):
    """ATLAS over x: (B, T, d_model): per head, with phi the polynomial feature map and gate g_i,
    S_t = eta_t S_{t-1} - sum_{i=t-c+1..t} g_i grad ||M°(phi(k_i)) - v_i||^2, M_t = r_t M_{t-1} + theta_t NS_5(S_t),
    o_t = M_t(phi(q_t)); y = out_proj(RMSNorm_h(o) * SiLU(W_g x)). M is an MLP from phi space to head_dim.

    Args:
        window: c, the Omega rule's window of past tokens (1 = the last token only).
        degree: p, the polynomial feature map's degree (1 = identity plus a constant).
        optimizer: "muon" (Atlas), "momentum" or "gd" (OmegaNet).
        ns_steps: Newton-Schulz iterations of "muon".
        head_dim: channels per head before the feature map; None = the largest divisor of d_model up to 8
            (the feature dimension grows as head_dim^degree).
        theta_max: theta_t = theta_max * sigmoid(W x); Muon's updates have unit spectral norm whatever the
            error, so the default is 10x below the other memories' (at 1, float32 rounding grows over 1000 tokens).
        expand: the memory MLP's hidden width = head_dim * expand (the paper uses 4; 2 keeps the default
            cheap: every token's Newton-Schulz runs on its own momentum matrices).
        depth, chunk_size, use_short_conv, conv_size, impl: as for `miras`.

    State: `MemoryLayerState(memory: NeuralMemoryState (with the Omega window's last c - 1 tokens), conv)`.
    """

    def __init__(
        self,
        d_model: int,
        window: int = 4,
        degree: int = 2,
        optimizer: str = "muon",
        ns_steps: int = 5,
        head_dim: int | None = None,
        expand: float = 2.0,
        depth: int = 2,
        chunk_size: int = 16,
        theta_max: float = 0.1,
        use_short_conv: bool = True,
        conv_size: int = 4,
        impl: str | None = None,
    ) -> None:
        check_positive_int("atlas", "degree", degree)
        head_dim = default_head_dim(d_model, head_dim, largest=8)
        check_positive_int("atlas", "head_dim", head_dim)
        if d_model % head_dim:
            raise ValueError(
                f"atlas: d_model={d_model} is not divisible by head_dim={head_dim}; pass a head_dim that divides it"
            )
        features = PolynomialFeatures(d_model // head_dim, head_dim, degree)
        super().__init__(
            d_model, head_dim, feature_map=features, feature_dim=features.feature_dim, window=window, optimizer=optimizer,
            ns_steps=ns_steps, expand=expand, depth=depth, chunk_size=chunk_size, theta_max=theta_max,
            use_short_conv=use_short_conv, conv_size=conv_size, impl=impl,
        )
