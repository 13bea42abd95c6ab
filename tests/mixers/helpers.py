"""Helpers shared by the mixer tests: seeded inputs, chunked calls with the state, comparisons."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run_in_pieces(mixer: torch.nn.Module, x: torch.Tensor, cuts: list[int]) -> tuple[torch.Tensor, Any]:
    """Call `mixer` on x (B, T, D) split at `cuts`, passing the state on -> (concatenated y, last state)."""
    outputs, state, start = [], None, 0
    for stop in cuts + [x.shape[1]]:
        y, state = mixer(x[:, start:stop], state)
        outputs.append(y)
        start = stop
    return torch.cat(outputs, dim=1), state


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-9, msg: str = "") -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{msg} {m}".strip())


def assert_states_close(a: Any, b: Any, row: int | None = None, tol: float = 1e-9) -> None:
    """Field-by-field equality of two state dataclasses (row `row` of a against all of b if given)."""
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        fa, fb = getattr(a, field.name), getattr(b, field.name)
        assert (fa is None) == (fb is None), field.name
        if fa is not None:
            fa = fa[row : row + 1] if row is not None else fa
            torch.testing.assert_close(fa, fb, rtol=tol, atol=tol, msg=lambda m: f"state.{field.name}: {m}")
