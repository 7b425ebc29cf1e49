#!/usr/bin/env python3
"""What the Anthropic bridge costs: gateway CPU per 1,000 streamed chunks, translated vs passed through.

Starts bench/fake_backend.py (an OpenAI-only server) and one `gateway serve` in front of it, then
runs the same streamed generation two ways in alternating rounds, so that a busy machine hurts both
alike: `/v1/chat/completions` (the backend's SSE relayed byte for byte) and `/v1/messages` (the
request translated to `/v1/chat/completions`, each backend chunk rewritten as a Messages event).
The figure is the gateway process's user+system CPU time (from /proc) per 1,000 backend content
chunks. Every answer is checked complete. Everything runs on 127.0.0.1; every loop is bounded by
--rounds x --streams.

    python bench/bridge_anthropic.py [--rounds 6] [--streams 200] [--chunks 100] [--conc 32]
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

MESSAGES = [{"role": "user", "content": "hi"}]
MODES = {
    "passthrough": ("/v1/chat/completions", {"model": "fake", "stream": True, "messages": MESSAGES}),
    "translated": ("/v1/messages", {"model": "fake", "stream": True, "max_tokens": 4096, "messages": MESSAGES}),
}


def check(mode: str, data: bytes, chunks: int) -> int:
    """Check one answer complete; returns its backend content chunks (``chunks``)."""
    if mode == "passthrough":
        assert data.endswith(b"data: [DONE]\n\n"), data[-300:]
    else:
        assert data.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n'), data[-300:]
        assert data.count(b'"text_delta"') == chunks, data[:300]
    return chunks


async def one_round(url: str, mode: str, streams: int, chunks: int, conc: int, delay_ms: float) -> int:
    """Run ``streams`` streams of ``chunks`` content chunks, ``conc`` at a time, each checked complete;
    returns the content chunks."""
    path, payload = MODES[mode]
    body = json.dumps(payload).encode()
    return await run_streams(url + path, body, streams, chunks, conc, delay_ms, lambda data: check(mode, data, chunks))


async def main() -> None:
    a = arguments(__doc__, "alternating rounds per mode")
    with processes("bench-bridge-anthropic-") as (work, procs):
        upstream = free_port()
        procs.append(start_backend(upstream))
        gateway, url = start_gateway(a.gateway_cmd.split(), work, "gpu", "openai", upstream)
        procs.append(gateway)
        await wait_ready(url, "/v1/models", "data")
        for mode in MODES:  # warm-up: connections, caches
            await one_round(url, mode, 20, a.chunks, 4, a.delay_ms)

        def measured(mode: str) -> Callable[[], Awaitable[int]]:
            return lambda: one_round(url, mode, a.streams, a.chunks, a.conc, a.delay_ms)

        await alternate(a.rounds, {mode: (gateway.pid, measured(mode)) for mode in MODES})


if __name__ == "__main__":
    asyncio.run(main())
