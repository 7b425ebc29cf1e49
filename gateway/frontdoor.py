"""The front door: connection caps at accept time, slow-client deadlines, clean answers to bad heads.

aiohttp already parses requests strictly (request line and header fields up to 8190 bytes, 128
headers, no ``Content-Length`` with ``Transfer-Encoding``, no duplicate ``Content-Length``, no
NUL/CR/LF in values), decodes gzip/deflate bodies in bounded steps and closes idle keep-alive
connections. This module adds only what it lacks, per connection rather than per request:

- ``max_connections`` / ``max_connections_per_client`` checked when a connection is made (IPv6
  addresses count per /64; a peer in ``trusted_proxies`` is a proxy carrying many clients, so only
  the total cap applies to it). A refused connection gets a one-line 503 (total) or 429 (per
  client) and is closed before any request is read.
- ``timeouts.headers``: a head (the first one on a new connection, or one that started arriving)
  must be complete within it, else 408 and close. ``timeouts.body``: a body must be complete within
  it plus one second per ``MIN_BODY_RATE`` bytes received, else 408 (in the endpoint's dialect) and
  close. One watcher task checks every connection about once a second: no timer per request.
- aiohttp's parser errors are answered as JSON without echoing the offending bytes, 431 for a head
  over the size limits, 415 for a ``Content-Encoding`` it cannot decode, and logged at debug level
  (scanners must not fill the log with tracebacks).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .config import ServerConfig
from .errors import RequestTimeout, UnsupportedMediaType
from .metrics import Metrics

__all__ = [
    "MIN_BODY_RATE",
    "FrontDoor",
    "GuardedHandler",
    "GuardedRunner",
    "check_content_encoding",
    "client_key",
    "guarded_runner",
]

log = logging.getLogger("gateway")
MIN_BODY_RATE = 64 * 1024  # bytes/s a body must average once timeouts.body has passed
WATCH_INTERVAL = 1.0  # seconds between deadline checks (less when a timeout is shorter)
# What aiohttp decodes itself (br and zstd only when their libraries are installed: it says so).
DECODED_ENCODINGS = frozenset({"gzip", "deflate", "br", "zstd", "identity"})
V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d
HEAD_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 128}  # aiohttp's defaults

OnRefused = Callable[[str], None]


def _error_json(message: str) -> bytes:
    """The OpenAI-style error body: before a request is parsed there is no path to pick a dialect by."""
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    ).encode()


def _raw_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = _error_json(message).decode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}\r\n{body}"
    ).encode()


TOO_MANY_TOTAL = _raw_response(
    503, "Service Unavailable", "too many open connections (server.max_connections)", "Retry-After: 1\r\n"
)
TOO_MANY_CLIENT = _raw_response(
    429, "Too Many Requests", "too many open connections from your address (server.max_connections_per_client)",
    "Retry-After: 1\r\n",
)  # fmt: skip
HEAD_TIMEOUT_RESPONSE = _raw_response(
    408, "Request Timeout", "request head not received in time (server.timeouts.headers)"
)


def client_key(host: str) -> str | bytes:
    """What ``max_connections_per_client`` counts by: the IPv4 address, or the IPv6 /64."""
    if ":" not in host:
        return host
    try:
        packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])  # ipaddress is 50x slower
    except OSError:
        return host
    if packed[:12] == V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return packed[:8]


def check_content_encoding(request: web.Request) -> None:
    """415 for a body in an encoding aiohttp did not decode (it decodes only what it knows)."""
    encoding = request.headers.get(hdrs.CONTENT_ENCODING)
    if encoding is not None and encoding.strip().lower() not in DECODED_ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:64]!r} is not supported; send gzip, deflate or an unencoded body"
        )


class GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol, plus admission, the head clock and clean parser errors."""

    __slots__ = ("head_since", "_admitted", "_client", "_door")

    def __init__(self, manager: web.Server, door: FrontDoor, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._door = door
        self._client: str | bytes | None = None  # what the per-client cap counted it under
        self._admitted = False
        self.head_since = 0.0  # when the pending head began (0: none pending)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        refusal = self._door.admit(self, peer[0] if isinstance(peer, tuple) else "")
        if refusal is not None:
            with suppress(Exception):
                transport.write(refusal)  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        self.head_since = self._loop.time()  # the first head is due within timeouts.headers
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:  # refused: aiohttp never saw it
            return
        self._door.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiter = self._waiter
        if waiter is not None and not waiter.done():  # part of a head is here, not all of it
            if not self.head_since:
                self.head_since = self._loop.time()
        elif self.head_since and (self._messages or self._request_in_progress):
            self.head_since = 0.0

    def cut(self, response: bytes | None) -> None:
        """End the connection now, after ``response`` if given (nothing is being written)."""
        transport = self.transport
        if response is not None and transport is not None:
            with suppress(Exception):
                transport.write(response)
        self.force_close()

    def body_timed_out(self, request: BaseRequest, timeout: float) -> None:
        """Fail the body's reader (the handler answers 408 in its dialect) and close afterwards."""
        request.content.set_exception(
            RequestTimeout(f"request body not received in time (server.timeouts.body {timeout:g}s)")
        )
        self.close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        log.debug("bad request head from %s: %s", request.remote, exc)
        if isinstance(exc, LineTooLong) or "Too many headers" in str(exc):
            status, text = 431, "request head too large (a line over 8190 bytes or more than 128 headers)"
        elif isinstance(exc, ContentEncodingError):
            status, text = 415, "Content-Encoding not supported; send gzip, deflate or an unencoded body"
        else:
            status, text = 400, f"malformed HTTP request: {type(exc).__name__}"
        response = web.Response(status=status, body=_error_json(text), content_type="application/json")
        response.force_close()
        return response


class FrontDoor:
    """Open connections per client and the deadline watcher, for one listening server."""

    def __init__(self, server: ServerConfig, on_refused: OnRefused | None = None) -> None:
        self.max_total = server.max_connections
        self.max_per_client = server.max_connections_per_client
        self.trusted = server.trusted_proxies
        self.head_timeout = server.timeouts.headers
        self.body_timeout = server.timeouts.body
        self.on_refused = on_refused
        self.connections: set[GuardedHandler] = set()
        self.per_client: dict[str | bytes, int] = {}
        self.refused = 0
        self._bodies: dict[GuardedHandler, tuple[BaseRequest, float]] = {}
        self._watcher: asyncio.Task[None] | None = None

    @property
    def open(self) -> int:
        return len(self.connections)

    def _trusted(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def admit(self, handler: GuardedHandler, host: str) -> bytes | None:
        """Count a new connection in, or return the response that refuses it."""
        if self.max_total and len(self.connections) >= self.max_total:
            return self._refuse("max_connections", TOO_MANY_TOTAL)
        if self.max_per_client and host and not (self.trusted and self._trusted(host)):
            key = client_key(host)
            count = self.per_client.get(key, 0)
            if count >= self.max_per_client:
                return self._refuse("max_connections_per_client", TOO_MANY_CLIENT)
            self.per_client[key] = count + 1
            handler._client = key
        self.connections.add(handler)
        return None

    def _refuse(self, reason: str, response: bytes) -> bytes:
        self.refused += 1
        if self.on_refused is not None:
            self.on_refused(reason)
        return response

    def release(self, handler: GuardedHandler) -> None:
        self.connections.discard(handler)
        key = handler._client
        if key is not None:
            handler._client = None
            count = self.per_client.get(key, 0) - 1
            if count > 0:
                self.per_client[key] = count
            else:
                self.per_client.pop(key, None)

    def check(self, now: float) -> list[str]:
        """Cut every connection past a deadline; returns what was cut ("headers"/"body"), for metrics."""
        cut: list[str] = []
        head_limit = now - self.head_timeout
        bodies: dict[GuardedHandler, tuple[BaseRequest, float]] = {}
        for handler in list(self.connections):
            since = handler.head_since
            if since and since <= head_limit:
                handler.head_since = 0.0
                handler.cut(HEAD_TIMEOUT_RESPONSE)
                cut.append("headers")
                continue
            request = handler._current_request
            if request is None or request.content.is_eof():
                continue
            seen = self._bodies.get(handler)
            started = seen[1] if seen is not None and seen[0] is request else now
            allowed = self.body_timeout + request.content.total_bytes / MIN_BODY_RATE
            if now - started >= allowed:
                handler.body_timed_out(request, self.body_timeout)
                cut.append("body")
                continue
            bodies[handler] = (request, started)
        self._bodies = bodies
        return cut

    def start(self, on_cut: Callable[[str], None] | None = None) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch(on_cut))

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _watch(self, on_cut: Callable[[str], None] | None) -> None:
        loop = asyncio.get_running_loop()
        interval = min(WATCH_INTERVAL, self.head_timeout / 4, self.body_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                for phase in self.check(loop.time()):
                    log.debug("cut a slow client (%s deadline)", phase)
                    if on_cut is not None:
                        on_cut(phase)
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad connection
                log.exception("front door deadline check failed")


class GuardedServer(web.Server):
    """aiohttp's server whose connections are ``GuardedHandler``s sharing one ``FrontDoor``."""

    def __init__(self, door: FrontDoor, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.door = door

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, self.door, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` serving through a ``FrontDoor`` (caps, deadlines) with aiohttp's limits set."""

    def __init__(
        self, app: web.Application, door: FrontDoor, on_cut: Callable[[str], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.door = door
        self._on_cut = on_cut

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        server = GuardedServer(
            self.door,
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.door.start(self._on_cut)
        return server

    async def _cleanup_server(self) -> None:
        await self.door.stop()
        await super()._cleanup_server()


def runner_options(server: ServerConfig) -> dict[str, Any]:
    """The aiohttp handler arguments the front door sets: the keep-alive idle timeout and head limits."""
    return {"keepalive_timeout": server.timeouts.keep_alive, **HEAD_LIMITS}


def guarded_runner(app: web.Application, server: ServerConfig, metrics: Metrics | None, **kwargs: Any) -> GuardedRunner:
    """The runner every entry point uses: caps and deadlines from ``server``, counted in ``metrics``."""
    door = FrontDoor(server, metrics.connection_refused if metrics is not None else None)
    if metrics is not None:
        metrics.follow_open_connections(lambda: door.open)
    on_cut = metrics.client_timeout if metrics is not None else None
    return GuardedRunner(app, door, on_cut, **kwargs, **runner_options(server))
