"""HTTPS for the listener: one server ``SSLContext`` whose certificate can be re-read while running.

The listening socket keeps the context it was started with, so a renewed certificate (certbot,
cert-manager) is loaded into that same context: new connections get the new certificate, open
ones keep theirs, nothing restarts. The files are first loaded into a scratch context, so a
broken or mismatched pair is reported and the running certificate stays. TLS 1.2 is the minimum.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiohttp import web

from .config import GatewayConfig, TlsConfig

__all__ = ["TLS_CONTEXT", "TlsSite", "attach_tls", "reload_tls", "server_context"]

log = logging.getLogger("gateway")
TLS_CONTEXT = web.AppKey("tls_context", ssl.SSLContext)


def _new_context(tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    return context


def server_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """The listener's context for ``server.tls``, or None for plain HTTP."""
    return None if tls is None else _new_context(tls)


def attach_tls(app: web.Application, config: GatewayConfig) -> ssl.SSLContext | None:
    """Build the listener's context and keep it on ``app`` for ``reload_tls`` (call before the app starts)."""
    context = server_context(config.server.tls)
    if context is not None:
        app[TLS_CONTEXT] = context
    return context


def reload_tls(app: web.Application, config: GatewayConfig) -> bool:
    """Re-read the certificate and key named by ``config`` into the running context (SIGHUP).

    Returns whether a new certificate is in use. Turning TLS on or off needs a restart (the
    listening socket is plain or not), which is logged.
    """
    context = app.get(TLS_CONTEXT)
    tls = config.server.tls
    if context is None or tls is None:
        if (context is None) != (tls is None):
            log.warning("server.tls was added or removed: that takes effect only after a restart")
        return False
    try:
        _new_context(tls)  # validate the pair first: a failed load must not half-replace the live one
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS reload failed, keeping the previous certificate: %s", exc)
        return False
    log.info("TLS certificate reloaded from %s", tls.cert)
    return True


class TlsSite(web.TCPSite):
    """``web.TCPSite`` whose TLS handshakes must finish within ``handshake_timeout``.

    A connection is handed to the gateway (and counted against the connection caps, and held to
    ``timeouts.headers``) only once its handshake is done; asyncio allows a handshake 60 s, so a
    client stalling it would hold a socket that long, uncounted. The gateway passes
    ``timeouts.headers``. Without TLS this is a plain ``TCPSite``.
    """

    __slots__ = ("_handshake_timeout",)

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, handshake_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        if self._ssl_context is None:
            await super().start()
            return
        await web.BaseSite.start(self)  # registers the site with the runner, as TCPSite.start does
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._handshake_timeout,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
