"""The mixer contract: `y, state = mixer(x, state=None, mask=None)` on `x` of shape (B, T, d_model)."""
from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor, nn


def check_sequence(x: Tensor, d_model: int, mask: Tensor | None) -> None:
    """Validate a mixer input `x` (B, T, d_model) and an optional padding mask (B, T), True = valid."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (batch, time, {d_model}), got {type(x).__name__}")
    if x.ndim != 3:
        raise ValueError(
            f"x must have shape (batch, time, d_model={d_model}), got {tuple(x.shape)} ({x.ndim} dims); "
            "add a batch dimension with x.unsqueeze(0) or reshape to 3 dims"
        )
    if x.shape[-1] != d_model:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension but this mixer has d_model={d_model}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (float32, bfloat16, ...), got {x.dtype}; use x.float()")
    if x.shape[1] == 0:
        raise ValueError("x has no time steps (T=0); pass at least one token")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor of shape (batch, time) with True for real tokens")
        if tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"mask must have shape (batch, time) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")


class Mixer(nn.Module, abc.ABC):
    """Base class of every sequence mixer.

    `forward(x, state=None, mask=None) -> (y, state)`:
      x: (B, T, d_model) -> y: (B, T, d_model).
      state: the mixer's typed state (None = start of sequence). Passing the returned state to the
        next call continues the sequence: splitting x anywhere gives the same y as one call.
      mask: optional (B, T) bool, True for real tokens. Masked tokens are treated as absent: they
        change neither the state nor the outputs of real tokens; their own outputs are unspecified.
    Subclasses implement `mix` with the same signature; inputs are validated here once.
    """

    causal: bool = True
    registered_name: str = ""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model

    def forward(self, x: Tensor, state: Any = None, mask: Tensor | None = None) -> tuple[Tensor, Any]:
        check_sequence(x, self.d_model, mask)
        if state is not None and not self.causal:
            raise ValueError(f"{type(self).__name__} is non-causal: it has no streaming state; call it with state=None")
        return self.mix(x, state, mask)

    @abc.abstractmethod
    def mix(self, x: Tensor, state: Any, mask: Tensor | None) -> tuple[Tensor, Any]:
        """The mixer's computation on validated inputs (see class docstring)."""
