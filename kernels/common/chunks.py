"""Chunk coordinates shared by the chunked kernels: which tokens a program owns, with 64-bit offsets.

A batch is either B sequences of T tokens each, or (varlen) N sequences packed into a batch of one
with offsets `cu_seqlens` (N + 1,). Chunks of BT tokens never cross a sequence boundary. Chunks are
numbered globally, sequence after sequence; per-chunk tensors (the states h) are indexed by that number.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor


@dataclass(frozen=True)
class ChunkLayout:
    """Host-side description of the chunks of a (B, T) or packed batch."""

    n_seqs: int  # N: number of sequences (B, or len(cu_seqlens) - 1)
    n_chunks: int  # chunks per sequence (non-varlen) or in total (varlen): grid size over chunks
    total_chunks: int  # rows of a per-chunk tensor
    cu_seqlens: Tensor | None  # [N + 1] int32
    chunk_indices: Tensor | None  # [total_chunks, 2] int32: (sequence, chunk within it)
    chunk_offsets: Tensor | None  # [N] int32: global number of each sequence's first chunk


def chunk_layout(batch: int, T: int, chunk_size: int, cu_seqlens: Tensor | None) -> ChunkLayout:
    if cu_seqlens is None:
        nt = triton.cdiv(T, chunk_size)
        return ChunkLayout(batch, nt, batch * nt, None, None, None)
    cu = cu_seqlens.to(torch.int32)
    counts = (cu.diff() + chunk_size - 1) // chunk_size  # [N]
    offsets = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())  # one host sync per call
    seq = torch.repeat_interleave(torch.arange(len(counts), device=cu.device), counts, output_size=total)
    within = torch.arange(total, device=cu.device) - offsets[seq]
    indices = torch.stack([seq, within], 1).to(torch.int32).contiguous()
    if total > 65535:
        raise ValueError(f"{total} chunks in one packed batch exceed the launch grid (65535); split the batch")
    return ChunkLayout(len(counts), total, total, cu, indices, offsets.to(torch.int32).contiguous())


@triton.jit
def chunk_coords(i_t, i_b, T, cu_seqlens, chunk_indices, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(bos, T, i_t, i_c) of grid chunk i_t: first token of its sequence (int64), the sequence length,
    the chunk's index within the sequence and its global number (int64, for per-chunk tensors)."""
    if IS_VARLEN:
        i_c = i_t.to(tl.int64)
        i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
        i_t = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    else:
        bos = i_b.to(tl.int64) * T
        i_c = i_b.to(tl.int64) * tl.cdiv(T, BT) + i_t
    return bos, T, i_t, i_c


@triton.jit
def chunk_rows(bos, i_t, T, i_h, H: tl.constexpr, BT: tl.constexpr):
    """(o_t, m_t, base, r) of chunk i_t of a sequence starting at token bos, head i_h, in a (B, T, H, ...)
    layout: positions in the sequence, their mask (< T), the chunk's first row (int64) and the rows'
    offsets from it (int32); element x of row j is at (base + r[j]) * X + x for a last dim of X."""
    o_t = i_t * BT + tl.arange(0, BT)
    return o_t, o_t < T, (bos + i_t * BT) * H + i_h, tl.arange(0, BT) * H


@triton.jit
def sequence_coords(i_n, T, cu_seqlens, chunk_offsets, BT: tl.constexpr, IS_VARLEN: tl.constexpr):
    """(bos, T, NT, c0) of sequence i_n: first token (int64), length, chunk count, global number of its first chunk."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int64)
        T = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
        c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    else:
        bos = i_n.to(tl.int64) * T
        c0 = i_n.to(tl.int64) * tl.cdiv(T, BT)
    return bos, T, tl.cdiv(T, BT), c0
