"""Forgetting attention tile by tile with an online softmax and its own backward (spec 4.3).

Only one (block, block) tile of the (T, S) logit matrix exists at a time, forward and backward: the
forward keeps the outputs and the row log-normalisers L_i = m_i + log l_i (O(T) extra memory), the
backward recomputes each tile's weights P = exp(logits - L) (FlashAttention's scheme).
"""

from collections.abc import Iterator

import torch
from torch import Tensor

from core.ops.checks import state_dtype
from core.ops.dispatch import register

BLOCK_SIZE = 128  # tile side; any positive int is exact, 128 is the fastest measured on CPU

Tile = tuple[slice, slice, bool]  # query rows, key columns, whether the causal mask cuts the tile


@register("forgetting_attention", "chunk", priority=1)
def chunk_forgetting_attention(
    q: Tensor,  # [B, T, H, K]
    k: Tensor,  # [B, S, H, K]
    v: Tensor,  # [B, S, H, V]
    cq: Tensor,  # [B, T, H] float64
    ck: Tensor,  # [B, S, H] float64
    key_valid: Tensor | None,  # [B, S] bool
    scale: float,
    block_size: int | None = None,
) -> Tensor:
    """Same contract as `naive_forgetting_attention`; `block_size` is the tile side (any positive int), None = BLOCK_SIZE."""
    out_dtype, dtype = q.dtype, state_dtype(q.dtype)
    q, k, v = (x.to(dtype).transpose(1, 2).contiguous() for x in (q, k, v))  # [B, H, T or S, K or V]
    cq, ck = (x.transpose(1, 2).contiguous() for x in (cq, ck))  # [B, H, T or S]
    o = _BlockwiseForgettingAttention.apply(q, k, v, cq, ck, key_valid, scale, block_size or BLOCK_SIZE)
    return o.transpose(1, 2).to(out_dtype)


def _tiles(T: int, S: int, block: int) -> Iterator[Tile]:
    """The tiles on or below the causal diagonal, row block by row block; query i sits at key i + S - T."""
    offset = S - T
    for i0 in range(0, T, block):
        i1 = min(i0 + block, T)
        for j0 in range(0, i1 + offset, block):
            j1 = min(j0 + block, i1 + offset)
            yield slice(i0, i1), slice(j0, j1), j1 - 1 > i0 + offset


def _logits(q: Tensor, k: Tensor, cq: Tensor, ck: Tensor, key_valid: Tensor | None, tile: Tile, scale: float) -> Tensor:
    """scale q_i . k_j + cq_i - ck_j on one tile, -inf where key j is hidden from query i: [B, H, rows, cols].

    The float64 sums are taken relative to the tile's first row before rounding to q's dtype, so the
    differences that matter (small ones, near the diagonal) stay accurate however large |c| is.
    """
    rows, cols, cut = tile
    ref = cq[:, :, rows.start, None]  # [B, H, 1]
    cq, ck = (cq[:, :, rows] - ref).to(q.dtype), (ck[:, :, cols] - ref).to(q.dtype)
    logits = scale * q[:, :, rows] @ k[:, :, cols].transpose(-1, -2) + cq[..., None] - ck[..., None, :]
    if cut:
        offset = k.shape[2] - q.shape[2]
        i = torch.arange(rows.start, rows.stop, device=q.device)[:, None]
        j = torch.arange(cols.start, cols.stop, device=q.device)
        logits = logits.masked_fill(j > i + offset, -torch.inf)
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, None, cols], -torch.inf)
    return logits


def _without_inf(x: Tensor) -> Tensor:
    """-inf (a row that has seen no key yet) -> 0, so that exp(-inf - x) = 0 and -inf - -inf never occurs."""
    return torch.where(x.isneginf(), 0, x)


class _BlockwiseForgettingAttention(torch.autograd.Function):
    """o = softmax(scale Q K^T + cq 1^T - 1 ck^T, causal and key masks) V on [B, H, ., .] tensors."""

    @staticmethod
    def forward(ctx, q, k, v, cq, ck, key_valid, scale, block):  # type: ignore[override]
        B, H, T, _ = q.shape
        S = k.shape[2]
        o = q.new_zeros(B, H, T, v.shape[-1])
        m = q.new_full((B, H, T), -torch.inf)  # running max of each row
        total = q.new_zeros(B, H, T)  # running sum of exp(logits - m)
        for tile in _tiles(T, S, block):
            rows, cols, _ = tile
            logits = _logits(q, k, cq, ck, key_valid, tile, scale)
            m_new = torch.maximum(m[:, :, rows], logits.amax(-1))
            ref = _without_inf(m_new)
            p = (logits - ref[..., None]).exp()
            rescale = (m[:, :, rows] - ref).exp()  # 0 while the row was empty
            total[:, :, rows] = total[:, :, rows] * rescale + p.sum(-1)
            o[:, :, rows] = o[:, :, rows] * rescale[..., None] + p @ v[:, :, cols]
            m[:, :, rows] = m_new
        seen = total > 0
        o = o / torch.where(seen, total, 1)[..., None]
        lse = torch.where(seen, _without_inf(m) + torch.where(seen, total, 1).log(), -torch.inf)  # [B, H, T]
        ctx.save_for_backward(q, k, v, cq, ck, key_valid, o, lse)
        ctx.scale, ctx.block = scale, block
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):  # type: ignore[override]
        q, k, v, cq, ck, key_valid, o, lse = ctx.saved_tensors
        T, S = q.shape[2], k.shape[2]
        scale = ctx.scale
        do = do.to(o.dtype)
        delta = (do * o).sum(-1)  # [B, H, T]
        lse = _without_inf(lse)  # an empty row has only -inf logits, so P = 0 there
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dcq, dck = torch.zeros_like(cq), torch.zeros_like(ck)
        for tile in _tiles(T, S, ctx.block):
            rows, cols, _ = tile
            p = (_logits(q, k, cq, ck, key_valid, tile, scale) - lse[:, :, rows, None]).exp()  # [B, H, rows, cols]
            dp = do[:, :, rows] @ v[:, :, cols].transpose(-1, -2)
            ds = p * (dp - delta[:, :, rows, None])  # d loss / d logits
            dq[:, :, rows] += scale * ds @ k[:, :, cols]
            dk[:, :, cols] += scale * ds.transpose(-1, -2) @ q[:, :, rows]
            dv[:, :, cols] += p.transpose(-1, -2) @ do[:, :, rows]
            dcq[:, :, rows] += ds.sum(-1)  # into float64 buffers
            dck[:, :, cols] -= ds.sum(-2)
        return dq, dk, dv, dcq, dck, None, None, None
