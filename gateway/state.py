"""Everything one running gateway owns, in one object hung on the app under ``STATE``.

No module-level mutable state: each ``create_app`` builds its own ``GatewayState``, so tests can
run several gateways in one process. ``authenticator`` may be swapped whole on config reload,
which makes the change atomic for every request that starts afterwards.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from .config import GatewayConfig

if TYPE_CHECKING:
    from .accesslog import AccessLog
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


STATE = web.AppKey("gateway_state", GatewayState)
RECORD: web.RequestKey[RequestRecord] = web.RequestKey("gateway_record")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("gateway_principal")
