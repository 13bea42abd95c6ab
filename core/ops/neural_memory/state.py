"""The recurrent state of the neural-memory op."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class NeuralMemoryState:
    """Where a sequence stands, float32 (float64 for float64 inputs); shapes per layer l of the memory.

    weights: [(B, H, *shape_l)] the memory after the last token (for retention "lq" the accumulator A).
    momentum: [(B, H, *shape_l)] the surprise S (optimizer "momentum" or "muon"), else None.
    anchor: [(B, H, *shape_l)] the weights at the last completed chunk boundary, where every gradient
        of the current chunk is taken (spec 0.1); equals `weights` on a boundary.
    offset: (B,) int64, tokens seen modulo the chunk size (the chunk grid is fixed to absolute positions).
    window_keys (B, c-1, H, key_dim), window_values (B, c-1, H, value_dim), window_gates (B, c-1, H),
        window_deltas (B, c-1, H): the last c-1 tokens of the Omega window (gate 0 = no token), or
        None when window c = 1.
    """

    weights: list[Tensor]
    momentum: list[Tensor] | None
    anchor: list[Tensor]
    offset: Tensor
    window_keys: Tensor | None = None
    window_values: Tensor | None = None
    window_gates: Tensor | None = None
    window_deltas: Tensor | None = None
