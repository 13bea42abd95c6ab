"""2-D scan orders: how a causal mixer reads a grid of patch tokens, so that it sees the whole image.

A scan order is a permutation of the token sequence, a LongTensor `order` of length N: position k of
the scanned sequence holds token `order[k]`. Patch tokens are numbered row-major (the order the
patch embedding emits them); a class token keeps its own position in every order, patches fill the
other positions in the scan's order. `inverse_order(order)` undoes a permutation exactly.

Scans (`SCANS`), each a per-layer wrapper of a causal mixer:
- "none": row-major, the mixer as it is (a causal mixer stays causal);
- "bidirectional": row-major forwards and backwards, two mixers summed (Vision Mamba; `core.Bidirectional`);
- "alternate": one mixer per layer, row-major on even layers and reversed on odd ones (Vision-LSTM);
- "cross": four mixers on row-major, column-major and both reversed, summed (VMamba's SS2D cross scan,
  Restore-RWKV's multi-directional scan).
Non-causal mixers (attention without a mask, the gated convolution) see every token already and are
never wrapped.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import core

SCANS = ("none", "bidirectional", "alternate", "cross")


def inverse_order(order: Tensor) -> Tensor:
    """The permutation that undoes `order`: x[:, order][:, inverse_order(order)] == x."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return inverse


def grid_order(height: int, width: int, column_major: bool, cls_position: int | None) -> Tensor:
    """Scan order over `height * width` patch tokens (row-major numbering) and an optional class token.

    column_major: read the grid column by column instead of row by row.
    cls_position: index of the class token in the sequence (None: no class token); it stays there, and
        patch j sits at sequence index j, or j + 1 from the class token on.
    Returns a LongTensor of length height * width (+ 1 with a class token).
    """
    patches = torch.arange(height * width).view(height, width)
    patches = (patches.t() if column_major else patches).reshape(-1)
    if cls_position is None:
        return patches
    sequence_index = patches + (patches >= cls_position).long()  # patch j -> its index in the sequence
    return torch.cat([sequence_index[:cls_position], torch.tensor([cls_position]), sequence_index[cls_position:]])


def scan_orders(scan: str, layer: int, height: int, width: int, cls_position: int | None) -> list[Tensor]:
    """The orders that layer `layer` reads with under `scan` ("alternate" and "cross"; see module docstring)."""
    row = grid_order(height, width, False, cls_position)
    if scan == "alternate":
        return [row if layer % 2 == 0 else row.flip(0)]
    if scan == "cross":
        column = grid_order(height, width, True, cls_position)
        return [row, column, row.flip(0), column.flip(0)]
    raise ValueError(f"scan_orders: scan must be 'alternate' or 'cross', got {scan!r}")


class ScannedMixer(core.Mixer):
    """Sum over scan orders of a causal mixer run on the reordered tokens, put back in place.

    y = sum_d mixers[d](x[:, order_d])[:, inverse(order_d)], over x: (B, N, d_model) with N = len(order_d).
    A padding mask (B, N) is reordered with x. Non-causal unless it is a single identity order.
    """

    def __init__(self, mixers: Sequence[core.Mixer], orders: Sequence[Tensor]) -> None:
        super().__init__(mixers[0].d_model)
        if len(mixers) != len(orders):
            raise ValueError(f"ScannedMixer: {len(mixers)} mixers for {len(orders)} orders; give one mixer per order")
        self.mixers = nn.ModuleList(mixers)
        self.register_buffer("orders", torch.stack(list(orders)), persistent=False)  # [D, N]
        self.register_buffer("inverses", torch.stack([inverse_order(o) for o in orders]), persistent=False)
        identity = len(orders) == 1 and bool((orders[0] == torch.arange(len(orders[0]))).all())
        self.causal = identity and mixers[0].causal

    def mix(self, x: Tensor, state: Any, mask: Tensor | None) -> tuple[Tensor, Any]:
        if x.shape[1] != self.orders.shape[1]:
            raise ValueError(
                f"ScannedMixer was built for {self.orders.shape[1]} tokens, got {x.shape[1]}; "
                "the image size or class token differs from the model's"
            )
        y, new_state = torch.zeros_like(x), None
        for mixer, order, inverse in zip(self.mixers, self.orders, self.inverses):
            part, new_state = mixer(x[:, order], state, None if mask is None else mask[:, order])
            y = y + part[:, inverse]
        return y, new_state if self.causal else None


def scanned(scan: str, build: Callable[[], core.Mixer], layer: int, grid: tuple[int, int], cls_position: int | None) -> core.Mixer:
    """Layer `layer`'s mixer under `scan`: `build()` makes one mixer (called once per direction).
    Non-causal mixers are returned as they are."""
    if scan not in SCANS:
        raise ValueError(f"scan={scan!r} is not one of {', '.join(SCANS)}; pass e.g. model.scan=bidirectional")
    mixer = build()
    if not mixer.causal or scan == "none":
        return mixer
    if scan == "bidirectional":
        return core.Bidirectional(mixer, build())
    orders = scan_orders(scan, layer, *grid, cls_position)
    return ScannedMixer([mixer] + [build() for _ in orders[1:]], orders)
