"""``create_app(config)``: wires state, the middleware, routes and the lifecycle of one gateway.

One middleware, ``entry`` (``make_entry_middleware``), does what every request needs in a fixed
order: request record and id, client address, allowed hosts, the CORS gate (preflights answered
before auth), authentication, the one error path, the request id and CORS headers on the
response, metrics and the access log when the request is over. A streamed relay sends its head
before ``entry`` sees the response, so ``streaming.relay`` adds those headers itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple

import aiohttp
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from .accesslog import AccessLog
from .affinity import Affinity
from .auth import Authenticator
from .backends import Backend
from .config import AuthConfig, GatewayConfig
from .cors import CorsPolicy, make_cors_gate
from .dashboard import DASHBOARD_PATH, DATA_PATH, add_dashboard_routes
from .discovery import Discovery
from .errors import (
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    error_response,
)
from .headers import client_address, host_name
from .limits import make_limiter
from .limits.store_gauge import StoreUpCollector
from .listing import add_listing_routes
from .metrics import Metrics
from .ops import add_ops_routes
from .proxy import add_proxy_routes
from .record import RequestRecord
from .routing import Router
from .state import PRINCIPAL, RECORD, STATE, GatewayState
from .upstream import UpstreamPool

__all__ = ["EntrySettings", "create_app", "entry_settings", "public_paths"]

log = logging.getLogger("gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def public_paths(config: GatewayConfig) -> frozenset[str]:
    """Paths that never need credentials (Ollama's heartbeat, probes, and metrics unless restricted)."""
    paths = {
        "/",
        "/healthz",
        "/readyz",
        "/api/version",
        DASHBOARD_PATH,
    }  # the page holds no data; its JSON is admin-only
    if config.metrics.enabled and not config.metrics.require_auth:
        paths.add(config.metrics.path)
    return frozenset(paths)


def _as_gateway_error(exc: Exception, request: web.Request, rid: str) -> GatewayError:
    """What the client is told about ``exc``: ours as raised, aiohttp's converted, anything else a logged 500."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, web.HTTPException):
        return _aiohttp_error(exc)
    log.exception("unexpected error handling %s %s (request id %s)", request.method, request.path, rid)
    return GatewayError(f"internal gateway error (request id {rid})")


def _aiohttp_error(exc: web.HTTPException) -> GatewayError:
    if exc.status == 404:
        return NotFound("not found: this path is not served by the gateway")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return MethodNotAllowed("method not allowed", headers={"Allow": allowed} if allowed else None)
    if exc.status == 413:
        return PayloadTooLarge("request body too large (server.max_body_size)")
    err = GatewayError(exc.reason or "error")
    err.status = exc.status  # type: ignore[misc]
    return err


def _body_size(response: web.StreamResponse) -> int:
    body = response.body if isinstance(response, web.Response) else None
    return len(body) if isinstance(body, bytes | bytearray) else 0


class EntrySettings(NamedTuple):
    """What the entry middleware takes from the config, computed once per config (a reload swaps it whole).

    A tuple, so a request reads it with one attribute access and one unpack.
    """

    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    allowed_hosts: frozenset[str]
    probe_paths: frozenset[str]
    quiet_paths: frozenset[str]
    public: frozenset[str]
    cors_gate: Callable[[web.Request], web.StreamResponse | None]
    apply_cors: Callable[[Any, str | None], None] | None
    metrics: Metrics | None
    access_log: AccessLog


def entry_settings(state: GatewayState) -> EntrySettings:
    config = state.config
    # Probes and scrapers address the gateway by pod/container IP: never make them guess a name.
    probe_paths = frozenset({"/healthz", "/readyz", config.metrics.path})
    return EntrySettings(
        trusted=config.server.trusted_proxies,
        allowed_hosts=frozenset(config.server.allowed_hosts),
        probe_paths=probe_paths,
        # Probes, scrapes and the dashboard's polling are not traffic: keep them out of metrics and the access log.
        quiet_paths=probe_paths | {DASHBOARD_PATH, DATA_PATH},
        public=public_paths(config),
        cors_gate=make_cors_gate(state.cors),
        apply_cors=state.cors.apply_response_headers if state.cors.enabled else None,
        metrics=state.metrics,
        access_log=state.access_log,
    )


def make_entry_middleware(state: GatewayState) -> Middleware:
    """The gateway's one middleware: everything every request needs, in order, with no extra layers.

    Request record and id, client address, allowed hosts, the CORS gate (preflights are answered
    before auth), authentication, then the handler; the one error path; the request id and CORS
    headers on every response not yet sent (a streamed relay adds them itself before its head);
    metrics and the access log when the request is over. What it takes from the config is read
    from ``state.entry`` once per request, so a reload applies from the next request on.
    """
    if state.entry is None:
        state.entry = entry_settings(state)
    drain = state.drain
    id_prefix = secrets.token_hex(8)
    id_counter = itertools.count()

    @web.middleware
    async def entry(request: web.Request, handler: Handler) -> web.StreamResponse:
        loop = state.loop or asyncio.get_running_loop()
        trusted, allowed_hosts, probe_paths, quiet_paths, public, cors_gate, apply_cors, metrics, access_log = (
            state.entry  # type: ignore[misc]
        )
        headers = request.headers
        rid = headers.get("X-Request-Id")
        if rid is None or not _REQUEST_ID_RE.match(rid):
            rid = f"{id_prefix}{next(id_counter):016x}"  # unique, cheap (no urandom syscall per request)
        remote, via_proxy = client_address(request.remote, headers.get("X-Forwarded-For"), trusted)
        path = request.path
        rec = RequestRecord(rid, request.method, path, remote, via_proxy, loop.time())
        request[RECORD] = rec
        response: web.StreamResponse
        try:
            if allowed_hosts and path not in probe_paths and host_name(request.host) not in allowed_hosts:
                raise Forbidden(f"host '{request.host}' is not in server.allowed_hosts")
            preflight = cors_gate(request)
            if preflight is not None:
                rec.status = preflight.status
                preflight.headers["X-Request-Id"] = rid
                return preflight
            authenticator = state.authenticator  # read per request: a reload swaps it whole
            if authenticator is not None and path not in public:
                principal = authenticator.cached(headers) or await authenticator.authenticate(headers, remote)
                request[PRINCIPAL] = principal
                rec.client = principal.name
            response = await handler(request)
            if not rec.status:
                rec.status = response.status
            if response.prepared:  # a streamed relay: its head carried all of this already
                return response
            if not rec.bytes_out:  # a body built whole here (listings, probes): count it too
                rec.bytes_out = _body_size(response)
        except asyncio.CancelledError:
            if not drain.expired or rec.error == "shutdown":  # the client left (or a stream ended itself)
                rec.status = 499
                rec.error = rec.error or "client_closed"
                raise
            # The drain's deadline passed before any answer started (queued, or waiting for the backend):
            # answer in the endpoint's dialect rather than drop the connection (drain.py).
            current = asyncio.current_task(loop)
            if current is not None:
                current.uncancel()
            rec.error = "shutdown"
            ended = ServiceUnavailable(
                "the gateway shut down before the backend answered (server.shutdown_timeout); retry",
                headers={"Retry-After": "1"},
            )
            rec.status = ended.status
            response = error_response(path, ended)
            response.force_close()
            rec.bytes_out = _body_size(response)
        except ConnectionResetError:  # the client left: nothing to answer
            rec.status = 499
            rec.error = rec.error or "client_closed"
            raise
        except Exception as exc:  # every other failure becomes one error response, in the path's dialect
            err = _as_gateway_error(exc, request, rid)
            rec.status = err.status
            response = error_response(path, err)
            rec.bytes_out = _body_size(response)
        finally:
            if rec.end is None:
                rec.end = loop.time()
            if path not in quiet_paths:
                if metrics is not None:
                    metrics.record(rec)
                access_log.log(rec)
        response.headers["X-Request-Id"] = rid
        if drain.active:  # shutting down: this connection takes no further request
            response.force_close()
        if apply_cors is not None:
            apply_cors(response.headers, headers.get(hdrs.ORIGIN))
        return response

    return entry


def _authenticator(auth: AuthConfig, metrics: Metrics | None) -> Authenticator:
    return Authenticator(auth, on_failure=metrics.auth_failure if metrics else None)


def build_state(config: GatewayConfig) -> GatewayState:
    backends = tuple(Backend(b, i) for i, b in enumerate(config.backends))
    metrics = None
    if config.metrics.enabled:
        # Set by `serve --workers N`: every worker writes there and a scrape of any one sums them all.
        metrics = Metrics(
            [b.name for b in backends], multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        )
    authenticator = None
    if config.auth is not None:
        authenticator = _authenticator(config.auth, metrics)
    limiter = make_limiter(config, on_refused=metrics.limited if metrics is not None else None)
    return GatewayState(
        config=config,
        backends=backends,
        router=Router(backends, config.aliases),
        metrics=metrics,
        access_log=AccessLog(config.logging.format, logging.getLogger("gateway.access")),
        cors=CorsPolicy(config.cors),
        authenticator=authenticator,
        affinity=Affinity() if config.routing.affinity == "prefix" else None,
        limiter=limiter,
    )


def _flush_access_log() -> None:
    for handler in logging.getLogger("gateway.access").handlers:
        handler.flush()


async def _flush_logs_every(seconds: float) -> None:
    """Batched access-log lines reach the terminal within a second even when traffic stops."""
    while True:
        await asyncio.sleep(seconds)
        _flush_access_log()


def report_up(metrics: Metrics, backend: Backend) -> None:
    """``gateway_backend_up``: 1 when its probes pass and its circuit is not open."""
    metrics.backend_up(backend.name, backend.up and not (backend.circuit is not None and backend.circuit.is_open))


def wire_backend(backend: Backend, metrics: Metrics | None) -> None:
    """Connect a backend's circuit and loaded-model view to the metrics (at startup; a reload's new backends too)."""
    if metrics is None:
        return
    if backend.circuit is not None:
        backend.circuit.on_change = partial(report_up, metrics, backend)
    if backend.loaded is not None:
        backend.loaded.on_cold = metrics.cold_load


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession per app (a connection pool), discovery and probes; closed in reverse."""
    state = app[STATE]
    state.loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # bytes pass through untouched
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        read_bufsize=2**16,
    )
    state.session = session
    metrics = state.metrics

    def on_health(backend: Backend) -> None:
        if metrics is not None:
            report_up(metrics, backend)

    discovery = Discovery(session, state.backends, state.config.routing.discovery_interval, on_health)
    state.discovery = discovery
    if metrics is not None:  # in-flight gauges read the backends' own counters when scraped
        metrics.follow_in_flight({b.name: partial(getattr, b, "in_flight") for b in state.backends})
    for backend in state.backends:
        wire_backend(backend, metrics)
        if metrics is not None and backend.queue is not None:
            backend.queue.on_wait = partial(metrics.queue_waited, backend.name)
        on_health(backend)
        if backend.config.url.scheme == "http":
            backend.pool = UpstreamPool.from_url(backend.base)
    await asyncio.gather(discovery.refresh(force=True), *(discovery.probe(b) for b in state.backends))
    discovery.start()
    limiter = state.limiter
    if limiter is not None:
        await limiter.store.start()
    flusher = asyncio.create_task(_flush_logs_every(1.0))
    try:
        yield
    finally:
        flusher.cancel()
        if limiter is not None:
            await limiter.store.close()
        _flush_access_log()
        await discovery.stop()
        for task in list(state.tasks):  # a reload's retired backends: their pools close below
            task.cancel()
        for backend in state.backends:
            if backend.pool is not None:
                backend.pool.close()
        await session.close()
        if state.authenticator is not None:
            state.authenticator.close()


def create_app(config: GatewayConfig) -> web.Application:
    state = build_state(config)
    app = web.Application(
        client_max_size=config.server.max_body_size,
        middlewares=[make_entry_middleware(state)],
    )
    app[STATE] = state
    if state.metrics is not None:  # gateway_limits_store_up, read at scrape time from the current limiter
        state.metrics.registry.register(StoreUpCollector(lambda: state.limiter.store if state.limiter else None))
    app.cleanup_ctx.append(_lifecycle)
    add_proxy_routes(app)
    add_listing_routes(app)
    add_ops_routes(app)
    add_dashboard_routes(app)
    return app
