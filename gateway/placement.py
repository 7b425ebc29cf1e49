"""Placement that avoids cold loads: which models each Ollama box holds in memory, and who should get a request.

An Ollama server keeps a few models in memory and evicts the least recently used one to load
another (10-60 s on real hardware). Least-in-flight routing alone ignores that and makes boxes
evict and reload while another box holds the right model. So each Ollama ``Backend`` has a
``LoadedModels``: synced from its ``/api/ps`` by the health probe (``discovery.py``), updated as the
gateway sends it requests (a model sent to a box is loaded there) and as ``keep_alive`` expiries
pass. ``rank`` orders candidates: model loaded, then room for one more, then a box whose loaded
models are idle (evicting costs nobody a stream), then a busy one. How many models a box can hold
is learned: the most ``/api/ps`` ever listed at once (at least 1).

Pure bookkeeping: no I/O, monotonic seconds passed in or read once per call.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

__all__ = ["DEFAULT_KEEP_ALIVE", "LOADING_ENDPOINTS", "LoadedModels", "keep_alive_seconds", "rank"]

DEFAULT_KEEP_ALIVE = 300.0  # Ollama's default (OLLAMA_KEEP_ALIVE=5m); /api/ps corrects other settings
FOREVER = math.inf
# Endpoints that make an Ollama server load the model (not /api/show, pull, copy, ...).
LOADING_ENDPOINTS = frozenset(
    {
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_FRACTION = re.compile(r"(\.\d{6})\d+")


def keep_alive_seconds(value: Any) -> float:
    """A request's ``keep_alive`` (seconds as a number, or a Go duration like "10m"); negative = forever."""
    if value is None or isinstance(value, bool):
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        text = text.lstrip("+-")
        try:
            seconds = sign * float(text)  # "3600" is accepted by Ollama too
        except ValueError:
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                return DEFAULT_KEEP_ALIVE  # Ollama rejects it; the answer will say so
            seconds = sign * sum(float(n) * _UNIT[u] for n, u in parts)
    else:
        return DEFAULT_KEEP_ALIVE
    return FOREVER if seconds < 0 else seconds


def _expiry(text: Any, now: float, wall: float) -> float:
    """An /api/ps ``expires_at`` (RFC 3339, nanoseconds) as a monotonic time; unknown: the default."""
    if not isinstance(text, str) or not text:
        return now + DEFAULT_KEEP_ALIVE
    try:
        when = datetime.fromisoformat(_FRACTION.sub(r"\1", text))
    except ValueError:
        return now + DEFAULT_KEEP_ALIVE
    if when.tzinfo is None or when.year >= 2200:  # keep_alive -1 shows as a date centuries away
        return FOREVER
    return now + (when.timestamp() - wall)


class LoadedModels:
    """The gateway's view of one Ollama box's memory: loaded models (LRU order) and their requests in flight."""

    __slots__ = ("backend", "models", "keep", "busy", "capacity", "on_cold")

    def __init__(self, backend: str = "", on_cold: Callable[[str, str], None] | None = None) -> None:
        self.backend = backend
        self.models: dict[str, float] = {}  # lookup key -> expiry (monotonic); order: least recently used first
        self.keep: dict[str, float] = {}  # lookup key -> keep_alive seconds of its last request
        self.busy: dict[str, int] = {}  # lookup key -> requests in flight
        self.capacity = 1  # most models seen loaded at once (learned)
        self.on_cold = on_cold  # (backend, model) for gateway_cold_loads_total

    def has(self, key: str, now: float) -> bool:
        expiry = self.models.get(key)
        return expiry is not None and (expiry > now or key in self.busy)

    def _prune(self, now: float) -> None:
        expired = [k for k, t in self.models.items() if t <= now and k not in self.busy]
        for key in expired:
            del self.models[key]

    def rank(self, key: str, now: float) -> int:
        """0: has the model; 1: has room to load it; 2: would evict idle models; 3: its models are busy."""
        if self.has(key, now):
            return 0
        self._prune(now)
        if len(self.models) < self.capacity:
            return 1
        return 3 if self.busy else 2

    def begin(self, key: str, model: str, keep_alive: Any) -> None:
        """A request for ``model`` (lookup ``key``) is being sent: it is loaded there from now on."""
        now = time.monotonic()
        cold = not self.has(key, now)
        seconds = keep_alive_seconds(keep_alive)
        self.models.pop(key, None)
        self.models[key] = now + max(seconds, 0.0) if seconds != FOREVER else FOREVER  # most recently used
        self.keep[key] = seconds
        self.busy[key] = self.busy.get(key, 0) + 1
        if cold and self.on_cold is not None:
            self.on_cold(self.backend, model)

    def end(self, key: str, failed: bool = False) -> None:
        """The request is over: ``keep_alive`` counts from now (Ollama's rule); ``failed``: no answer came."""
        count = self.busy.get(key, 0) - 1
        if count > 0:
            self.busy[key] = count
            return
        self.busy.pop(key, None)
        if failed:  # unreachable, or 502/503/504: nothing says the model is there
            self.models.pop(key, None)
            return
        if key in self.models:
            seconds = self.keep.get(key, DEFAULT_KEEP_ALIVE)
            now = time.monotonic()
            self.models[key] = FOREVER if seconds == FOREVER else now + seconds
            self._prune(now)
            while len(self.models) > self.capacity:  # it loaded this one: its least recently used idle one went
                victim = next((k for k in self.models if k not in self.busy and k != key), None)
                if victim is None:
                    break
                del self.models[victim]

    def sync(self, doc: Any, lookup: Callable[[str], str]) -> None:
        """Replace the view with an ``/api/ps`` document (models the gateway is sending stay loaded)."""
        items = doc.get("models") if isinstance(doc, Mapping) else None
        if not isinstance(items, list):
            return
        now, wall = time.monotonic(), time.time()
        listed: dict[str, float] = {}
        for item in items:
            if isinstance(item, Mapping):
                name = item.get("name") or item.get("model")
                if isinstance(name, str) and name:
                    listed[lookup(name)] = _expiry(item.get("expires_at"), now, wall)
        self.capacity = max(self.capacity, len(listed))
        fresh = {k: listed[k] for k in self.models if k in listed}  # keep the gateway's LRU order
        fresh.update(listed)
        for key in self.busy:
            fresh.setdefault(key, self.models.get(key, now + DEFAULT_KEEP_ALIVE))
        self.models = fresh

    def describe(self) -> list[str]:
        """Model keys currently believed loaded (status page)."""
        now = time.monotonic()
        return [k for k in self.models if self.has(k, now)]


def rank(loaded: LoadedModels | None, key: str, now: float) -> int:
    """A backend's placement rank for a model (non-Ollama backends always have their models loaded)."""
    return 0 if loaded is None else loaded.rank(key, now)
