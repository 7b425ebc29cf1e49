"""``UpstreamPool``: the keep-alive connections to one backend, and the requests sent over them."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from .connection import Connection
from .response import UpstreamConnectError, UpstreamConnectTimeout, UpstreamDisconnected, UpstreamResponse

__all__ = ["UpstreamPool"]

DNS_TTL = 300.0  # seconds a host name's addresses are reused for new connections (aiohttp's default too)
SPLIT_WRITE = 64 * 1024  # bodies larger than this are not copied into the head's buffer
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


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
        self._idle: list[Connection] = []  # oldest first; taken from the end
        self._all: set[Connection] = set()
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

        def factory() -> Connection:
            return Connection(self)

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

    def _take(self, loop: asyncio.AbstractEventLoop) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        cutoff = loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            conn.in_pool = False
            if not conn.reusable_now:
                continue
            if conn.idle_since < cutoff:
                conn._close()
                continue
            return conn
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> Connection:
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

    def _release(self, conn: Connection) -> None:
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

    def _lost(self, conn: Connection) -> None:
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
