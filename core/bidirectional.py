"""Make any causal mixer non-causal: one pass forward in time, one pass backward, combined."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from core.mixer import Mixer


class Bidirectional(Mixer):
    """y = combine(forward_mixer(x), flip(backward_mixer(flip(x)))), over x: (B, T, d_model).

    combine="add" sums the two directions; "concat" concatenates them and projects 2*d_model -> d_model.
    A padding mask is flipped with x, and masked tokens are absent for the mixers, so each sequence is
    reversed within its own valid tokens. Non-causal: no streaming state.
    """

    causal = False

    def __init__(self, forward_mixer: Mixer, backward_mixer: Mixer, combine: str = "add") -> None:
        super().__init__(forward_mixer.d_model)
        if backward_mixer.d_model != forward_mixer.d_model:
            raise ValueError("Bidirectional: both mixers must have the same d_model")
        if combine not in ("add", "concat"):
            raise ValueError(f"Bidirectional combine must be 'add' or 'concat', got {combine!r}")
        self.forward_mixer = forward_mixer
        self.backward_mixer = backward_mixer
        self.combine = combine
        self.proj = nn.Linear(2 * self.d_model, self.d_model, bias=False) if combine == "concat" else None

    def mix(self, x: Tensor, state: None, mask: Tensor | None) -> tuple[Tensor, None]:
        y_fwd, _ = self.forward_mixer(x, mask=mask)
        flipped_mask = None if mask is None else mask.flip(1)
        y_bwd, _ = self.backward_mixer(x.flip(1), mask=flipped_mask)
        y_bwd = y_bwd.flip(1)
        if self.proj is None:
            return y_fwd + y_bwd, None
        return self.proj(torch.cat([y_fwd, y_bwd], dim=-1)), None
