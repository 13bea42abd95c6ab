"""Pick an implementation of an op by name.

Implementations register themselves with `register(op, name, ...)`; an op calls
`resolve(op, impl, device)` and never names its implementations, so a new one (a Triton kernel on
CUDA, say) is added by registering it with a higher priority and a `supports` test.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

Fn = TypeVar("Fn", bound=Callable[..., object])
DeviceTest = Callable[[torch.device], bool]


def any_device(device: torch.device) -> bool:
    """`supports` test of an implementation written in plain PyTorch: runs everywhere."""
    return True


@dataclass(frozen=True)
class Implementation:
    name: str
    fn: Callable[..., object]
    priority: int  # impl=None picks the highest priority among those that support the device
    supports: DeviceTest


_REGISTRY: dict[str, dict[str, Implementation]] = {}


def register(op: str, name: str, *, priority: int = 0, supports: DeviceTest = any_device) -> Callable[[Fn], Fn]:
    """Decorator registering `fn` as implementation `name` of `op`; returns `fn` unchanged.

    Example: `@register("linear_recurrence", "triton", priority=2, supports=lambda d: d.type == "cuda")`.
    """

    def decorator(fn: Fn) -> Fn:
        impls = _REGISTRY.setdefault(op, {})
        if name in impls:
            raise ValueError(f"implementation {name!r} of op {op!r} is registered twice; pick another name")
        impls[name] = Implementation(name, fn, priority, supports)
        return fn

    return decorator


def _impls(op: str) -> dict[str, Implementation]:
    if op not in _REGISTRY:
        raise ValueError(f"no implementation is registered for op {op!r}; registered ops: {sorted(_REGISTRY)}")
    return _REGISTRY[op]


def implementations(op: str, device: torch.device | None = None) -> list[str]:
    """Names of the implementations of `op` (those that run on `device` if given), best first."""
    impls = [i for i in _impls(op).values() if device is None or i.supports(device)]
    return [i.name for i in sorted(impls, key=lambda i: -i.priority)]


def resolve(op: str, impl: str | None, device: torch.device) -> Callable[..., object]:
    """The implementation `impl` of `op`, or the best one that runs on `device` when `impl` is None."""
    impls = _impls(op)
    usable = implementations(op, device)
    if impl is None:
        if not usable:
            raise ValueError(f"no implementation of {op} runs on device {device}; registered: {sorted(impls)}")
        return impls[usable[0]].fn
    if impl not in impls:
        raise ValueError(
            f"unknown implementation {impl!r} of {op}; available: {', '.join(sorted(impls))} "
            "(or impl=None for the best one on the inputs' device)"
        )
    if impl not in usable:
        raise ValueError(
            f"implementation {impl!r} of {op} does not run on device {device}; "
            f"available there: {', '.join(usable) or 'none'}"
        )
    return impls[impl].fn
