"""``gateway_limits_store_up{store}``: whether the shared limit counters (SQLite or Redis) answer."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .store import CounterStore

__all__ = ["StoreUpCollector"]


class StoreUpCollector(Collector):
    """``gateway_limits_store_up{store}``: 1 while the shared counters answer, 0 while limits run on local ones.

    Read at scrape time from the store itself: nothing on the request path.
    """

    def __init__(self, store: CounterStore) -> None:
        self.store = store

    def collect(self) -> Iterable[GaugeMetricFamily]:
        help_text = "Whether the shared limit counters (SQLite or Redis) are reachable."
        gauge = GaugeMetricFamily("gateway_limits_store_up", help_text, labels=["store"])
        gauge.add_metric([self.store.name], 1.0 if self.store.status()[0] else 0.0)
        yield gauge
