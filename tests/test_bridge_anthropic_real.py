"""The Anthropic bridge against a real OpenAI-compatible server: llama.cpp (llama-cpp-python[server]).

Runs where that server and its tiny generated model are installed (see tests/test_real_backend.py,
whose server fixture and skip condition it shares), skipped elsewhere, CI included. The real
``anthropic`` SDK talks to the gateway, which translates to llama.cpp's ``/v1/chat/completions``.
The model always answers the same sentence, and fills forced tool arguments minimally.
"""

from __future__ import annotations

import anthropic

from .conftest import GatewayFactory, RunningGateway
from .test_real_backend import ALIAS, llama_server, pytestmark  # noqa: F401 (the fixture and the skip)

REPLY = (
    "Hello! I am a tiny test model running on llama.cpp with synthetic weights, so my answer is always this sentence."
)
TOOLS: list[anthropic.types.ToolParam] = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
USER: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]


async def gateway(url: str, gateway_factory: GatewayFactory) -> tuple[RunningGateway, anthropic.AsyncAnthropic]:
    gw = await gateway_factory(
        {"backends": [{"name": "llamacpp", "url": url, "type": "openai",
                       "timeouts": {"first_byte": "60s"}, "health_check": {"interval": "60s", "timeout": "5s"}}]}
    )  # fmt: skip
    return gw, anthropic.AsyncAnthropic(base_url=gw.url, api_key="x", max_retries=0, timeout=60)


async def test_anthropic_sdk_talks_to_llama_cpp(llama_server: str, gateway_factory: GatewayFactory) -> None:  # noqa: F811
    gw, client = await gateway(llama_server, gateway_factory)
    async with client.messages.stream(model=ALIAS, max_tokens=64, system="Be brief.", messages=USER) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == REPLY and len(texts) > 5  # token by token
    assert final.stop_reason == "end_turn" and final.content[0].type == "text"

    short = await client.messages.create(model=ALIAS, max_tokens=5, messages=USER)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 5 and short.usage.input_tokens > 0
    assert short.content[0].type == "text" and REPLY.startswith(short.content[0].text)
    used = gw.sample("gateway_tokens_total", backend="llamacpp", model=ALIAS, client="anonymous", kind="completion")
    assert used == 5  # llama.cpp reports no usage in streams: only the counted answer

    forced: anthropic.types.ToolChoiceParam = {"type": "tool", "name": "get_weather"}
    called = await client.messages.create(model=ALIAS, max_tokens=64, tools=TOOLS, tool_choice=forced, messages=USER)
    (block,) = called.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": ""}
    assert called.stop_reason == "tool_use"

    # streamed: llama.cpp repeats the call's id and name in every delta and sends the arguments
    # character by character; the client still sees one tool_use block
    async with client.messages.stream(
        model=ALIAS, max_tokens=64, tools=TOOLS, tool_choice=forced, messages=USER
    ) as stream:
        pieces = [event.partial_json async for event in stream if event.type == "input_json"]
        streamed = await stream.get_final_message()
    assert "".join(pieces) == '{"city":""}' and len(pieces) > 1
    (block,) = streamed.content
    assert block.type == "tool_use" and block.input == {"city": ""} and streamed.stop_reason == "tool_use"
    await client.close()
