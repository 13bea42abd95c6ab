"""Input validation shared by the ops.

Every error says what was expected, what was found and how to fix it. Shape problems raise
ValueError, dtype problems TypeError.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = "float64, float32, bfloat16 or float16"


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of recurrent states and gate cumulative sums for inputs of `dtype`: float64 stays, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_float(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor ({FLOAT_DTYPES}), got {x.dtype}; cast it with .float()")


def check_device(name: str, x: Tensor, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, the other inputs on {device}; move every input to one device")


def check_shape(name: str, x: Tensor, expected: Sequence[int | None], layout: str, fix: str = "") -> None:
    """Raise unless `x.shape` matches `expected` (None matches any size); `layout` names the dims, e.g. "(B, T, H, K)"."""
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {layout} = {want}, got {x.dim()}-D shape {tuple(x.shape)}. {fix}".rstrip())


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> tuple[int, int, int, int, int]:
    """Queries, keys (B, T, H, K) and values (B, T, H, V) of one float dtype and device; returns (B, T, H, K, V)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float(name, x)
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them to one")
    check_shape("q", q, (None,) * 4, "(B, T, H, K)", "Split the heads out first: x.view(B, T, H, head_dim).")
    B, T, H, K = q.shape
    check_shape("k", k, (B, T, H, K), "(B, T, H, K) as q")
    check_shape("v", v, (B, T, H, None), "(B, T, H, V) with B, T, H as q")
    if T == 0:
        raise ValueError("the sequence length T of q, k, v is 0; pass at least one token")
    for name, x in (("k", k), ("v", v)):
        check_device(name, x, q.device)
    return B, T, H, K, v.shape[-1]


def check_gate(g: Tensor | None, q: Tensor) -> None:
    """Log decay g: None, (B, T, H) (one per head) or (B, T, H, K) (one per key channel)."""
    if g is None:
        return
    check_float("g", g)
    B, T, H, K = q.shape
    if tuple(g.shape) not in ((B, T, H), (B, T, H, K)):
        raise ValueError(
            f"g must have shape (B, T, H) = ({B}, {T}, {H}) for a decay per head or (B, T, H, K) = "
            f"({B}, {T}, {H}, {K}) for a decay per key channel, got {tuple(g.shape)}"
        )
    check_device("g", g, q.device)


def check_state(name: str, state: Tensor | None, expected: Sequence[int], layout: str, device: torch.device) -> None:
    """An optional state tensor of a fixed shape, e.g. (N, H, K, V)."""
    if state is None:
        return
    check_float(name, state)
    check_shape(name, state, expected, layout, "With cu_seqlens there is one state per sequence.")
    check_device(name, state, device)


def check_cu_seqlens(cu_seqlens: Tensor, batch: int, total: int) -> int:
    """Offsets (N + 1,) of N packed sequences in a batch of one, FlashAttention convention; returns N."""
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}; build it with mask_to_cu_seqlens")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D (N + 1,) with N >= 1 sequences, got shape {tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(
            f"with cu_seqlens the sequences must be packed into batch size 1, (1, total, ...), got batch size {batch}; "
            "pack a padded batch with core.ops.varlen.pack(x, mask)"
        )
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0 or offsets[-1] != total:
        raise ValueError(f"cu_seqlens must start at 0 and end at the packed length {total}, got {offsets}")
    if any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"cu_seqlens must be non-decreasing (cumulative sequence lengths), got {offsets}")
    return len(offsets) - 1


def check_mask(mask: Tensor, batch: int, time: int) -> None:
    """Padding mask (B, T), True at valid tokens."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = valid token), got {mask.dtype}; use mask.bool()")
    check_shape("mask", mask, (batch, time), "(B, T)", "It marks valid tokens of the (B, T, ...) inputs.")


def check_per_token(
    name: str, x: Tensor, expected: Sequence[int], layout: str, device: torch.device, fix: str = ""
) -> None:
    """A float input with a fixed shape beside q, k, v, e.g. beta (B, T, H) or a vector log decay (B, T, H, K)."""
    check_float(name, x)
    check_shape(name, x, expected, layout, fix)
    check_device(name, x, device)


def check_state_tuple(
    name: str, state: Sequence[Tensor] | None, fields: dict[str, tuple[Sequence[int], str]], device: torch.device
) -> None:
    """An optional state of several tensors, e.g. mLSTM's (C, n, m); `fields` maps each name to (shape, layout)."""
    if state is None:
        return
    if len(state) != len(fields):
        raise ValueError(f"{name} must be the ({', '.join(fields)}) tuple returned by a previous call, got {len(state)} tensors")
    for (field, (shape, layout)), x in zip(fields.items(), state):
        check_float(f"{name}.{field}", x)
        check_shape(f"{name}.{field}", x, shape, layout)
        check_device(f"{name}.{field}", x, device)


def check_float_or_complex(name: str, x: Tensor) -> None:
    """A real floating-point or a complex tensor (the elementwise scans accept both)."""
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(
            f"{name} must be a floating-point ({FLOAT_DTYPES}) or complex tensor, got {x.dtype}; cast it with .float()"
        )
