"""Time budgets for measurements (an alarm that interrupts Python code) and how failures are classified."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import torch


class TimeBudgetExceeded(Exception):
    pass


_alarm = {"fired": False, "what": ""}


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise TimeBudgetExceeded in the main thread once `seconds` have passed (None: no limit).

    SIGALRM runs its handler between Python bytecodes of the main thread, so it interrupts Python
    loops (Triton's autotuner, do_bench) but not a single long C call. If the exception is swallowed
    (raised inside a __del__, say), the alarm fires again every second until the block ends.
    """
    _alarm.update(fired=False, what=f"{what}: over its {seconds:g} s budget" if seconds and seconds > 0 else f"{what}: no time left")
    if seconds is None:
        yield
        return
    if seconds <= 0:
        _alarm["fired"] = True
        raise TimeBudgetExceeded(_alarm["what"])

    def handler(signum, frame):
        _alarm["fired"] = True
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        raise TimeBudgetExceeded(_alarm["what"])

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def classify(error: BaseException, impl: str) -> str:
    """Status of a failed stage: time budget, out of memory, refused (fla raised), or error."""
    if isinstance(error, TimeBudgetExceeded) or _alarm["fired"]:
        return "time budget"
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error):
        return "out of memory"
    return "refused" if impl == "fla" else "error"


def message(error: BaseException) -> str:
    """One line, at most 400 characters; a time-budget stop (possibly wrapped by the code it interrupted) says what ran out."""
    if isinstance(error, TimeBudgetExceeded) or _alarm["fired"]:
        return f"time budget: {_alarm['what']}"
    return " ".join(f"{type(error).__name__}: {error}".split())[:400]
