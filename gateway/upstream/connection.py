"""One keep-alive HTTP/1.1 connection to a backend: sends a request, parses the response head and its
body framing (Content-Length, chunked, close-delimited) straight into an ``UpstreamResponse``."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import TYPE_CHECKING, cast

from multidict import CIMultiDict, CIMultiDictProxy

from .response import UpstreamDisconnected, UpstreamError, UpstreamProtocolError, UpstreamResponse

if TYPE_CHECKING:
    from .pool import UpstreamPool

__all__ = ["HIGH_WATER", "MAX_HEAD", "Connection"]

MAX_HEAD = 64 * 1024  # response head (status line + headers), also the cap on a chunk line and on trailers
HIGH_WATER = 256 * 1024  # unread body bytes above which the socket stops being read

# Methods that send no Content-Length when there is no body (aiohttp does the same).

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


class Connection(asyncio.Protocol):
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

    @property
    def reusable_now(self) -> bool:
        """Idle, with an open transport: a pooled connection a new request may take."""
        transport = self.transport
        return self.state == _IDLE and transport is not None and not transport.is_closing()

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
