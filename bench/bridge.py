#!/usr/bin/env python3
"""What the dialect bridge costs: gateway CPU per 1,000 streamed chunks, translated vs passed through.

Starts bench/fake_backend.py once and two `gateway serve` processes in front of it, the same
config except the backend's type: `ollama` (an Ollama client's `/api/chat` stream passes through
byte for byte: NDJSON in, NDJSON out) and `openai` (the same request is translated to
`/v1/chat/completions` and the backend's SSE back to NDJSON, event by event). Both serve the same
client requests, in alternating rounds so that a busy machine hurts both alike; the figure is the
gateway process's user+system CPU time (from /proc) per 1,000 chunks relayed to the client.
Everything runs on 127.0.0.1; every loop is bounded by --rounds x --streams.

    python bench/bridge.py [--rounds 6] [--streams 200] [--chunks 100] [--conc 16]
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from _bridgebench import (
    alternate,
    arguments,
    free_port,
    processes,
    run_streams,
    start_backend,
    start_gateway,
    wait_ready,
)

BODY = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}).encode()


def lines(data: bytes) -> int:
    """The NDJSON lines of one /api/chat stream, checked to end with the done line."""
    assert b'"done":true' in data.replace(b" ", b""), data[-300:]
    return data.count(b"\n")


async def one_round(url: str, streams: int, chunks: int, conc: int, delay_ms: float) -> int:
    """Run ``streams`` /api/chat streams, ``conc`` at a time; returns the NDJSON lines received."""
    return await run_streams(url + "/api/chat", BODY, streams, chunks, conc, delay_ms, lines)


async def main() -> None:
    a = arguments(__doc__, "alternating rounds per gateway")
    with processes("bench-bridge-") as (work, procs):
        upstream = free_port()
        procs.append(start_backend(upstream))
        cmd = a.gateway_cmd.split()
        gateways = {}
        for name, kind in (("passthrough", "ollama"), ("translated", "openai")):
            proc, url = start_gateway(cmd, work, name, kind, upstream)
            procs.append(proc)
            gateways[name] = (proc, url)
        for _, url in gateways.values():
            await wait_ready(url, "/api/tags", "models")
            await one_round(url, 20, a.chunks, 4, a.delay_ms)  # warm-up: connections, caches

        def measured(url: str) -> Callable[[], Awaitable[int]]:
            return lambda: one_round(url, a.streams, a.chunks, a.conc, a.delay_ms)

        await alternate(a.rounds, {name: (proc.pid, measured(url)) for name, (proc, url) in gateways.items()})


if __name__ == "__main__":
    asyncio.run(main())
