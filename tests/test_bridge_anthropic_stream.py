"""OpenAI SSE -> Anthropic Messages events: the event sequence for text, thinking and interleaved
tool calls, the endings (clean, error, cut short), and Hypothesis properties: any backend event
sequence split at any byte yields the same events as the whole, and nothing ever raises."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bridge.anthropic_stream import AnthropicStream
from gateway.bridge.base import MAX_EVENT


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": choices}


def usage(prompt: int = 9, completion: int = 3) -> dict[str, Any]:
    return {**chunk(), "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": 12}}


def sse(*docs: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (d if isinstance(d, str) else json.dumps(d)).encode() + b"\n\n" for d in docs)


def tool(index: int, id: str | None = None, name: str | None = None, args: str | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    call: dict[str, Any] = {"index": index, "function": function}
    if id is not None:
        call.update(id=id, type="function")
    return {"tool_calls": [call]}


def translator(**kw: Any) -> AnthropicStream:
    return AnthropicStream(model=kw.pop("model", "claude-x"), message_id="msg_1", **kw)


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse client SSE, checking every event is exactly ``event: T\\ndata: JSON\\n\\n`` with a matching type."""
    assert raw == b"" or raw.endswith(b"\n\n")
    out = []
    for block in raw.split(b"\n\n")[:-1]:
        head, data = block.split(b"\n")
        assert head.startswith(b"event: ") and data.startswith(b"data: ")
        doc = json.loads(data[6:])
        assert doc["type"] == head[7:].decode()
        out.append((doc["type"], doc))
    return out


def run(raw: bytes, **kw: Any) -> list[tuple[str, dict[str, Any]]]:
    stream = translator(**kw)
    return events(stream.feed(raw) + stream.flush())


def compact(evs: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Events as short tuples for readable assertions."""
    out: list[Any] = []
    for kind, doc in evs:
        if kind == "content_block_start":
            out.append(("start", doc["index"], doc["content_block"]["type"]))
        elif kind == "content_block_delta":
            delta = doc["delta"]
            value = delta.get("text", delta.get("partial_json", delta.get("thinking")))
            out.append(("delta", doc["index"], value))
        elif kind == "content_block_stop":
            out.append(("stop", doc["index"]))
        elif kind == "message_delta":
            out.append(("message_delta", doc["delta"]["stop_reason"], doc["delta"]["stop_sequence"], doc["usage"]))
        elif kind == "error":
            out.append(("error", doc["error"]["type"]))
        else:
            out.append((kind,))
    return out


def test_text_stream() -> None:
    raw = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        usage(),
        "[DONE]",
    )
    evs = run(raw)
    assert evs[0] == (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
    )
    assert evs[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert evs[2][1] == {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}
    assert compact(evs)[3:] == [
        ("delta", 0, "lo"),
        ("stop", 0),
        ("message_delta", "end_turn", None, {"input_tokens": 9, "output_tokens": 3}),
        ("message_stop",),
    ]


def test_each_event_is_translated_as_it_arrives() -> None:
    stream = translator()
    assert compact(events(stream.feed(sse(chunk({"content": "a"}))))) == [
        ("message_start",),
        ("start", 0, "text"),
        ("delta", 0, "a"),
    ]
    assert stream.feed(b'data: {"choices":[{"delta":{"content":"b"}') == b""  # incomplete: held
    assert compact(events(stream.feed(b"}]}\n\n"))) == [("delta", 0, "b")]
    assert compact(events(stream.feed(sse(chunk({}, "length"))))) == []  # usage may follow: not ended yet
    assert compact(events(stream.flush())) == [
        ("stop", 0),
        ("message_delta", "max_tokens", None, {"input_tokens": 0, "output_tokens": 0}),
        ("message_stop",),
    ]
    assert stream.feed(sse(chunk({"content": "late"}))) == b"" and stream.flush() == b""


def test_usage_known_at_start_goes_into_message_start() -> None:
    first = {**chunk({"content": "x"}), "usage": {"prompt_tokens": 30, "completion_tokens": 1}}  # vLLM continuous
    evs = run(sse(first, chunk({}, "stop"), "[DONE]"))
    assert evs[0][1]["message"]["usage"] == {"input_tokens": 30, "output_tokens": 1}


def test_text_and_interleaved_tool_calls() -> None:
    raw = sse(
        chunk({"role": "assistant", "content": "Let me check."}),
        chunk(tool(0, "call_a", "weather", "")),
        chunk(tool(0, args='{"city":')),
        chunk(tool(0, args='"Paris"}')),
        chunk(tool(1, "call_b", "time", '{"tz":')),
        chunk(tool(0, args=" ")),  # interleaved back to call 0 after call 1 started
        chunk(tool(1, args='"CET"}')),
        chunk({}, "tool_calls"),
        usage(20, 15),
        "[DONE]",
    )
    evs = run(raw)
    assert compact(evs) == [
        ("message_start",),
        ("start", 0, "text"),
        ("delta", 0, "Let me check."),
        ("stop", 0),
        ("start", 1, "tool_use"),
        ("delta", 1, '{"city":'),
        ("delta", 1, '"Paris"}'),
        ("stop", 1),
        ("start", 2, "tool_use"),
        ("delta", 2, '{"tz":'),
        ("delta", 1, " "),  # not lost: at its own block's index
        ("delta", 2, '"CET"}'),
        ("stop", 2),
        ("message_delta", "tool_use", None, {"input_tokens": 20, "output_tokens": 15}),
        ("message_stop",),
    ]
    starts = [doc["content_block"] for kind, doc in evs if kind == "content_block_start"]
    assert starts[1] == {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}}
    assert starts[2] == {"type": "tool_use", "id": "call_b", "name": "time", "input": {}}


def test_text_after_a_tool_call_opens_a_new_block_and_whole_calls_in_one_chunk() -> None:
    whole = {"tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "a", "arguments": {"x": 1}}},  # Ollama: an object
        {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "{}"}},
    ]}  # fmt: skip
    evs = run(sse(chunk(whole), chunk({"content": "done"}), chunk({}, "stop"), "[DONE]"))
    assert compact(evs) == [
        ("message_start",),
        ("start", 0, "tool_use"),
        ("delta", 0, '{"x":1}'),
        ("stop", 0),
        ("start", 1, "tool_use"),
        ("delta", 1, "{}"),
        ("stop", 1),
        ("start", 2, "text"),
        ("delta", 2, "done"),
        ("stop", 2),
        ("message_delta", "tool_use", None, {"input_tokens": 0, "output_tokens": 0}),  # "stop" + calls: tool_use
        ("message_stop",),
    ]
    ids = [doc["content_block"]["id"] for kind, doc in evs if kind == "content_block_start" and doc["index"] < 2]
    assert ids == ["c1", "c2"]


def test_calls_without_an_index_are_told_apart_by_id() -> None:
    def whole(call_id: str, name: str) -> dict[str, Any]:
        return {"tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}]}

    evs = run(sse(chunk(whole("c1", "a")), chunk(whole("c2", "b")), chunk({}, "tool_calls"), "[DONE]"))
    starts = [doc["content_block"] for kind, doc in evs if kind == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("c1", "a"), ("c2", "b")]


def test_a_tool_call_whose_name_comes_late_is_held_until_it_does() -> None:
    raw = sse(chunk(tool(0, args='{"a"')), chunk(tool(0, "c9", "f", ":1}")), chunk({}, "tool_calls"), "[DONE]")
    assert compact(run(raw))[1:4] == [("start", 0, "tool_use"), ("delta", 0, '{"a"'), ("delta", 0, ":1}")]
    nameless = sse(chunk(tool(0, args="{}")), chunk({}, "tool_calls"), "[DONE]")
    evs = run(nameless)
    assert evs[1][1]["content_block"] == {"type": "tool_use", "id": "toolu_1_0", "name": "", "input": {}}


def test_thinking_blocks_only_when_asked() -> None:
    raw = sse(
        chunk({"reasoning_content": "let me "}),
        chunk({"reasoning_content": "think"}),
        chunk({"content": "42"}),
        chunk({}, "stop"),
        "[DONE]",
    )
    assert compact(run(raw, thinking=True))[1:7] == [
        ("start", 0, "thinking"),
        ("delta", 0, "let me "),
        ("delta", 0, "think"),
        ("stop", 0),
        ("start", 1, "text"),
        ("delta", 1, "42"),
    ]
    assert compact(run(raw))[1:3] == [("start", 0, "text"), ("delta", 0, "42")]
    ollama = sse(chunk({"reasoning": "hm"}), chunk({}, "stop"), "[DONE]")
    assert run(ollama, thinking=True)[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}


def test_stop_sequence_from_vllm_stop_reason() -> None:
    raw = sse(chunk({"content": "a"}), chunk({}, "stop", stop_reason="###"), "[DONE]")
    assert compact(run(raw, stop_sequences=("###",)))[-2][1:3] == ("stop_sequence", "###")
    assert compact(run(raw))[-2][1:3] == ("end_turn", None)


def test_cached_tokens_are_reported_apart() -> None:
    cached = {**chunk(), "usage": {"prompt_tokens": 100, "completion_tokens": 2,
                                   "prompt_tokens_details": {"cached_tokens": 64}}}  # fmt: skip
    evs = run(sse(chunk({"content": "a"}, "stop"), cached, "[DONE]"))
    assert evs[-2][1]["usage"] == {"input_tokens": 36, "output_tokens": 2, "cache_read_input_tokens": 64}


def test_upstream_error_event_ends_with_an_anthropic_error() -> None:
    raw = sse(chunk({"content": "par"}), {"error": {"message": "CUDA OOM", "type": "InternalServerError"}})
    stream = translator()
    evs = events(stream.feed(raw + sse(chunk({"content": "ignored"}))) + stream.flush())
    assert compact(evs) == [("message_start",), ("start", 0, "text"), ("delta", 0, "par"), ("error", "api_error")]
    assert evs[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "CUDA OOM"}}
    assert "message_stop" not in [kind for kind, _ in evs]


def test_a_stream_cut_short_ends_with_an_error_not_message_stop() -> None:
    evs = run(sse(chunk({"content": "par"})))
    assert compact(evs)[-1] == ("error", "api_error")
    assert "message_stop" not in [kind for kind, _ in evs]
    assert compact(run(b"")) == [("error", "api_error")]


def test_clean_end_without_done_after_finish_reason() -> None:
    assert compact(run(sse(chunk({"content": "a"}, "stop"))))[-1] == ("message_stop",)
    # the last event without its blank line is still read at the end
    assert compact(run(b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":"stop"}]}'))[-1] == (
        "message_stop",
    )


def test_sse_framing_variants() -> None:
    crlf = sse(chunk({"content": "a"}), chunk({}, "stop"), "[DONE]").replace(b"\n", b"\r\n")
    cr = crlf.replace(b"\r\n", b"\r")
    plain = compact(run(sse(chunk({"content": "a"}), chunk({}, "stop"), "[DONE]")))
    assert compact(run(crlf)) == compact(run(cr)) == plain
    noisy = (
        b": keep-alive\n\n"
        b"event: chunk\nid: 7\ndata:" + json.dumps(chunk({"content": "a"})).encode() + b"\n\n"
        b"data: not json\n\n"
        b"data: [1, 2]\n\n"
        b"retry: 10\n\n"
        + sse(chunk({}, "stop"), "[DONE]")
    )  # fmt: skip
    assert compact(run(noisy)) == plain
    multiline = b'data: {"choices":[{"delta":\ndata: {"content":"a"}}]}\n\n' + sse(chunk({}, "stop"), "[DONE]")
    assert compact(run(multiline)) == plain


def multiline(delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One event whose JSON is cut over two data lines (joined by a newline, still valid JSON)."""
    text = json.dumps(chunk(delta, finish))
    return b"data: " + text[:1].encode() + b"\ndata: " + text[1:].encode() + b"\n\n"


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    raw = (multiline({"content": "a"}) + sse(chunk({}, "stop"), "[DONE]")).replace(b"\n", b"\r\n")
    assert compact(run(raw))[2] == ("delta", 0, "a")
    stream = translator()
    out = b""
    for i in range(len(raw)):
        out += stream.feed(raw[i : i + 1])
    assert compact(events(out + stream.flush())) == compact(run(raw))


def test_an_oversized_event_is_dropped_and_the_stream_goes_on() -> None:
    stream = translator()
    head = stream.feed(sse(chunk({"content": "a"})))
    assert stream.feed(b"data: " + b"x" * (MAX_EVENT + 1)) == b""
    tail = stream.feed(b"\n\n" + sse(chunk({"content": "b"}, "stop"), "[DONE]")) + stream.flush()
    assert compact(events(head + tail)) == [("message_start",), ("start", 0, "text"), ("delta", 0, "a"),
                                            ("delta", 0, "b"), ("stop", 0), ("message_delta", "end_turn", None,
                                            {"input_tokens": 0, "output_tokens": 0}), ("message_stop",)]  # fmt: skip


def test_unicode_and_escapes_survive() -> None:
    text = 'é 日本 🎉 "quoted" \\ \n new line \u2028'
    evs = run(sse(chunk({"content": text}), chunk({}, "stop"), "[DONE]"))
    assert evs[2][1]["delta"]["text"] == text


def test_lone_surrogates_from_the_backend_stay_escaped() -> None:
    raw = (
        b'data: {"choices":[{"delta":{"content":"a\\ud800b"}}]}\n\n'
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f\\udfff",'
        b'"arguments":"{\\"x\\":\\"\\ud800\\"}"}}]}}]}\n\n' + sse(chunk({}, "tool_calls"), "[DONE]")
    )
    evs = run(raw)
    assert evs[2][1]["delta"]["text"] == "a\ud800b"
    assert evs[4][1]["content_block"]["name"] == "f\udfff"
    assert evs[5][1]["delta"]["partial_json"] == '{"x":"\ud800"}'
    assert compact(evs)[-1] == ("message_stop",)


# --------------------------------------------------------------------------- properties

texts = st.one_of(st.text(max_size=12), st.sampled_from(["\ud800", "x\udfffy"]))  # lone surrogates too
deltas = st.one_of(
    st.builds(lambda t: {"content": t}, texts),
    st.builds(lambda t: {"reasoning_content": t}, texts),
    st.builds(
        lambda i, call_id, name, args: tool(i, call_id, name, args),
        st.integers(0, 2),
        st.one_of(st.none(), st.sampled_from(["c1", "c2"])),
        st.one_of(st.none(), st.sampled_from(["f", "g"])),
        st.one_of(st.none(), texts),
    ),
    st.just({}),
)
upstream_events = st.one_of(
    st.builds(lambda d, f: sse(chunk(d, f)), deltas, st.sampled_from([None, None, "stop", "length", "tool_calls"])),
    st.builds(multiline, deltas),
    st.builds(lambda p, c: sse(usage(p, c)), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.just(sse("[DONE]")),
    st.just(b": ping\n\n"),
    st.just(sse({"error": {"message": "boom"}})),
    st.binary(max_size=20),  # garbage, incomplete events included
)
streams = st.lists(upstream_events, max_size=12).map(b"".join)


def feed_split(raw: bytes, cuts: list[int], **kw: Any) -> bytes:
    stream = translator(**kw)
    out, last = b"", 0
    for cut in sorted(c % (len(raw) + 1) for c in cuts):
        out += stream.feed(raw[last:cut])
        last = cut
    return out + stream.feed(raw[last:]) + stream.flush()


@settings(max_examples=300, deadline=None)
@given(raw=streams, cuts=st.lists(st.integers(0, 10**6), max_size=10), thinking=st.booleans(),
       crlf=st.booleans())  # fmt: skip
def test_any_split_yields_the_same_events_as_the_whole(raw: bytes, cuts: list[int], thinking: bool, crlf: bool) -> None:
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    whole = translator(thinking=thinking)
    expected = whole.feed(raw) + whole.flush()
    assert feed_split(raw, cuts, thinking=thinking) == expected
    evs = events(expected)  # well-formed, and in the protocol's order:
    kinds = [kind for kind, _ in evs]
    assert kinds.count("message_stop") + kinds.count("error") == 1 and kinds[-1] in ("message_stop", "error")
    assert kinds.count("message_start") <= 1 and (not kinds[1:] or kinds[0] == "message_start" or kinds == ["error"])
    open_index: int | None = None
    started: list[int] = []
    for kind, doc in evs:
        if kind == "content_block_start":
            assert open_index is None and doc["index"] == len(started)
            open_index = doc["index"]
            started.append(doc["index"])
        elif kind == "content_block_stop":
            assert doc["index"] == open_index
            open_index = None
        elif kind == "content_block_delta":
            assert doc["index"] in started
        elif kind in ("message_delta", "message_stop"):
            assert open_index is None


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_arbitrary_bytes_never_raise(raw: bytes, cuts: list[int]) -> None:
    events(feed_split(raw, cuts))
