"""Chunk-local cumulative sums of gates over time, in float32.

Reads and writes (B, T, H) tensors (one value per token and head) or (B, T, H, D) tensors (one per
token, head and channel: GLA's decay per key channel); a chunk never crosses a sequence boundary.
Chunk-local sums avoid the cancellation of a global cumsum followed by a subtraction.
"""

import math

import torch
import triton
import triton.language as tl

from kernels.common.config import length_args
from torch import Tensor

from kernels.common.chunks import ChunkLayout, chunk_coords

LOG2E = math.log2(math.e)


@triton.jit(do_not_specialize=length_args("T"))
def _chunk_local_cumsum_kernel(
    x, out, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, BT: tl.constexpr, SCALE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, _ = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < T
    rows = (bos + o_t) * H + i_h
    b_x = tl.load(x + rows, mask=m_t, other=0).to(tl.float32)
    tl.store(out + rows, tl.cumsum(b_x, axis=0) * SCALE, mask=m_t)


@triton.jit(do_not_specialize=length_args("T"))
def _chunk_local_cumsum_channels_kernel(
    x, out, cu_seqlens, chunk_indices, T,
    H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, SCALE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """One (chunk, channel tile) of a (B, T, H, D) tensor: a [BT, BD] tile summed along time."""
    i_d, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    bos, T, i_t, _ = chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT, IS_VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    m = (o_t < T)[:, None] & (o_d < D)[None, :]
    base = (bos + i_t * BT) * H + i_h  # the chunk's first row (int64)
    offsets = (tl.arange(0, BT) * H * D)[:, None] + o_d[None, :]
    b_x = tl.load(x + base * D + offsets, mask=m, other=0).to(tl.float32)
    tl.store(out + base * D + offsets, tl.cumsum(b_x, axis=0) * SCALE, mask=m)


def chunk_local_cumsum(x: Tensor, layout: ChunkLayout, chunk_size: int, scale: float = 1.0) -> Tensor:
    """x [B, T, H] or [B, T, H, D] -> float32 of the same shape: inclusive cumsum over time within each
    chunk of each sequence (per channel for 4-D x), times `scale`."""
    B, T, H = x.shape[:3]
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    n_bh = (B if layout.cu_seqlens is None else 1) * H
    common = dict(BT=chunk_size, SCALE=scale, IS_VARLEN=layout.cu_seqlens is not None)
    if x.dim() == 3:
        _chunk_local_cumsum_kernel[(layout.n_chunks, n_bh)](
            x.contiguous(), out, layout.cu_seqlens, layout.chunk_indices, T, H=H, **common
        )
        return out
    D = x.shape[3]
    BD = min(triton.next_power_of_2(D), 64)
    _chunk_local_cumsum_channels_kernel[(triton.cdiv(D, BD), layout.n_chunks, n_bh)](
        x.contiguous(), out, layout.cu_seqlens, layout.chunk_indices, T, H=H, D=D, BD=BD, **common
    )
    return out
