"""Chunk-local cumulative sums of gates over time, in float32.

Reads and writes (B, T, H) tensors (one value per token and head); a chunk never crosses a sequence
boundary. Chunk-local sums avoid the cancellation of a global cumsum followed by a subtraction.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.common.chunks import ChunkLayout, chunk_coords

LOG2E = math.log2(math.e)


@triton.jit(do_not_specialize=["T"])
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


def chunk_local_cumsum(x: Tensor, layout: ChunkLayout, chunk_size: int, scale: float = 1.0) -> Tensor:
    """x [B, T, H] -> float32 [B, T, H]: inclusive cumsum within each chunk of each sequence, times `scale`."""
    B, T, H = x.shape
    out = torch.empty(B, T, H, dtype=torch.float32, device=x.device)
    grid = (layout.n_chunks, (B if layout.cu_seqlens is None else 1) * H)
    _chunk_local_cumsum_kernel[grid](
        x.contiguous(), out, layout.cu_seqlens, layout.chunk_indices, T,
        H=H, BT=chunk_size, SCALE=scale, IS_VARLEN=layout.cu_seqlens is not None,
    )
    return out
