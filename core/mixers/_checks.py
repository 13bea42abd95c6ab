"""Validation of mixer options shared by the mixers."""
from __future__ import annotations

from collections.abc import Sequence


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(mixer: str, option: str, value: object) -> None:
    """Raise a ValueError naming the mixer and option unless value is an int >= 1."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{mixer}: {option} must be a positive int, got {value!r}")


def check_nonnegative_int(mixer: str, option: str, value: object) -> None:
    """Raise a ValueError naming the mixer and option unless value is an int >= 0 (0 = the feature is off)."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{mixer}: {option} must be an int >= 0 (0 = none), got {value!r}")


def check_choice(mixer: str, option: str, value: object, allowed: Sequence[str]) -> None:
    """Raise a ValueError listing the allowed values unless value is one of them."""
    if value not in allowed:
        raise ValueError(f"{mixer}: {option} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def check_divides(mixer: str, what: str, width: int, option: str, value: int) -> None:
    """Raise a ValueError unless `value` (the option) divides `width` (described by `what`)."""
    if width % value:
        raise ValueError(f"{mixer}: {option}={value} must divide {what}={width}; pick a divisor of {width}")


def whole_width(mixer: str, option: str, d_model: int, factor: float) -> int:
    """d_model * factor as a positive int (an expanded inner width)."""
    width = d_model * factor
    if width < 1 or width != int(width):
        raise ValueError(f"{mixer}: d_model * {option} = {d_model} * {factor} must be a positive whole number")
    return int(width)
