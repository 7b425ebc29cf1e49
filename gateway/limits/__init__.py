"""Per-client limits: requests and tokens per window, concurrent requests, and where counters live.

Modules, one job each: ``store`` (the counter protocol and the in-memory store), ``factory``
(which store a config gets).
"""

from __future__ import annotations

from .factory import make_store
from .store import CounterStore, MemoryStore, Window

__all__ = ["CounterStore", "MemoryStore", "Window", "make_store"]
