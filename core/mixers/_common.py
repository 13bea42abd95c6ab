"""Pieces shared by the mixers: head sizing, fused head projections, the gated per-head output, the
op call with padded tokens made absent, key normalisation and Mamba's dt initialisation."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from core.layers import GatedRMSNorm
from core.mixers._checks import check_positive_int
from core.ops import linear_recurrence, mask_padding
from core.ops.gated_rms_norm import gated_rms_norm


def split_heads(name: str, width: int, head_dim: int | None, what: str = "d_model") -> tuple[int, int]:
    """(num_heads, head_dim) cutting `width` channels into heads.

    head_dim None picks the largest divisor of `width` that is at most 64 (96 -> 2 heads of 48).
    """
    if head_dim is None:
        head_dim = max(d for d in range(1, min(64, width) + 1) if width % d == 0)
    check_positive_int(name, "head_dim", head_dim)
    if width % head_dim:
        raise ValueError(
            f"{name}: {what}={width} is not divisible by head_dim={head_dim}; "
            "pass a head_dim that divides it, or head_dim=None to pick one"
        )
    return width // head_dim, head_dim


def scaled_dim(name: str, option: str, head_dim: int, expand: float) -> int:
    """Channels per head `head_dim * expand`, which must be a positive whole number."""
    width = head_dim * expand
    if width < 1 or width != int(width):
        raise ValueError(f"{name}: head_dim * {option} = {head_dim} * {expand} must be a positive whole number")
    return int(width)


def gate_dtype(x: Tensor) -> torch.dtype:
    """Dtype for gates and log-decays: float32, or float64 when x is float64."""
    return torch.promote_types(x.dtype, torch.float32)


def check_state(name: str, state: object, cls: type) -> None:
    """Raise a TypeError unless `state` is None or the state type `cls` that `name` returns."""
    if state is not None and not isinstance(state, cls):
        raise TypeError(
            f"{name} state must be the {cls.__name__} returned by a previous call, got {type(state).__name__}"
        )


class HeadProjection(nn.Module):
    """One fused linear map from d_model to several per-head tensors.

    x: (B, T, d_model) -> [(B, T, num_heads, w) for w in widths].
    """

    def __init__(self, d_model: int, num_heads: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sizes = [num_heads * w for w in widths]
        self.linear = nn.Linear(d_model, sum(self.sizes), bias=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [part.unflatten(-1, (self.num_heads, -1)) for part in self.linear(x).split(self.sizes, dim=-1)]


class GatedHeadOutput(nn.Module):
    """out_proj(RMSNorm_per_head(o) * w * SiLU(gate)): o, gate (B, T, H, V) -> (B, T, d_model)."""

    def __init__(self, num_heads: int, value_dim: int, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = GatedRMSNorm(num_heads * value_dim, eps=eps, norm_before_gate=True, group_size=value_dim)
        self.out_proj = nn.Linear(num_heads * value_dim, d_model, bias=False)

    def forward(self, o: Tensor, gate: Tensor) -> Tensor:
        return self.out_proj(self.norm(o.flatten(-2), gate.flatten(-2)))


def recur(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor | None,
    state: Tensor | None,
    mask: Tensor | None,
    *,
    scale: float | None = None,
    impl: str | None = None,
) -> tuple[Tensor, Tensor]:
    """S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t), with padded tokens absent.

    q, k: (B, T, H, K); v: (B, T, H, V); g: None, (B, T, H) or (B, T, H, K); state: (B, H, K, V) or None;
    mask: (B, T) bool or None. Padded tokens get k = 0 and g = 0, so they leave the state unchanged.
    Returns o (B, T, H, V) and the final state (B, H, K, V).
    """
    if mask is not None:
        k, g = mask_padding(k, g, mask)
    return linear_recurrence(q, k, v, g, scale=scale, initial_state=state, output_final_state=True, impl=impl)


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim (fla's l2norm), computed in at least float32, in x's dtype.

    That is RMSNorm with eps / D and the weight 1 / sqrt(D) (D = x.shape[-1]), so the fused norm kernel serves on GPU.
    The last two dims go in as one row of groups: heads (B, T, H, D) sliced from a wider projection are read in place,
    where (B T H, D) rows would need a copy."""
    D = x.shape[-1]
    rows = x.flatten(-2) if x.dim() > 1 else x
    weight = x.new_full(rows.shape[-1:], D**-0.5, dtype=gate_dtype(x))
    return gated_rms_norm(rows, weight, eps=eps / D, group_size=D).view(x.shape)


def init_dt_bias(size: int, dt_min: float, dt_max: float, floor: float) -> Tensor:
    """Inverse softplus of dt drawn log-uniform in [dt_min, dt_max] and clamped to >= floor (Mamba's dt init), (size,)."""
    log_dt = torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = log_dt.exp().clamp_min(floor)
    return dt + torch.log(-torch.expm1(-dt))
