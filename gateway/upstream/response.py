"""What a request to a backend gives back: its errors, and ``UpstreamResponse`` (head, and the body as it arrives)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
]


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
        conn: Connection,
        version: tuple[int, int],
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
    ) -> None:
        self._loop = loop
        self._conn: Connection | None = conn  # None once the body is complete or the connection closed
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
