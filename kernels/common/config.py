"""Launch settings shared by the kernels: interpreter detection and autotune config lists."""

import os

import triton


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotuning() -> bool:
    """Autotune unless interpreting or SEQMIX_TRITON_AUTOTUNE=0 (then the first config of each list is used)."""
    return not interpreting() and os.environ.get("SEQMIX_TRITON_AUTOTUNE", "1") != "0"


def all_configs(warps: tuple[int, ...], stages: tuple[int, ...]) -> list[triton.Config]:
    """Every (num_warps, num_stages) pair; the first is the default and must be a good choice on its own."""
    return [triton.Config({}, num_warps=w, num_stages=s) for w in warps for s in stages]


def configs(choices: list[triton.Config]) -> list[triton.Config]:
    """The configs to autotune over: all of them, or only the default when not autotuning."""
    return choices if autotuning() else choices[:1]
