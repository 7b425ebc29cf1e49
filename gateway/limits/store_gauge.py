"""``gateway_limits_store_up{store}``: whether the shared limit counters (SQLite or Redis) answer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .store import CounterStore

__all__ = ["StoreUpCollector"]


class StoreUpCollector(Collector):
    """``gateway_limits_store_up{store}``: 1 while the shared counters answer, 0 while limits run on local ones.

    Read at scrape time from whichever store is current (a reload may turn limits on or off):
    nothing on the request path, and no series while no client has a limit.
    """

    def __init__(self, current: Callable[[], CounterStore | None]) -> None:
        self.current = current

    def collect(self) -> Iterable[GaugeMetricFamily]:
        store = self.current()
        if store is None:
            return
        help_text = "Whether the shared limit counters (SQLite or Redis) are reachable."
        gauge = GaugeMetricFamily("gateway_limits_store_up", help_text, labels=["store"])
        gauge.add_metric([store.name], 1.0 if store.status()[0] else 0.0)
        yield gauge
