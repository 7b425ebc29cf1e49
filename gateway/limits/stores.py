"""Which shared counter store a configuration gets, and the gauge that says whether it is reachable.

``limits.redis_url`` set: Redis, shared by every replica. Otherwise the SQLite file at
``limits.state_path``: shared by ``--workers`` on this machine and kept across restarts. Callers
build a store only when some limit is configured, so the file is created only then.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import LimitsConfig
from .redis_store import RedisCounters
from .shared import SharedStore
from .sqlite_store import SqliteCounters

__all__ = ["StoreUpCollector", "open_shared_store"]


def open_shared_store(limits: LimitsConfig) -> SharedStore:
    """The store for ``limits`` (not started: the app's lifecycle calls ``start`` and ``close``)."""
    if limits.redis_url:
        return SharedStore(RedisCounters(limits.redis_url), on_error=limits.on_redis_error)
    # A local file that fails (disk full, permissions) is logged and limits go on in memory.
    return SharedStore(SqliteCounters(limits.state_path), on_error="allow")


class StoreUpCollector(Collector):
    """``gateway_limits_store_up{store}``: 1 while the shared counters answer, 0 while limits run on local ones.

    Read at scrape time from the store itself: nothing on the request path.
    """

    def __init__(self, store: SharedStore) -> None:
        self.store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        help_text = "Whether the shared limit counters (SQLite or Redis) are reachable."
        gauge = GaugeMetricFamily("gateway_limits_store_up", help_text, labels=["store"])
        gauge.add_metric([self.store.name], 1.0 if self.store.up else 0.0)
        yield gauge
