"""Background knowledge of the backends: which models each one has, and whether it is up.

Two kinds of periodic task per app, started and cancelled by ``app.py``'s cleanup context:
model discovery (``/api/tags`` on Ollama, ``/v1/models`` elsewhere) every
``routing.discovery_interval``, and health probes per backend every ``health_check.interval`` with
rise/fall hysteresis. A dead backend never fails discovery of the others. ``refresh`` is also
called when a request names a model nobody has (someone may just have pulled it), at most once
per ``MIN_REFRESH_GAP`` seconds so random names cannot turn into a probe storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import aiohttp

from .backends import Backend, DiscoveredModel
from .placement import LoadedModels

__all__ = ["Discovery", "fetch_json"]

log = logging.getLogger("gateway.discovery")
MIN_REFRESH_GAP = 2.0
HEALTH_PATHS = {"ollama": "/api/version", "vllm": "/health", "lmstudio": "/v1/models", "openai": "/v1/models"}


def _version_of(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, str) else None


def _auth_headers(backend: Backend) -> dict[str, str]:
    key = backend.config.api_key
    return {"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"} if key else {"Accept-Encoding": "identity"}


async def fetch_json(session: aiohttp.ClientSession, backend: Backend, path: str, timeout: float) -> Any:
    """GET a backend's JSON document; raises on any failure (callers decide what a failure means)."""
    async with asyncio.timeout(timeout):
        async with session.get(backend.url(path), headers=_auth_headers(backend)) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)


def parse_model_list(backend: Backend, doc: Any) -> list[DiscoveredModel]:
    """Models from an Ollama ``/api/tags`` or an OpenAI-style ``/v1/models`` document."""
    models: list[DiscoveredModel] = []
    if backend.is_ollama:
        items = doc.get("models") if isinstance(doc, Mapping) else None
        key = "name"
    else:
        items = doc.get("data") if isinstance(doc, Mapping) else None
        key = "id"
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping):
            name = item.get(key) or item.get("model")
            if isinstance(name, str) and name:
                models.append(DiscoveredModel(name, item))
    return models


class Discovery:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        backends: Sequence[Backend],
        interval: float,
        on_health: Callable[[Backend], None] = lambda b: None,
    ) -> None:
        self.session = session
        self.backends = tuple(backends)
        self.interval = interval
        self.on_health = on_health
        self._lock = asyncio.Lock()
        self._last_refresh = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []
        self._probes: dict[Backend, asyncio.Task[None]] = {}
        self._refresher: asyncio.Task[None] | None = None

    async def refresh_backend(self, backend: Backend) -> bool:
        path = "/api/tags" if backend.is_ollama else "/v1/models"
        timeout = min(backend.config.health_check.timeout + backend.config.timeouts.connect, 30.0)
        try:
            doc = await fetch_json(self.session, backend, path, timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("model discovery on backend %s failed: %r", backend.name, exc)
            return False
        backend.set_models(parse_model_list(backend, doc))
        return True

    async def refresh(self, *, force: bool = False) -> None:
        """Refresh every backend's model list concurrently (rate-limited unless forced)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not force:  # on-demand refreshes (unknown names) are rate-limited among themselves
                if loop.time() - self._last_refresh < MIN_REFRESH_GAP:
                    return
                self._last_refresh = loop.time()
            await asyncio.gather(*(self.refresh_backend(b) for b in self.backends))

    def refresh_soon(self) -> None:
        """A forced refresh in the background (after a pull, create, copy or delete); kept until stop()."""
        task = asyncio.create_task(self.refresh(force=True))
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("model refresh failed: %r", task.exception())

    async def probe(self, backend: Backend) -> None:
        hc = backend.config.health_check
        try:
            async with asyncio.timeout(hc.timeout):
                async with self.session.get(
                    backend.url(HEALTH_PATHS[backend.config.type]), headers=_auth_headers(backend)
                ) as resp:
                    body = await resp.read()
                    ok = resp.status < 400
            if ok and backend.is_ollama:  # the probe is GET /api/version: keep the answer for ours
                backend.version = _version_of(body) or backend.version
            if ok and backend.loaded is not None:  # which models it holds in memory (placement.py)
                await self.sync_loaded(backend, backend.loaded)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("health probe on backend %s failed: %r", backend.name, exc)
            ok = False
        if ok and backend.circuit is not None:
            backend.circuit.probe_ok()  # closes it once the cooldown has passed
        was_up = backend.up
        if backend.record_probe(ok) != was_up:
            log.warning("backend %s is now %s", backend.name, "up" if backend.up else "DOWN")
        self.on_health(backend)

    async def sync_loaded(self, backend: Backend, loaded: LoadedModels) -> None:
        """Refresh an Ollama backend's loaded models from its ``/api/ps`` (a failure keeps what is known)."""
        try:
            doc = await fetch_json(self.session, backend, "/api/ps", backend.config.health_check.timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("GET /api/ps on backend %s failed: %r", backend.name, exc)
            return
        loaded.sync(doc, backend.lookup_key)

    async def _every(self, interval: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:  # a probe bug must not kill the loop; log it once per failure
                log.exception("background job failed")

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._every(self.interval, lambda: self.refresh(force=True)))
        for backend in self.backends:
            self._start_probing(backend)

    def _start_probing(self, backend: Backend) -> None:
        interval = backend.config.health_check.interval
        self._probes[backend] = asyncio.create_task(self._every(interval, partial(self.probe, backend)))

    def follow(self, backends: Sequence[Backend], interval: float) -> None:
        """After a reload: probe the new set of backends (new ones at once), stop probing the others."""
        self.backends = tuple(backends)
        self._last_refresh = float("-inf")  # a name not found right after a reload may be a new backend's
        if self._refresher is None:  # not started (an app that never ran): nothing to re-arm
            self.interval = interval
            return
        if interval != self.interval:
            self.interval = interval
            self._refresher.cancel()
            self._refresher = asyncio.create_task(self._every(interval, lambda: self.refresh(force=True)))
        for backend in [b for b in self._probes if b not in backends]:
            self._probes.pop(backend).cancel()
        for backend in backends:
            if backend not in self._probes:
                self._start_probing(backend)
                task = asyncio.create_task(self._first_look(backend))
                self._tasks.append(task)
                task.add_done_callback(self._forget)

    async def _first_look(self, backend: Backend) -> None:
        await asyncio.gather(self.refresh_backend(backend), self.probe(backend))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._probes.values(), *([self._refresher] if self._refresher else [])]
        self._probes.clear()
        self._refresher = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
