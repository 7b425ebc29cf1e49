"""The gateway's own endpoints: liveness, readiness and Prometheus metrics.

``/healthz`` says the process answers; ``/readyz`` says at least one backend is up according to
the background probes (so a load balancer stops sending traffic when every box is down), and
answers 503 from the moment a shutdown starts draining.
``/metrics`` is public unless ``metrics.require_auth``, which makes it admin-only.
"""

from __future__ import annotations

from aiohttp import web

from .auth import ANONYMOUS
from .errors import Forbidden
from .limits.report import readiness
from .state import PRINCIPAL, STATE

__all__ = ["add_ops_routes"]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    backends = {b.name: "up" if b.up else "down" for b in state.backends}
    if state.drain.active:  # shutting down: load balancers should stop sending new requests here
        return web.json_response({"status": "draining", "backends": backends}, status=503)
    ready = any(b.up for b in state.backends)
    body: dict[str, object] = {"status": "ready" if ready else "unavailable", "backends": backends}
    limits = readiness(state.limiter)
    if limits is not None:
        body["limits"] = limits
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    assert state.metrics is not None
    if state.config.metrics.require_auth and not request.get(PRINCIPAL, ANONYMOUS).admin:
        raise Forbidden("metrics are admin-only (metrics.require_auth)")
    body, content_type = state.metrics.render(request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def add_ops_routes(app: web.Application) -> None:
    state = app[STATE]
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if state.config.metrics.enabled:
        app.router.add_get(state.config.metrics.path, metrics)
