"""Separation networks: a mixture (B, T) -> N source estimates (B, N, T).

- `DualPathSeparator`: learned filterbank encoder -> dual-path masker (DPRNN / SepFormer: the frames are cut
  into overlapping chunks; intra-chunk then inter-chunk sequence modelling, repeated) with any core mixer or
  hybrid in either path -> one mask per speaker -> transposed-convolution decoder.
- `ConvTasNetSeparator`: torchaudio's Conv-TasNet (Luo and Mesgarani, 2019), the baseline.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torchaudio.models import ConvTasNet

import core


def check_mixture(mixture: Tensor) -> None:
    """ValueError unless mixture is a float (batch, samples) tensor."""
    if mixture.ndim != 2:
        raise ValueError(f"expected a mixture of shape (batch, samples), got {tuple(mixture.shape)}; use one channel")
    if not mixture.is_floating_point():
        raise TypeError(f"expected a floating-point mixture, got {mixture.dtype}")


class Filterbank(nn.Module):
    """Learned analysis / synthesis filterbank: `kernel_size`-sample filters with 50% overlap (hop kernel_size // 2).

    encode: (B, T) -> non-negative coefficients (B, num_filters, F), the input zero-padded at the end to whole frames.
    decode: (B, num_filters, F) -> (B, length) by overlap-add of the transposed convolution, cut to `length`.
    """

    def __init__(self, num_filters: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 2 or kernel_size % 2:
            raise ValueError(f"model.kernel_size must be even and >= 2 (hop = kernel_size / 2), got {kernel_size}")
        self.kernel_size, self.hop = kernel_size, kernel_size // 2
        self.analysis = nn.Conv1d(1, num_filters, kernel_size, stride=self.hop, bias=False)
        self.synthesis = nn.ConvTranspose1d(num_filters, 1, kernel_size, stride=self.hop, bias=False)

    def encode(self, mixture: Tensor) -> Tensor:
        frames = max(1, -(-(mixture.shape[-1] - self.kernel_size) // self.hop) + 1)
        padded = F.pad(mixture, (0, (frames - 1) * self.hop + self.kernel_size - mixture.shape[-1]))
        return F.relu(self.analysis(padded.unsqueeze(1)))

    def decode(self, coefficients: Tensor, length: int) -> Tensor:
        return self.synthesis(coefficients).squeeze(1)[..., :length]


def split_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """(B, F, D) -> (B, S, K, D): chunks of K = chunk_size frames, hop K // 2, after K // 2 zeros at the start and
    enough at the end that every frame lies in exactly two chunks."""
    hop, frames = chunk_size // 2, x.shape[1]
    chunks = -(-(frames + hop) // hop)  # S: hop-sized steps covering the frames plus the leading pad
    padded = F.pad(x, (0, 0, hop, (chunks + 1) * hop - frames - hop))
    return padded.unfold(1, chunk_size, hop).transpose(2, 3)  # unfold puts the window last: [B, S, D, K]


def overlap_add(chunks: Tensor, frames: int) -> Tensor:
    """Inverse of `split_chunks` up to the overlap sum: (B, S, K, D) -> (B, F, D)."""
    batch, count, size, dim = chunks.shape
    hop = size // 2
    columns = chunks.permute(0, 3, 2, 1).reshape(batch, dim * size, count)  # [B, D*K, S]
    summed = F.fold(columns, output_size=(1, (count + 1) * hop), kernel_size=(1, size), stride=(1, hop))
    return summed.squeeze(2).transpose(1, 2)[:, hop : hop + frames]


class DualPathBlock(nn.Module):
    """x + intra(x) over the frames of each chunk, then x + inter(x) over the chunks at each position.

    x: (B, S, K, D) -> (B, S, K, D). Each path is a `core.Backbone` (bidirectional: non-causal).
    """

    def __init__(self, intra: core.Backbone, inter: core.Backbone) -> None:
        super().__init__()
        self.intra, self.inter = intra, inter

    def forward(self, x: Tensor) -> Tensor:
        batch, count, size, dim = x.shape
        x = x + self.intra(x.reshape(batch * count, size, dim))[0].view(batch, count, size, dim)
        across = x.transpose(1, 2).reshape(batch * size, count, dim)
        return x + self.inter(across)[0].view(batch, size, count, dim).transpose(1, 2)


class DualPathSeparator(nn.Module):
    """Encoder -> dual-path masker over any core mixer or hybrid -> decoder; (B, T) -> (B, num_speakers, T).

    Args:
        num_speakers: sources to separate.
        mixer: {"name": registered mixer, "options": its options}, the config group model/mixer.
        layers: the layer pattern of each path: the mixer's name or a hybrid list, e.g. [mamba2, attention].
        num_filters, kernel_size: the filterbank (kernel_size samples, hop kernel_size / 2).
        d_model: width of the masker; chunk_size: frames per chunk (hop chunk_size / 2).
        num_blocks: dual-path blocks; intra_depth, inter_depth: backbone layers per path per block.
        bidirectional_intra, bidirectional_inter: run causal mixers both ways. With bidirectional_inter
            false the model sees at most one chunk ahead (streaming with one chunk of latency); both false
            makes every path causal.
        mlp_expand, drop_path_rate: backbone blocks (see `core.Backbone`).
    """

    def __init__(
        self,
        num_speakers: int,
        mixer: Mapping[str, Any],
        layers: str | Sequence[str | Mapping[str, Any]],
        num_filters: int = 256,
        kernel_size: int = 16,
        d_model: int = 128,
        chunk_size: int = 100,
        num_blocks: int = 2,
        intra_depth: int = 1,
        inter_depth: int = 1,
        bidirectional_intra: bool = True,
        bidirectional_inter: bool = True,
        mlp_expand: float = 2.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if chunk_size < 2 or chunk_size % 2:
            raise ValueError(f"model.chunk_size must be even and >= 2 (chunks overlap by half), got {chunk_size}")
        self.num_speakers, self.chunk_size = num_speakers, chunk_size
        self.filterbank = Filterbank(num_filters, kernel_size)
        self.min_samples = kernel_size
        options = {mixer["name"]: dict(mixer.get("options") or {})}

        def path(depth: int, bidirectional: bool) -> core.Backbone:
            return core.Backbone(
                d_model, depth, layers=layers, mixer_options=options, mlp_expand=mlp_expand,
                bidirectional=bidirectional, drop_path_rate=drop_path_rate,
            )  # fmt: skip

        self.norm = nn.LayerNorm(num_filters)  # per frame: causal
        self.project_in = nn.Linear(num_filters, d_model)
        self.blocks = nn.ModuleList(
            DualPathBlock(path(intra_depth, bidirectional_intra), path(inter_depth, bidirectional_inter)) for _ in range(num_blocks)
        )
        self.project_out = nn.Sequential(nn.PReLU(), nn.Linear(d_model, num_speakers * num_filters))

    def forward(self, mixture: Tensor) -> Tensor:
        check_mixture(mixture)
        coefficients = self.filterbank.encode(mixture)  # [B, N, F]
        x = self.project_in(self.norm(coefficients.transpose(1, 2)))  # [B, F, D]
        frames = x.shape[1]
        chunks = split_chunks(x, self.chunk_size)  # [B, S, K, D]
        for block in self.blocks:
            chunks = block(chunks)
        x = overlap_add(chunks, frames)  # [B, F, D]
        masks = F.relu(self.project_out(x))  # [B, F, spk*N]
        masks = masks.view(x.shape[0], frames, self.num_speakers, -1).permute(0, 2, 3, 1)  # [B, spk, N, F]
        masked = (masks * coefficients.unsqueeze(1)).flatten(0, 1)  # [B*spk, N, F]
        return self.filterbank.decode(masked, mixture.shape[-1]).view(-1, self.num_speakers, mixture.shape[-1])


class ConvTasNetSeparator(nn.Module):
    """torchaudio's Conv-TasNet, (B, T) -> (B, num_speakers, T); the arguments are ConvTasNet's
    (enc_* the filterbank, msk_* the temporal convolution network; defaults are the paper's best model)."""

    def __init__(
        self,
        num_speakers: int,
        enc_kernel_size: int = 16,
        enc_num_feats: int = 512,
        msk_kernel_size: int = 3,
        msk_num_feats: int = 128,
        msk_num_hidden_feats: int = 512,
        msk_num_layers: int = 8,
        msk_num_stacks: int = 3,
    ) -> None:
        super().__init__()
        self.num_speakers, self.min_samples = num_speakers, enc_kernel_size
        self.network = ConvTasNet(
            num_speakers, enc_kernel_size, enc_num_feats, msk_kernel_size, msk_num_feats, msk_num_hidden_feats,
            msk_num_layers, msk_num_stacks,
        )  # fmt: skip

    def forward(self, mixture: Tensor) -> Tensor:
        check_mixture(mixture)
        return self.network(mixture.unsqueeze(1))[..., : mixture.shape[-1]]


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
