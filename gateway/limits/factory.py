"""The one place a ``CounterStore`` is chosen from ``limits:``; the engine only sees the protocol.

``limits.redis_url`` set -> Redis (every replica and worker), else SQLite at ``limits.state_path``
(``--workers`` on one machine, daily usage surviving a restart; the file appears with the first
count). Both are ``shared.SharedStore``: local leases over the shared counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import LimitsConfig
from .redis_store import RedisCounters
from .shared import SharedStore
from .sqlite_store import SqliteCounters
from .store import CounterStore

__all__ = ["make_store"]


def make_store(config: LimitsConfig, clock: Callable[[], float] = time.time) -> CounterStore:
    """The store ``config`` asks for (not started: the app's lifecycle calls ``start``/``close``)."""
    if config.redis_url:
        return SharedStore(RedisCounters(config.redis_url), on_error=config.on_redis_error)
    # A local file that fails (disk full, permissions) is logged and limits go on in memory.
    return SharedStore(SqliteCounters(config.state_path), on_error="allow")
