"""The byte relay from a backend response to the client, and its timing watchdog.

Streaming is a relay, not a parser: every chunk is written as it arrives (``readany``, never line
reads), SSE and NDJSON alike. Once a stream's head and first chunk are out, a stream from a
plain-HTTP backend is piped by callback (``_Pipe``): each chunk is framed and written to the client
inside the backend connection's ``data_received``, with backpressure, and the relay task sleeps
until the end. Usage scanners see each chunk *after* nothing else needs it, and never delay it.
If the backend dies or goes quiet mid-stream the client's response is ended abnormally (after an
in-band error event when the stream is at an event boundary), never as a clean, truncated 200.
Nothing here writes an error body once the response is prepared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from .cors import CorsPolicy
from .drain import Drain
from .errors import BadGateway, Dialect, GatewayError, GatewayTimeout, ServiceUnavailable, error_body
from .headers import downstream_headers
from .record import RequestRecord
from .upstream import UpstreamError, UpstreamProtocolError, UpstreamResponse
from .usage import count_whole_body, make_scanner

__all__ = ["SMALL_BODY", "STREAM_TYPES", "Transform", "Watchdog", "relay"]

STREAM_TYPES = ("text/event-stream", "application/x-ndjson")
SMALL_BODY = 256 * 1024  # non-streamed bodies up to this size are read whole and sent in one write
PROTOCOL_ERRORS = (aiohttp.ClientPayloadError, UpstreamProtocolError)


class Transform(Protocol):
    """Rewrites a body on its way (usage.UsageStripper, the dialect bridge's translators)."""

    def feed(self, chunk: bytes) -> bytes: ...  # upstream bytes in, bytes to send now out (maybe b"")

    def flush(self) -> bytes: ...  # after a clean upstream end: what is still to send


class Watchdog:
    """Bounds the wait for the first body byte and every gap after it, at one timer per stream.

    The hot path only stores ``last``; the timer re-arms itself from that when it fires, so a
    chunk costs no timer churn. On expiry the upstream reader gets a TimeoutError.
    """

    __slots__ = ("_handle", "_loop", "content", "fired", "first_byte", "got_first", "idle", "last")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        content: aiohttp.StreamReader | UpstreamResponse,
        start: float,
        first_byte: float,
        idle: float,
    ) -> None:
        self._loop = loop
        self.content = content
        self.first_byte = first_byte
        self.idle = idle
        self.last = start
        self.got_first = False
        self.fired = False
        self._handle = loop.call_at(start + first_byte, self._check)

    def _check(self) -> None:
        due = self.last + (self.idle if self.got_first else self.first_byte)
        if self._loop.time() >= due - 0.001:
            self.fired = True
            self.content.set_exception(TimeoutError())
        else:
            self._handle = self._loop.call_at(due, self._check)

    def first_chunk(self, now: float) -> None:
        """Switch from the first-byte deadline to idle gaps (once per stream)."""
        self.got_first = True
        self.last = now
        self._handle.cancel()
        self._handle = self._loop.call_at(now + self.idle, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


CLIENT_HIGH_WATER = 64 * 1024  # unsent bytes to the client above which the backend stops being read


class _Pipe:
    """The rest of a stream, from the backend's connection to the client's socket in one callback.

    Once the response head and first chunk are out, each chunk the backend sends is framed and
    written in the upstream connection's ``data_received``: no future, task switch or aiohttp
    write per chunk. The relay task sleeps in ``run`` until the body ends, fails, or the client's
    socket backs up (then it drains the client and resumes the backend).
    """

    __slots__ = ("chunked", "client_gone", "congested", "last", "loop", "rec", "scan", "transport", "upstream",
                 "watchdog")  # fmt: skip

    def __init__(
        self,
        transport: asyncio.Transport,
        chunked: bool,
        upstream: UpstreamResponse,
        watchdog: Watchdog,
        scan: Callable[[bytes], None] | None,
        rec: RequestRecord,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.transport = transport
        self.chunked = chunked
        self.upstream = upstream
        self.watchdog = watchdog
        self.scan = scan
        self.rec = rec
        self.loop = loop
        self.last = b""
        self.client_gone = False
        self.congested = False

    def feed(self, data: bytes) -> None:
        transport = self.transport
        if self.client_gone:
            return
        if transport.is_closing():
            self.client_gone = True
            self.upstream.wake()
            return
        self.watchdog.last = self.loop.time()
        self.rec.bytes_out += len(data)
        self.last = data
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        if self.scan is not None:  # after the write: counting never delays a token
            self.scan(data)
        if not self.congested and transport.get_write_buffer_size() > CLIENT_HIGH_WATER:
            self.congested = True
            self.upstream.pause()
            self.upstream.wake()

    async def run(self, request: web.Request) -> None:
        """Until the body ends; raises the backend's failure, or ConnectionResetError if the client left."""
        upstream = self.upstream
        upstream.pipe(self.feed)  # may already congest the client with bytes that were buffered
        while not upstream.finished and not self.client_gone:
            if self.congested:  # checked before waiting too: a wake-up with nobody waiting is lost
                await request.writer.drain()
                self.congested = False
                upstream.resume()
                continue
            await upstream.wait()
        if self.client_gone:
            raise ConnectionResetError("the client closed the connection")
        if upstream.error is not None:
            raise upstream.error


class _TransformingPipe(_Pipe):
    """A ``_Pipe`` whose chunks go through a ``Transform`` first (usage stripping, dialect
    translation); kept apart so the byte-for-byte pipe pays nothing for it."""

    __slots__ = ("transform",)

    def __init__(self, transform: Transform, *args: Any) -> None:
        super().__init__(*args)
        self.transform = transform

    def feed(self, data: bytes) -> None:
        transport = self.transport
        if self.client_gone:
            return
        if transport.is_closing():
            self.client_gone = True
            self.upstream.wake()
            return
        self.watchdog.last = self.loop.time()
        out = self.transform.feed(data)
        if out:
            self.rec.bytes_out += len(out)
            self.last = out
            transport.write(b"%x\r\n%b\r\n" % (len(out), out) if self.chunked else out)
        if self.scan is not None:  # the backend's bytes: its own usage report
            self.scan(data)
        if not self.congested and transport.get_write_buffer_size() > CLIENT_HIGH_WATER:
            self.congested = True
            self.upstream.pause()
            self.upstream.wake()


def _at_boundary(last: bytes, sse: bool) -> bool:
    return last.endswith((b"\n\n", b"\r\n\r\n")) if sse else last.endswith(b"\n")


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse | UpstreamResponse,
    rec: RequestRecord,
    *,
    dialect: Dialect,
    first_byte: float,
    idle: float,
    count_usage: bool = False,
    transform: Transform | None = None,
    cors: CorsPolicy | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    content_type: str | None = None,
    drain: Drain | None = None,
) -> web.StreamResponse:
    """Copy status, filtered headers and body bytes to the client as they arrive.

    With ``count_usage`` the token counts are read from the bytes on their way (``usage.py``), as
    the backend sent them. ``content_type`` replaces the backend's for a ``transform`` that
    changes the body's format (the dialect bridge).
    A response that is not streamed is returned unsent, for the entry middleware to finish; a
    streamed one gets its request id and ``cors`` headers here, before its head goes out.
    """
    upstream_type = upstream.headers.get("Content-Type", "")
    streamed = upstream_type.startswith(STREAM_TYPES)
    headers = downstream_headers(upstream.headers, streamed=streamed)
    if content_type is None:
        content_type = upstream_type
    else:
        headers["Content-Type"] = content_type
    headers["X-Request-Id"] = rec.request_id
    if rec.response_headers:
        headers.update(rec.response_headers)
    rec.streamed = streamed
    rec.status = upstream.status
    loop = loop or asyncio.get_running_loop()
    content = upstream.content
    length = upstream.content_length
    if not streamed and transform is None and length is not None and length <= SMALL_BODY:
        # A body already received in full (the usual small JSON answer) needs no timer.
        complete = isinstance(upstream, UpstreamResponse) and upstream.complete
        watchdog = None if complete else Watchdog(loop, content, rec.start, first_byte, idle)
        return await _whole(upstream, rec, headers, watchdog, count_usage, loop)
    watchdog = Watchdog(loop, content, rec.start, first_byte, idle)
    scanner = make_scanner(rec.endpoint, upstream_type) if count_usage else None
    scan = scanner.feed if scanner is not None else None
    if cors is not None:
        cors.apply_response_headers(headers, request.headers.get("Origin"))
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if not streamed and transform is None and length is not None:
        response.content_length = length  # exact, undecoded bytes: keep the length
    last = b""
    pipe: _Pipe | None = None
    if drain is not None and drain.active:  # shutting down: no further request on this connection
        response.force_close()
    try:
        await response.prepare(request)
        transport = request.transport
        if streamed and isinstance(upstream, UpstreamResponse) and transport is not None:
            chunked = response.headers.get("Transfer-Encoding") == "chunked"
            if transform is None:
                pipe = _Pipe(transport, chunked, upstream, watchdog, scan, rec, loop)
            else:
                pipe = _TransformingPipe(transform, transport, chunked, upstream, watchdog, scan, rec, loop)
        while True:
            try:
                chunk = await content.readany()
            except (aiohttp.ClientError, UpstreamError, TimeoutError) as exc:
                await _abort(
                    request,
                    response,
                    rec,
                    exc,
                    watchdog.fired,
                    dialect,
                    streamed and _at_boundary(last, "event-stream" in content_type),
                )
                return response
            if not chunk:
                break
            now = loop.time()
            if watchdog.got_first:
                watchdog.last = now
            else:
                watchdog.first_chunk(now)
                rec.first_byte = now
            raw = chunk
            if transform is not None:
                chunk = transform.feed(chunk)
            if chunk:
                last = chunk
                rec.bytes_out += len(chunk)
                await response.write(chunk)
            if scan is not None:  # after the write: counting never delays a token
                scan(raw)
            if pipe is not None and chunk:  # the head went out with this chunk: the rest by callback
                try:
                    await pipe.run(request)
                except (aiohttp.ClientError, UpstreamError, TimeoutError) as exc:
                    await _abort(
                        request,
                        response,
                        rec,
                        exc,
                        watchdog.fired,
                        dialect,
                        _at_boundary(pipe.last or last, "event-stream" in content_type),
                    )
                    return response
                break
        if transform is not None and (tail := transform.flush()):
            rec.bytes_out += len(tail)
            await response.write(tail)
        await response.write_eof()
    except ConnectionResetError:  # the client went away; closing upstream (below) stops the generation
        rec.status = 499
        rec.error = "client_closed"
    except asyncio.CancelledError:  # same, noticed by aiohttp while we were waiting (handler_cancellation)
        if drain is not None and drain.expired:  # or the gateway's shutdown timeout passed
            rec.error = "shutdown"
            if pipe is not None:
                pipe.client_gone = True  # the backend's further bytes are not forwarded
                last = pipe.last or last
            at_boundary = _at_boundary(last, "event-stream" in content_type)
            err = ServiceUnavailable("the gateway shut down before the response was complete (server.shutdown_timeout)")
            await _end_abnormally(request, response, dialect, err, streamed and at_boundary)
            raise
        rec.status = 499
        rec.error = "client_closed"
        raise
    finally:
        watchdog.cancel()
        upstream.close()
        rec.end = loop.time()
        if scanner is not None:
            scanner.finish(rec)
    return response


async def _whole(
    upstream: aiohttp.ClientResponse | UpstreamResponse,
    rec: RequestRecord,
    headers: Any,
    watchdog: Watchdog | None,
    count_usage: bool,
    loop: asyncio.AbstractEventLoop,
) -> web.Response:
    """A small, complete (Content-Length) body: one read, one write. Nothing is sent before it is
    all here, so a backend failure can still become a proper 502/504 in the endpoint's dialect."""
    try:
        body = await upstream.content.read()
    except (aiohttp.ClientError, UpstreamError, TimeoutError) as exc:
        if watchdog is not None and watchdog.fired:
            rec.error = "timeout"
            raise GatewayTimeout("the backend stopped sending in the middle of the response") from None
        rec.error = "protocol" if isinstance(exc, PROTOCOL_ERRORS) else "reset"
        raise BadGateway("the backend closed the connection in the middle of the response") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        upstream.close()  # a no-op after a complete body: the connection went back to the pool
        rec.end = rec.first_byte = loop.time()
    if count_usage and upstream.headers.get("Content-Type", "").startswith("application/json"):
        count_whole_body(body, rec)
    rec.bytes_out = len(body)
    return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)


async def _abort(
    request: web.Request,
    response: web.StreamResponse,
    rec: RequestRecord,
    exc: BaseException,
    timed_out: bool,
    dialect: Dialect,
    in_band: bool,
) -> None:
    """End the client's response abnormally after an upstream failure mid-body."""
    err: GatewayError
    if timed_out:
        rec.error = "timeout"
        err = GatewayTimeout("the backend stopped sending for longer than its idle timeout")
    else:
        rec.error = "protocol" if isinstance(exc, PROTOCOL_ERRORS) else "reset"
        err = BadGateway("the backend closed the connection in the middle of the response")
    await _end_abnormally(request, response, dialect, err, in_band)


async def _end_abnormally(
    request: web.Request, response: web.StreamResponse, dialect: Dialect, err: GatewayError, in_band: bool
) -> None:
    """An in-band error event (when the stream is at an event boundary), then no final chunk."""
    if in_band:
        body = error_body(dialect, err)
        if response.content_type == "text/event-stream":
            prefix = b"event: error\n" if dialect is Dialect.ANTHROPIC else b""
            body = prefix + b"data: " + body + b"\n\n"
        else:
            body += b"\n"
        try:
            await response.write(body)
        except ConnectionResetError:
            pass
    transport = request.transport
    if transport is not None:
        transport.close()  # no terminating chunk: the client sees an incomplete body, not a clean 200
