"""The two faces of every public op: a `torch.library` custom op (opaque to torch.compile, with fake
implementations) and, for eager calls, a `torch.autograd.Function` over the same forward and backward.

The custom op's Python dispatch costs about twice the CPU time of an autograd.Function per forward and backward:
about 0.2 ms more per call on the H100 host (session 15). A dual-path speech masker makes about 50 such calls per
training step and is CPU-bound at B16 x 2 s: through the custom ops its step took 63.5 ms (Gated DeltaNet) and
58.3 ms (Mamba-2), through Functions 53.8 and 48.5 ms (interleaved on one machine).
"""

from collections.abc import Callable

import torch


def eager_function(name: str, forward: Callable, setup_context: Callable, backward: Callable) -> type[torch.autograd.Function]:
    """An autograd.Function that runs `forward(*inputs)` (the custom op's implementation), saves what the custom op's
    `setup_context(ctx, inputs, output)` saves, and differentiates with `backward(ctx, *grads)` (the custom op's
    autograd formula, calling the backward implementation directly rather than its custom op)."""

    def function_forward(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(function_forward), "backward": staticmethod(backward)})


def call(op: Callable, function: type[torch.autograd.Function], *args):
    """The custom op under torch.compile, the Function otherwise."""
    return op(*args) if torch.compiler.is_compiling() else function.apply(*args)


def saved_inputs_autograd(tensors: int) -> tuple[Callable, Callable]:
    """(setup_context, backward) of an op whose first `tensors` inputs are tensors (or None) and whose other inputs
    are settings, with one output: the tensors are saved, the settings kept, and `backward(ctx, dy, grads=...)` calls
    grads(*tensors, *settings, dy) for one gradient per tensor input (empty where the input was None), giving None
    for the Nones and the settings. The layer ops' shared autograd formula, for their custom op (grads: the backward
    custom op) and their Function (grads: its implementation)."""

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs[:tensors])
        ctx.settings = inputs[tensors:]

    def backward(ctx, dy, grads: Callable):
        saved = ctx.saved_tensors
        computed = grads(*saved, *ctx.settings, dy)
        return *(None if t is None else g for t, g in zip(saved, computed)), *(None,) * len(ctx.settings)

    return setup_context, backward


def fake_grads(ref: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """A backward custom op's fake outputs: an empty tensor shaped like each input, a 0-element one for each None."""
    return empty_for_none(ref, *(None if t is None else t.new_empty(t.shape) for t in tensors))


def empty_for_none(ref: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The tensors, each None replaced by a distinct empty tensor like `ref` (a custom op cannot return None, and its
    outputs may not alias)."""
    return tuple(ref.new_empty(0) if t is None else t for t in tensors)
