"""Per-request counters kept in plain dicts and turned into Prometheus families only when scraped.

Why: prometheus-client's ``inc``/``observe`` take a lock and walk their buckets in Python on every
call, several times per request; on the gateway's hot path that was the largest share of what
metrics cost. Here a finished request is a handful of dict updates and one ``bisect``; the
cumulative buckets are built by ``collect`` when someone scrapes. Single-process only: with
``--workers N`` the values must live in prometheus-client's shared files (``metrics.py`` keeps its
ordinary instruments for that mode).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["COLD_LOADS_DOC", "COLD_LOADS_NAME", "QUEUE_WAIT_DOC", "Tally"]

QUEUE_WAIT_DOC = "Time requests waited for a slot at a backend's max_concurrency (only requests that waited)."

Key = tuple[str, ...]


class _Histogram:
    """Bucket counts (non-cumulative, last one is +Inf) and the sum, per label key."""

    __slots__ = ("bounds", "doc", "labels", "name", "series")

    def __init__(self, name: str, doc: str, labels: Sequence[str], bounds: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.labels = list(labels)
        self.bounds = tuple(float(b) for b in bounds)
        self.series: dict[Key, list[float]] = {}

    def row(self, key: Key) -> list[float]:
        """The series for ``key``, created empty (it is exported with zero counts, as a labelled child is)."""
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0.0] * (len(self.bounds) + 2)  # buckets..., +Inf, sum
        return row

    def observe(self, key: Key, value: float) -> None:
        row = self.row(key)
        row[bisect_left(self.bounds, value)] += 1
        row[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        edges = [*(repr(b) if b != int(b) else f"{b:.1f}" for b in self.bounds), "+Inf"]
        for key, row in list(self.series.items()):
            running = 0.0
            buckets = []
            for edge, count in zip(edges, row[:-1], strict=True):
                running += count
                buckets.append((edge, running))
            family.add_metric(list(key), buckets, row[-1])
        return family


COLD_LOADS_NAME = "gateway_cold_loads"
COLD_LOADS_DOC = "Requests sent to an Ollama backend that did not have the model loaded (gateway's knowledge)."


class Tally(Collector):
    """The request, latency, token and generation-speed series of ``metrics.py``, scrape-time built."""

    def __init__(self, latency_bounds: Sequence[float], speed_bounds: Sequence[float]) -> None:
        self.requests: dict[Key, float] = {}
        self.tokens: dict[Key, float] = {}
        self.cold_loads: dict[Key, float] = {}  # (backend, model)
        self.duration = _Histogram(
            "gateway_request_duration_seconds", "Time from request arrival to the last byte relayed.",
            ("backend", "model", "endpoint"), latency_bounds,
        )  # fmt: skip
        self.ttfb = _Histogram(
            "gateway_time_to_first_byte_seconds", "Time from request arrival to the first body byte relayed.",
            ("backend", "model", "endpoint"), latency_bounds,
        )  # fmt: skip
        self.speed = _Histogram(
            "gateway_generation_tokens_per_second", "Generation speed reported by Ollama (eval_count/eval_duration).",
            ("backend", "model"), speed_bounds,
        )  # fmt: skip
        self.queue_wait = _Histogram(
            "gateway_queue_wait_seconds", QUEUE_WAIT_DOC, ("backend",), latency_bounds,
        )  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gateway_requests", "Requests answered, by backend, model, endpoint, status code and client.",
            labels=["backend", "model", "endpoint", "code", "client"],
        )  # fmt: skip
        for key, value in list(self.requests.items()):
            requests.add_metric(list(key), value)
        yield requests
        yield self.duration.family()
        yield self.ttfb.family()
        tokens = CounterMetricFamily(
            "gateway_tokens", "Tokens reported by backends (kind: prompt or completion).",
            labels=["backend", "model", "client", "kind"],
        )  # fmt: skip
        for key, value in list(self.tokens.items()):
            tokens.add_metric(list(key), value)
        yield tokens
        cold = CounterMetricFamily(COLD_LOADS_NAME, COLD_LOADS_DOC, labels=["backend", "model"])
        for key, value in list(self.cold_loads.items()):
            cold.add_metric(list(key), value)
        yield cold
        yield self.speed.family()
        yield self.queue_wait.family()
