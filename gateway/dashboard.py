"""The built-in status page: ``GET /dashboard`` (a static HTML file) and ``GET /dashboard/data`` (JSON).

The page is one file, ``static/dashboard.html``, with inline CSS and plain JavaScript: no build
step, no CDN, works offline. It polls ``/dashboard/data`` every 2 s and computes rates (requests/s,
tokens/s) itself from successive cumulative counters, so the server keeps no history.

Why the page is public and only the data is admin-only: the HTML holds no data, and a browser
opening a URL can only authenticate with Basic auth, which API-key setups lack. Served publicly,
the page loads everywhere; when ``/dashboard/data`` answers 401 or 403, the page asks for an admin
key, keeps it in ``sessionStorage`` (gone with the tab) and sends it as ``Authorization: Bearer``.
A browser that already holds an admin Basic login for the gateway sends it with the data request
by itself. So ``app.py`` lists ``/dashboard`` (exactly, not the prefix) among the public paths.

The data endpoint fails closed: with auth on, a request that reached it without a principal (the
path made public by mistake) gets 403, not the anonymous admin. It reads the same registry as
``/metrics`` (``Metrics.snapshot``, cached ``SNAPSHOT_MAX_AGE`` so several open pages cost one
build) plus the live routing state; with metrics disabled its ``metrics`` part is ``{}``. It
never exposes secrets: backend URLs lose any user info, API keys and hashes are never read.

The HTML is read once, when the routes are added, and served with a Content-Security-Policy
that allows only its own inline script and style (by hash) and requests to the gateway itself.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from . import __version__
from .auth import ANONYMOUS
from .backends import Backend
from .circuit import out_reason
from .errors import Forbidden
from .limits.report import status_page
from .metrics import Metrics
from .state import PRINCIPAL, STATE, GatewayState

__all__ = [
    "DASHBOARD_PATH",
    "DATA_PATH",
    "SNAPSHOT_MAX_AGE",
    "add_dashboard_routes",
    "build_data",
    "content_security_policy",
]

DASHBOARD_PATH = "/dashboard"
DATA_PATH = "/dashboard/data"
SNAPSHOT_MAX_AGE = 1.0  # seconds a metrics snapshot is reused across polls (read per request: tests set 0)
PAGE_RESOURCE = "static/dashboard.html"  # package data of "gateway"
_INLINE_RE = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


def content_security_policy(html: bytes) -> str:
    """A CSP allowing exactly the inline ``<script>`` and ``<style>`` blocks of ``html``, by hash."""
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for tag, body in _INLINE_RE.findall(html):
        hashes[tag].append("'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'")
    script = " ".join(hashes[b"script"]) or "'none'"
    style = " ".join(hashes[b"style"]) or "'none'"
    return (
        f"default-src 'self'; script-src {script}; style-src {style}; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _public_url(backend: Backend) -> str:
    """The backend URL without user info (a password in it must not reach a browser)."""
    return str(backend.config.url.with_user(None))


def _routes(state: GatewayState) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(models: name -> backends serving it, aliases: alias -> target and its backends)."""
    serving: dict[str, list[str]] = {}
    for backend in state.backends:
        for name in state.router.listed_models(backend):
            names = serving.setdefault(name, [])
            if backend.name not in names:
                names.append(backend.name)
    models = [{"name": name, "backends": names} for name, names in sorted(serving.items())]
    aliases = []
    for alias, target in sorted(state.config.aliases.items()):
        route = state.router.resolve(alias)
        backends = [b.name for b in route.backends] if route is not None else []
        aliases.append({"alias": alias, "target": target, "backends": backends})
    return models, aliases


def _by_label(samples: Iterable[Any], name: str, *labels: str) -> dict[str, Any]:
    """Nested {label1: {label2: value}} (or {label1: value}) of one counter's samples."""
    out: dict[str, Any] = {}
    for sample in samples:
        if sample.name != name:
            continue
        node = out
        for label in labels[:-1]:
            node = node.setdefault(sample.labels.get(label, ""), {})
        key = sample.labels.get(labels[-1], "")
        node[key] = node.get(key, 0) + int(sample.value)
    return out


class _Snapshots:
    """``Metrics.snapshot`` plus the error counters the status page shows, built at most once per snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._last: tuple[dict[str, Any], dict[str, Any]] | None = None  # (snapshot, merged)

    def get(self) -> dict[str, Any]:
        snap = self.metrics.snapshot(max_age=SNAPSHOT_MAX_AGE)
        if self._last is not None and self._last[0] is snap:  # the object itself, kept alive: never a reused id
            return self._last[1]
        merged = {**snap, **self._error_counters()}
        self._last = (snap, merged)
        return merged

    def _error_counters(self) -> dict[str, Any]:
        metrics = self.metrics
        if metrics.multiprocess_dir:
            # Workers' values live in files; only the registry's collector merges them.
            families = list(metrics.registry.collect())
        else:
            families = [
                *metrics.upstream_errors.collect(),
                *metrics.auth_failures.collect(),
                *metrics.rate_limited.collect(),
            ]
        samples = [s for family in families for s in family.samples]
        return {
            "upstream_errors": _by_label(samples, "gateway_upstream_errors_total", "backend", "reason"),
            "auth_failures": _by_label(samples, "gateway_auth_failures_total", "reason"),
            "rate_limited": _by_label(samples, "gateway_rate_limited_total", "client", "limit"),
        }


def _queued(backend: Backend) -> list[dict[str, Any]]:
    """Who is waiting for the backend's slots (this process): client and count, most first."""
    if backend.queue is None:
        return []
    waiting = sorted(backend.queue.queued().items(), key=lambda item: (-item[1], item[0]))
    return [{"client": client, "count": count} for client, count in waiting]


def build_data(state: GatewayState, snapshots: _Snapshots | None) -> dict[str, Any]:
    """The JSON document ``/dashboard/data`` answers with."""
    snap = snapshots.get() if snapshots is not None else {}
    counted = snap.get("backends", {})
    backends = []
    for backend in state.backends:
        row = counted.get(backend.name, {})
        circuit_open = backend.circuit is not None and backend.circuit.is_open
        backends.append(
            {
                "name": backend.name,
                "type": backend.config.type,
                "url": _public_url(backend),
                "up": backend.up and not circuit_open,
                "probed": backend.probed,  # False: no probe answered yet, "up" is the optimistic default
                "out": out_reason(backend),  # why it is out of rotation, None when it is in
                "loaded": backend.loaded.describe() if backend.loaded is not None else None,  # Ollama: in memory
                # The metrics gauge sums every worker (--workers N); the object is this process only.
                "in_flight": row.get("in_flight", backend.in_flight) if snap else backend.in_flight,
                "waiting": backend.waiting,
                "queued": _queued(backend),
                "max_concurrency": backend.config.max_concurrency,
                "weight": backend.config.weight,
                "patterns": list(backend.config.models) if backend.config.models is not None else None,
                "models": state.router.listed_models(backend),
            }
        )
    models, aliases = _routes(state)
    return {
        "version": __version__,
        "auth": state.authenticator is not None,
        "backends": backends,
        "models": models,
        "aliases": aliases,
        "metrics": snap,
        "limits": status_page(state.limiter),  # None: no client has a limit
    }


def add_dashboard_routes(app: web.Application) -> None:
    """Register ``GET /dashboard`` (public page) and ``GET /dashboard/data`` (admin-only JSON)."""
    state = app[STATE]
    html = importlib.resources.files("gateway").joinpath(PAGE_RESOURCE).read_bytes()
    page_headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Content-Security-Policy": content_security_policy(html),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
    snapshots = _Snapshots(state.metrics) if state.metrics is not None else None

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=html, headers=page_headers)

    async def data(request: web.Request) -> web.Response:
        principal = request.get(PRINCIPAL)
        if principal is None:
            if state.authenticator is not None:  # fail closed: never fall back to the anonymous admin
                raise Forbidden(f"{DATA_PATH} must not be a public path when auth is on")
            principal = ANONYMOUS
        if not principal.admin:
            raise Forbidden("the dashboard data is admin-only")
        return web.json_response(
            build_data(state, snapshots), headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        )

    app.router.add_get(DASHBOARD_PATH, page)
    app.router.add_get(DATA_PATH, data)
