"""The one place the limits machinery is built from config: which ``CounterStore``, and whether a
``Limiter`` is needed at all (no limit anywhere: none, and the proxy pays nothing).

``limits.redis_url`` set -> Redis (every replica and worker), else SQLite at ``limits.state_path``
(``--workers`` on one machine, daily usage surviving a restart; the file appears with the first
count). Both are ``shared.SharedStore``: local leases over the shared counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import ApiKeyConfig, BasicUserConfig, GatewayConfig, LimitsConfig
from .engine import Limiter, has_limits
from .redis_store import RedisCounters
from .shared import SharedStore
from .sqlite_store import SqliteCounters
from .store import CounterStore

__all__ = ["limits_configured", "make_limiter", "make_store"]


def make_store(config: LimitsConfig, clock: Callable[[], float] = time.time) -> CounterStore:
    """The store ``config`` asks for (not started: the app's lifecycle calls ``start``/``close``)."""
    if config.redis_url:
        return SharedStore(RedisCounters(config.redis_url), on_error=config.on_redis_error)
    # A local file that fails (disk full, permissions) is logged and limits go on in memory.
    return SharedStore(SqliteCounters(config.state_path), on_error="allow")


def limits_configured(config: GatewayConfig) -> bool:
    """Whether any client (the default, or a key or user of its own) has a limit the engine enforces."""
    if has_limits(config.limits.default):
        return True
    auth = config.auth
    if auth is None:
        return False
    entries: tuple[ApiKeyConfig | BasicUserConfig, ...] = (*auth.api_keys, *auth.basic_users)
    return any(e.limits is not None and has_limits(e.limits) for e in entries)


def make_limiter(config: GatewayConfig, on_refused: Callable[[str, str], None] | None = None) -> Limiter | None:
    """A Limiter over the configured store, or None when no client has any limit."""
    if not limits_configured(config):
        return None
    return Limiter(config, make_store(config.limits), on_refused=on_refused)
