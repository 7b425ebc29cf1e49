"""Runtime state of each configured backend: health, load, concurrency queue, discovered models.

Config stays in ``BackendConfig``; what changes while the gateway runs lives here, owned by one
``Backend`` per configured entry (one instance per app, never module-global). Discovery and health
probes (``discovery.py``) write it; routing and the proxy read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from .circuit import Circuit
from .config import BackendConfig
from .errors import ServiceUnavailable, TooManyRequests
from .fairqueue import ClientQueueFull, FairQueue, QueueFull, QueueTimeout
from .names import ollama_canonical
from .placement import LoadedModels
from .upstream import UpstreamPool

__all__ = ["Backend", "DiscoveredModel"]


@dataclass(frozen=True, slots=True)
class DiscoveredModel:
    """One model as a backend lists it; ``entry`` is the backend's own listing object, kept for merging."""

    name: str
    entry: Mapping[str, Any]


@dataclass(eq=False, slots=True)
class Backend:
    """A configured backend and what the gateway currently knows about it. Must not be copied."""

    config: BackendConfig
    index: int
    up: bool = True  # optimistic until probes say otherwise
    probed: bool = False
    in_flight: int = 0
    models: dict[str, DiscoveredModel] = field(default_factory=dict)  # lookup key -> model
    models_version: int = 0
    version: str | None = None  # an Ollama backend's version, from its health probe (GET /api/version)
    _ok_streak: int = 0
    _fail_streak: int = 0
    queue: FairQueue | None = None  # the concurrency slots and their waiting room (max_concurrency > 0)
    base: str = ""
    prefix: str = ""
    client_timeout: aiohttp.ClientTimeout = field(default_factory=aiohttp.ClientTimeout)
    pool: UpstreamPool | None = None  # the lean keep-alive client for http:// backends (opened by the app)
    circuit: Circuit | None = None  # None when circuit.failures is 0 (circuit.py)
    loaded: LoadedModels | None = None  # Ollama only: models it holds in memory (placement.py)

    def __post_init__(self) -> None:
        self.base = str(self.config.url).rstrip("/")
        self.prefix = self.config.url.raw_path.rstrip("/")  # a backend behind a path prefix keeps it
        # No total timeout: a stream may last as long as the model talks. Connect is bounded here;
        # first byte and idle gaps are enforced by the proxy's watchdog.
        self.client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.timeouts.connect)
        if self.config.max_concurrency:
            self.queue = FairQueue(self.config.max_concurrency)
        if self.config.circuit.failures:
            self.circuit = Circuit(self.config.circuit)
        if self.is_ollama:
            self.loaded = LoadedModels(self.config.name)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def is_ollama(self) -> bool:
        return self.config.type == "ollama"

    @property
    def available(self) -> bool:
        """Routable now: passing health probes and its circuit (if any) not open."""
        circuit = self.circuit
        return self.up and (circuit is None or circuit.usable())

    def url(self, path_qs: str) -> URL:
        return URL(self.base + path_qs, encoded=True)

    def lookup_key(self, model: str) -> str:
        return ollama_canonical(model) if self.is_ollama else model

    def set_models(self, models: list[DiscoveredModel]) -> None:
        fresh = {self.lookup_key(m.name): m for m in models}
        if fresh.keys() != self.models.keys():
            self.models_version += 1  # invalidates the router's cache
        self.models = fresh

    def record_probe(self, ok: bool) -> bool:
        """Count a health probe result; returns the (possibly changed) up state (rise/fall hysteresis)."""
        hc = self.config.health_check
        self.probed = True
        if ok:
            self._ok_streak += 1
            self._fail_streak = 0
            if not self.up and self._ok_streak >= hc.rise:
                self.up = True
        else:
            self._fail_streak += 1
            self._ok_streak = 0
            if self.up and self._fail_streak >= hc.fall:
                self.up = False
        return self.up

    @property
    def load(self) -> float:
        return (self.in_flight + self.waiting) / self.config.weight

    @property
    def waiting(self) -> int:
        return self.queue.waiting if self.queue is not None else 0

    async def acquire(self, client: str, share: float, max_queued: int, queue_size: int, queue_timeout: float) -> None:
        """Take a concurrency slot for ``client``; at max_concurrency wait in the fair queue (``fairqueue.py``)."""
        queue = self.queue
        if queue is not None and not queue.try_take(client):
            try:
                loop = asyncio.get_running_loop()
                await queue.wait(client, share, max_queued, queue_size, queue_timeout, loop)
            except ClientQueueFull:
                raise TooManyRequests(
                    f"'{client}' already has {max_queued} requests waiting for backend '{self.name}' "
                    "(limit max_queued)",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": "1"},
                ) from None
            except QueueFull:
                raise TooManyRequests(
                    f"backend '{self.name}' is at its concurrency limit and its queue is full",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": "1"},
                ) from None
            except QueueTimeout:
                raise ServiceUnavailable(
                    f"backend '{self.name}' stayed busy for {queue_timeout:g}s",
                    code="backend_busy",
                    headers={"Retry-After": "5"},
                ) from None
        self.in_flight += 1

    def release(self, client: str) -> None:
        self.in_flight -= 1
        if self.queue is not None:
            self.queue.release(client)
