"""Window arithmetic and the wording of resets: pure functions, no state, no I/O.

Limits count in fixed windows aligned to the wall clock: a minute window is ``[k*60, (k+1)*60)``
seconds since the epoch, a day window a UTC day. Why fixed and not sliding: a fixed window is one
counter per client per window, which a shared store (SQLite, Redis) can hold and increment
atomically, and every process agrees on the current window without talking to the others. The
price is a burst at the boundary (up to twice the per-minute allowance across two adjacent
windows); ``Retry-After`` stays honest because a refused request is admitted as soon as its window
ends. Tests shorten the windows (``WindowLengths``) instead of waiting a minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_LENGTHS", "WindowLengths", "format_reset", "retry_after_seconds", "window_bounds"]


@dataclass(frozen=True, slots=True)
class WindowLengths:
    """How long the "minute" and "day" windows are, in seconds (60 and 86400 except in tests).

    Whole seconds: windows then end on whole seconds, which lets the engine write a reset once a second.
    """

    minute: float = 60.0
    day: float = 86400.0

    def __post_init__(self) -> None:
        for length in (self.minute, self.day):
            if length < 1 or length != int(length):
                raise ValueError("window lengths must be whole seconds, at least 1")


DEFAULT_LENGTHS = WindowLengths()


def window_bounds(now: float, length: float) -> tuple[int, float]:
    """(index, end) of the window of ``length`` seconds that holds wall-clock time ``now``."""
    index = int(now // length)
    return index, (index + 1) * length


def retry_after_seconds(wait: float) -> int:
    """The ``Retry-After`` value for a wait of ``wait`` seconds: whole seconds, rounded up, at least 1.

    Rounded up so that a client waiting that long is admitted (never told too early).
    """
    return max(1, math.ceil(wait - 1e-9))


def format_reset(wait: float) -> str:
    """A wait as OpenAI's ``x-ratelimit-reset-*`` headers write it: ``250ms``, ``6s``, ``1m30s``, ``5h3m2s``.

    Under a second it is milliseconds (rounded up); otherwise whole seconds, rounded up.
    """
    if wait <= 0:
        return "0s"
    if wait < 0.999:
        return f"{math.ceil(wait * 1000 - 1e-6)}ms"
    total = math.ceil(wait - 1e-9)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"
