"""The lean upstream client: framing, keep-alive, the stale-connection retry, failures, cancellation.

Every socket test runs twice, under asyncio's default loop and under uvloop (the gateway's), so
each is a plain function that runs its coroutine on the loop named by the parameter. Servers are
raw ``asyncio.start_server`` handlers scripted byte by byte, plus an aiohttp server for realism.
Parser edge cases (every split point, malformed heads) are fed straight into the protocol.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
import uvloop
from aiohttp import web
from multidict import CIMultiDict

from gateway.upstream import (
    HIGH_WATER,
    Connection,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
)

STEP = 5.0  # bound for each awaited event; tests never rely on sleeping for correctness
TIMEOUT = 1.0  # connect timeout for requests

LoopTest = Callable[[], Awaitable[None]]


def both_loops(fn: LoopTest) -> Callable[[str], None]:
    """Turn ``async def test_x()`` into a test run once per event loop implementation."""

    async def bounded() -> None:
        async with asyncio.timeout(20):
            await fn()

    def test(loop: str) -> None:
        if loop == "uvloop":
            uvloop.run(bounded())
        else:
            asyncio.run(bounded())

    test.__name__ = fn.__name__
    test.__qualname__ = fn.__qualname__
    test.__doc__ = fn.__doc__
    return pytest.mark.parametrize("loop", ["asyncio", "uvloop"])(test)


# A scripted raw server


class Peer:
    """One accepted connection on the scripted server."""

    def __init__(self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.index = server.connections

    async def read_request(self) -> tuple[bytes, bytes] | None:
        """The next request's head and body, or None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        body = await self.reader.readexactly(int(match.group(1))) if match else b""
        self.server.requests.append(head + body)
        return head, body

    async def send(self, data: bytes, *, bytewise: bool = False) -> None:
        if not bytewise:
            self.writer.write(data)
            await self.writer.drain()
            return
        for i in range(len(data)):
            self.writer.write(data[i : i + 1])
            await self.writer.drain()
            await asyncio.sleep(0.0005)  # let each byte go out as its own segment

    async def wait_eof(self) -> bool:
        """True once the client closed the connection (EOF or reset)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.server.eofs += 1
        return True


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.eofs = 0
        self.requests: list[bytes] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.peers: list[Peer] = []
        self.port = 0

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        await self._server.wait_closed()
        for peer in self.peers:  # handlers end on their own (EOF); cancelling them makes asyncio log errors
            peer.writer.transport.abort()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=STEP)

    def pool(self, **kwargs: Any) -> UpstreamPool:
        return UpstreamPool("127.0.0.1", self.port, **kwargs)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = Peer(self, reader, writer)
        self.peers.append(peer)
        self.connections += 1
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(e + b"\r\n" for e in extra),
        body,
    )


async def answer_each(peer: Peer) -> None:
    """Keep-alive: answer every request with its own body length."""
    while (req := await peer.read_request()) is not None:
        await peer.send(ok(b"got %d" % len(req[1])))


async def settle(pool: UpstreamPool) -> None:
    pool.close()
    await asyncio.sleep(0)


async def read_all(resp: UpstreamResponse) -> bytes:
    parts = []
    while chunk := await resp.content.readany():
        parts.append(chunk)
    return b"".join(parts)


# Framing over real sockets


@both_loops
async def test_content_length_body_and_the_request_as_written() -> None:
    async with RawServer(answer_each) as server:
        pool = server.pool()
        headers = CIMultiDict([("X-A", "1"), ("X-A", "2"), ("Content-Type", "application/json")])
        resp = await pool.request("POST", "/v1/chat?x=%20y", headers, b'{"a":1}', TIMEOUT)
        assert (resp.status, resp.reason, resp.content_length, resp.version) == (200, "OK", 5, (1, 1))
        assert resp.headers["content-length"] == "5"
        assert await resp.read() == b"got 7"
        assert server.requests == [
            b"POST /v1/chat?x=%%20y HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-A: 1\r\nX-A: 2\r\n"
            b'Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}' % server.port
        ]
        await settle(pool)


@both_loops
async def test_request_without_body_and_header_forms() -> None:
    async with RawServer(answer_each) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/tags", [("Accept", "*/*")], None, TIMEOUT)
        assert await resp.read() == b"got 0"
        resp = await pool.request("POST", "/p", {"X-B": "é"}, None, TIMEOUT)
        assert await resp.read() == b"got 0"
        big = bytes(range(256)) * 4096  # 1 MiB: written after the head, not copied into it
        resp = await pool.request("PUT", "/big", [], big, TIMEOUT)
        assert await resp.read() == b"got %d" % len(big)
        assert server.requests[0] == b"GET /tags HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: */*\r\n\r\n" % server.port
        assert server.requests[1].endswith(b"X-B: \xc3\xa9\r\nContent-Length: 0\r\n\r\n")
        assert server.requests[2].endswith(big)
        assert server.connections == 1
        await settle(pool)


def test_head_and_small_body_are_one_buffer() -> None:
    pool = UpstreamPool("::1", 8080)
    data, rest = pool._serialize("POST", "/x", [("A", "b")], b"body")
    assert rest is None
    assert data == b"POST /x HTTP/1.1\r\nHost: [::1]:8080\r\nA: b\r\nContent-Length: 4\r\n\r\nbody"
    data, rest = pool._serialize("POST", "/x", [], b"z" * 100_000)
    assert rest == b"z" * 100_000 and data.endswith(b"Content-Length: 100000\r\n\r\n")


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/x", [("X-A", "1\r\nX-Injected: 1")]),
        ("GET", "/x", [("X-A\r\n", "1")]),
        ("GET", "/x", [("X-A", "1\n")]),
        ("GET", "/x\r\nA: b", []),
        ("GET", "/x y", []),
        ("GET X", "/x", []),
        ("GET", "", []),
        ("GET", "/x", [("Host", "evil")]),
        ("GET", "/x", [("content-length", "3")]),
        ("GET", "/x", [("Transfer-Encoding", "chunked")]),
    ],
)
def test_unsafe_requests_are_refused(method: str, path: str, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        UpstreamPool("127.0.0.1", 1)._serialize(method, path, headers, None)


def test_from_url() -> None:
    pool = UpstreamPool.from_url("http://localhost:11434/")
    assert (pool.host, pool.port) == ("localhost", 11434)
    assert UpstreamPool.from_url("http://[::1]").port == 80
    with pytest.raises(ValueError):
        UpstreamPool.from_url("https://example.com")


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    b'5;name=value;q="a;b"\r\nhello\r\n'
    b"A \r\n, world!!!\r\n"
    b"1\r\n\n\r\n"
    b"0;last\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n"
)
CHUNKED_BODY = b"hello, world!!!\n"


@both_loops
async def test_chunked_body_arriving_one_byte_at_a_time() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(CHUNKED, bytewise=True)

    async with RawServer(handler) as server:
        pool = server.pool()
        for _ in range(2):
            resp = await pool.request("GET", "/s", [], None, TIMEOUT)
            assert resp.status == 200 and resp.content_length is None
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert await read_all(resp) == CHUNKED_BODY
            assert await resp.content.readany() == b""
        assert server.connections == 1 and pool.idle_count == 1  # trailers consumed, connection reused
        await settle(pool)


@both_loops
async def test_close_delimited_body() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
        await peer.send(b"and last")

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        assert resp.content_length is None
        assert await resp.read() == b"first and last"
        assert pool.idle_count == 0
        await settle(pool)


@both_loops
async def test_close_delimited_http10_body() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 100_000)

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        assert resp.version == (1, 0)
        assert await read_all(resp) == b"x" * 100_000
        await settle(pool)


@both_loops
async def test_no_body_for_head_204_and_304_and_the_connection_is_reused() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")  # HEAD: no body follows
        await peer.read_request()
        await peer.send(b"HTTP/1.1 204 No Content\r\n\r\n")
        await peer.read_request()
        await peer.send(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
        await answer_each(peer)

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("HEAD", "/api/blobs/sha256:x", [], None, TIMEOUT)
        assert resp.status == 200 and resp.content_length == 1234
        assert await resp.read() == b""
        resp = await pool.request("DELETE", "/api/delete", [], b"{}", TIMEOUT)
        assert resp.status == 204 and resp.complete
        assert await resp.content.readany() == b""
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        assert resp.status == 304 and await resp.read() == b""
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        assert await resp.read() == b"got 0"
        assert server.connections == 1
        await settle(pool)


@both_loops
async def test_interim_responses_are_skipped() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0.01)
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final"))

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("POST", "/", [], b"x", TIMEOUT)
        assert resp.status == 200 and "Link" not in resp.headers
        assert await resp.read() == b"final"
        await settle(pool)


# Keep-alive


@both_loops
async def test_keep_alive_reuses_one_connection() -> None:
    async with RawServer(answer_each) as server:
        pool = server.pool()
        for i in range(3):
            resp = await pool.request("POST", "/", [], b"x" * i, TIMEOUT)
            assert await resp.read() == b"got %d" % i
        assert server.connections == 1 and pool.idle_count == 1 and pool.open_count == 1
        await settle(pool)


class InstantServer(asyncio.Protocol):
    """Answers each request in the callback that received it (head and body in one segment)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            match = re.search(rb"\r\nContent-Length: (\d+)", self.buf[: end + 2])
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buf) < total:
                break
            body, self.buf = self.buf[end + 4 : total], self.buf[total:]
            self.transport.write(ok(body))


@both_loops
async def test_a_connection_reused_before_its_previous_sender_resumed() -> None:
    """The pool gets a connection back inside the protocol callback, before the task that sent on
    it resumes; another task may take and use it first. Nothing may leak between the two."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(InstantServer, "127.0.0.1", 0)
    pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1])

    async def worker(w: int) -> None:
        for i in range(30):
            body = b"%d-%d" % (w, i)
            async with asyncio.timeout(STEP):
                resp = await pool.request("POST", "/", [], body, TIMEOUT)
                assert await resp.read() == body

    await asyncio.gather(*(worker(w) for w in range(64)))
    assert pool.open_count <= 64
    await settle(pool)
    server.close()


@both_loops
async def test_connection_close_is_not_reused() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok(b"bye", b"Connection: close"))
        await peer.wait_eof()  # the client closes it, the server does not have to

    async with RawServer(handler) as server:
        pool = server.pool()
        for _ in range(2):
            resp = await pool.request("GET", "/", [], None, TIMEOUT)
            assert await resp.read() == b"bye"
            assert pool.idle_count == 0
        assert server.connections == 2
        async with asyncio.timeout(STEP):
            while server.eofs < 2:
                await asyncio.sleep(0.005)
        await settle(pool)


@both_loops
async def test_http10_without_keep_alive_and_trailing_garbage_are_not_reused() -> None:
    replies = [
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ok(b"ok") + b"HTTP/1.1 200 OK\r\n",  # bytes after the body: never reuse
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ]

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(replies[len(peer.server.requests) - 1])

    async with RawServer(handler) as server:
        pool = server.pool()
        for expected_idle in (0, 0, 1):
            resp = await pool.request("GET", "/", [], None, TIMEOUT)
            assert await resp.read() == b"ok"
            assert pool.idle_count == expected_idle
        assert server.connections == 3
        await settle(pool)


@both_loops
async def test_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.send(ok(b"one"))
            await peer.read_request()  # the keep-alive race: the server closes instead of answering
            peer.writer.transport.abort()
            return
        await answer_each(peer)

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("POST", "/", [], b"a", TIMEOUT)
        assert await resp.read() == b"one"
        resp = await pool.request("POST", "/", [], b"bb", TIMEOUT)
        assert await resp.read() == b"got 2"
        assert server.connections == 2
        assert [r[-2:] for r in server.requests] == [b"\na", b"bb", b"bb"]
        await settle(pool)


@both_loops
async def test_retry_happens_only_once_and_never_on_a_fresh_connection() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.send(ok(b"one"))
        await peer.read_request()
        peer.writer.transport.abort()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        assert await resp.read() == b"one"
        with pytest.raises(UpstreamDisconnected):
            await pool.request("GET", "/", [], None, TIMEOUT)  # stale, then the fresh one fails too
        assert server.connections == 2
        with pytest.raises(UpstreamDisconnected):
            await pool.request("GET", "/", [], None, TIMEOUT)  # fresh: no retry
        assert server.connections == 3
        await settle(pool)


@both_loops
async def test_no_retry_once_part_of_the_response_arrived() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok(b"one"))
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 O")
        peer.writer.transport.abort()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        assert await resp.read() == b"one"
        with pytest.raises(UpstreamDisconnected) as info:
            await pool.request("GET", "/", [], None, TIMEOUT)
        assert not info.value.nothing_received
        assert server.connections == 1
        await settle(pool)


@both_loops
async def test_idle_connections_expire_and_the_pool_is_bounded() -> None:
    async def handler(peer: Peer) -> None:
        await answer_each(peer)
        peer.server.eofs += 1

    async with RawServer(handler) as server:
        pool = server.pool(max_idle=1, idle_timeout=0.1)
        first, second = await asyncio.gather(*(pool.request("GET", "/", [], None, TIMEOUT) for _ in range(2)))
        assert server.connections == 2
        assert [await first.read(), await second.read()] == [b"got 0", b"got 0"]
        assert pool.idle_count == 1  # the second one to finish was closed
        async with asyncio.timeout(STEP):
            while server.eofs < 2:  # the idle one is closed by the sweeper after 0.1 s
                await asyncio.sleep(0.01)
        assert pool.idle_count == 0 and pool.open_count == 0
        await settle(pool)


@both_loops
async def test_connection_closed_by_the_server_while_idle_leaves_the_pool() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok(b"one"))
        await asyncio.sleep(0.01)
        if peer.index == 0:
            peer.writer.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
        else:
            return  # plain close

    async with RawServer(handler) as server:
        pool = server.pool()
        for _ in range(2):
            resp = await pool.request("GET", "/", [], None, TIMEOUT)
            assert await resp.read() == b"one"
            assert pool.idle_count == 1
            async with asyncio.timeout(STEP):
                while pool.idle_count:
                    await asyncio.sleep(0.005)
        assert pool.open_count == 0
        await settle(pool)


# Failures


@both_loops
async def test_server_dying_mid_body() -> None:
    replies = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\npartial",
    ]

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(replies[peer.index % len(replies)])
        await asyncio.sleep(0.01)

    async with RawServer(handler) as server:
        pool = server.pool()
        for _ in replies:
            resp = await pool.request("GET", "/", [], None, TIMEOUT)
            assert await resp.content.readany() == b"partial"  # what arrived is delivered first
            with pytest.raises(UpstreamDisconnected):
                await resp.content.readany()
            with pytest.raises(UpstreamDisconnected):
                await resp.content.readany()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        with pytest.raises(UpstreamDisconnected):
            await resp.read()
        assert pool.open_count == 0
        await settle(pool)


@both_loops
async def test_server_closing_before_the_head() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()

    async with RawServer(handler) as server:
        pool = server.pool()
        with pytest.raises(UpstreamDisconnected) as info:
            await pool.request("GET", "/", [], None, TIMEOUT)
        assert info.value.nothing_received
        await settle(pool)


@both_loops
async def test_garbage_status_line_is_a_protocol_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await peer.wait_eof()

    async with RawServer(handler) as server:
        pool = server.pool()
        with pytest.raises(UpstreamProtocolError, match="status line"):
            await pool.request("GET", "/", [], None, TIMEOUT)
        async with asyncio.timeout(STEP):
            while not server.eofs:  # the connection was closed, not pooled
                await asyncio.sleep(0.005)
        assert pool.open_count == 0
        await settle(pool)


@both_loops
async def test_connect_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    pool = UpstreamPool("127.0.0.1", port)
    with pytest.raises(UpstreamConnectError) as info:
        await pool.request("GET", "/", [], None, TIMEOUT)
    assert isinstance(info.value.__cause__, OSError)
    assert isinstance(info.value, UpstreamError)
    await settle(pool)


@both_loops
async def test_connect_timeout() -> None:
    """A connect that never completes, made deterministic by patching the loop's create_connection
    (a full accept queue on loopback does not reliably hang a connect)."""
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def never(*args: Any, **kwargs: Any) -> Any:
        started.set()
        try:
            await asyncio.Future()
        finally:
            cancelled.set()

    loop.create_connection = never  # type: ignore[method-assign]
    try:
        pool = UpstreamPool("127.0.0.1", 9)
        t0 = loop.time()
        with pytest.raises(UpstreamConnectTimeout):
            await pool.request("GET", "/", [], None, 0.05)
        assert 0.04 < loop.time() - t0 < 1.0
        assert started.is_set() and cancelled.is_set()
    finally:
        del loop.create_connection
    await settle(pool)


@both_loops
async def test_host_names_are_resolved_once_and_every_address_is_tried() -> None:
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    lookups: list[str] = []

    async def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return await real(host, *args, **kwargs)

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(ok(b"hi", b"Connection: close"))

    loop.getaddrinfo = counting  # type: ignore[method-assign]
    try:
        async with RawServer(handler) as server:
            pool = UpstreamPool("localhost", server.port)  # may resolve to ::1 first: nothing listens there
            for _ in range(3):
                resp = await pool.request("GET", "/", [], None, TIMEOUT)
                assert await resp.read() == b"hi"
            assert server.connections == 3 and lookups == ["localhost"]
            assert server.requests[0].startswith(b"GET / HTTP/1.1\r\nHost: localhost:%d\r\n" % server.port)
            await settle(pool)
            pool = UpstreamPool("no-such-host.invalid", server.port)
            with pytest.raises(UpstreamConnectError):
                await pool.request("GET", "/", [], None, TIMEOUT)
            await settle(pool)
    finally:
        del loop.getaddrinfo


# Cancellation and watchdog


@both_loops
async def test_cancelling_the_wait_for_the_head_closes_the_connection() -> None:
    got: asyncio.Event = asyncio.Event()
    closed: asyncio.Event = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        got.set()
        await peer.wait_eof()
        closed.set()

    async with RawServer(handler) as server:
        pool = server.pool()
        task = asyncio.create_task(pool.request("POST", "/api/generate", [], b"{}", TIMEOUT))
        await asyncio.wait_for(got.wait(), STEP)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), STEP)  # the backend sees the close: the GPU stops
        assert pool.open_count == 0
        await settle(pool)


@both_loops
async def test_a_head_past_its_deadline_is_a_timeout_and_closes_the_connection() -> None:
    closed: asyncio.Event = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:  # answers the first request only
            if peer.server.requests[1:]:
                break
            await peer.send(ok(b"fast"))
        await peer.wait_eof()
        closed.set()

    async with RawServer(handler) as server:
        pool = server.pool()
        loop = asyncio.get_running_loop()
        # A deadline that is met costs nothing and leaves the connection reusable.
        response = await pool.request("GET", "/a", [], None, TIMEOUT, loop.time() + STEP)
        assert await response.read() == b"fast"
        started = loop.time()
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/b", [], None, TIMEOUT, started + 0.2)
        assert 0.15 <= loop.time() - started < STEP
        await asyncio.wait_for(closed.wait(), STEP)  # the backend sees the close: the GPU stops
        assert server.connections == 1 and pool.open_count == 0
        await settle(pool)


@both_loops
async def test_cancelling_a_body_read_closes_the_connection() -> None:
    closed: asyncio.Event = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ntoken1\r\n")
        await peer.wait_eof()
        closed.set()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("POST", "/api/generate", [], b"{}", TIMEOUT)
        assert await resp.content.readany() == b"token1"
        task = asyncio.create_task(resp.content.readany())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), STEP)
        assert pool.open_count == 0
        await settle(pool)


@both_loops
async def test_set_exception_wakes_a_pending_read_and_closes_the_connection() -> None:
    closed: asyncio.Event = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await peer.wait_eof()
        closed.set()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        task = asyncio.create_task(resp.content.readany())
        await asyncio.sleep(0.01)
        assert not task.done()
        resp.content.set_exception(TimeoutError())  # what the gateway's watchdog does
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, STEP)
        with pytest.raises(TimeoutError):
            await resp.read()
        await asyncio.wait_for(closed.wait(), STEP)
        resp.close()  # harmless afterwards
        await settle(pool)


@both_loops
async def test_close_mid_body_closes_and_close_after_the_body_is_a_no_op() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.read_request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await peer.wait_eof()
            return
        await answer_each(peer)

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        resp.close()
        with pytest.raises(UpstreamDisconnected):
            await resp.read()
        async with asyncio.timeout(STEP):
            while not server.eofs:
                await asyncio.sleep(0.005)
        async with await pool.request("GET", "/", [], None, TIMEOUT) as resp:
            assert await resp.read() == b"got 0"
        resp.release()
        assert pool.idle_count == 1 and server.connections == 2
        await settle(pool)


@both_loops
async def test_pool_close_fails_requests_in_flight() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await peer.wait_eof()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        task = asyncio.create_task(resp.content.readany())
        await asyncio.sleep(0.01)
        pool.close()
        with pytest.raises(UpstreamDisconnected):
            await asyncio.wait_for(task, STEP)
        with pytest.raises(RuntimeError):
            await pool.request("GET", "/", [], None, TIMEOUT)


# Backpressure


@both_loops
async def test_backpressure_pauses_reading_and_resumes_when_drained() -> None:
    size = 32 * 1024 * 1024  # well beyond what the socket buffers of both ends can hold
    body = bytes(range(256)) * (size // 256)
    server_done = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body)
            server_done.set()

    async with RawServer(handler) as server:
        pool = server.pool()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)
        async with asyncio.timeout(STEP):  # nobody reads: the client must stop reading the socket
            while not (resp._conn is not None and resp._conn.paused):
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert resp._conn is not None and resp._conn.paused
        assert HIGH_WATER < resp._size < HIGH_WATER + 1024 * 1024
        assert not server_done.is_set()  # the socket buffers filled up: the backend is held back
        received = bytearray()
        while chunk := await resp.content.readany():
            received += chunk
            assert resp._size == 0
        assert received == body
        assert server_done.is_set()
        resp = await pool.request("GET", "/", [], None, TIMEOUT)  # read() needs no drain in between
        assert await resp.read() == body
        assert server.connections == 1
        await settle(pool)


# Against a real aiohttp server


@both_loops
async def test_against_aiohttp_server() -> None:
    peers: set[Any] = set()

    async def json_handler(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        body = await request.read()
        return web.json_response({"len": len(body), "x": request.headers.get("X-Request-Id")})

    async def stream_handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for i in range(20):
            await resp.write(b'{"i":%d}\n' % i)
        await resp.write_eof()
        return resp

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/json", json_handler)
    app.router.add_get("/stream", stream_handler)
    app.router.add_delete("/empty", empty)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pool = UpstreamPool("127.0.0.1", port)
    try:
        for i in range(3):
            resp = await pool.request("POST", "/json", {"X-Request-Id": str(i)}, b"abc" * i, TIMEOUT)
            assert resp.headers["Content-Type"].startswith("application/json")
            assert await resp.read() == b'{"len": %d, "x": "%d"}' % (3 * i, i)
        assert len(peers) == 1
        resp = await pool.request("GET", "/stream", [], None, TIMEOUT)
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await read_all(resp) == b"".join(b'{"i":%d}\n' % i for i in range(20))
        resp = await pool.request("DELETE", "/empty", [], None, TIMEOUT)
        assert resp.status == 204 and await resp.read() == b""
        resp = await pool.request("GET", "/missing", [], None, TIMEOUT)
        assert resp.status == 404 and resp.reason == "Not Found"
        assert b"404" in await resp.read()
        results = await asyncio.gather(
            *(pool.request("POST", "/json", [("X-Request-Id", str(i))], b"x" * i, TIMEOUT) for i in range(50))
        )
        bodies = await asyncio.gather(*(r.read() for r in results))
        assert bodies == [b'{"len": %d, "x": "%d"}' % (i, i) for i in range(50)]
        assert pool.idle_count == pool.open_count <= 50
    finally:
        pool.close()
        await runner.cleanup()


# The parser, fed directly (every split point, malformed responses)


class FakeTransport:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.closing = False
        self.paused = False
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.conn.connection_lost, None)

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def feed(pieces: Iterable[bytes], method: str = "GET") -> tuple[UpstreamResponse, bytes, UpstreamPool]:
    """Send a request on a fake connection, feed the response pieces, return the response and its body."""
    pool = UpstreamPool("127.0.0.1", 9)
    pool._loop = asyncio.get_running_loop()
    conn = Connection(pool)
    transport = FakeTransport(conn)
    conn.connection_made(transport)  # type: ignore[arg-type]
    pool._all.add(conn)
    sent = asyncio.ensure_future(conn.send(b"x", None, method == "HEAD"))
    await asyncio.sleep(0)
    try:
        for piece in pieces:
            if transport.closing:
                break
            conn.data_received(piece)
        resp = await sent
        body = await resp.read()
    finally:
        pool.close()
    return resp, body, pool


def splits(data: bytes) -> Iterable[list[bytes]]:
    """The data cut at every single point, then byte by byte."""
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    yield [data[i : i + 1] for i in range(len(data))]


@both_loops
async def test_chunked_split_at_every_byte_boundary() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + CHUNKED
    for pieces in splits(data):
        resp, body, pool = await feed(pieces)
        assert body == CHUNKED_BODY, pieces
        assert resp.status == 200 and resp.complete


@both_loops
async def test_content_length_and_head_split_at_every_byte_boundary() -> None:
    data = b"HTTP/1.1 201 Created\r\nX-Long: " + b"v" * 300 + b"\r\nContent-Length: 11\r\n\r\nhello world"
    for pieces in splits(data):
        resp, body, _ = await feed(pieces)
        assert (resp.status, resp.reason, body) == (201, "Created", b"hello world")
        assert resp.headers["X-Long"] == "v" * 300


@both_loops
async def test_header_parsing() -> None:
    head = (
        b"HTTP/1.1 200 \r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-Space:   padded \t\r\nX-Empty:\r\n"
        b"X-Utf8: \xc3\xa9\r\nX-Raw: \xff\r\nContent-Length: 2, 2\r\n\r\nok"
    )
    resp, body, _ = await feed([head])
    assert resp.reason == "" and body == b"ok"
    assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert resp.headers["X-Space"] == "padded" and resp.headers["X-Empty"] == ""
    assert resp.headers["X-Utf8"] == "é"
    assert resp.headers["X-Raw"].encode("utf-8", "surrogateescape") == b"\xff"  # round-trips to the client
    resp, body, _ = await feed([b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"])
    assert resp.reason == "" and body == b"" and resp.content_length == 0


BAD_HEADS = [
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX A: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * (70 * 1024),  # head never ends
]
BAD_CHUNKED = [
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello!!\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"5\r\nhello\r\n" + b"1" * (70 * 1024),
]


@both_loops
async def test_malformed_responses_are_protocol_errors() -> None:
    for head in BAD_HEADS:
        with pytest.raises(UpstreamProtocolError):
            await feed([head[:50], head[50:]])
    for body in BAD_CHUNKED:
        with pytest.raises(UpstreamProtocolError):
            await feed([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body])


@both_loops
async def test_unsolicited_bytes_on_an_idle_connection_close_it() -> None:
    pool = UpstreamPool("127.0.0.1", 9)
    pool._loop = asyncio.get_running_loop()
    conn = Connection(pool)
    transport = FakeTransport(conn)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert transport.closing
    pool.close()
