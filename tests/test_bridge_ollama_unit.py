"""The Ollama <-> OpenAI translation as pure functions: no server, no sockets.

Includes the Hypothesis properties: any sequence of backend SSE events, cut at any bytes, yields
exactly the NDJSON of the uncut stream, and nothing a backend sends makes a translator raise.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bridge import ROUTES, WholeBody, adapt_response, translation_for
from gateway.bridge.base import SSEEvents, error_message
from gateway.bridge.ollama_openai import OllamaTranslation, image_part, openai_messages
from gateway.bridge.ollama_stream import OllamaStream
from gateway.errors import BadRequest


def fixed_clock() -> int:
    return 5_000


def translation(kind: str, **payload: Any) -> OllamaTranslation:
    return OllamaTranslation(kind, {"model": "m", **payload}, clock=fixed_clock, now=1_600_000_000.0)


def sse(*docs: Any, end: bytes = b"\n\n") -> bytes:
    return b"".join(b"data: " + (d if isinstance(d, bytes) else json.dumps(d).encode()) + end for d in docs)


def delta(**fields: Any) -> dict[str, Any]:
    return {"created": 1700000000, "choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def finish(reason: str) -> dict[str, Any]:
    return {"created": 1700000000, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def ndjson(data: bytes) -> list[dict[str, Any]]:
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


# --------------------------------------------------------------------------- routing into the bridge


def test_translation_for_only_targets_openai_speakers() -> None:
    assert set(ROUTES) == {"/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/v1/messages"}
    assert isinstance(translation_for("/api/chat", ("openai",), {"model": "m"}), OllamaTranslation)
    assert translation_for("/api/chat", ("anthropic",), {"model": "m"}) is None  # nothing to target
    assert translation_for("/api/pull", ("openai",), {"model": "m"}) is None  # not bridged: passes through
    paths = {kind: translation(kind, raw=kind == "generate").upstream_path for kind in ("chat", "generate", "embed")}
    assert paths == {"chat": "/v1/chat/completions", "generate": "/v1/completions", "embed": "/v1/embeddings"}
    assert translation("generate", suffix="}").upstream_path == "/v1/completions"
    assert translation("generate").upstream_path == "/v1/chat/completions"


def test_adapt_response_picks_the_transform_by_status_and_type() -> None:
    t = translation("chat")
    transform, content_type = adapt_response(t, 200, "text/event-stream; charset=utf-8")
    assert isinstance(transform, OllamaStream) and content_type == "application/x-ndjson"
    transform, content_type = adapt_response(t, 503, "text/event-stream")
    assert isinstance(transform, WholeBody) and content_type == "application/json"
    assert transform.feed(b'{"error": {"mess') == b"" and transform.feed(b'age": "busy"}}') == b""
    assert json.loads(transform.flush()) == {"error": "busy"}


# --------------------------------------------------------------------------- requests


def test_chat_request() -> None:
    t = translation("chat")
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "keep_alive": "5m",
               "options": {"num_predict": 10, "stop": "END", "num_ctx": 4096, "mirostat": 1}}  # fmt: skip
    original = json.dumps(payload)
    assert t.request(payload) == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stop": ["END"],
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    assert json.dumps(payload) == original  # the client's payload is left alone (a failover may need it)


def test_messages_tool_round_trip_ids() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "a", "arguments": {"x": 1}}}, {"function": {"name": "b", "arguments": {}}}]},
        {"role": "tool", "content": "B", "tool_name": "b"},
        {"role": "tool", "content": "A"},
    ]  # fmt: skip
    out = openai_messages(messages)
    ids = [c["id"] for c in out[1]["tool_calls"]]
    assert len(set(ids)) == 2
    assert [c["function"] for c in out[1]["tool_calls"]] == [{"name": "a", "arguments": '{"x":1}'},
                                                             {"name": "b", "arguments": "{}"}]  # fmt: skip
    assert out[2] == {"role": "tool", "content": "B", "tool_call_id": ids[1]}  # by name
    assert out[3] == {"role": "tool", "content": "A", "tool_call_id": ids[0]}  # the one left


def test_image_part_sniffs_the_type() -> None:
    assert image_part("iVBORw0KGgoAAAA", "i")["image_url"]["url"].startswith("data:image/png;base64,iVBOR")
    assert image_part("/9j/4AAQ", "i")["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert image_part("R0lGODlh", "i")["image_url"]["url"].startswith("data:image/gif;base64,")
    assert image_part("UklGRiQA", "i")["image_url"]["url"].startswith("data:image/webp;base64,")
    assert image_part("data:image/png;base64,xx", "i")["image_url"]["url"] == "data:image/png;base64,xx"
    with pytest.raises(BadRequest):
        image_part("", "i")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"stream": "yes"}, "'stream' must be a boolean"),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}]},
         "'messages[0].tool_calls[0].function.name' is required"),
        ({"messages": [{"role": "user", "content": 5}]}, "'messages[0].content' must be a string"),
        ({"tools": {"a": 1}, "messages": [{"role": "user", "content": "x"}]}, "'tools' must be a list"),
    ],
)  # fmt: skip
def test_chat_request_errors(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as err:
        translation("chat").request({"model": "m", **payload})
    assert err.value.message == message


def test_embed_request_errors() -> None:
    for value in (None, [], [1], {"a": 1}):
        with pytest.raises(BadRequest):
            translation("embed").request({"model": "m", "input": value})


# --------------------------------------------------------------------------- answers


def test_stream_translation() -> None:
    stream = translation("chat").stream()
    out = stream.feed(sse(delta(role="assistant", content=""), delta(content="Hi"), delta(reasoning="hm")))
    assert ndjson(out) == [
        {"model": "m", "created_at": "2023-11-14T22:13:20Z", "message": {"role": "assistant", "content": "Hi"},
         "done": False},
        {"model": "m", "created_at": "2023-11-14T22:13:20Z",
         "message": {"role": "assistant", "content": "", "thinking": "hm"}, "done": False},
    ]  # fmt: skip
    assert stream.feed(sse(finish("length"), USAGE)) == b""
    [done] = ndjson(stream.feed(sse(b"[DONE]")))
    assert done["done"] is True and done["done_reason"] == "length"
    assert (done["prompt_eval_count"], done["eval_count"]) == (3, 2)
    assert done["total_duration"] == 0 and done["load_duration"] == 0  # the fixed clock
    assert stream.flush() == b"" and stream.feed(sse(delta(content="late"))) == b""


def test_stream_without_done_marker_ends_at_flush() -> None:
    stream = translation("generate").stream()
    assert ndjson(stream.feed(sse(delta(content="a")))) == [
        {"model": "m", "created_at": "2023-11-14T22:13:20Z", "response": "a", "done": False}
    ]
    [done] = ndjson(stream.flush())
    assert done["response"] == "" and done["done_reason"] == "stop" and "eval_count" not in done  # unknown


def test_streamed_tool_calls_with_names_repeated_in_every_delta() -> None:
    """llama.cpp's server repeats id, type and name in each delta and sends arguments char by char."""
    stream = translation("chat").stream()
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
    deltas = [
        delta(tool_calls=[{**call, "function": {"name": "get_weather", "arguments": c}}]) for c in '{"city":"Oslo"}'
    ]
    assert stream.feed(sse(*deltas)) == b""  # held until the choice finishes
    [line] = ndjson(stream.feed(sse(finish("tool_calls"))))
    assert line["message"]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]


def test_llama_cpp_timings_become_durations() -> None:
    stream = translation("chat").stream()
    stream.feed(sse(delta(content="a"), {**finish("stop"), "timings": {"prompt_ms": 1.5, "predicted_ms": 20}}))
    [done] = ndjson(stream.feed(sse(b"[DONE]")))
    assert done["prompt_eval_duration"] == 1_500_000 and done["eval_duration"] == 20_000_000


def test_whole_answers() -> None:
    body = {"created": 1700000000, "usage": {"prompt_tokens": 4, "completion_tokens": 1},
            "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}]},
                "finish_reason": "tool_calls"}]}  # fmt: skip
    doc = json.loads(translation("chat").response(json.dumps(body).encode()))
    assert doc["message"] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "f", "arguments": {}}}],
    }
    assert doc["done_reason"] == "stop" and doc["prompt_eval_count"] == 4 and doc["eval_count"] == 1
    assert "prompt_eval_duration" not in doc  # a whole answer cannot tell the prompt's share
    assert json.loads(translation("chat").response(b"<html>")) == {"error": "the backend's answer is not a JSON object"}
    embedded = translation("embeddings").response(b'{"data": [{"index": 0, "embedding": [1.5]}]}')
    assert json.loads(embedded) == {"embedding": [1.5]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "bad", "type": "BadRequestError"}}', "bad"),
        (b'{"object": "error", "message": "old vLLM", "code": 400}', "old vLLM"),
        (b'{"error": "plain"}', "plain"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"detail": [{"loc": ["body"], "msg": "Field required"}]}', "Field required"),
        (b"Internal Server Error", "Internal Server Error"),
        (b"", "the backend answered HTTP 502"),
    ],
)
def test_error_message(body: bytes, message: str) -> None:
    assert error_message(502, body) == message
    assert json.loads(translation("chat").error(502, body)) == {"error": message}


def test_show_document() -> None:
    doc = json.loads(translation("show").local({"id": "m", "owned_by": "vllm", "max_model_len": 8192}) or b"")
    assert doc["model_info"] == {"general.basename": "m", "general.context_length": 8192}
    assert doc["details"]["family"] == "vllm" and doc["capabilities"] == ["completion"]
    assert translation("chat", messages=[{"role": "user", "content": "x"}]).local(None) is None


# --------------------------------------------------------------------------- SSE framing


def test_sse_events_framing() -> None:
    events = SSEEvents()
    assert events.feed(b": keep-alive\n\nevent: ping\ndata: a\ndata:b\n\ndata: c\r\n\r\ndata: d\r\rda") == [
        ("ping", b"a\nb"), ("message", b"c"), ("message", b"d"),
    ]  # fmt: skip
    assert events.feed(b"ta: e\r") == [] and events.feed(b"\n\r\n") == [("message", b"e")]


# --------------------------------------------------------------------------- properties

_text = st.text(max_size=12)  # lone surrogates included: json.dumps sends them escaped, as a backend may
_event = st.one_of(
    st.builds(lambda t: delta(content=t), _text),
    st.builds(lambda t: delta(reasoning_content=t), _text),
    st.builds(lambda i, n, a: delta(tool_calls=[{"index": i, "function": {"name": n, "arguments": a}}]),
              st.integers(0, 2), _text, st.sampled_from(["", "{", '"x": 1', "}", "[]"])),
    st.builds(finish, st.sampled_from(["stop", "length", "tool_calls", "content_filter"])),
    st.just(USAGE),
    st.just({"choices": [{"index": 0, "text": "t", "finish_reason": None}]}),
    st.just({"error": {"message": "boom"}}),
    st.just(b"[DONE]"),
    st.just(b"{not json"),
    st.just(b"[1, 2]"),
    st.just({"choices": "odd", "usage": 3, "timings": {"prompt_ms": "x"}}),
)  # fmt: skip
_terminator = st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n", b"\n\n\n"])


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.tuples(_event, _terminator), max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    kind=st.sampled_from(["chat", "generate"]),
    comment=st.booleans(),
)
def test_any_split_yields_the_same_ndjson(
    events: list[tuple[Any, bytes]], cuts: list[int], kind: str, comment: bool
) -> None:
    data = (b": hello\n\n" if comment else b"") + b"".join(sse(doc, end=end) for doc, end in events)
    whole = translation(kind).stream()
    expected = whole.feed(data) + whole.flush()
    points = sorted({c % (len(data) + 1) for c in cuts})
    split = translation(kind).stream()
    got = b""
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        got += split.feed(data[start:end])
    got += split.flush()
    assert got == expected
    for line in ndjson(expected) if expected else []:  # every line is a whole Ollama object
        assert line.keys() >= {"model", "created_at", "done"} or line.keys() == {"error"}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.sampled_from(["chat", "generate", "embed", "embeddings"]))
def test_translators_never_raise_on_backend_bytes(chunks: list[bytes], kind: str) -> None:
    t = translation(kind)
    stream = t.stream()
    for c in chunks:
        stream.feed(c)
    stream.flush()
    body = b"".join(chunks)
    json.loads(t.response(body))
    json.loads(t.error(500, body))


_field_line = st.one_of(
    st.builds(lambda v: b"data:" + v, st.binary(max_size=10).filter(lambda b: b"\n" not in b and b"\r" not in b)),
    st.builds(lambda v: b"data: " + v.encode(), st.text("ab {}", max_size=8)),
    st.builds(lambda v: b"event: " + v.encode(), st.text("xyz", min_size=1, max_size=4)),
    st.just(b": comment"),
    st.just(b"id: 7"),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.tuples(st.lists(_field_line, min_size=1, max_size=3), _terminator), max_size=10),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_sse_events_any_split_is_the_whole(
    events: list[tuple[list[bytes], bytes]], eol: bytes, cuts: list[int]
) -> None:
    data = b"".join(eol.join(lines) + end for lines, end in events)
    expected = SSEEvents().feed(data)
    points = sorted({c % (len(data) + 1) for c in cuts})
    split = SSEEvents()
    got = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        got += split.feed(data[start:end])
    assert got == expected
    assert len(expected) == sum(any(line.startswith(b"data:") for line in lines) for lines, _ in events)
