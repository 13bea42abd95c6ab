"""Name -> mixer class registry, so configs can say `mixer: gated_deltanet`."""
from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from core.mixer import Mixer


@dataclass(frozen=True)
class MixerEntry:
    cls: type
    paper: str


_REGISTRY: dict[str, MixerEntry] = {}


def register_mixer(name: str, paper: str) -> Callable[[type], type]:
    """Class decorator: make a `Mixer` subclass buildable by `name`; `paper` cites its source."""

    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"mixer name {name!r} is already registered by {_REGISTRY[name].cls.__qualname__}")
        _REGISTRY[name] = MixerEntry(cls, paper)
        cls.registered_name = name
        return cls

    return decorate


def _load_builtin_mixers() -> None:
    importlib.import_module("core.mixers")


def available_mixers() -> list[str]:
    """Sorted names accepted by `build_mixer`."""
    _load_builtin_mixers()
    return sorted(_REGISTRY)


def mixer_papers() -> dict[str, str]:
    """Name -> paper reference of every registered mixer."""
    _load_builtin_mixers()
    return {name: _REGISTRY[name].paper for name in sorted(_REGISTRY)}


def build_mixer(name: str, d_model: int, **options: Any) -> "Mixer":
    """Build the mixer registered as `name` for width `d_model`.

    Raises ValueError for an unknown name (listing the available ones) or an unknown option
    (listing the options the mixer accepts).
    """
    _load_builtin_mixers()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown mixer {name!r}.{hint} Available mixers: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name].cls
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [p for p in params if p not in ("self", "d_model")]
    unknown = sorted(set(options) - set(allowed))
    if unknown and not accepts_any:
        raise ValueError(f"mixer {name!r} got unknown option(s) {unknown}; it accepts: {', '.join(allowed)}")
    return cls(d_model, **options)
