"""The gateway's Prometheus instruments, on a registry of their own (never the global default).

Owns the metric names and labels of the product contract, the label-value policy (``unknown`` model,
``none`` backend, a cap on distinct models) and the two read sides: ``render`` for ``/metrics`` and
``snapshot`` for the dashboard's JSON. Label values come only from configuration and routing
results that the proxy puts on the ``RequestRecord``; nothing here sees a raw request.

The hot path, ``record``, runs once per finished request: label children are cached by label
tuple, so it costs a few dict lookups and the observations, not ``.labels()`` calls.

With ``multiprocess_dir`` (``gateway serve --workers N``) values live in prometheus_client's
per-process mmap files in that directory; ``render`` and ``snapshot`` merge all workers' files.
That mode is process-wide by nature (prometheus_client decides it per process), so constructing
such a Metrics switches this process's value class; see ``prepare_multiprocess_dir`` and
``mark_process_dead`` for the supervisor's part.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from types import MappingProxyType
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_process_dead

from .record import RequestRecord
from .summary import summarize
from .tally import COLD_LOADS_DOC, COLD_LOADS_NAME, QUEUE_WAIT_DOC, Tally

__all__ = [
    "LATENCY_BUCKETS",
    "MAX_MODELS",
    "NO_BACKEND",
    "OTHER_MODEL",
    "TOKENS_PER_SECOND_BUCKETS",
    "UNKNOWN_MODEL",
    "Metrics",
    "mark_process_dead",
    "prepare_multiprocess_dir",
]

# LLM latencies run from milliseconds (a cached /api/show) to minutes (a cold 70B load).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TOKENS_PER_SECOND_BUCKETS = (1, 2.5, 5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000)
UNKNOWN_MODEL = "unknown"  # record.model == "": no model was routed
NO_BACKEND = "none"  # record.backend == "": no backend was chosen
OTHER_MODEL = "other"  # models beyond MAX_MODELS distinct names
MAX_MODELS = 500  # a guard against a label explosion should a caller ever pass unvetted names

# The same str object per status code: label keys hash cached strings instead of fresh ones.
_STATUS_TEXT: Mapping[int, str] = MappingProxyType({code: str(code) for code in range(100, 600)})
_REQUEST_LABELS = ("backend", "model", "endpoint", "code", "client")
_ROUTE_LABELS = ("backend", "model", "endpoint")


def prepare_multiprocess_dir(path: str) -> None:
    """Create ``path`` and remove stale ``*.db`` files; the supervisor calls it before starting workers.

    Left over from a previous run, they would be summed into this run's counters.
    """
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def mark_process_dead(pid: int, path: str) -> None:
    """Drop a dead worker's live gauges (in-flight, backend up); the supervisor calls it on exit."""
    _mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def _use_multiprocess(path: str) -> None:
    # prometheus_client picks its value class when it is first imported, from the environment. A
    # worker forked from a parent that imported it without PROMETHEUS_MULTIPROC_DIR would keep
    # in-memory values that no render can see, so switch explicitly (idempotent).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != path:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Metrics:
    """Every gateway metric; one instance per application."""

    def __init__(
        self,
        backends: Sequence[str],
        registry: CollectorRegistry | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        # "_created" series double the series count in the text format and carry nothing a
        # dashboard uses (multiprocess mode never has them): off, for the whole process.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.backends = tuple(backends)
        self.multiprocess_dir = multiprocess_dir
        self._collector: MultiProcessCollector | None = None
        own: CollectorRegistry | None
        if multiprocess_dir:
            _use_multiprocess(multiprocess_dir)
            self.registry = registry if registry is not None else CollectorRegistry()
            self._collector = MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            own = None  # the values are read back from the files, not from these objects
        else:
            self.registry = registry if registry is not None else CollectorRegistry()
            own = self.registry
        # Single process: requests, latencies, tokens and speed are tallied in plain dicts and built
        # into families at scrape time (tally.py); the instruments below then stay unregistered.
        self._tally: Tally | None = None if multiprocess_dir else Tally(LATENCY_BUCKETS, TOKENS_PER_SECOND_BUCKETS)
        per_request = None if self._tally is not None else own

        self.requests = Counter(
            "gateway_requests", "Requests answered, by backend, model, endpoint, status code and client.",
            _REQUEST_LABELS, registry=per_request,
        )  # fmt: skip
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Time from request arrival to the last byte relayed.",
            _ROUTE_LABELS, buckets=LATENCY_BUCKETS, registry=per_request,
        )  # fmt: skip
        self.ttfb = Histogram(
            "gateway_time_to_first_byte_seconds", "Time from request arrival to the first body byte relayed.",
            _ROUTE_LABELS, buckets=LATENCY_BUCKETS, registry=per_request,
        )  # fmt: skip
        self.tokens = Counter(
            "gateway_tokens", "Tokens reported by backends (kind: prompt or completion).",
            ("backend", "model", "client", "kind"), registry=per_request,
        )  # fmt: skip
        self.generation_speed = Histogram(
            "gateway_generation_tokens_per_second", "Generation speed reported by Ollama (eval_count/eval_duration).",
            ("backend", "model"), buckets=TOKENS_PER_SECOND_BUCKETS, registry=per_request,
        )  # fmt: skip
        self.cold_loads = Counter(COLD_LOADS_NAME, COLD_LOADS_DOC, ("backend", "model"), registry=per_request)
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds", QUEUE_WAIT_DOC, ("backend",), buckets=LATENCY_BUCKETS, registry=per_request,
        )  # fmt: skip
        if self._tally is not None:
            self.registry.register(self._tally)
        self.in_flight = Gauge(
            "gateway_in_flight_requests", "Requests currently being relayed to or from each backend.",
            ("backend",), registry=own, multiprocess_mode="livesum",
        )  # fmt: skip
        self.up = Gauge(
            "gateway_backend_up", "1 when the backend passes its health checks, else 0.",
            ("backend",), registry=own, multiprocess_mode="livemostrecent",
        )  # fmt: skip
        self.auth_failures = Counter(
            "gateway_auth_failures", "Requests refused for missing or bad credentials, by reason.",
            ("reason",), registry=own,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "gateway_upstream_errors", "Failures talking to a backend, by reason.",
            ("backend", "reason"), registry=own,
        )  # fmt: skip
        self.connections_refused = Counter(
            "gateway_connections_refused", "Connections refused when accepted, by the cap reached.",
            ("reason",), registry=own,
        )  # fmt: skip
        self.client_timeouts = Counter(
            "gateway_client_timeouts", "Connections cut for a slow client, by the deadline missed (headers, body).",
            ("phase",), registry=own,
        )  # fmt: skip
        self.open_connections = Gauge(
            "gateway_open_connections", "Client connections currently open.", registry=own, multiprocess_mode="livesum"
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused with 429 for a client's limit, by client and limit.",
            ("client", "limit"), registry=own,
        )  # fmt: skip

        self._models: set[str] = {UNKNOWN_MODEL, OTHER_MODEL}
        self._route: dict[tuple[str, str, str, int, str], tuple[Any, Any, Any]] = {}
        self._token: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._speed: dict[tuple[str, str], Any] = {}
        self._in_flight = {name: self.in_flight.labels(name) for name in self.backends}
        self._up: dict[str, Any] = {}
        self._auth: dict[str, Any] = {}
        self._upstream: dict[tuple[str, str], Any] = {}
        self._queue_wait: dict[str, Any] = {}
        self._limited: dict[tuple[str, str], Any] = {}
        self._snapshot: tuple[float, dict[str, Any]] | None = None
        self._followed = False

    # ----------------------------------------------------------------------- write side

    def record(self, rec: RequestRecord) -> None:
        """Count one finished request: request, duration, time to first byte, tokens, tokens/s."""
        backend = rec.backend or NO_BACKEND
        model = rec.model or UNKNOWN_MODEL
        if model not in self._models:
            model = self._admit(model)
        tally = self._tally
        if tally is not None:
            self._tally_record(tally, rec, backend, model)
            return
        key = (backend, model, rec.endpoint, rec.status, rec.client)
        children = self._route.get(key)
        if children is None:
            children = self._route_children(key)
        requests, duration, ttfb = children
        requests.inc()
        start = rec.start
        if rec.end is not None:
            duration.observe(max(rec.end - start, 0.0))
        if rec.first_byte is not None:
            ttfb.observe(max(rec.first_byte - start, 0.0))
        prompt, completion = rec.prompt_tokens, rec.completion_tokens
        if prompt or completion:
            tkey = (backend, model, rec.client)
            tokens = self._token.get(tkey)
            if tokens is None:
                tokens = self._token[tkey] = (
                    self.tokens.labels(*tkey, "prompt"),
                    self.tokens.labels(*tkey, "completion"),
                )
            if prompt:
                tokens[0].inc(prompt)
            if completion:
                tokens[1].inc(completion)
        count, ns = rec.eval_count, rec.eval_duration_ns
        if count and ns:
            skey = (backend, model)
            speed = self._speed.get(skey)
            if speed is None:
                speed = self._speed[skey] = self.generation_speed.labels(*skey)
            speed.observe(count * 1e9 / ns)

    @staticmethod
    def _tally_record(tally: Tally, rec: RequestRecord, backend: str, model: str) -> None:
        endpoint, client, start = rec.endpoint, rec.client, rec.start
        status = rec.status
        key = (backend, model, endpoint, _STATUS_TEXT.get(status) or str(status), client)
        requests = tally.requests
        requests[key] = requests.get(key, 0) + 1
        route = (backend, model, endpoint)
        if rec.end is not None:
            tally.duration.observe(route, max(rec.end - start, 0.0))
        else:
            tally.duration.row(route)
        if rec.first_byte is not None:
            tally.ttfb.observe(route, max(rec.first_byte - start, 0.0))
        else:
            tally.ttfb.row(route)
        prompt, completion = rec.prompt_tokens, rec.completion_tokens
        if prompt or completion:  # both series appear together, as a pair of labelled children would
            tokens = tally.tokens
            k = (backend, model, client, "prompt")
            tokens[k] = tokens.get(k, 0) + (prompt or 0)
            k = (backend, model, client, "completion")
            tokens[k] = tokens.get(k, 0) + (completion or 0)
        count, ns = rec.eval_count, rec.eval_duration_ns
        if count and ns:
            tally.speed.observe((backend, model), count * 1e9 / ns)

    def _admit(self, model: str) -> str:
        if len(self._models) >= MAX_MODELS + 2:
            return OTHER_MODEL
        self._models.add(model)
        return model

    def _route_children(self, key: tuple[str, str, str, int, str]) -> tuple[Any, Any, Any]:
        backend, model, endpoint, status, client = key
        children = (
            self.requests.labels(backend, model, endpoint, str(status), client),
            self.duration.labels(backend, model, endpoint),
            self.ttfb.labels(backend, model, endpoint),
        )
        self._route[key] = children
        return children

    def follow_in_flight(self, counts: Mapping[str, Callable[[], float]]) -> bool:
        """Read in-flight counts from the backends at scrape time instead of counting per request.

        Only in single-process mode (multiprocess gauges live in files and need inc/dec); returns
        whether it took effect, after which ``started``/``finished`` are no-ops.
        """
        if self.multiprocess_dir:
            return False
        for name, read in counts.items():
            self.in_flight.labels(name).set_function(read)
        self._followed = True
        return True

    def set_backends(self, backends: Sequence[str]) -> None:
        """After a reload: the configured backend names, for the status page's list."""
        self.backends = tuple(backends)

    def forget_backend(self, name: str) -> None:
        """Stop exporting every series of a backend removed by a reload (once its last request is counted).

        Single-process only: with ``--workers N`` the values live in shared files that outlast it.
        """
        tally = self._tally
        if tally is not None:
            for table in (tally.requests, tally.tokens, tally.duration.series, tally.ttfb.series, tally.speed.series):
                for key in [k for k in table if k[0] == name]:
                    del table[key]
        for key in [k for k in self._upstream if k[0] == name]:
            with suppress(KeyError):
                self.upstream_errors.remove(key[0] or NO_BACKEND, key[1] or "unknown")
            del self._upstream[key]
        # multiprocess mode's children
        self._route = {k: v for k, v in self._route.items() if k[0] != name}
        self._token = {k: v for k, v in self._token.items() if k[0] != name}
        self._speed = {k: v for k, v in self._speed.items() if k[0] != name}
        for gauge in (self.in_flight, self.up):
            with suppress(KeyError):
                gauge.remove(name)
        self._in_flight.pop(name, None)
        self._up.pop(name, None)
        self._snapshot = None

    @property
    def counts_in_flight(self) -> bool:
        """Whether ``started``/``finished`` must be called (not when the gauges read the backends)."""
        return not self._followed

    def started(self, backend: str) -> None:
        """A request to ``backend`` began (pair with ``finished``)."""
        if self._followed:
            return
        child = self._in_flight.get(backend)
        if child is None:
            child = self._in_flight[backend] = self.in_flight.labels(backend or NO_BACKEND)
        child.inc()

    def finished(self, backend: str) -> None:
        if self._followed:
            return
        child = self._in_flight.get(backend)
        if child is None:
            child = self._in_flight[backend] = self.in_flight.labels(backend or NO_BACKEND)
        child.dec()

    def backend_up(self, name: str, up: bool) -> None:
        child = self._up.get(name)
        if child is None:
            child = self._up[name] = self.up.labels(name)
        child.set(1 if up else 0)

    def cold_load(self, backend: str, model: str) -> None:
        """A request went to an Ollama backend that did not have ``model`` loaded (placement.py)."""
        if model not in self._models:
            model = self._admit(model)
        tally = self._tally
        if tally is not None:
            key = (backend, model)
            tally.cold_loads[key] = tally.cold_loads.get(key, 0) + 1
        else:
            self.cold_loads.labels(backend, model).inc()

    def auth_failure(self, reason: str) -> None:
        child = self._auth.get(reason)
        if child is None:
            child = self._auth[reason] = self.auth_failures.labels(reason)
        child.inc()

    def upstream_error(self, backend: str, reason: str) -> None:
        key = (backend, reason)
        child = self._upstream.get(key)
        if child is None:
            child = self._upstream[key] = self.upstream_errors.labels(backend or NO_BACKEND, reason or "unknown")
        child.inc()

    def queue_waited(self, backend: str, seconds: float) -> None:
        """A request got a slot at ``backend`` after waiting ``seconds`` (requests served at once are not observed)."""
        if self._tally is not None:
            self._tally.queue_wait.observe((backend,), seconds)
            return
        child = self._queue_wait.get(backend)
        if child is None:
            child = self._queue_wait[backend] = self.queue_wait.labels(backend)
        child.observe(seconds)

    def connection_refused(self, reason: str) -> None:
        self.connections_refused.labels(reason).inc()

    def client_timeout(self, phase: str) -> None:
        self.client_timeouts.labels(phase).inc()

    def follow_open_connections(self, read: Callable[[], float]) -> None:
        """The open-connections gauge reads ``read()`` when scraped (single process; else it stays unset)."""
        if not self.multiprocess_dir:
            self.open_connections.set_function(read)

    def limited(self, client: str, limit: str) -> None:
        """A request of ``client`` refused for ``limit`` (requests_per_minute, tokens_per_day, ...)."""
        key = (client, limit)
        child = self._limited.get(key)
        if child is None:
            child = self._limited[key] = self.rate_limited.labels(client, limit)
        child.inc()

    # ----------------------------------------------------------------------- read side

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when ``accept`` asks for it)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def _families(self) -> dict[str, Metric]:
        wanted: Iterable[Metric]
        if self._collector is not None:
            wanted = self._collector.collect()  # type: ignore[no-untyped-call]
        elif self._tally is not None:
            wanted = (
                *self._tally.collect(),
                *(family for metric in (self.in_flight, self.up) for family in metric.collect()),
            )
        else:
            wanted = (
                family
                for metric in (self.requests, self.tokens, self.ttfb, self.generation_speed, self.in_flight, self.up)
                for family in metric.collect()
            )
        return {family.name: family for family in wanted}

    def snapshot(self, max_age: float = 0.0) -> dict[str, Any]:
        """Totals for the status page (``summary.summarize`` of what this registry exports).

        Its cost grows with the number of series (a few ms for a few hundred); ``max_age`` > 0
        returns the previous snapshot while it is younger than that many seconds, so several
        open dashboards polling every second cost one.
        """
        now = time.monotonic()
        if max_age > 0 and self._snapshot is not None and now - self._snapshot[0] < max_age:
            return self._snapshot[1]
        snap = summarize(self._families(), self.backends)
        self._snapshot = (now, snap)
        return snap
