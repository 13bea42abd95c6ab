"""Forecasting networks: (B, lookback, C) windows -> (B, horizon, C) forecasts of every channel.

- `MixerForecaster`: any core mixer or hybrid over tokens, with RevIN. The tokens are a config choice:
  `PatchTokens` (PatchTST: channel-independent patches of each series) or `VariateTokens` (iTransformer:
  one token per variate, mixed bidirectionally since variates have no order).
- `DLinear` and `RLinear`: linear baselines, the sanity check every mixer should beat.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import core


def check_window(x: Tensor, n_channels: int, lookback: int) -> None:
    """ValueError unless x is a float tensor (batch, lookback, n_channels)."""
    if x.ndim != 3 or x.shape[1] != lookback or x.shape[2] != n_channels:
        raise ValueError(
            f"expected a window of shape (batch, lookback={lookback}, channels={n_channels}), got {tuple(x.shape)}; "
            "the model was built for another data.lookback or data set"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point window, got {x.dtype}")


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., ICLR 2022) over x: (B, T, C).

    `normalize` standardises every series of a window by its own mean and std (then an affine map per
    channel) and returns those statistics; `denormalize` maps a forecast back with them.
    """

    def __init__(self, n_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_channels))
        self.bias = nn.Parameter(torch.zeros(n_channels))

    def normalize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        mean = x.mean(dim=1, keepdim=True).detach()  # [B, 1, C]
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
        return (x - mean) / std * self.weight + self.bias, (mean, std)

    def denormalize(self, y: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        mean, std = stats
        return (y - self.bias) / (self.weight + self.eps**2) * std + mean


class Tokens(Protocol):
    """How a window becomes tokens for the backbone and how token features become a forecast."""

    bidirectional: bool

    def embed(self, x: Tensor) -> Tensor:
        """(B, lookback, C) -> tokens (B', N, d_model)."""

    def readout(self, h: Tensor, batch_size: int) -> Tensor:
        """(B', N, d_model) -> forecast (B, horizon, C)."""


class PatchTokens(nn.Module):
    """PatchTST tokens (Nie et al., ICLR 2023): channel independence and patching.

    Each channel is a separate sequence (B*C sequences); its lookback, padded at the end by `stride`
    repeats of the last value, is cut into N = (lookback - patch_len) // stride + 2 patches, each
    linearly embedded plus a learned position. The head flattens the N token features of a channel and
    maps them to the horizon. Patches are in time order, so causal mixers may stay causal
    (`bidirectional=False`); True mixes them both ways.
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        d_model: int,
        dropout: float = 0.0,
        patch_len: int = 16,
        stride: int = 8,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < patch_len <= lookback or stride <= 0:
            raise ValueError(
                f"need 0 < patch_len <= lookback and stride > 0, got patch_len={patch_len}, stride={stride}, "
                f"lookback={lookback}; set model.tokens.patch_len / model.tokens.stride"
            )
        self.patch_len, self.stride, self.bidirectional = patch_len, stride, bidirectional
        self.num_patches = (lookback - patch_len) // stride + 2
        self.project = nn.Linear(patch_len, d_model)
        self.position = nn.Parameter(torch.empty(self.num_patches, d_model).uniform_(-0.02, 0.02))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_patches * d_model, horizon)

    def embed(self, x: Tensor) -> Tensor:
        series = x.transpose(1, 2).flatten(0, 1)  # [B*C, L]
        series = torch.cat([series, series[:, -1:].expand(-1, self.stride)], dim=1)  # [B*C, L + stride]
        patches = series.unfold(-1, self.patch_len, self.stride)  # [B*C, N, patch_len]
        return self.dropout(self.project(patches) + self.position)

    def readout(self, h: Tensor, batch_size: int) -> Tensor:
        y = self.head(self.dropout(h.flatten(1)))  # [B*C, H]
        return y.unflatten(0, (batch_size, -1)).transpose(1, 2)


class VariateTokens(nn.Module):
    """iTransformer tokens (Liu et al., ICLR 2024): the whole lookback of one variate is one token.

    Variates have no order, so the backbone mixes them bidirectionally (causal mixers get a backward twin).
    """

    bidirectional = True

    def __init__(self, n_channels: int, lookback: int, horizon: int, d_model: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.project = nn.Linear(lookback, d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, horizon)

    def embed(self, x: Tensor) -> Tensor:
        return self.dropout(self.project(x.transpose(1, 2)))  # [B, C, d_model]

    def readout(self, h: Tensor, batch_size: int) -> Tensor:
        return self.head(h).transpose(1, 2)  # [B, H, C]


class MixerForecaster(nn.Module):
    """RevIN -> tokens -> core.Backbone -> forecast head -> RevIN inverse; (B, lookback, C) -> (B, horizon, C).

    Args:
        n_channels, lookback, horizon: window shape (from the data).
        tokens: a partial `PatchTokens` / `VariateTokens`, completed with the shape, d_model and dropout.
        mixer: {"name": registered mixer, "options": its keyword options}, the config group `model/mixer`.
        layers: the backbone's layer pattern: the mixer's name, or a hybrid list such as [mamba2, attention]
            (repeated to `depth`); `mixer.options` apply to the layers of that mixer.
        d_model, depth, mlp_expand, drop_path_rate: backbone size (see `core.Backbone`).
        dropout: on token embeddings and the flattened head input.
    """

    def __init__(
        self,
        n_channels: int,
        lookback: int,
        horizon: int,
        tokens: Callable[..., Tokens],
        mixer: Mapping[str, Any],
        layers: str | Sequence[str | Mapping[str, Any]],
        d_model: int = 64,
        depth: int = 2,
        mlp_expand: float = 2.0,
        dropout: float = 0.1,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_channels, self.lookback = n_channels, lookback
        self.revin = RevIN(n_channels)
        self.tokens = tokens(n_channels=n_channels, lookback=lookback, horizon=horizon, d_model=d_model, dropout=dropout)
        self.backbone = core.Backbone(
            d_model,
            depth,
            layers=layers,
            mixer_options={mixer["name"]: dict(mixer.get("options") or {})},
            mlp_expand=mlp_expand,
            bidirectional=self.tokens.bidirectional,
            drop_path_rate=drop_path_rate,
        )

    def forward(self, x: Tensor) -> Tensor:
        check_window(x, self.n_channels, self.lookback)
        x, stats = self.revin.normalize(x)
        h, _ = self.backbone(self.tokens.embed(x))
        return self.revin.denormalize(self.tokens.readout(h, x.shape[0]), stats)


def moving_average(x: Tensor, kernel_size: int) -> Tensor:
    """Centred moving average over time of x: (B, T, C), ends padded with the edge values (DLinear)."""
    half = (kernel_size - 1) // 2
    padded = torch.cat([x[:, :1].expand(-1, half, -1), x, x[:, -1:].expand(-1, half, -1)], dim=1)
    return F.avg_pool1d(padded.transpose(1, 2), kernel_size, stride=1).transpose(1, 2)


class DLinear(nn.Module):
    """DLinear (Zeng et al., AAAI 2023): a moving average splits each series into trend and remainder, and
    one linear map over time per part, shared by all channels, forecasts each. (B, L, C) -> (B, H, C)."""

    def __init__(self, n_channels: int, lookback: int, horizon: int, kernel_size: int = 25) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"DLinear kernel_size must be odd (a centred average), got {kernel_size}")
        self.n_channels, self.lookback, self.kernel_size = n_channels, lookback, kernel_size
        self.trend = nn.Linear(lookback, horizon)
        self.remainder = nn.Linear(lookback, horizon)
        for linear in (self.trend, self.remainder):
            nn.init.constant_(linear.weight, 1.0 / lookback)  # start as "repeat the window mean"

    def forward(self, x: Tensor) -> Tensor:
        check_window(x, self.n_channels, self.lookback)
        trend = moving_average(x, self.kernel_size)
        y = self.trend(trend.transpose(1, 2)) + self.remainder((x - trend).transpose(1, 2))
        return y.transpose(1, 2)


class RLinear(nn.Module):
    """RLinear (Li et al., 2023): RevIN and one linear map over time shared by all channels. (B, L, C) -> (B, H, C)."""

    def __init__(self, n_channels: int, lookback: int, horizon: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_channels, self.lookback = n_channels, lookback
        self.revin = RevIN(n_channels)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(lookback, horizon)

    def forward(self, x: Tensor) -> Tensor:
        check_window(x, self.n_channels, self.lookback)
        x, stats = self.revin.normalize(x)
        y = self.linear(self.dropout(x).transpose(1, 2)).transpose(1, 2)
        return self.revin.denormalize(y, stats)
