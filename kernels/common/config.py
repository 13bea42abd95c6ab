"""Launch settings shared by the kernels: interpreter detection and autotune config lists."""

import functools
import os

import torch
import triton
from torch import Tensor


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def length_args(*names: str) -> list[str]:
    """A kernel's `do_not_specialize` list for its length arguments (T, row counts): all of them, so that one compiled
    kernel serves every length; none with SEQMIX_SPECIALISE_LENGTHS=1 (read at import), so that Triton compiles one
    variant per class of each (1, a multiple of 16, other), which can save registers (`python -m
    benchmarks.kernels.registers --specialise-lengths 2048`) and time (the Gluon dQ/dK pass: 692 -> 481 us)."""
    return [] if os.environ.get("SEQMIX_SPECIALISE_LENGTHS", "0") not in ("", "0") else list(names)


def warp_specialized() -> bool:
    """Whether Hopper GPUs run the Gluon (warp-specialized) kernels where they exist; SEQMIX_GLUON=0 keeps them on
    the Triton kernels (for comparisons)."""
    return not interpreting() and os.environ.get("SEQMIX_GLUON", "1") != "0"


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The GPU's multiprocessor count (launch rules depend on it); 1 on CPU (the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def autotuning() -> bool:
    """Autotune unless interpreting or SEQMIX_TRITON_AUTOTUNE=0 (then the first config of each list is used)."""
    return not interpreting() and os.environ.get("SEQMIX_TRITON_AUTOTUNE", "1") != "0"


def all_configs(warps: tuple[int, ...], stages: tuple[int, ...]) -> list[triton.Config]:
    """Every (num_warps, num_stages) pair; the first is the default and must be a good choice on its own."""
    return [triton.Config({}, num_warps=w, num_stages=s) for w in warps for s in stages]


def configs(choices: list[triton.Config]) -> list[triton.Config]:
    """The configs to autotune over: all of them, or only the default when not autotuning."""
    return choices if autotuning() else choices[:1]


def keep_states() -> bool:
    """Whether a forward under autograd keeps the chunks' states h (and the delta rule's U~) for its backward, which
    then runs no state pass of its own (H100, B8 T4096 H16 D128: Gated DeltaNet 3.37 -> 3.03 ms, scalar decay 1.91 ->
    1.71 ms) but holds K V * 2 / C bytes more per token and head (U~: 2 V more) from forward to backward, in every
    layer. SEQMIX_RECOMPUTE_STATES=1 recomputes them in the backward instead, as fla does, for memory-bound training."""
    return os.environ.get("SEQMIX_RECOMPUTE_STATES", "0") in ("", "0")


def aligned_rows(x: Tensor) -> Tensor:
    """x (..., C) with a unit channel stride and every other stride a multiple of 16 elements, copied only when it
    has not: Triton specialises such strides and then loads 16 bytes at a time. A slice of a projection whose width is
    no multiple of 16 (Gated DeltaNet's q, k, v of 772 columns) loads 2 bytes at a time otherwise: a ShortConv forward +
    backward took 1.19 ms from such a slice against 0.82 ms from a contiguous input (H100, session 15)."""
    if x.stride(-1) == 1 and all(s % 16 == 0 for s in x.stride()[:-1]):
        return x
    return x.contiguous()
