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


def empty_for_none(ref: torch.Tensor, *tensors: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The tensors, each None replaced by a distinct empty tensor like `ref` (a custom op cannot return None, and its
    outputs may not alias)."""
    return tuple(ref.new_empty(0) if t is None else t for t in tensors)
