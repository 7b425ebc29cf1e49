"""Everything one running gateway owns, in one object hung on the app under ``STATE``.

No module-level mutable state: each ``create_app`` builds its own ``GatewayState``, so tests can
run several gateways in one process. A SIGHUP reload (``reload.py``) swaps ``config``,
``backends``, ``router``, ``authenticator``, ``cors``, ``access_log`` and ``entry`` whole, in one step
on the loop, which makes the change atomic for every request that starts afterwards.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .config import GatewayConfig
from .drain import Drain

if TYPE_CHECKING:
    from .accesslog import AccessLog
    from .affinity import Affinity
    from .app import EntrySettings
    from .auth import Authenticator, Principal
    from .backends import Backend
    from .cors import CorsPolicy
    from .discovery import Discovery
    from .limits import Limiter
    from .metrics import Metrics
    from .record import RequestRecord
    from .routing import Router

__all__ = ["PRINCIPAL", "RECORD", "STATE", "GatewayState"]


@dataclass(eq=False)
class GatewayState:
    config: GatewayConfig
    backends: tuple[Backend, ...]
    router: Router
    metrics: Metrics | None
    access_log: AccessLog
    cors: CorsPolicy
    authenticator: Authenticator | None  # None: no auth configured
    session: aiohttp.ClientSession | None = None  # opened in the app's cleanup context
    discovery: Discovery | None = None
    limiter: Limiter | None = None  # None: no client has a limit (limits/)
    # The serving loop, kept at startup: on Python 3.11 every asyncio.get_running_loop() call
    # makes a getpid() system call, which the per-request path should not pay.
    loop: asyncio.AbstractEventLoop | None = None
    entry: EntrySettings | None = None  # what the entry middleware reads once per request (app.py)
    drain: Drain = field(default_factory=Drain)  # SIGTERM's graceful drain (drain.py)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # background jobs of reloads; cancelled at shutdown
    affinity: Affinity | None = None  # routing.affinity: prefix (affinity.py); None costs nothing


STATE = web.AppKey("gateway_state", GatewayState)
RECORD: web.RequestKey[RequestRecord] = web.RequestKey("gateway_record")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("gateway_principal")
