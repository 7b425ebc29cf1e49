"""SIGHUP: apply a newly loaded config to a running gateway, for every request that starts afterwards.

``reload_state`` is the one place that turns (the running state, a validated new config) into the
new state and swaps it in. Everything is built first and assigned in one synchronous step on the
loop, so a request sees either the old config or the new one, never a mix. Backends are matched
by name: an unchanged one is the same ``Backend`` object (health, in-flight count, queue,
discovered models and upstream pool carry on); an edited one is a new object that inherits what
is still true of it (``carry_over``); a removed one is retired: requests already on it finish
there (they hold the object), its pool closes and its metrics series go once it is idle.

Stateful parts added later hook in with a line each: per-backend state in ``carry_over``,
gateway-wide state (limits counters, fair queues, TLS certificates) at "other stateful parts".
What cannot change without a restart keeps its old value (``keep_restart_only``) and is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from .accesslog import AccessLog
from .affinity import Affinity
from .app import entry_settings, report_up, wire_backend
from .auth import Authenticator
from .backends import Backend
from .config import GatewayConfig
from .cors import CorsPolicy
from .limits import Limiter, limits_configured, make_limiter
from .routing import Router
from .state import GatewayState
from .upstream import UpstreamPool

__all__ = ["IDLE_CHECK_INTERVAL", "ReloadReport", "carry_over", "keep_restart_only", "reload_state"]

log = logging.getLogger("gateway")
IDLE_CHECK_INTERVAL = 0.5  # how often a retired backend is checked for its last request to end


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a reload changed, by backend name, for the log line."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    kept: tuple[str, ...]

    def summary(self) -> str:
        parts = [f"{label}: {', '.join(names)}" for label, names in (
            ("added", self.added), ("removed", self.removed), ("changed", self.changed), ("unchanged", self.kept),
        ) if names]  # fmt: skip
        return "; ".join(parts) or "no backends"


def keep_restart_only(old: GatewayConfig, new: GatewayConfig) -> tuple[GatewayConfig, list[str]]:
    """``new`` with the values only a restart applies taken from ``old``, and the key paths that differed.

    So ``state.config`` keeps describing what really runs. The listen address is the caller's
    (``--host``/``--port`` override the file); ``workers`` is a command-line option.
    """
    pending: list[str] = []
    server, metrics = new.server, new.metrics
    if (old.server.tls is None) != (new.server.tls is None):
        pending.append("server.tls")
        server = replace(server, tls=old.server.tls)
    for key in ("timeouts", "max_connections", "max_connections_per_client"):
        if getattr(old.server, key) != getattr(new.server, key):
            pending.append(f"server.{key}")
            server = replace(server, **{key: getattr(old.server, key)})
    for key in ("enabled", "path"):
        if getattr(old.metrics, key) != getattr(new.metrics, key):
            pending.append(f"metrics.{key}")
            metrics = replace(metrics, **{key: getattr(old.metrics, key)})
    return replace(new, server=server, metrics=metrics), pending


def carry_over(old: Backend, new: Backend) -> None:
    """An edited backend keeps what is still true of it: health and discovered models, if it is the same server.

    Per-backend runtime state added later (circuit breaker, loaded models, fair queue) carries
    over here, one line each.
    """
    if old.config.url != new.config.url or old.config.type != new.config.type:
        return  # another server: start from scratch (optimistic, then probed at once)
    new.up, new.probed, new.version = old.up, old.probed, old.version
    new._ok_streak, new._fail_streak = old._ok_streak, old._fail_streak  # noqa: SLF001 - same class family
    new.models = dict(old.models)
    new.models_version = old.models_version + 1
    if old.loaded is not None and new.loaded is not None:  # what the box holds in memory is still true
        new.loaded = old.loaded
    if old.config.circuit == new.config.circuit:  # a backend that was failing is still failing
        new.circuit = old.circuit


def _match_backends(
    state: GatewayState, config: GatewayConfig
) -> tuple[tuple[Backend, ...], ReloadReport, list[Backend]]:
    """The new backend tuple (config order), what changed, and the old objects to retire."""
    old_by_name = {b.name: b for b in state.backends}
    backends: list[Backend] = []
    added, changed, kept = [], [], []
    retired: list[Backend] = []
    for index, bc in enumerate(config.backends):
        old = old_by_name.pop(bc.name, None)
        if old is not None and old.config == bc:
            old.index = index
            backends.append(old)
            kept.append(bc.name)
            continue
        backend = Backend(bc, index)
        if old is None:
            added.append(bc.name)
        else:
            carry_over(old, backend)
            changed.append(bc.name)
            retired.append(old)
        backends.append(backend)
    retired.extend(old_by_name.values())
    report = ReloadReport(tuple(added), tuple(old_by_name), tuple(changed), tuple(kept))
    return tuple(backends), report, retired


async def _retire_when_idle(state: GatewayState, backend: Backend) -> None:
    """Close a retired backend's pool once its last request ended; forget its metrics if its name is gone."""
    try:
        while backend.in_flight or backend.waiting:
            await asyncio.sleep(IDLE_CHECK_INTERVAL)
        await asyncio.sleep(0)  # the entry middleware counts the request just after the backend is released
    finally:
        if backend.pool is not None:
            backend.pool.close()
        metrics = state.metrics
        if metrics is not None and all(b.name != backend.name for b in state.backends):
            metrics.forget_backend(backend.name)


def _affinity(current: Affinity | None, config: GatewayConfig) -> Affinity | None:
    """Keep the remembered conversations while affinity stays on (a removed backend's name is never a candidate)."""
    if config.routing.affinity != "prefix":
        return None
    return current or Affinity()


def _reload_limiter(state: GatewayState, config: GatewayConfig) -> None:
    """Limits follow the file: the same limiter reconfigured while limits stay on (its counters carry
    over); a new one, in use once its store has started, when they come on; closed when they go off.

    A change of ``limits.redis_url``/``state_path`` keeps the running store (a restart picks it up).
    """
    current, wanted = state.limiter, limits_configured(config)
    if current is not None and wanted:
        current.configure(config)
        return
    if current is not None:
        state.limiter = None
        _background(state, current.store.close())
    elif wanted:
        on_refused = state.metrics.limited if state.metrics is not None else None
        limiter = make_limiter(config, on_refused)
        if limiter is not None:
            _background(state, _start_limiter(state, limiter))


async def _start_limiter(state: GatewayState, limiter: Limiter) -> None:
    await limiter.store.start()
    state.limiter = limiter


def _background(state: GatewayState, job: Coroutine[Any, Any, None]) -> None:
    """A reload's follow-up work, kept on the state (cancelled at shutdown), never fire-and-forget."""
    if state.loop is None:  # not serving (tests building states): nothing to run it
        job.close()
        return
    task = asyncio.create_task(job)
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


def reload_state(state: GatewayState, config: GatewayConfig) -> ReloadReport:
    """Build the new state from ``state`` and a validated ``config``, and swap it in for new requests.

    The caller has checked what depends on the process (the listen address, auth on a non-loopback
    address). Nothing here awaits: the swap is atomic on the loop.
    """
    old = state.config
    backends, report, retired = _match_backends(state, config)
    running = state.loop is not None  # the app's lifecycle opened its session: new backends need pools too
    for backend in backends:
        if running and backend.pool is None and backend.config.url.scheme == "http":
            backend.pool = UpstreamPool.from_url(backend.base)
    authenticator = state.authenticator
    if config.auth != old.auth:  # a changed auth section: new caches too, so a revoked key stops at once
        on_failure = state.metrics.auth_failure if state.metrics is not None else None
        authenticator = Authenticator(config.auth, on_failure=on_failure) if config.auth is not None else None
    cors = state.cors if config.cors == old.cors else CorsPolicy(config.cors)
    access_log = state.access_log
    if config.logging.format != old.logging.format:
        access_log = AccessLog(config.logging.format, logging.getLogger("gateway.access"))

    # ---- the swap: from here on every new request sees the new config
    old_authenticator = state.authenticator
    state.config = config
    state.backends = backends
    state.router = Router(backends, config.aliases)
    state.authenticator = authenticator
    state.cors = cors
    state.access_log = access_log
    state.entry = entry_settings(state)
    # ---- other stateful parts: one line each (limits counters, fair queues, TLS certificates)
    state.affinity = _affinity(state.affinity, config)
    _reload_limiter(state, config)

    if old_authenticator is not None and old_authenticator is not authenticator:
        old_authenticator.close()
    if config.logging.level != old.logging.level:
        logging.getLogger().setLevel(config.logging.level.upper())
    metrics = state.metrics
    if metrics is not None:
        metrics.set_backends([b.name for b in backends])
        metrics.follow_in_flight({b.name: partial(getattr, b, "in_flight") for b in backends})
        for backend in backends:
            wire_backend(backend, metrics)
            report_up(metrics, backend)
    if state.discovery is not None:
        state.discovery.follow(backends, config.routing.discovery_interval)
    if running:
        for backend in retired:
            _background(state, _retire_when_idle(state, backend))
    return report
