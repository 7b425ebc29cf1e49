"""The one place a ``CounterStore`` is chosen from ``limits:``; the engine only sees the protocol.

Today every configuration gets the in-memory store. The shared stores add their branch here:
``limits.redis_url`` set -> Redis (every replica and worker), else SQLite at ``limits.state_path``
(``--workers`` on one machine, daily usage surviving a restart).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import LimitsConfig
from .store import CounterStore, MemoryStore

__all__ = ["make_store"]


def make_store(config: LimitsConfig, clock: Callable[[], float] = time.time) -> CounterStore:
    """The store ``config`` asks for (not started: the app's lifecycle calls ``start``/``close``)."""
    return MemoryStore(clock)
