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


def outputs_states_and_gradients(mixer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
    """(y, state, gradients of x and of every parameter) for a fixed random projection of y."""
    x = x.clone().requires_grad_()
    y, state = mixer(x)
    (y * randn(*y.shape, dtype=y.dtype, seed=5)).sum().backward()
    grads = {"x": x.grad, **{name: p.grad for name, p in mixer.named_parameters()}}
    return y, state, grads


def assert_same_results(a: tuple, b: tuple, tol: float = 1e-8) -> None:
    """Two `outputs_states_and_gradients` results agree: outputs, states and every gradient."""
    (y_a, s_a, g_a), (y_b, s_b, g_b) = a, b
    torch.testing.assert_close(y_a, y_b, rtol=tol, atol=tol)
    assert_states_close(s_a, s_b, tol=tol)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=tol, atol=tol, msg=lambda m: f"gradient of {name}: {m}")
