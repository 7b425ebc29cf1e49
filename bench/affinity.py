#!/usr/bin/env python3
"""Time to first byte of a chat's second turn, with ``routing.affinity: prefix`` and without.

    ../shared/real-backend/start.sh 18711 && ../shared/real-backend/start.sh 18712
    python bench/affinity.py --backend http://127.0.0.1:18711 --backend http://127.0.0.1:18712
    ../shared/real-backend/stop.sh 18711 && ../shared/real-backend/stop.sh 18712

Two OpenAI-compatible servers that cache the prompt they last processed (llama.cpp: llama-cpp-python's
server, vLLM with prefix caching) sit behind two real ``gateway serve`` subprocesses, one per mode,
used in turns (so a busy moment of a shared machine hits both modes alike). Each
conversation has its own long system prompt (``--words`` words, a few thousand tokens) and two turns:
turn 1, then turn 2 resending turn 1 and its answer. Without affinity least-in-flight routing sends
turn 2 to whichever backend is next and it reads the whole prompt again; with affinity it goes to the
backend that served turn 1 and only the new tail is processed. Reports the median and mean time to
the first content token of turn 2 (and of turn 1, the cold baseline) as the client sees it.
Only 127.0.0.1 is used; the run is bounded by ``--conversations``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import aiohttp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part"
).split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def first_token(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[float, str, str]:
    """(seconds to the first content token, the whole answer, the backend's name) of one streamed chat."""
    started = time.perf_counter()
    ttft: float | None = None
    text = []
    async with http.post(url, json={**body, "stream": True}) as resp:
        resp.raise_for_status()
        backend = resp.headers.get("X-Backend", "")
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    text.append(piece)
    assert ttft is not None, "no content token"
    return ttft, "".join(text), backend


async def start_gateway(args: argparse.Namespace, affinity: str) -> tuple[asyncio.subprocess.Process, str]:
    """A ``gateway serve`` subprocess in front of both backends; (process, base URL) once it is ready."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="gateway-affinity-")
    config = os.path.join(workdir, "gateway.yaml")
    entries = "".join(
        f"  - {{name: rb{i}, url: '{url}', type: openai, timeouts: {{first_byte: 120s}}, "
        f"health_check: {{interval: 600s}}}}\n"  # probes must not mark a busy llama.cpp down mid-run
        for i, url in enumerate(args.backend)
    )
    with open(config, "w") as f:
        f.write(f"server: {{host: 127.0.0.1, port: {port}}}\nbackends:\n{entries}"
                f"routing: {{affinity: {affinity}}}\nlogging: {{level: warning}}\n")  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "-c", config, env={**os.environ, "PYTHONPATH": REPO},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return proc, base
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"the gateway ({affinity}) did not become ready")


async def conversation(http: aiohttp.ClientSession, base: str, model: str, system: str) -> tuple[float, float, int]:
    """(turn 1 whole time, turn 2 time to first token, prompt tokens) of one two-turn chat."""
    url = base + "/v1/chat/completions"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "what is the first word"}]
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0}
    started = time.perf_counter()
    async with http.post(url, json={**body, "stream": False}) as resp:  # turn 1: prefill and 8 tokens
        resp.raise_for_status()
        doc = await resp.json()
    t1 = time.perf_counter() - started
    answer = doc["choices"][0]["message"]["content"]
    turn2 = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": "and the next"}]
    t2, _, _ = await first_token(http, url, {**body, "messages": turn2})
    return t1, t2, int(doc["usage"]["prompt_tokens"])


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(args.backend[0].rstrip("/") + "/v1/models") as resp:
            model = (await resp.json())["data"][0]["id"]
    modes = ("none", "prefix")
    gateways = [await start_gateway(args, mode) for mode in modes]
    rng = random.Random(args.seed)
    seen: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in modes}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            for c in range(args.conversations):
                # Both modes take turns, so a busy moment of the (shared) machine hits both alike.
                for m in (0, 1) if c % 2 == 0 else (1, 0):
                    words = " ".join(rng.choice(WORDS) for _ in range(args.words))
                    system = f"Conversation {c} {modes[m]} {rng.random():.6f}. {words}"
                    seen[modes[m]].append(await conversation(http, gateways[m][1], model, system))
    finally:
        for proc, _ in gateways:
            proc.terminate()
            await proc.wait()
    results = []
    for mode in modes:
        turn1 = [t for t, _, _ in seen[mode]]
        turn2 = [t for _, t, _ in seen[mode]]
        results.append({
            "affinity": mode,
            "prompt_tokens_median": statistics.median(n for _, _, n in seen[mode]),
            "turn1_total_median_ms": round(statistics.median(turn1) * 1000, 1),
            "turn2_ttft_median_ms": round(statistics.median(turn2) * 1000, 1),
            "turn2_ttft_mean_ms": round(statistics.mean(turn2) * 1000, 1),
            "turn2_ttft_ms": [round(t * 1000, 1) for t in turn2],
        })  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", required=True, help="an OpenAI-compatible base URL (twice)")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--words", type=int, default=1400, help="system prompt length in words (default 1400)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if len(args.backend) != 2:
        parser.error("give exactly two --backend URLs")
    results = asyncio.run(main_async(args))
    print("| affinity | prompt tokens (median) | turn 1 (8 tokens, whole) median", end="")
    print(" | turn 2 TTFT median | turn 2 TTFT mean |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['affinity']} | {r['prompt_tokens_median']} | {r['turn1_total_median_ms']} ms "
              f"| {r['turn2_ttft_median_ms']} ms | {r['turn2_ttft_mean_ms']} ms |")  # fmt: skip
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
