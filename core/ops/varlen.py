"""Padding masks and variable-length packing (FlashAttention convention).

A packed batch holds N sequences back to back in a batch of one, (1, total, ...), with offsets
`cu_seqlens` (N + 1,) int32/int64: sequence i is `x[0, cu_seqlens[i]:cu_seqlens[i + 1]]`.
A padded batch is (B, T, ...) with a bool mask (B, T), True at valid tokens. `pack` and `unpack`
convert between the two for any mask; `cu_seqlens_to_mask` gives the right-padded mask of a packed
batch, so `unpack(x, cu_seqlens_to_mask(cu_seqlens))` is its right-padded (N, Tmax, ...) form.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ops.checks import check_mask


def cu_seqlens_to_mask(cu_seqlens: Tensor) -> Tensor:
    """Offsets (N + 1,) -> right-padded mask (N, Tmax), True at valid tokens."""
    lengths = cu_seqlens.diff()  # [N]
    return torch.arange(int(lengths.max()), device=cu_seqlens.device) < lengths[:, None]


def mask_to_cu_seqlens(mask: Tensor) -> Tensor:
    """Mask (B, T) -> int32 offsets (B + 1,) of its valid tokens once packed with `pack`."""
    return F.pad(mask.sum(1).cumsum(0), (1, 0)).to(torch.int32)


def pack(x: Tensor, mask: Tensor) -> Tensor:
    """Padded (B, T, ...) -> packed (1, total, ...): the valid tokens, row after row."""
    check_mask(mask, *x.shape[:2])
    return x[mask].unsqueeze(0)


def unpack(packed: Tensor, mask: Tensor) -> Tensor:
    """Packed (1, total, ...) -> padded (B, T, ...) with zeros where `mask` (B, T) is False; inverts `pack`."""
    if packed.shape[:2] != (1, int(mask.sum())):
        raise ValueError(f"packed must have shape (1, {int(mask.sum())}, ...) to fill the mask, got {tuple(packed.shape)}")
    padded = packed.new_zeros(*mask.shape, *packed.shape[2:])
    return padded.index_put((mask,), packed[0])


def mask_padding(k: Tensor, g: Tensor | None, mask: Tensor) -> tuple[Tensor, Tensor | None]:
    """Zero the keys (B, T, H, K) and log decays (B, T, H[, K]) of padded tokens, where mask (B, T) is False.

    A token with k = 0 and g = 0 writes nothing and decays nothing, so it leaves the state unchanged.
    """
    check_mask(mask, *k.shape[:2])
    pad = ~mask[:, :, None]  # [B, T, 1]
    k = k.masked_fill(pad[..., None], 0)
    if g is not None:
        g = g.masked_fill(pad.view(*pad.shape, *[1] * (g.dim() - 3)), 0)
    return k, g


def call_unpacked(
    fn: Callable[..., tuple[Tensor, Tensor | None]], cu_seqlens: Tensor, tensors: Sequence[Tensor], *args: object
) -> tuple[Tensor, Tensor | None]:
    """Run an op implementation on packed per-token inputs (1, total, ...) as a right-padded batch.

    `fn(*padded_tensors, *args)` returns (o (N, Tmax, ...), final_state); o is packed back to (1, total, ...).
    Unpacking zero-fills the padding, so each op must make zero inputs inert (leave the state unchanged).
    """
    mask = cu_seqlens_to_mask(cu_seqlens)  # [N, Tmax]
    o, final_state = fn(*(unpack(x, mask) for x in tensors), *args)
    return pack(o, mask), final_state
