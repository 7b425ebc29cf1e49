"""Anthropic Messages -> OpenAI Chat Completions: every mapping of the request, answer and errors,
as pure functions (no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.bridge import translation_for
from gateway.bridge.anthropic_openai import (
    ROUTES,
    AnthropicToOpenAI,
    new_message_id,
    tool_input,
    translate_error,
    translate_request,
    translate_response,
)
from gateway.errors import BadGateway, BadRequest

IMAGE = "iVBORw0KGgo="


def req(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **extra}


# --------------------------------------------------------------------------- request


def test_plain_request() -> None:
    assert translate_request(req()) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
    }


def test_system_string_and_text_blocks() -> None:
    assert translate_request(req(system="be brief"))["messages"][0] == {"role": "system", "content": "be brief"}
    blocks = [{"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "two"}]
    body = translate_request(req(system=blocks))
    assert body["messages"] == [{"role": "system", "content": "one\ntwo"}, {"role": "user", "content": "hi"}]
    assert translate_request(req(system=""))["messages"] == [{"role": "user", "content": "hi"}]


def test_text_blocks_become_a_string_and_images_parts() -> None:
    content = [
        {"type": "text", "text": "what is"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "this?"},
    ]
    body = translate_request(req(messages=[{"role": "user", "content": content}]))
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "this?"},
            ],
        }
    ]
    only_text = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    body = translate_request(req(messages=[{"role": "user", "content": only_text}]))
    assert body["messages"] == [{"role": "user", "content": "a\nb"}]


def test_tool_use_and_tool_result_round_trip() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "21°C"}]},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    body = translate_request(req(messages=messages))
    assert body["messages"] == [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "21°C"},
        {"role": "user", "content": "and tomorrow?"},
    ]


def test_assistant_with_only_tool_calls_has_null_content() -> None:
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
    ]
    body = translate_request(req(messages=messages))
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    assert body["messages"][2:] == [{"role": "tool", "tool_call_id": "t", "content": ""}]  # no empty user turn


def test_tool_result_error_flag_and_images() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": IMAGE}}
    content = [
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": "file not found"},
        {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "shot:"}, image]},
    ]
    body = translate_request(req(messages=[{"role": "user", "content": content}]))
    assert body["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "Error: file not found"},
        {"role": "tool", "tool_call_id": "t2", "content": "shot:"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{IMAGE}"}}]},
    ]


def test_tools_and_tool_choice() -> None:
    tools = [
        {"name": "weather", "description": "Get the weather", "input_schema": {"type": "object", "properties": {}}},
        {"type": "custom", "name": "noargs", "input_schema": {"type": "object"}, "cache_control": {"type": "x"}},
    ]
    body = translate_request(req(tools=tools))
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object", "properties": {}},
                "description": "Get the weather",
            },
        },
        {"type": "function", "function": {"name": "noargs", "parameters": {"type": "object"}}},
    ]
    assert "tool_choice" not in body
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "weather"}, {"type": "function", "function": {"name": "weather"}}),
    ]
    for choice, expected in cases:
        assert translate_request(req(tools=tools, tool_choice=choice))["tool_choice"] == expected
    body = translate_request(req(tools=tools, tool_choice={"type": "auto", "disable_parallel_tool_use": True}))
    assert body["parallel_tool_calls"] is False
    # tool_choice without tools: OpenAI servers refuse it, and it means nothing
    assert "tool_choice" not in translate_request(req(tool_choice={"type": "auto"}))


def test_sampling_stop_and_stream() -> None:
    body = translate_request(
        req(temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END", "\n\n"], stream=True),
    )
    assert body["temperature"] == 0.5 and body["top_p"] == 0.9 and body["top_k"] == 40
    assert body["stop"] == ["END", "\n\n"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert "stream" not in translate_request(req(stream=False))


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    body = translate_request(req(output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "low"}))
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    assert "reasoning_effort" not in body
    assert "response_format" not in translate_request(req(output_config={"effort": "high"}))


def test_dropped_fields() -> None:
    body = translate_request(
        req(
            metadata={"user_id": "u-1"},
            thinking={"type": "enabled", "budget_tokens": 1024},
            service_tier="auto",
            container=None,
        )
    )
    assert set(body) == {"model", "messages", "max_tokens"}
    assert translate_request({"model": "m", "messages": [{"role": "user", "content": "x"}]}) == {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"model": "m"}, "messages: expected a non-empty list"),
        (req(messages=[]), "messages: expected a non-empty list"),
        (req(messages=["hi"]), "messages[0]: expected an object"),
        (req(messages=[{"role": "system", "content": "x"}]), "messages[0].role: expected 'user' or 'assistant'"),
        (req(messages=[{"role": "user", "content": 3}]), "messages[0].content: expected a string or a list"),
        (req(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0]: expected a content"),
        (req(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text: expected"),
        (
            req(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]),
            "messages[0].content[0]: a 'document' block cannot be translated",
        ),
        (
            req(
                messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]
            ),
            "messages[0].content[0].source: an image source of type 'file' cannot be translated",
        ),
        (
            req(
                messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": 1}]}]
            ),
            "messages[0].content[0].input: expected an object",
        ),
        (req(system=3), "system: expected a string or a list of text blocks"),
        (req(max_tokens="10"), "max_tokens: expected an integer"),
        (req(max_tokens=True), "max_tokens: expected an integer"),
        (req(temperature="hot"), "temperature: expected a number"),
        (req(stop_sequences="END"), "stop_sequences: expected a list of strings"),
        (req(stream="yes"), "stream: expected a boolean"),
        (req(tools={"name": "x"}), "tools: expected a list"),
        (req(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools[0]: the server tool"),
        (req(tools=[{"name": "f", "input_schema": "x"}]), "tools[0].input_schema: expected a JSON schema"),
        (req(tools=[{"name": "f"}], tool_choice={"type": "sometimes"}), "tool_choice: expected"),
        (req(output_config="json"), "output_config: expected an object"),
        (req(output_config={"format": {"type": "json_object"}}), "output_config.format: expected"),
        (req(mcp_servers=[{"type": "url", "url": "https://x"}]), "mcp_servers: MCP connectors cannot be translated"),
    ],
)
def test_bad_requests_name_the_field(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        translate_request(payload)
    assert info.value.message.startswith(message), info.value.message


# --------------------------------------------------------------------------- answer


def completion(message: dict[str, Any], finish: str | None = "stop", **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **extra}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [choice],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def answer(doc: Any, **kw: Any) -> dict[str, Any]:
    return translate_response(doc, model=kw.pop("model", "claude-x"), message_id="msg_1", **kw)


def test_text_answer() -> None:
    assert answer(completion({"content": "Hello!"})) == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5},
    }


def test_tool_use_answer() -> None:
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"type": "function", "function": {"name": "time", "arguments": ""}},
    ]
    doc = answer(completion({"content": "Checking.", "tool_calls": calls}, "tool_calls"))
    assert doc["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_1_1", "name": "time", "input": {}},
    ]
    assert doc["stop_reason"] == "tool_use"
    # a server answering "stop" with tool calls (older Ollama) still means tool_use
    assert answer(completion({"content": None, "tool_calls": calls[:1]}, "stop"))["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "extra", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        (None, {}, "end_turn", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),  # vLLM names the stop string
        ("stop", {"stop_reason": 128009}, "end_turn", None),  # ... or the EOS token id
        ("stop", {"stop_reason": "OTHER"}, "end_turn", None),  # not one the client asked for
    ],
)
def test_stop_reasons(finish: str | None, extra: dict[str, Any], stop_reason: str, stop_sequence: str | None) -> None:
    doc = answer(completion({"content": "x"}, finish, **extra), stop_sequences=("END",))
    assert (doc["stop_reason"], doc["stop_sequence"]) == (stop_reason, stop_sequence)


def test_thinking_only_when_asked_and_cached_tokens() -> None:
    doc = completion({"content": "4", "reasoning_content": "2+2"})
    doc["usage"]["prompt_tokens_details"] = {"cached_tokens": 10}
    assert answer(doc)["content"] == [{"type": "text", "text": "4"}]
    asked = answer(doc, thinking=True)
    assert asked["content"] == [
        {"type": "thinking", "thinking": "2+2", "signature": ""},
        {"type": "text", "text": "4"},
    ]
    assert asked["usage"] == {"input_tokens": 2, "output_tokens": 5, "cache_read_input_tokens": 10}
    ollama_style = completion({"content": "4", "reasoning": "2+2"})
    assert answer(ollama_style, thinking=True)["content"][0]["thinking"] == "2+2"


def test_lone_surrogates_in_an_answer_stay_escaped() -> None:
    translation = AnthropicToOpenAI(req(), message_id="msg_1")
    body = translation.response(b'{"choices":[{"message":{"content":"a\\ud800"},"finish_reason":"stop"}]}')
    assert b"\\ud800" in body and json.loads(body)["content"] == [{"type": "text", "text": "a\ud800"}]


def test_answer_without_usage_or_content() -> None:
    doc = completion({"content": ""})
    del doc["usage"]
    assert answer(doc)["content"] == [] and answer(doc)["usage"] == {"input_tokens": 0, "output_tokens": 0}


@pytest.mark.parametrize("doc", [[], {}, {"choices": []}, {"choices": ["x"]}, "text"])
def test_unreadable_answers_are_bad_gateway(doc: Any) -> None:
    with pytest.raises(BadGateway):
        answer(doc)


def test_tool_input() -> None:
    assert tool_input('{"a": [1, 2]}') == {"a": [1, 2]}
    assert tool_input({"a": 1}) == {"a": 1}
    assert tool_input("") == {} and tool_input(None) == {} and tool_input("  ") == {}
    for bad in ("{not json", "[1, 2]", "3", 5):
        with pytest.raises(BadGateway, match="not a JSON object"):
            tool_input(bad)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (400, {"error": {"message": "bad temperature", "type": "BadRequestError"}}, "invalid_request_error",
         "bad temperature"),
        (404, {"error": {"message": "no model x"}}, "not_found_error", "no model x"),
        (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}, "invalid_request_error",
         "field required"),
        (429, {"error": "slow down"}, "rate_limit_error", "slow down"),
        (413, {"message": "too big"}, "request_too_large", "too big"),
        (403, {"error": "nope"}, "permission_error", "nope"),
        (500, {"error": {"message": "CUDA out of memory"}}, "api_error", "CUDA out of memory"),
        (503, {"error": "loading"}, "overloaded_error", "loading"),
        (502, b"<html>Bad Gateway</html>", "api_error", "<html>Bad Gateway</html>"),
        (500, b"", "api_error", "the backend answered HTTP 500"),
        (418, b"teapot", "invalid_request_error", "teapot"),
    ],
)  # fmt: skip
def test_errors_in_anthropic_shape(status: int, body: Any, kind: str, message: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert json.loads(translate_error(status, raw)) == {"type": "error", "error": {"type": kind, "message": message}}


# --------------------------------------------------------------------------- the translation object


def test_translation_object_carries_the_request_into_the_answer() -> None:
    payload = req(model="claude-sonnet", top_k=5, stop_sequences=["Z"], thinking={"type": "enabled"})
    translation = AnthropicToOpenAI(payload, message_id="msg_abc")
    assert translation.upstream_path == "/v1/chat/completions"
    assert translation.stream_content_type == "text/event-stream"
    assert translation.local(None) is None
    body = translation.request(payload)
    assert body["top_k"] == 5 and body["stop"] == ["Z"]
    upstream = completion({"content": "yZ", "reasoning_content": "r"}, "stop", stop_reason="Z")
    doc = json.loads(translation.response(json.dumps(upstream).encode()))
    assert doc["id"] == "msg_abc" and doc["model"] == "claude-sonnet"
    assert [b["type"] for b in doc["content"]] == ["thinking", "text"]
    assert (doc["stop_reason"], doc["stop_sequence"]) == ("stop_sequence", "Z")
    assert json.loads(translation.error(503, b'{"error":"busy"}'))["error"]["type"] == "overloaded_error"
    stream = translation.stream()
    assert stream.model == "claude-sonnet" and stream.thinking and stream.outcome.stop_sequences == ("Z",)
    # an answer that is not a chat completion: the backend's 200 is already out, so an error body
    assert json.loads(translation.response(b"<html>")) == {
        "type": "error",
        "error": {"type": "api_error", "message": "the backend's answer is not a chat completion (no choices)"},
    }


def test_registered_for_backends_speaking_openai_only() -> None:
    factory = ROUTES["/v1/messages"]
    assert isinstance(factory(("openai",), req()), AnthropicToOpenAI)
    assert isinstance(factory(("ollama", "openai"), req()), AnthropicToOpenAI)
    assert factory(("ollama",), req()) is None
    assert translation_for("/v1/messages", ("openai",), req()) is not None


def test_message_ids() -> None:
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("msg_") and len(i) == 28 for i in ids)
