"""The front door through real sockets: slow clients are cut (408), connection caps refuse at accept time."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from gateway.frontdoor import MIN_BODY_RATE, client_key

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fakes import FakeBackend
from .rawhttp import closed_by_peer, exchange, host_port, read_answer, request

BODY = json.dumps({"model": "llama3.2:latest", "prompt": "hi", "stream": False}).encode()


async def make(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, **server: Any
) -> tuple[FakeBackend, RunningGateway]:
    backend = await backend_factory("desktop")
    gw = await gateway_factory({"backends": [backend_entry(backend)], "server": server})
    return backend, gw


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for state the gateway changes when a socket event reaches it (no event to await from here)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- slow clients


async def test_a_head_trickled_byte_by_byte_is_cut_with_408(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw = await make(backend_factory, gateway_factory, timeouts={"headers": "0.5s"})
    reader, writer = await asyncio.open_connection(*host_port(gw.url))
    head = request("POST", "/api/generate", BODY, {f"X-Pad-{i}": "x" * 20 for i in range(10)})  # 15 s to trickle
    start = time.monotonic()
    sent = 0
    try:
        while not reader.at_eof() and sent < len(head) and time.monotonic() - start < 5:
            writer.write(head[sent : sent + 1])  # one byte every 50 ms: slowloris
            sent += 1
            await asyncio.sleep(0.05)
            if reader._buffer:  # type: ignore[attr-defined]  # the answer arrived
                break
        answer = await read_answer(reader, timeout=5)
    finally:
        writer.close()
    elapsed = time.monotonic() - start
    assert answer.status == 408
    assert "timeouts.headers" in answer.json()["error"]["message"]
    assert answer.header("Connection") == "close"
    assert 0.5 <= elapsed < 4.0  # without the deadline: keep_alive, 75 s (generous bound: a loaded machine)
    assert sent < len(head)
    assert backend.requests == []
    assert gw.sample("gateway_client_timeouts_total", phase="headers") == 1


async def test_a_connection_that_sends_nothing_is_closed_after_the_head_deadline(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw = await make(backend_factory, gateway_factory, timeouts={"headers": "0.3s", "keep_alive": "60s"})
    reader, writer = await asyncio.open_connection(*host_port(gw.url))
    start = time.monotonic()
    rest = await closed_by_peer(reader, timeout=5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 408 ")
    assert 0.3 <= time.monotonic() - start < 4.0  # keep_alive (60 s) would be far later


async def test_a_slow_body_is_answered_408_in_the_endpoints_dialect_and_closed(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw = await make(backend_factory, gateway_factory, timeouts={"body": "0.5s"})
    for path, message in (
        ("/api/generate", lambda doc: doc["error"]),
        ("/v1/chat/completions", lambda doc: doc["error"]["message"]),
        ("/v1/messages", lambda doc: doc["error"]["message"] if doc["type"] == "error" else None),
    ):
        reader, writer = await asyncio.open_connection(*host_port(gw.url))
        writer.write(request("POST", path, BODY)[: -len(BODY) + 5])  # the head and 5 bytes of the body
        start = time.monotonic()
        answer = await read_answer(reader, timeout=5)
        rest = await closed_by_peer(reader, timeout=5)
        writer.close()
        assert answer.status == 408, (path, answer)
        assert "timeouts.body" in message(answer.json())
        assert rest == b""
        assert 0.5 <= time.monotonic() - start < 4.0  # without the deadline: never (read_answer gives up at 5 s)
    assert backend.requests == []
    assert gw.sample("gateway_client_timeouts_total", phase="body") == 3


async def test_a_body_sent_steadily_above_the_minimum_rate_may_take_longer_than_the_deadline(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw = await make(backend_factory, gateway_factory, timeouts={"body": "0.3s"})
    padding = b" " * (MIN_BODY_RATE * 2)  # JSON allows trailing whitespace
    body = BODY + padding
    reader, writer = await asyncio.open_connection(*host_port(gw.url))
    writer.write(request("POST", "/api/generate", body)[: -len(body)])
    start = time.monotonic()
    step = len(body) // 8 + 1
    for i in range(0, len(body), step):  # 8 pieces, 0.1 s apart: 0.7 s in all, at 4x the minimum rate
        writer.write(body[i : i + step])
        await writer.drain()
        await asyncio.sleep(0.1)
    answer = await read_answer(reader, timeout=5)
    writer.close()
    assert time.monotonic() - start > 0.3
    assert answer.status == 200, answer
    assert len(backend.requests) == 1


async def test_an_idle_keep_alive_connection_lives_until_keep_alive_then_closes_silently(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw = await make(backend_factory, gateway_factory, timeouts={"headers": "0.2s", "keep_alive": "1s"})
    reader, writer = await asyncio.open_connection(*host_port(gw.url))
    ping = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    writer.write(ping)
    assert (await read_answer(reader)).status == 200
    await asyncio.sleep(0.5)  # idle longer than the head deadline: keep-alive rules, not headers
    writer.write(ping)
    assert (await read_answer(reader)).status == 200
    idle_from = time.monotonic()
    rest = await closed_by_peer(reader, timeout=5)
    writer.close()
    assert rest == b""  # no 408 for an idle connection: clients would take it for their next request's answer
    assert 0.9 <= time.monotonic() - idle_from < 4.0


async def test_the_head_size_limits_are_answered_431(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw = await make(backend_factory, gateway_factory)
    long_line = request("GET", "/api/tags?" + "a" * 9000)
    long_header = request("GET", "/api/tags", headers={"X-Big": "b" * 9000})
    many = request("GET", "/api/tags", headers={f"X-H{i}": "1" for i in range(200)})
    for data in (long_line, long_header, many):
        answer = await exchange(gw.url, data)
        assert answer.status == 431, answer
        assert "too large" in answer.json()["error"]["message"]
        assert b"aaaa" not in answer.body and b"bbbb" not in answer.body  # the input is not echoed
    assert backend.requests == []
    ok = await exchange(gw.url, request("GET", "/api/tags", headers={"X-Fine": "c" * 8000}))
    assert ok.status == 200


# --------------------------------------------------------------------------- connection caps


async def open_idle(url: str, n: int, **connect: Any) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [await asyncio.open_connection(*host_port(url), **connect) for _ in range(n)]


def close_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.close()


async def test_per_client_cap_refuses_with_429_at_accept_time_and_frees_on_close(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend, gw = await make(backend_factory, gateway_factory, max_connections_per_client=3)
    conns = await open_idle(gw.url, 3)
    await eventually(lambda: gw.sample("gateway_open_connections") == 3)
    refused = await exchange(gw.url, request("POST", "/api/generate", BODY))
    assert refused.status == 429
    assert refused.header("Retry-After") == "1"
    assert "max_connections_per_client" in refused.json()["error"]["message"]
    assert gw.sample("gateway_connections_refused_total", reason="max_connections_per_client") == 1
    assert backend.requests == []
    # Another address (127.0.0.2 is loopback too) is a different client.
    other = await exchange(gw.url, request("POST", "/api/generate", BODY), local_addr=("127.0.0.2", 0))
    assert other.status == 200
    close_all(conns[:1])
    await eventually(lambda: gw.sample("gateway_open_connections") == 2)
    again = await exchange(gw.url, request("POST", "/api/generate", BODY))
    assert again.status == 200
    close_all(conns[1:])


async def test_total_cap_refuses_with_503(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    _, gw = await make(backend_factory, gateway_factory, max_connections=2, max_connections_per_client=0)
    conns = await open_idle(gw.url, 2)
    await eventually(lambda: gw.sample("gateway_open_connections") == 2)
    refused = await exchange(gw.url, request("GET", "/api/tags"), local_addr=("127.0.0.3", 0))
    assert refused.status == 503
    assert gw.sample("gateway_connections_refused_total", reason="max_connections") == 1
    close_all(conns)
    await eventually(lambda: gw.sample("gateway_open_connections") == 0)
    assert (await exchange(gw.url, request("GET", "/api/tags"))).status == 200


async def test_a_trusted_proxy_is_held_only_to_the_total_cap(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw = await make(
        backend_factory, gateway_factory, trusted_proxies=["127.0.0.1/32"], max_connections_per_client=2,
        max_connections=7,
    )  # fmt: skip
    proxy = await open_idle(gw.url, 4)  # the proxy carries many clients: over the per-client cap is fine
    direct = await open_idle(gw.url, 2, local_addr=("127.0.0.2", 0))
    await eventually(lambda: gw.sample("gateway_open_connections") == 6)
    refused = await exchange(gw.url, request("GET", "/api/tags"), local_addr=("127.0.0.2", 0))
    assert refused.status == 429  # an untrusted address keeps its per-client cap
    assert (await exchange(gw.url, request("GET", "/api/tags"))).status == 200
    await eventually(lambda: gw.sample("gateway_open_connections") == 6)
    proxy += await open_idle(gw.url, 1)
    await eventually(lambda: gw.sample("gateway_open_connections") == 7)
    assert (await exchange(gw.url, request("GET", "/api/tags"))).status == 503  # the total cap still holds
    close_all(proxy + direct)


async def test_a_client_with_many_connections_is_refused_but_requests_in_progress_finish(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    _, gw = await make(backend_factory, gateway_factory, max_connections_per_client=4)
    connector = aiohttp.TCPConnector(limit=10, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            try:
                async with session.post(f"{gw.url}/api/generate", data=BODY) as r:
                    await r.read()
                    return r.status
            except aiohttp.ClientError:
                return 0

        held = await open_idle(gw.url, 4)
        statuses = await asyncio.gather(*(one() for _ in range(5)))
        assert all(s in (429, 0) for s in statuses)  # 0: reset before the 429 could be read
        assert gw.sample("gateway_connections_refused_total", reason="max_connections_per_client") == 5
        close_all(held)
        await eventually(lambda: gw.sample("gateway_open_connections") == 0)
        assert await one() == 200


def test_ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" == client_key("192.0.2.7")
    assert client_key("fe80::1%eth0") == client_key("fe80::2")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_the_cap_holds_over_ipv6(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    from aiohttp import web

    from gateway.app import create_app
    from gateway.configfile import parse_config
    from gateway.server import make_runner

    backend = await backend_factory("desktop")
    config = parse_config({"backends": [backend_entry(backend)], "server": {"max_connections_per_client": 1}}, "<t>")
    runner = make_runner(create_app(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "::1", 0)
        await site.start()
        port = runner.addresses[0][1]
        _, writer = await asyncio.open_connection("::1", port)
        await eventually(lambda: runner.server is not None and len(runner.server.connections) == 1)
        answer = await exchange(f"http://[::1]:{port}", request("GET", "/api/tags"), timeout=5)
        writer.close()
        assert answer.status == 429
    finally:
        await runner.cleanup()
