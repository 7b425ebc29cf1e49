"""Per-client limits: requests and tokens per window, concurrent requests, and where counters live.

Modules, one job each: ``windows`` (window arithmetic and how resets are written), ``store`` (the
counter protocol and the in-memory store), ``engine`` (admit, refuse, charge), ``factory`` (what a
config gets), ``report`` (the effective limits as ``gateway check`` prints them).
"""

from __future__ import annotations

from .engine import ClientUsage, Limiter, Pending, has_limits
from .factory import limits_configured, make_limiter, make_store
from .store import CounterStore, MemoryStore, Window
from .windows import WindowLengths

__all__ = [
    "ClientUsage",
    "CounterStore",
    "Limiter",
    "MemoryStore",
    "Pending",
    "Window",
    "WindowLengths",
    "has_limits",
    "limits_configured",
    "make_limiter",
    "make_store",
]
