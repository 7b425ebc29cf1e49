"""The status page's numbers, read from the metrics registry's collected families.

Pure functions over prometheus-client ``Metric`` families (no registry, no I/O): ``Metrics.snapshot``
collects and caches, ``summarize`` adds up. Kept apart from ``metrics.py``, which owns the
instruments, because this is a reader of what they export.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric

__all__ = ["summarize"]


def summarize(families: Mapping[str, Metric], backend_names: Iterable[str]) -> dict[str, Any]:
    """Totals per backend, model and client and TTFB/speed quantiles per model, from collected families.

    Quantiles are interpolated within histogram buckets, as PromQL's ``histogram_quantile`` does;
    ``None`` when there is no data. ``errors`` counts responses with status >= 500.
    """

    def blank() -> dict[str, Any]:
        return {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0}

    totals = {**blank(), "in_flight": 0}
    backends: dict[str, dict[str, Any]] = {name: {"up": None, "in_flight": 0, **blank()} for name in backend_names}
    models: dict[str, dict[str, Any]] = {}
    clients: dict[str, dict[str, Any]] = {}

    def rows(backend: str, model: str, client: str) -> list[dict[str, Any]]:
        b = backends.setdefault(backend, {"up": None, "in_flight": 0, **blank()})
        return [totals, b, models.setdefault(model, blank()), clients.setdefault(client, blank())]

    for sample in _samples(families, "gateway_requests", "gateway_requests_total"):
        labels = sample.labels
        count = int(sample.value)
        code = labels["code"]
        error = count if code.isdigit() and int(code) >= 500 else 0
        for row in rows(labels["backend"], labels["model"], labels["client"]):
            row["requests"] += count
            row["errors"] += error
    for sample in _samples(families, "gateway_tokens", "gateway_tokens_total"):
        labels = sample.labels
        field = "prompt_tokens" if labels["kind"] == "prompt" else "completion_tokens"
        for row in rows(labels["backend"], labels["model"], labels["client"]):
            row[field] += int(sample.value)
    for sample in _samples(families, "gateway_in_flight_requests", "gateway_in_flight_requests"):
        count = int(sample.value)
        backends.setdefault(sample.labels["backend"], {"up": None, "in_flight": 0, **blank()})["in_flight"] += count
        totals["in_flight"] += count
    for sample in _samples(families, "gateway_backend_up", "gateway_backend_up"):
        backends.setdefault(sample.labels["backend"], {"up": None, "in_flight": 0, **blank()})["up"] = sample.value >= 1

    ttfb = _buckets_by_model(families, "gateway_time_to_first_byte_seconds")
    speed = _buckets_by_model(families, "gateway_generation_tokens_per_second")
    for model, row in models.items():
        row["ttfb_p50"] = _quantile(0.5, ttfb.get(model))
        row["ttfb_p95"] = _quantile(0.95, ttfb.get(model))
        row["tokens_per_second_p50"] = _quantile(0.5, speed.get(model))
    return {"time": time.time(), "totals": totals, "backends": backends, "models": models, "clients": clients}


def _samples(families: Mapping[str, Metric], family: str, name: str) -> Iterable[Any]:
    metric = families.get(family)
    if metric is None:
        return ()
    return (s for s in metric.samples if s.name == name)


def _buckets_by_model(families: Mapping[str, Metric], family: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts summed over every label but ``model``: {model: {le: count}}."""
    out: dict[str, dict[float, float]] = {}
    for sample in _samples(families, family, family + "_bucket"):
        per_model = out.setdefault(sample.labels["model"], {})
        bound = float(sample.labels["le"])
        per_model[bound] = per_model.get(bound, 0.0) + sample.value
    return out


def _quantile(q: float, buckets: dict[float, float] | None) -> float | None:
    """Linear interpolation within the bucket holding rank ``q * count`` (histogram_quantile)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is all that is known
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
