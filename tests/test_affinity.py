"""Conversation affinity (routing.affinity: prefix) through the real gateway, in all three chat dialects."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import ollama
import openai

from gateway.affinity import Affinity, conversation_key

from .conftest import BackendFactory, GatewayFactory, backend_entry
from .fakes import FakeBackend


def served_by(backends: list[FakeBackend], marker: str) -> list[str]:
    """Which backend saw each request whose body contains ``marker``, in arrival order per backend."""
    return [b.name for b in backends for r in b.requests if marker.encode() in r.body]


async def two_backends(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, affinity: str, **extra: Any
) -> tuple[list[FakeBackend], Any]:
    backends = [await backend_factory(name, kind="openai") for name in ("left", "right")]
    entries = [backend_entry(b, models=["m"], **extra) for b in backends]
    gw = await gateway_factory({"backends": entries, "routing": {"affinity": affinity}})
    return backends, gw


async def openai_conversations(url: str, conversations: int, turns: int) -> None:
    """``conversations`` chats interleaved turn by turn, each resending its growing history."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    histories: list[list[Any]] = [
        [{"role": "system", "content": f"You are assistant {c}."}, {"role": "user", "content": f"conv-{c} turn 0"}]
        for c in range(conversations)
    ]
    try:
        for turn in range(turns):
            for c, history in enumerate(histories):
                answer = await client.chat.completions.create(model="m", messages=history)
                history.append({"role": "assistant", "content": answer.choices[0].message.content})
                history.append({"role": "user", "content": f"conv-{c} turn {turn + 1}"})
    finally:
        await client.close()


async def test_each_conversation_stays_on_one_backend_and_conversations_spread(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backends, gw = await two_backends(backend_factory, gateway_factory, "prefix")
    await openai_conversations(gw.url, conversations=6, turns=4)
    homes = []
    for c in range(6):
        seen = served_by(backends, f"conv-{c} turn 0")
        assert len(seen) == 4 and len(set(seen)) == 1, seen  # every turn on the backend of turn 1
        homes.append(seen[0])
    assert set(homes) == {"left", "right"}  # different conversations spread over both
    assert len(gw.state.affinity) == 6


async def test_without_affinity_turns_wander(backend_factory: BackendFactory, gateway_factory: GatewayFactory) -> None:
    backends, gw = await two_backends(backend_factory, gateway_factory, "none")
    assert gw.state.affinity is None
    await openai_conversations(gw.url, conversations=3, turns=4)
    assert any(len(set(served_by(backends, f"conv-{c} turn 0"))) == 2 for c in range(3))


async def test_ollama_and_anthropic_dialects_keep_their_conversation(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backends, gw = await two_backends(backend_factory, gateway_factory, "prefix")
    client = ollama.AsyncClient(host=gw.url)
    for c in range(4):
        history = [{"role": "user", "content": f"ollama-{c}"}]
        for _turn in range(3):
            answer = await client.chat(model="m", messages=history)
            history += [{"role": "assistant", "content": answer.message.content}, {"role": "user", "content": "more"}]
        assert len(set(served_by(backends, f"ollama-{c}"))) == 1
    for c in range(4):
        body: dict[str, Any] = {
            "model": "m",
            "max_tokens": 5,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": f"anthropic-{c}"}]}],
        }
        for turn in range(3):
            async with http.post(f"{gw.url}/v1/messages", json=body) as resp:
                assert resp.status == 200
            body["messages"] = [*body["messages"], {"role": "assistant", "content": "ok"},
                                {"role": "user", "content": f"turn {turn}"}]  # fmt: skip
        assert len(set(served_by(backends, f"anthropic-{c}"))) == 1


async def test_a_saturated_backend_is_not_preferred(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backends, gw = await two_backends(backend_factory, gateway_factory, "prefix", max_concurrency=1)
    first = [{"role": "user", "content": "held conversation"}]
    async with http.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": first}) as resp:
        home = resp.headers["X-Fake-Backend"]
    home_backend = next(b for b in backends if b.name == home)
    home_backend.gate = asyncio.Queue()  # its next stream stops after the first chunk
    home_backend.started.clear()
    other = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "another chat"}]}
    held = await http.post(f"{gw.url}/v1/chat/completions", json=other, headers={"X-Request-Id": "held"})
    try:
        if held.headers["X-Fake-Backend"] != home:  # rotation put it on the other one: occupy home directly
            await held.release()
            held = await http.post(f"{gw.url}/v1/chat/completions", json={**other, "messages": first})
        assert held.headers["X-Fake-Backend"] == home
        await held.content.readline()  # home is at its max_concurrency (1) now
        turn2 = [*first, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "again"}]
        async with http.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": turn2}) as resp:
            assert resp.status == 200 and resp.headers["X-Fake-Backend"] != home  # not queued behind the stream
    finally:
        for _ in range(5):
            home_backend.gate.put_nowait(None)
        held.release()


def test_the_key_matches_every_turn_of_one_chat_and_nothing_else() -> None:
    turn1 = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hello"}]}
    turn2 = {"messages": [*turn1["messages"], {"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}
    assert conversation_key("m", turn1) == conversation_key("m", turn2) is not None
    assert conversation_key("other", turn1) != conversation_key("m", turn1)
    other_system = {"messages": [{"role": "system", "content": "T"}, {"role": "user", "content": "hello"}]}
    assert conversation_key("m", other_system) != conversation_key("m", turn1)
    parts = {"system": "S", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    assert conversation_key("m", parts) == conversation_key("m", {**parts, "messages": [*parts["messages"], {}]})
    assert conversation_key("m", {"prompt": "no messages"}) is None
    assert conversation_key("m", {"messages": [{"role": "system", "content": "S"}]}) is None


def test_memory_is_bounded() -> None:
    affinity = Affinity(size=3)
    for key in range(10):
        affinity.remember(key, "b")
    assert len(affinity) == 3
    idle = {"config": SimpleNamespace(max_concurrency=0), "in_flight": 0, "load": 0}
    candidates: list[Any] = [SimpleNamespace(name="a", **idle), SimpleNamespace(name="b", **idle)]

    def remembered() -> list[int]:
        return [key for key in range(11) if affinity.prefer(key, candidates)[0].name == "b"]

    assert remembered() == [7, 8, 9]  # the least recently used were forgotten
    affinity.remember(7, "b")  # used again: the most recent now
    affinity.remember(10, "b")
    assert remembered() == [7, 9, 10]


async def test_when_its_backend_is_out_the_conversation_moves_and_stays(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    backends, gw = await two_backends(
        backend_factory, gateway_factory, "prefix", circuit={"failures": 1, "cooldown": "60s"}
    )
    history: list[dict[str, str]] = [{"role": "user", "content": "moving conversation"}]

    async def turn() -> str:
        async with http.post(f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": history}) as resp:
            assert resp.status == 200
            history.extend([{"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}])
            return resp.headers["X-Fake-Backend"]

    home = await turn()
    await next(b for b in backends if b.name == home).stop()  # connect errors from now on
    moved = await turn()  # the circuit opens on the failed attempt; the retry serves it elsewhere
    assert moved != home
    assert [await turn() for _ in range(3)] == [moved] * 3
