"""A lean HTTP/1.1 client for the one thing the gateway does upstream: relay a request to a backend.

Why it exists: with aiohttp's ``ClientSession`` about a third of the gateway's CPU per
non-streamed request went to client machinery that a relay does not need (``ClientRequest``
construction, a ``write_bytes`` task per request, the payload registry, per-request timers,
redirect and cookie handling). Here a request is one ``transport.write`` of head and body on a
pooled keep-alive connection, and the response is parsed by an ``asyncio.Protocol`` straight
into a small buffer that the relay drains with ``readany()``. No task, timer or thread is
created per request; under uvloop the whole path stays in the event loop's C callbacks except
for the parsing below.

What it does:

* ``UpstreamPool``: one per backend (``http://host:port``); idle keep-alive connections in a
  LIFO list (bounded, closed after ``idle_timeout``, one sweeper timer per pool); a stale pooled
  connection that the server closed before sending any byte of the response is retried once on a
  fresh connection (the classic keep-alive race).
* Response framing: Content-Length, ``Transfer-Encoding: chunked`` (incremental; size lines,
  extensions and trailers may be split anywhere), close-delimited; 1xx interim responses are
  skipped; HEAD, 204 and 304 have no body. Malformed responses raise ``UpstreamProtocolError``.
* A connection returns to the pool as soon as its response body has been completely received and
  the backend did not ask to close it (the unread body stays in the response's own buffer).
  Anything else — an incomplete body, ``close()``, ``set_exception()``, a cancelled read — closes
  it, which is how a backend learns that the client went away and stops generating.
* Backpressure: reading from the socket pauses while more than ``high_water`` bytes of body
  wait unread, and resumes once the reader drained them.

What it does not do: TLS (use aiohttp for https backends), proxies, redirects, cookies, content
decoding (bodies are relayed as sent), ``Expect: 100-continue``, streamed request bodies (the body
is ``bytes``), pipelining, HTTP/2. The caller supplies the headers and owns their hygiene; only
``Host`` and ``Content-Length`` are written here, and headers that would conflict with them or
break the framing are refused with ``ValueError``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
]

MAX_HEAD = 64 * 1024  # response head (status line + headers), also the cap on a chunk line and on trailers
HIGH_WATER = 256 * 1024  # unread body bytes above which the socket stops being read
DNS_TTL = 300.0  # seconds a host name's addresses are reused for new connections (aiohttp's default too)
SPLIT_WRITE = 64 * 1024  # bodies larger than this are not copied into the head's buffer

# Methods that send no Content-Length when there is no body (aiohttp does the same).
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})

_CTL_FREE = r"[^\x00-\x08\x0a-\x1f\x7f]*"  # HTAB, visible ASCII, obs-text; no CR, LF or other controls
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_STATUS_RE = re.compile(rf"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ({_CTL_FREE}))?")
# A whole head (plus a final CRLF) in one linear pass: status line, then token-named header lines
# ending in CRLF; no obs-fold, no bare LF, no control bytes.
_HEAD_RE = re.compile(rf"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ({_CTL_FREE}))?\r\n((?:{_TOKEN}:{_CTL_FREE}\r\n)*)")
_HEADER_LINE_RE = re.compile(rf"{_TOKEN}:{_CTL_FREE}")
_HEX = frozenset(b"0123456789abcdefABCDEF")

# Connection states.
_IDLE = 0  # no request in flight (in the pool, or between requests)
_HEAD = 1  # request sent, waiting for the (final) response head
_LENGTH = 2  # body framed by Content-Length; ``remaining`` bytes to go
_CHUNK_SIZE = 3  # chunked: expecting a chunk-size line
_CHUNK_DATA = 4  # chunked: ``remaining`` bytes of chunk data to go
_CHUNK_END = 5  # chunked: expecting the CRLF after chunk data
_TRAILERS = 6  # chunked: after the last chunk, trailer lines until an empty one
_UNTIL_CLOSE = 7  # close-delimited body
_CLOSED = 8  # the transport is closed or closing


class UpstreamError(Exception):
    """Base of every error this client raises about the backend."""


class UpstreamConnectError(UpstreamError):
    """The backend could not be connected to (refused, unreachable, name resolution failed)."""


class UpstreamConnectTimeout(UpstreamError):
    """The connection was not established within ``connect_timeout``."""


class UpstreamProtocolError(UpstreamError):
    """The backend sent something that is not a valid HTTP/1.x response."""


class UpstreamDisconnected(UpstreamError):
    """The connection closed before the response head, or before the end of a framed body."""

    def __init__(self, message: str, *, nothing_received: bool = False) -> None:
        super().__init__(message)
        self.nothing_received = nothing_received  # no byte of this response arrived (retry-safe)


def _parse_head(head: bytes) -> tuple[int, int, str, CIMultiDict[str]]:
    """(minor version, status, reason, headers) of a response head without its final CRLFCRLF."""
    text = head.decode("utf-8", "surrogateescape") + "\r\n"
    match = _HEAD_RE.fullmatch(text)
    if match is None:
        line, _, rest = text.partition("\r\n")
        if _STATUS_RE.fullmatch(line) is None:
            raise UpstreamProtocolError(f"invalid status line {line[:100]!r}")
        bad = next((h for h in rest.split("\r\n") if not _HEADER_LINE_RE.fullmatch(h)), rest)
        raise UpstreamProtocolError(f"invalid header line {bad[:100]!r}")
    minor, status, reason, block = match.groups()
    pairs = []
    for line in block.split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        pairs.append((name, value.strip(" \t")))
    return int(minor), int(status), reason or "", CIMultiDict(pairs)


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",")}


class UpstreamResponse:
    """A backend response: status and headers, and the body as it arrives.

    Mimics the part of ``aiohttp.ClientResponse`` the gateway uses; ``content`` is the response
    itself (``readany``, ``read``, ``set_exception``). Read errors are ``UpstreamError``s, or
    whatever was passed to ``set_exception``. Body bytes that arrived before a disconnect are
    returned before the error is raised.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_eof",
        "_exc",
        "_loop",
        "_sink",
        "_size",
        "_waiter",
        "_whole",
        "content_length",
        "headers",
        "reason",
        "status",
        "version",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: _Connection,
        version: tuple[int, int],
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
    ) -> None:
        self._loop = loop
        self._conn: _Connection | None = conn  # None once the body is complete or the connection closed
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._whole = False  # read() is waiting for the end: no wake-up per chunk
        self._sink: Callable[[bytes], None] | None = None  # pipe(): body bytes bypass the buffer
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length  # the Content-Length header's value, as aiohttp reports it

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r}>"

    @property
    def content(self) -> UpstreamResponse:
        return self

    @property
    def complete(self) -> bool:
        """The whole body has been received (it may still be waiting to be read)."""
        return self._eof

    # Called by the connection.

    def _feed(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        waiter = self._waiter
        if waiter is not None and not self._whole and not waiter.done():
            waiter.set_result(None)

    def _end(self, exc: BaseException | None) -> None:
        self._conn = None
        if exc is None:
            self._eof = True
        elif self._exc is None:
            self._exc = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The reading side.

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        except asyncio.CancelledError:
            self.close()  # the reader gave up: the backend must see the connection close
            raise
        finally:
            self._waiter = None

    async def readany(self) -> bytes:
        """Whatever body bytes are available (waiting for some), or b"" at the end of the body."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._size = 0
                conn = self._conn
                if conn is not None and conn.paused:
                    conn.resume()
                return data
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            await self._wait()

    async def read(self) -> bytes:
        """The whole remaining body; raises if it cannot be received completely."""
        if not self._eof and self._exc is None:
            self._whole = True
            conn = self._conn
            if conn is not None:
                conn.unbounded = True  # the caller asked for everything: no backpressure
                if conn.paused:
                    conn.resume()
            try:
                while not self._eof and self._exc is None:
                    await self._wait()
            finally:
                self._whole = False
        if self._exc is not None:
            raise self._exc
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        return data

    # The callback side (pipe mode): body bytes are handed over inside the connection's own
    # data_received, with no future, task switch or buffer per chunk.

    def pipe(self, sink: Callable[[bytes], None]) -> None:
        """From now on deliver body bytes to ``sink(data)`` as they arrive (bytes already buffered first).

        ``readany``/``read`` then see no more data; use ``wait`` for the end of the body, and
        ``pause``/``resume`` for backpressure. ``sink`` must not raise.
        """
        chunks = self._chunks
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._size = 0
            sink(data)
        self._sink = sink
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()

    async def wait(self) -> None:
        """Return when the body has ended or failed (see ``error``), or ``wake`` was called."""
        if not self._eof and self._exc is None:
            await self._wait()

    def wake(self) -> None:
        """Make a pending ``wait`` return (a sink asking its owner to act)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def finished(self) -> bool:
        """The body ended or failed."""
        return self._eof or self._exc is not None

    @property
    def error(self) -> BaseException | None:
        """Why the body failed, or None."""
        return self._exc

    def pause(self) -> None:
        """Stop reading the backend's socket until ``resume`` (backpressure from the reader)."""
        conn = self._conn
        if conn is not None and not conn.paused:
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                conn.paused = True
                transport.pause_reading()

    def resume(self) -> None:
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()

    def set_exception(self, exc: BaseException) -> None:
        """Fail the response: pending and later reads raise ``exc``; an incomplete body's connection closes."""
        self._exc = exc
        self._chunks.clear()
        self._size = 0
        conn = self._conn
        self._conn = None
        if conn is not None:
            conn.abandon()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Close the connection unless the body is complete (then it is already back in the pool)."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.abandon()
            self._end(UpstreamDisconnected("the response was closed before its body ended"))

    def release(self) -> None:
        self.close()

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the backend and its response parser."""

    __slots__ = (
        "buf",
        "head_only",
        "head_waiter",
        "idle_since",
        "in_pool",
        "paused",
        "pool",
        "received",
        "remaining",
        "response",
        "reusable",
        "state",
        "transport",
        "unbounded",
        "used",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.buf = bytearray()  # an incomplete head, chunk line or trailer line
        self.remaining = 0
        self.response: UpstreamResponse | None = None
        self.head_waiter: asyncio.Future[UpstreamResponse] | None = None
        self.head_only = False
        self.received = False
        self.reusable = True
        self.paused = False
        self.unbounded = False
        self.in_pool = False
        self.idle_since = 0.0
        self.used = 0  # requests sent on this connection

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = _CLOSED
        self.pool._lost(self)
        if state == _HEAD:
            self._fail(
                UpstreamDisconnected(
                    "the backend closed the connection before sending a response",
                    nothing_received=not self.received,
                )
            )
        elif state == _UNTIL_CLOSE:
            response = self.response
            self.response = None
            if response is not None:
                response._end(None)
        elif state != _IDLE and state != _CLOSED:
            self._fail(UpstreamDisconnected("the backend closed the connection in the middle of the body"))

    def pause_writing(self) -> None:  # a large request body; the transport buffers it, nothing to do
        pass

    def resume_writing(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _LENGTH:  # the common case first
            remaining = self.remaining
            n = len(data)
            if n < remaining:
                self.remaining = remaining - n
                self._push(data)
            else:
                if n > remaining:
                    self.reusable = False  # bytes after the body: not a response we asked for
                    data = data[:remaining]
                self._push(data)
                self._finish()
            return
        self.received = True
        try:
            if state == _HEAD:
                self._feed_head(data)
            elif state == _UNTIL_CLOSE:
                self._push(data)
            elif state == _IDLE:  # unsolicited bytes on an idle connection (e.g. a 408): drop it
                self.reusable = False
                self._close()
            elif state != _CLOSED:
                self._feed_chunked(data)
        except UpstreamProtocolError as exc:
            self._fail(exc)

    # Parsing

    def _feed_head(self, data: bytes) -> None:
        while True:
            buf = self.buf
            if buf:
                start = len(buf) - 3
                buf += data
                end = buf.find(b"\r\n\r\n", max(start, 0))
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise UpstreamProtocolError(f"response head larger than {MAX_HEAD} bytes")
                    return
                head = bytes(buf[:end])
                data = bytes(buf[end + 4 :])
                buf.clear()
            else:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > MAX_HEAD:
                        raise UpstreamProtocolError(f"response head larger than {MAX_HEAD} bytes")
                    buf += data
                    return
                head = data[:end]
                data = data[end + 4 :]
            if len(head) > MAX_HEAD:
                raise UpstreamProtocolError(f"response head larger than {MAX_HEAD} bytes")
            minor, status, reason, headers = _parse_head(head)
            if status < 200:
                if status == 101:
                    raise UpstreamProtocolError("unexpected 101 Switching Protocols")
                if data:
                    continue  # an interim response (100, 102, 103): the real one follows
                return
            self._start_body(minor, status, reason, headers, data)
            return

    def _start_body(self, minor: int, status: int, reason: str, headers: CIMultiDict[str], rest: bytes) -> None:
        connection = headers.get("Connection")
        if connection is not None:
            tokens = _tokens(connection)
            if "close" in tokens or (minor == 0 and "keep-alive" not in tokens):
                self.reusable = False
        elif minor == 0:
            self.reusable = False
        lengths = headers.getall("Content-Length", None)
        content_length: int | None = None
        if lengths is not None:
            value = lengths[0]
            if len(lengths) > 1 or "," in value:  # repeated: allowed only if all equal (RFC 9110 §8.6)
                values = {v.strip() for value in lengths for v in value.split(",")}
                if len(values) != 1:
                    raise UpstreamProtocolError(f"conflicting Content-Length values {sorted(values)}")
                value = values.pop()
            if not value.isdigit() or not value.isascii() or len(value) > 18:
                raise UpstreamProtocolError(f"invalid Content-Length {value!r}")
            content_length = int(value)
        codings = headers.getall("Transfer-Encoding", None)
        chunked = False
        if codings is not None:
            if lengths is not None:
                raise UpstreamProtocolError("both Transfer-Encoding and Content-Length in the response")
            if [c.strip().lower() for value in codings for c in value.split(",")] != ["chunked"]:
                raise UpstreamProtocolError(f"unsupported Transfer-Encoding {', '.join(codings)!r}")
            chunked = True

        pool = self.pool
        assert pool._loop is not None
        response = UpstreamResponse(
            pool._loop, self, (1, minor), status, reason, CIMultiDictProxy(headers), content_length
        )
        self.response = response
        waiter = self.head_waiter
        self.head_waiter = None  # the connection may be back in the pool, and reused, before the sender resumes
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self.head_only or status == 204 or status == 304:
            if rest:
                self.reusable = False
            self._finish()
        elif chunked:
            self.state = _CHUNK_SIZE
            if rest:
                self._feed_chunked(rest)
        elif content_length is not None:
            if content_length == 0:
                if rest:
                    self.reusable = False
                self._finish()
            else:
                self.state = _LENGTH
                self.remaining = content_length
                if rest:
                    self.data_received(rest)
        else:
            self.state = _UNTIL_CLOSE
            self.reusable = False
            if rest:
                self._push(rest)

    def _feed_chunked(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            state = self.state
            if state == _CHUNK_DATA:
                take = self.remaining
                if n - pos <= take:
                    self._push(data if pos == 0 else data[pos:])
                    self.remaining = take - (n - pos)
                    if self.remaining == 0:
                        self.state = _CHUNK_END
                    return
                self._push(data[pos : pos + take])
                pos += take
                self.remaining = 0
                self.state = _CHUNK_END
                continue
            # A line: chunk size, the CRLF after chunk data, or a trailer.
            nl = data.find(b"\n", pos)
            buf = self.buf
            if nl < 0:
                buf += data[pos:]
                if len(buf) > MAX_HEAD:
                    raise UpstreamProtocolError("chunk-size or trailer line too long")
                return
            if buf:
                buf += data[pos : nl + 1]
                line = bytes(buf)
                buf.clear()
            else:
                line = data[pos : nl + 1]
            pos = nl + 1
            if len(line) < 2 or line[-2] != 13:  # "\r"
                raise UpstreamProtocolError(f"chunked body line without CRLF: {line[:40]!r}")
            if state == _CHUNK_SIZE:
                size = line[:-2].split(b";", 1)[0].strip(b" \t")
                if not size or len(size) > 15 or not _HEX.issuperset(size):
                    raise UpstreamProtocolError(f"invalid chunk size line {line[:40]!r}")
                chunk = int(size, 16)
                if chunk:
                    self.state = _CHUNK_DATA
                    self.remaining = chunk
                else:
                    self.state = _TRAILERS
                    self.remaining = 0  # trailer bytes seen
            elif state == _CHUNK_END:
                if len(line) != 2:
                    raise UpstreamProtocolError("chunk data longer than its declared size")
                self.state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if len(line) == 2:
                    if pos < n:
                        self.reusable = False  # bytes after the body
                    self._finish()
                    return
                self.remaining += len(line)
                if self.remaining > MAX_HEAD:
                    raise UpstreamProtocolError("trailers too large")
            else:  # closed meanwhile (a reader's set_exception from a callback)
                return

    def _push(self, data: bytes) -> None:
        response = self.response
        if response is None:
            return
        response._feed(data)
        if response._size > HIGH_WATER and not self.paused and not self.unbounded:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                self.paused = True
                transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _finish(self) -> None:
        """The response body is complete: hand the connection back to the pool, or close it."""
        response = self.response
        self.response = None
        self.state = _IDLE
        self.buf.clear()
        if response is not None:
            response._end(None)
        transport = self.transport
        if not self.reusable or transport is None or transport.get_write_buffer_size():
            self._close()
            return
        if self.paused:
            self.resume()
        self.pool._release(self)

    def _fail(self, exc: UpstreamError) -> None:
        """Deliver ``exc`` to whoever waits on this connection and close it."""
        waiter = self.head_waiter
        self.head_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        response = self.response
        self.response = None
        if response is not None:
            response._end(exc)
        self._close()

    def _close(self) -> None:
        self.state = _CLOSED
        self.reusable = False
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                transport.abort()  # do not wait to flush an unsent request body

    def shutdown(self) -> None:
        """Close the connection; a request or body in flight on it fails with UpstreamDisconnected."""
        if self.state in (_IDLE, _CLOSED):
            self._close()
        else:
            self._fail(UpstreamDisconnected("the connection pool was closed"))

    def abandon(self) -> None:
        """The response's owner closed it before its body ended."""
        self.response = None
        self._close()

    # The sending side

    async def send(
        self, data: bytes, body: bytes | None, head_only: bool, deadline: float | None = None
    ) -> UpstreamResponse:
        transport = self.transport
        assert transport is not None and self.state == _IDLE
        self.state = _HEAD
        self.head_only = head_only
        self.received = False
        self.reusable = True
        self.unbounded = False
        self.used += 1
        pool = self.pool
        assert pool._loop is not None
        waiter: asyncio.Future[UpstreamResponse] = pool._loop.create_future()
        self.head_waiter = waiter
        # One timer for the head, not an asyncio.timeout() context per request.
        timer = None if deadline is None else pool._loop.call_at(deadline, self._head_overdue, waiter)
        try:
            transport.write(data)
            if body is not None:
                transport.write(body)
        except (OSError, RuntimeError) as exc:  # a transport that died under us
            self.head_waiter = None
            self._close()
            raise UpstreamDisconnected(f"could not send the request: {exc}", nothing_received=True) from None
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                waiter.result().close()  # the head arrived as we were cancelled
            else:
                self._close()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if self.head_waiter is waiter:  # never another request's (see _start_body)
                self.head_waiter = None

    def _head_overdue(self, waiter: asyncio.Future[UpstreamResponse]) -> None:
        """The deadline passed before the response head: the request fails with TimeoutError."""
        if self.head_waiter is waiter and not waiter.done():
            self.head_waiter = None
            waiter.set_exception(TimeoutError())
            self._close()


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one backend (plain http) and the requests sent over them.

    Create it anywhere; it binds to the running loop at its first request. ``close()`` closes
    every connection, idle or busy.
    """

    __slots__ = (
        "_all",
        "_closed",
        "_factory",
        "_host_header",
        "_idle",
        "_literal",
        "_loop",
        "_resolved",
        "_resolved_until",
        "_sweeper",
        "host",
        "idle_timeout",
        "max_idle",
        "port",
    )

    def __init__(self, host: str, port: int, *, max_idle: int = 256, idle_timeout: float = 60.0) -> None:
        self.host = host.strip("[]")
        self.port = port
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        host_part = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = f"{host_part}:{port}"
        self._idle: list[_Connection] = []  # oldest first; taken from the end
        self._all: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        try:
            ipaddress.ip_address(self.host)
            self._literal = True
        except ValueError:
            self._literal = False
        self._resolved: list[str] = [self.host] if self._literal else []
        self._resolved_until = 0.0

        def factory() -> _Connection:
            return _Connection(self)

        self._factory = factory

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> UpstreamPool:
        """A pool for ``http://host[:port]`` (any path is ignored; it belongs in each request)."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"UpstreamPool needs an http://host[:port] URL, got {url!r}")
        return cls(parts.hostname, parts.port or 80, **kwargs)

    def __repr__(self) -> str:
        return f"<UpstreamPool {self._host_header} idle={len(self._idle)} open={len(self._all)}>"

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def open_count(self) -> int:
        return len(self._all)

    async def request(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes | None,
        connect_timeout: float,
        deadline: float | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response head arrived (the body follows via ``readany``).

        ``deadline`` (loop time) bounds everything up to the head: TimeoutError when it passes.
        Raises ``UpstreamConnectError``/``UpstreamConnectTimeout`` when no connection could be made,
        ``UpstreamDisconnected`` when the backend closed it before the head, ``UpstreamProtocolError``
        on a malformed response, ``ValueError`` on a request that cannot be written safely.
        """
        if self._closed:
            raise RuntimeError("the UpstreamPool is closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        data, big_body = self._serialize(method, path_qs, headers, body)
        head_only = method == "HEAD"
        conn = self._take(loop)
        if conn is not None:
            try:
                return await conn.send(data, big_body, head_only, deadline)
            except UpstreamDisconnected as exc:
                if not exc.nothing_received:
                    raise
            # The backend closed this idle connection as we reused it: once more on a fresh one.
        if deadline is None:
            conn = await self._connect(loop, connect_timeout)
        else:
            async with asyncio.timeout_at(deadline):
                conn = await self._connect(loop, connect_timeout)
        return await conn.send(data, big_body, head_only, deadline)

    def close(self) -> None:
        """Close every connection; later requests raise RuntimeError."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self._idle:
            conn.in_pool = False
        self._idle.clear()
        for conn in list(self._all):
            conn.shutdown()

    # Internals

    def _serialize(
        self, method: str, path_qs: str, headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes | None
    ) -> tuple[bytes, bytes | None]:
        items = getattr(headers, "items", None)
        if items is not None:  # a Mapping (CIMultiDict, dict): len() counts every item
            count = len(headers)  # type: ignore[arg-type]
            fields = "\r\n".join(map(": ".join, items()))
        else:
            pairs = headers if isinstance(headers, list | tuple) else list(headers)
            count = len(pairs)
            fields = "\r\n".join(map(": ".join, pairs))
        if count and (fields.count("\n") != count - 1 or fields.count("\r") != count - 1):
            raise ValueError("CR or LF in a header name or value")
        if body is None and method in _NO_BODY_METHODS:
            length = ""
        else:
            length = f"Content-Length: {len(body) if body is not None else 0}\r\n"
        line = f"{method} {path_qs}"
        if line.count(" ") != 1 or not path_qs or not method or "\n" in line or "\r" in line:
            raise ValueError(f"invalid request line {line[:100]!r}")
        if count:
            lowered = "\n" + fields.lower()
            if "\nhost:" in lowered or "\ncontent-length:" in lowered or "\ntransfer-encoding:" in lowered:
                raise ValueError("Host, Content-Length and Transfer-Encoding are set by UpstreamPool")
            head = f"{line} HTTP/1.1\r\nHost: {self._host_header}\r\n{fields}\r\n{length}\r\n"
        else:
            head = f"{line} HTTP/1.1\r\nHost: {self._host_header}\r\n{length}\r\n"
        data = head.encode("utf-8", "surrogateescape")
        if body:
            if len(body) <= SPLIT_WRITE:
                return data + body, None
            return data, body
        return data, None

    def _take(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        cutoff = loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            conn.in_pool = False
            transport = conn.transport
            if conn.state != _IDLE or transport is None or transport.is_closing():
                continue
            if conn.idle_since < cutoff:
                conn._close()
                continue
            return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._addresses(loop)
                error: OSError | None = None
                for address in addresses:  # in resolver order, like create_connection with a name
                    try:
                        _, conn = await loop.create_connection(self._factory, address, self.port)
                        break
                    except TimeoutError:
                        raise
                    except OSError as exc:
                        error = exc
                else:
                    self._resolved_until = 0.0  # maybe the name moved: resolve again next time
                    assert error is not None
                    raise error
        except TimeoutError:  # also OSError(ETIMEDOUT) from the kernel
            raise UpstreamConnectTimeout(f"no connection to {self._host_header} within {timeout:g}s") from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {self._host_header}: {exc.strerror or exc}") from exc
        if self._closed:
            conn._close()
            raise RuntimeError("the UpstreamPool is closed")
        self._all.add(conn)
        return conn

    async def _addresses(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        """The host's addresses, resolved at most every ``DNS_TTL`` seconds (IP literals never)."""
        if self._literal:
            return self._resolved
        now = loop.time()
        if now < self._resolved_until:
            return self._resolved
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        resolved = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not resolved:
            raise OSError(f"{self.host} has no address")
        self._resolved = resolved
        self._resolved_until = now + DNS_TTL
        return resolved

    def _release(self, conn: _Connection) -> None:
        idle = self._idle
        loop = self._loop
        if self._closed or len(idle) >= self.max_idle or loop is None:
            conn._close()
            return
        conn.idle_since = loop.time()
        conn.in_pool = True
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)

    def _lost(self, conn: _Connection) -> None:
        self._all.discard(conn)
        if conn.in_pool:
            conn.in_pool = False
            try:
                self._idle.remove(conn)
            except ValueError:
                pass

    def _sweep_interval(self) -> float:
        return max(0.05, min(self.idle_timeout / 2, 15.0))

    def _sweep(self) -> None:
        """Close idle connections older than ``idle_timeout`` (the list is ordered oldest first)."""
        self._sweeper = None
        loop = self._loop
        if loop is None:
            return
        idle = self._idle
        cutoff = loop.time() - self.idle_timeout
        expired = 0
        for conn in idle:
            if conn.idle_since > cutoff:
                break
            expired += 1
        if expired:
            stale = idle[:expired]
            del idle[:expired]
            for conn in stale:
                conn.in_pool = False
                conn._close()
        if idle and not self._closed:
            self._sweeper = loop.call_later(self._sweep_interval(), self._sweep)
