"""Raw HTTP/1.1 over asyncio streams: for traffic no client library would send."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawAnswer:
    status: int | None  # None: the connection closed (or stayed silent) without a response
    head: bytes
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def parse_answer(data: bytes) -> RawAnswer:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):
        return RawAnswer(None, head, body)
    return RawAnswer(int(head.split(b" ", 2)[1]), head, body)


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10.0, head_only: bool = False) -> RawAnswer:
    """One response: the head, then Content-Length bytes (or everything until the connection closes)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        # A reset (we kept sending after the gateway closed) discards nothing already received.
        partial = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else bytes(reader._buffer)  # type: ignore[attr-defined]
        return parse_answer(partial)
    answer = parse_answer(head)
    if head_only or answer.status is None or answer.status in (204, 304) or answer.status < 200:
        return answer  # no body
    length = answer.header("Content-Length")
    try:
        if answer.header("Transfer-Encoding") == "chunked":
            answer.body = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), timeout)
        elif length is not None:
            answer.body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
        else:
            answer.body = await asyncio.wait_for(reader.read(), timeout)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    return answer


async def exchange(url: str, data: bytes, timeout: float = 10.0, **connect: Any) -> RawAnswer:
    """Send ``data`` on a new connection; the first response (status None if the gateway just closed)."""
    reader, writer = await asyncio.open_connection(*host_port(url), **connect)
    try:
        writer.write(data)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        return await read_answer(reader, timeout, head_only=data.startswith(b"HEAD "))
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Everything the gateway still sends until it closes the connection (fails if it does not)."""
    return await asyncio.wait_for(reader.read(), timeout)


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
