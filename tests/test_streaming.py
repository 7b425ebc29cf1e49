"""Streaming is relayed token by token, cancellation reaches the backend, failures end streams abnormally."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

import aiohttp
import ollama
import openai
import pytest

from .conftest import BackendFactory, GatewayFactory, backend_entry

STEP = 5.0  # generous bound for each event-sequenced step; tests never sleep


async def test_stream_is_not_buffered_sse(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["one", "two", "three"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(model="m", messages=[], stream=True)
    chunks = stream.__aiter__()
    # Chunk 1 reaches the client while the backend is still forbidden to send chunk 2.
    first = await asyncio.wait_for(chunks.__anext__(), STEP)
    assert first.choices[0].delta.content == "one"
    assert gate.empty() and len(backend.requests) == 1
    gate.put_nowait(None)
    second = await asyncio.wait_for(chunks.__anext__(), STEP)
    assert second.choices[0].delta.content == "two"
    for _ in range(3):
        gate.put_nowait(None)
    rest = [c async for c in chunks]
    assert rest[0].choices[0].delta.content == "three"
    await client.close()


async def test_stream_is_not_buffered_ndjson(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["a", "b"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    parts = (await ollama.AsyncClient(host=gw.url).generate(model="m", prompt="x", stream=True)).__aiter__()
    first = await asyncio.wait_for(parts.__anext__(), STEP)
    assert first.response == "a" and not first.done
    for _ in range(2):
        gate.put_nowait(None)
    rest = [p async for p in parts]
    assert [p.response for p in rest] == ["b", ""] and rest[-1].done


async def test_client_dropping_a_stream_closes_the_backend_connection(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["a", "b", "c"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{gw.url}/api/chat", json={"model": "m", "messages": []})
        first = await asyncio.wait_for(resp.content.readline(), STEP)
        assert json.loads(first)["message"]["content"] == "a"
        resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(backend.closed.wait(), STEP)  # the backend saw its connection closed
    await _until(lambda: gw.sample("gateway_requests_total", backend="desktop", model="m", endpoint="/api/chat",
                                   code="499", client="anonymous") == 1)  # fmt: skip
    assert gw.state.backends[0].in_flight == 0


async def test_client_dropping_before_first_byte_closes_the_backend_connection(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["m:latest"], hang=True)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    async with aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(http.post(f"{gw.url}/api/generate", json={"model": "m", "prompt": "x"}))
        await asyncio.wait_for(backend.started.wait(), STEP)  # the backend is "loading the model"
        task.cancel()  # the client gives up while nothing has been sent yet
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(backend.closed.wait(), STEP)


async def test_client_dropping_a_non_streamed_request_closes_the_backend_connection(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", kind="openai", models=["m"], hang=True)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    async with aiohttp.ClientSession() as http:
        task = asyncio.ensure_future(
            http.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": [], "stream": False})
        )
        await asyncio.wait_for(backend.started.wait(), STEP)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(backend.closed.wait(), STEP)


async def test_backend_dying_mid_stream_ends_the_client_stream_abnormally(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["a", "b", "c", "d"], drop_after=2)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    # The openai client sees an error, never a clean, truncated stream.
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as caught:
        stream = await client.chat.completions.create(model="m", messages=[], stream=True)
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["a", "b"]
    assert "closed the connection in the middle of the response" in caught.value.message
    await client.close()
    # Raw view of the same: an in-band error event, then the body ends without its terminating chunk.
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/chat", json={"model": "m", "messages": []}) as resp:
            assert resp.status == 200
            lines = []
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in resp.content:
                    lines.append(json.loads(line))
    assert [x.get("message", {}).get("content") for x in lines[:2]] == ["a", "b"]
    assert lines[-1] == {"error": "the backend closed the connection in the middle of the response"}
    # A connection that closes mid-body is a reset (not a protocol error): once per stream above.
    assert gw.sample("gateway_upstream_errors_total", backend="desktop", reason="reset") == 2
    assert gw.sample("gateway_upstream_errors_total", backend="desktop", reason="protocol") == 0


async def test_first_byte_timeout_is_504(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backend = await backend_factory("desktop", models=["m:latest"], hang=True)
    gw = await gateway_factory({"backends": [backend_entry(backend, timeouts={"first_byte": "300ms"})]})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/generate", json={"model": "m"}) as resp:
            assert resp.status == 504
            assert "no response within 0.3s" in (await resp.json())["error"]
    await asyncio.wait_for(backend.closed.wait(), STEP)


async def test_idle_timeout_mid_stream_ends_the_stream(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()  # never released after chunk 1: the backend goes quiet
    backend = await backend_factory("desktop", models=["m:latest"], chunks=["a", "b"], gate=gate)
    gw = await gateway_factory({"backends": [backend_entry(backend, timeouts={"idle": "300ms"})]})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/api/generate", json={"model": "m"}) as resp:
            lines = []
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in resp.content:
                    lines.append(json.loads(line))
    assert lines[0]["response"] == "a"
    assert "idle timeout" in lines[-1]["error"]
    await asyncio.wait_for(backend.closed.wait(), STEP)


async def _until(predicate: object, attempts: int = 200) -> None:
    """Wait for a condition set by the gateway after the client saw the end (bounded, event-loop ticks)."""
    for _ in range(attempts):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _dechunk(raw: bytes) -> bytes:
    out, rest = bytearray(), raw
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]


async def test_a_client_that_stops_reading_holds_back_the_backend_and_loses_nothing(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the first chunk a stream is piped by callback (streaming._Pipe). A client that stops
    reading must make the gateway stop reading the backend (no unbounded buffering), and once it
    reads again it gets every byte, in order, with the tokens counted."""
    from gateway.upstream import UpstreamResponse

    paused = asyncio.Event()
    original_pause = UpstreamResponse.pause

    def noticed_pause(self: UpstreamResponse) -> None:
        paused.set()
        original_pause(self)

    monkeypatch.setattr(UpstreamResponse, "pause", noticed_pause)
    pieces = [f"<{i:05d}>" + "x" * 4000 for i in range(1500)]  # ~6 MB of content, more than socket buffers
    backend = await backend_factory("desktop", models=["m:latest"], chunks=pieces)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    port = int(gw.url.rsplit(":", 1)[1])
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=8192)
    request = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    payload = json.dumps(request).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )
    await writer.drain()
    await asyncio.wait_for(paused.wait(), STEP)  # the client reads nothing until the backend was held back
    raw = await asyncio.wait_for(reader.read(), 4 * STEP)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    got = []
    for line in _dechunk(body).split(b"\n"):
        if line.startswith(b"data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                got.append(choices[0]["delta"]["content"])
    assert got == pieces
    assert gw.sample("gateway_tokens_total", backend="desktop", model="m", client="anonymous",
                     kind="completion") == len(pieces)  # fmt: skip


async def test_an_http10_client_gets_the_stream_unframed_until_close(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    pieces = [f"piece-{i}" for i in range(50)]
    backend = await backend_factory("desktop", models=["m:latest"], chunks=pieces)
    gw = await gateway_factory({"backends": [backend_entry(backend)]})
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]))
    payload = json.dumps({"model": "m", "messages": [], "stream": True}).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: gw\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )
    raw = await asyncio.wait_for(reader.read(), STEP)  # HTTP/1.0: the body ends when the connection does
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"transfer-encoding" not in head.lower()
    events = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    assert [e["choices"][0]["delta"].get("content") for e in events][:-1] == pieces
    assert body.endswith(b"data: [DONE]\n\n")


class _HeldUpstream:
    """The part of UpstreamResponse that streaming._Pipe uses, scripted: a wake-up with nobody
    waiting is lost, as with the real one; the body ends once reading resumes."""

    def __init__(self, buffered: bytes) -> None:
        self.buffered = buffered
        self.finished = False
        self.error: BaseException | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None

    def pipe(self, sink: Callable[[bytes], None]) -> None:
        sink(self.buffered)

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.finished = True
        self.wake()


class _SlowClient:
    """A client transport whose buffer is full until the relay drains it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.backlog = 1 << 20
        self.writer = self  # stands in for request.writer
        self.drains = 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def get_write_buffer_size(self) -> int:
        return self.backlog

    async def drain(self) -> None:
        self.drains += 1
        self.backlog = 0


async def test_a_pipe_that_congests_before_it_waits_still_drains_and_resumes() -> None:
    """Bytes buffered before piping may fill the client's socket at once: the wake-up that asks
    for a drain then finds nobody waiting, and the relay must notice the congestion anyway."""
    from gateway.streaming import _Pipe

    from .fakes import make_record

    loop = asyncio.get_running_loop()
    client, upstream = _SlowClient(), _HeldUpstream(b"data: buffered\n\n")
    rec = make_record(start=loop.time())
    watchdog = type("Watchdog", (), {"last": 0.0})()
    pipe = _Pipe(client, True, upstream, watchdog, None, rec, loop)  # type: ignore[arg-type]
    await asyncio.wait_for(pipe.run(client), STEP)  # type: ignore[arg-type]
    assert client.sent == [b"10\r\ndata: buffered\n\n\r\n"] and client.drains == 1
    assert not upstream.paused and rec.bytes_out == 16
