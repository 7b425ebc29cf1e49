"""Token accounting from relayed bytes: exact counts however the stream is cut into chunks."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.record import RequestRecord
from gateway.usage import MAX_FRAME, Scanner, UsageStripper, inject_usage, make_scanner

from . import fakes

NDJSON = "application/x-ndjson"
SSE = "text/event-stream; charset=utf-8"
JSON = "application/json; charset=utf-8"

Counts = tuple[int | None, int | None, int | None, int | None]  # prompt, completion, eval_count, eval_ns


def new_record() -> RequestRecord:
    return fakes.make_record(path="/x")


def counts(rec: RequestRecord) -> Counts:
    return rec.prompt_tokens, rec.completion_tokens, rec.eval_count, rec.eval_duration_ns


def scan(path: str, content_type: str, chunks: list[bytes]) -> Counts:
    scanner = make_scanner(path, content_type)
    assert scanner is not None
    for chunk in chunks:
        scanner.feed(chunk)
    rec = new_record()
    scanner.finish(rec)
    return counts(rec)


def compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- real-looking streams


def ollama_chat(*, prompt: bool = True, context: int = 0, cut: bool = False) -> bytes:
    lines = [
        {
            "model": "llama3.2",
            "created_at": "2024-11-19T04:45:17.12Z",
            "message": {"role": "assistant", "content": word},
            "done": False,
        }
        for word in ["The", " sky", ' "is" {"eval_count":9}', " blue\n"]
    ]
    final: dict[str, Any] = {
        "model": "llama3.2",
        "created_at": "2024-11-19T04:45:18.0Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
    }
    if context:
        final["context"] = list(range(100000, 100000 + context))
    final["total_duration"] = 4883583458
    final["load_duration"] = 1334875
    if prompt:
        final["prompt_eval_count"] = 26
        final["prompt_eval_duration"] = 342546000
    final["eval_count"] = 282
    final["eval_duration"] = 4535599000
    if not cut:
        lines.append(final)
    return b"".join(compact(line) + b"\n" for line in lines)


def openai_chat(*, usage: bool = True, null_usage: bool = False, crlf: bool = False, space: bool = True) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1731990317, "model": "m"}
    events = []
    for i, word in enumerate(["Hel", "lo", ' "usage": {"prompt_tokens": 999}', "!"]):
        chunk: dict[str, Any] = {
            **base,
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": "stop" if i == 3 else None}],
        }
        if null_usage:
            chunk["usage"] = None
        events.append(json.dumps(chunk).encode())  # with spaces, as OpenAI's own servers write it
    if usage:
        events.append(compact({**base, "choices": [], "usage": {"prompt_tokens": 26, "completion_tokens": 10}}))
    events.append(b"[DONE]")
    prefix = b"data: " if space else b"data:"
    nl = b"\r\n" if crlf else b"\n"
    return b"".join(prefix + e + nl + nl for e in events)


def responses_stream() -> bytes:
    response: dict[str, Any] = {"id": "resp_1", "object": "response", "status": "in_progress", "usage": None}
    events = [
        ("response.created", {"type": "response.created", "response": response}),
        ("response.in_progress", {"type": "response.in_progress", "response": response}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "response.completed"}),
        (
            "response.completed",
            {
                "type": "response.completed",
                "response": {
                    **response,
                    "status": "completed",
                    "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
                    "usage": {
                        "input_tokens": 12,
                        "input_tokens_details": {"cached_tokens": 4},
                        "output_tokens": 34,
                        "total_tokens": 46,
                    },
                },
            },
        ),
    ]
    return b"".join(b"event: " + name.encode() + b"\ndata: " + compact(data) + b"\n\n" for name, data in events)


def anthropic_stream(*, cut_after_start: bool = False) -> bytes:
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "usage": {"input_tokens": 25, "output_tokens": 1},
                },
            },
        ),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"text": "Hello"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        ),
        ("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 15}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    if cut_after_start:
        events = events[:4]
    out = b": keep-alive comment\n\n"
    return out + b"".join(b"event: " + n.encode() + b"\ndata: " + json.dumps(d).encode() + b"\n\n" for n, d in events)


# (name, path, content type, body, expected counts)
STREAMS: list[tuple[str, str, str, bytes, Counts]] = [
    ("ollama-chat", "/api/chat", NDJSON, ollama_chat(), (26, 282, 282, 4535599000)),
    ("ollama-generate-context", "/api/generate", NDJSON, ollama_chat(context=300), (26, 282, 282, 4535599000)),
    ("ollama-no-prompt-count", "/api/chat", NDJSON, ollama_chat(prompt=False), (None, 282, 282, 4535599000)),
    ("ollama-cut", "/api/chat", NDJSON, ollama_chat(cut=True), (None, None, None, None)),
    ("ollama-crlf", "/api/chat", NDJSON, ollama_chat().replace(b"\n", b"\r\n"), (26, 282, 282, 4535599000)),
    ("openai", "/v1/chat/completions", SSE, openai_chat(), (26, 10, None, None)),
    ("openai-usage-null", "/v1/chat/completions", SSE, openai_chat(null_usage=True), (26, 10, None, None)),
    ("openai-crlf-nospace", "/v1/completions", SSE, openai_chat(crlf=True, space=False), (26, 10, None, None)),
    ("openai-no-usage", "/v1/chat/completions", SSE, openai_chat(usage=False, null_usage=True), (None,) * 4),
    ("responses", "/v1/responses", SSE, responses_stream(), (12, 34, None, None)),
    ("responses-crlf", "/v1/responses", SSE, responses_stream().replace(b"\n", b"\r\n"), (12, 34, None, None)),
    ("anthropic", "/v1/messages", SSE, anthropic_stream(), (25, 15, None, None)),
    ("anthropic-cut", "/v1/messages", SSE, anthropic_stream(cut_after_start=True), (25, 1, None, None)),
    ("anthropic-cr", "/v1/messages", SSE, anthropic_stream().replace(b"\n", b"\r"), (25, 15, None, None)),
    (
        "json-openai",
        "/v1/chat/completions",
        JSON,
        json.dumps(
            {
                "id": "chatcmpl-1",
                "choices": [{"message": {"content": "x"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
            },
            indent=2,
        ).encode(),
        (5, 6, None, None),
    ),
    (
        "json-responses",
        "/v1/responses",
        JSON,
        compact({"object": "response", "output": [], "usage": {"input_tokens": 3, "output_tokens": 4}}),
        (3, 4, None, None),
    ),
    (
        "json-anthropic-cache",
        "/v1/messages",
        JSON,
        compact(
            {
                "type": "message",
                "content": [{"type": "text", "text": "hi"}],
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 1000,
                    "output_tokens": 7,
                },
            }
        ),
        (1110, 7, None, None),
    ),
    (
        "json-ollama",
        "/api/chat",
        "application/json",
        compact(
            {
                "model": "m",
                "message": {"content": "x"},
                "done": True,
                "prompt_eval_count": 8,
                "eval_count": 9,
                "eval_duration": 123,
            }
        ),
        (8, 9, 9, 123),
    ),
    (
        "json-ollama-embed",
        "/api/embed",
        "application/json",
        compact({"model": "m", "embeddings": [[0.1, 0.2]], "total_duration": 5, "prompt_eval_count": 4}),
        (4, None, None, None),
    ),
    (
        "json-embeddings",
        "/v1/embeddings",
        JSON,
        compact({"object": "list", "data": [], "usage": {"prompt_tokens": 9, "total_tokens": 9}}),
        (9, None, None, None),
    ),
    ("json-error", "/v1/chat/completions", JSON, b'{"error":{"message":"boom","usage":null}}', (None,) * 4),
    ("json-malformed", "/v1/chat/completions", JSON, b'{"usage":{"prompt_tokens":1', (None,) * 4),
]
IDS = [s[0] for s in STREAMS]


@pytest.mark.parametrize(("name", "path", "content_type", "body", "expected"), STREAMS, ids=IDS)
def test_whole_body(name: str, path: str, content_type: str, body: bytes, expected: Counts) -> None:
    assert scan(path, content_type, [body]) == expected


@pytest.mark.parametrize(("name", "path", "content_type", "body", "expected"), STREAMS, ids=IDS)
def test_split_at_every_offset(name: str, path: str, content_type: str, body: bytes, expected: Counts) -> None:
    for i in range(len(body) + 1):
        assert scan(path, content_type, [body[:i], body[i:]]) == expected, f"split at {i}"


@pytest.mark.parametrize(("name", "path", "content_type", "body", "expected"), STREAMS, ids=IDS)
def test_byte_by_byte(name: str, path: str, content_type: str, body: bytes, expected: Counts) -> None:
    assert scan(path, content_type, [body[i : i + 1] for i in range(len(body))]) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_splits(data: st.DataObject) -> None:
    name, path, content_type, body, expected = data.draw(st.sampled_from(STREAMS))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert scan(path, content_type, pieces) == expected


def test_every_event_per_chunk_as_servers_send_it() -> None:
    body = openai_chat()
    events = [e + b"\n\n" for e in body.split(b"\n\n")[:-1]]
    assert scan("/v1/chat/completions", SSE, events) == (26, 10, None, None)


def test_huge_final_line_is_not_held_whole() -> None:
    """A /api/generate `context` array longer than MAX_FRAME: counts still read from the line's end."""
    body = ollama_chat(context=200_000)
    final = body[body.rindex(b"\n", 0, len(body) - 1) + 1 :]
    assert len(final) > MAX_FRAME
    expected: Counts = (26, 282, 282, 4535599000)
    assert scan("/api/generate", NDJSON, [body]) == expected
    step = 65536
    assert scan("/api/generate", NDJSON, [body[i : i + step] for i in range(0, len(body), step)]) == expected
    scanner = make_scanner("/api/generate", NDJSON)
    assert scanner is not None
    for i in range(0, len(body), step):
        scanner.feed(body[i : i + step])
        assert len(scanner._buf) <= MAX_FRAME + step  # type: ignore[attr-defined]


def test_huge_final_line_cut_inside_a_number_counts_nothing_from_it() -> None:
    body = ollama_chat(context=200_000)
    cut = body.index(b'"eval_count":282') + len(b'"eval_count":28')
    assert scan("/api/generate", NDJSON, [body[:cut]]) == (26, None, None, None)


@pytest.mark.parametrize(
    ("path", "doc", "expected"),
    [
        (
            "/v1/embeddings",
            {
                "object": "list",
                "data": [{"embedding": [0.123456789] * 300_000}],
                "model": "m",
                "usage": {"prompt_tokens": 17, "total_tokens": 17},
            },
            (17, None, None, None),
        ),
        (
            "/api/embed",
            {
                "model": "m",
                "embeddings": [[0.123456789] * 300_000],
                "total_duration": 1,
                "load_duration": 1,
                "prompt_eval_count": 21,
            },
            (21, None, None, None),
        ),
    ],
)
def test_huge_json_body_keeps_only_its_ends(path: str, doc: dict[str, Any], expected: Counts) -> None:
    body = compact(doc)
    assert len(body) > 2 * MAX_FRAME
    step = 65536
    scanner = make_scanner(path, JSON)
    assert scanner is not None
    for i in range(0, len(body), step):
        scanner.feed(body[i : i + step])
        assert len(scanner._buf) <= MAX_FRAME + step  # type: ignore[attr-defined]
    rec = new_record()
    scanner.finish(rec)
    assert counts(rec) == expected


def test_huge_sse_event_then_usage() -> None:
    """A multi-megabyte event (a big tool call) does not stop the later usage chunk from counting."""
    big = b"data: " + compact({"choices": [{"delta": {"content": "x" * (MAX_FRAME + 10)}}]}) + b"\n\n"
    body = big + openai_chat()
    step = 4096
    assert scan("/v1/chat/completions", SSE, [body[i : i + step] for i in range(0, len(body), step)]) == (
        26,
        10,
        None,
        None,
    )


def test_continuous_usage_last_report_wins() -> None:
    events = [
        {"choices": [{"delta": {"content": "a"}}], "usage": {"prompt_tokens": 5, "completion_tokens": n}}
        for n in (1, 2, 3)
    ]
    body = b"".join(b"data: " + compact(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    assert scan("/v1/chat/completions", SSE, [body]) == (5, 3, None, None)


def test_multiline_data_event() -> None:
    body = b'data: {"choices": [],\ndata:  "usage": {"prompt_tokens": 3,\ndata: "completion_tokens": 4}}\n\n'
    assert scan("/v1/chat/completions", SSE, [body]) == (3, 4, None, None)


def test_unterminated_last_line_is_still_read() -> None:
    body = ollama_chat().rstrip(b"\n")
    assert scan("/api/chat", NDJSON, [body]) == (26, 282, 282, 4535599000)


def test_booleans_and_negatives_are_not_counts() -> None:
    body = b'data: {"choices":[],"usage":{"prompt_tokens":true,"completion_tokens":-3}}\n\n'
    assert scan("/v1/chat/completions", SSE, [body]) == (None, None, None, None)


def test_finish_keeps_counts_already_on_the_record_when_none_found() -> None:
    scanner = make_scanner("/v1/chat/completions", SSE)
    assert scanner is not None
    scanner.feed(openai_chat(usage=False))
    rec = new_record()
    rec.prompt_tokens = 3
    scanner.finish(rec)
    assert rec.prompt_tokens == 3 and rec.completion_tokens is None


@pytest.mark.parametrize(
    ("path", "content_type", "kind"),
    [
        ("/api/chat", "application/x-ndjson", "_NDJSONScanner"),
        ("/api/generate", "application/json; charset=utf-8", "_JSONScanner"),
        ("/v1/chat/completions", "text/event-stream; charset=utf-8", "_SSEScanner"),
        ("/v1/messages", "TEXT/EVENT-STREAM", "_SSEScanner"),
        ("/v1/embeddings", "application/json", "_JSONScanner"),
        ("/v1/responses", "application/problem+json", "_JSONScanner"),
        ("/api/tags", "application/json", None),
        ("/api/show", "application/json", None),
        ("/api/pull", "application/x-ndjson", None),
        ("/v1/chat/completions", "text/plain", None),
        ("/v1/chat/completions", "", None),
    ],
)
def test_make_scanner_chooses(path: str, content_type: str, kind: str | None) -> None:
    scanner = make_scanner(path, content_type)
    if kind is None:
        assert scanner is None
    else:
        assert isinstance(scanner, Scanner) and type(scanner).__name__ == kind


# --------------------------------------------------------------------------- usage injection


@pytest.mark.parametrize(
    ("body", "backend_type", "injected", "after"),
    [
        ({"stream": True}, None, True, {"stream": True, "stream_options": {"include_usage": True}}),
        (
            {"stream": True, "stream_options": None},
            None,
            True,
            {"stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"stream": True, "stream_options": {"include_usage": False}},
            None,
            True,
            {"stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"stream": True, "stream_options": {}},
            None,
            True,
            {"stream": True, "stream_options": {"include_usage": True}},
        ),
        ({"stream": True, "stream_options": {}}, "vllm", False, {"stream": True, "stream_options": {}}),
        (
            {"stream": True, "stream_options": {"include_usage": True}},
            None,
            False,
            {"stream": True, "stream_options": {"include_usage": True}},
        ),
        (
            {"stream": True, "stream_options": {"continuous_usage_stats": True}},
            None,
            True,
            {"stream": True, "stream_options": {"continuous_usage_stats": True, "include_usage": True}},
        ),
        ({"stream": False}, None, False, {"stream": False}),
        ({}, None, False, {}),
        ({"stream": "true"}, None, False, {"stream": "true"}),
        ({"stream": True, "stream_options": "yes"}, None, False, {"stream": True, "stream_options": "yes"}),
    ],
)
def test_inject_usage(body: dict[str, Any], backend_type: str | None, injected: bool, after: dict[str, Any]) -> None:
    assert inject_usage(body, backend_type=backend_type) is injected
    assert body == after


# --------------------------------------------------------------------------- the stripper


def usage_event(stream: bytes, sep: bytes = b"\n\n") -> bytes:
    events = [e + sep for e in stream.split(sep)[:-1]]
    (found,) = [e for e in events if b'"choices":[]' in e]
    return found


def strip(pieces: list[bytes]) -> tuple[bytes, UsageStripper]:
    stripper = UsageStripper()
    out = b"".join(stripper.feed(p) for p in pieces) + stripper.flush()
    return out, stripper


STRIP_CASES = [
    ("lf", openai_chat(null_usage=True), b"\n\n"),
    ("crlf", openai_chat(crlf=True, space=False), b"\r\n\r\n"),
    ("cr", openai_chat().replace(b"\n", b"\r"), b"\r\r"),
]


@pytest.mark.parametrize(("name", "stream", "sep"), STRIP_CASES, ids=[c[0] for c in STRIP_CASES])
def test_stripper_removes_exactly_the_usage_event(name: str, stream: bytes, sep: bytes) -> None:
    expected = stream.replace(usage_event(stream, sep), b"", 1)
    assert len(expected) < len(stream)
    for i in range(len(stream) + 1):
        out, stripper = strip([stream[:i], stream[i:]])
        assert out == expected, f"split at {i}"
        rec = new_record()
        stripper.finish(rec)
        assert (rec.prompt_tokens, rec.completion_tokens) == (26, 10)
        assert stripper.dropped == 1
    out, _ = strip([stream[i : i + 1] for i in range(len(stream))])
    assert out == expected


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_stripper_random_splits(data: st.DataObject) -> None:
    name, stream, sep = data.draw(st.sampled_from(STRIP_CASES))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    out, _ = strip(pieces)
    assert out == stream.replace(usage_event(stream, sep), b"", 1)


@pytest.mark.parametrize(("name", "stream", "sep"), STRIP_CASES, ids=[c[0] for c in STRIP_CASES])
def test_empty_chunks_change_nothing(name: str, stream: bytes, sep: bytes) -> None:
    expected = stream.replace(usage_event(stream, sep), b"", 1)
    for i in range(len(stream) + 1):
        out, _ = strip([stream[:i], b"", stream[i:], b""])
        assert out == expected, f"split at {i}"
        assert scan("/v1/chat/completions", SSE, [b"", stream[:i], b"", stream[i:]]) == (26, 10, None, None)


def test_stripper_forwards_each_event_as_soon_as_complete() -> None:
    stream = openai_chat()
    events = [e + b"\n\n" for e in stream.split(b"\n\n")[:-1]]
    stripper = UsageStripper()
    for event in events:
        out = stripper.feed(event)
        assert out == (b"" if b'"choices":[]' in event else event)
        assert out is event or out == b""  # no copy on the common path
    # Half an event is held; the rest releases exactly that event.
    event = events[0]
    assert stripper.feed(event[:10]) == b""
    assert stripper.feed(event[10:] + event[:5]) == event
    assert stripper.flush() == event[:5]


def test_stripper_keeps_content_chunks_that_carry_usage() -> None:
    """vLLM continuous usage stats: usage on content chunks stays; only the choices-[] chunk goes."""
    content = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":5,"completion_tokens":1}}\n\n'
    final = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1}}\n\n'
    done = b"data: [DONE]\n\n"
    out, stripper = strip([content + final + done])
    assert out == content + done
    assert stripper.dropped == 1


def test_stripper_drops_an_unterminated_usage_event_at_the_end() -> None:
    out, stripper = strip([b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}\n'])
    assert out == b"" and stripper.dropped == 1


def test_stripper_passes_a_long_event_through_without_holding_it() -> None:
    big = b"data: " + compact({"choices": [{"delta": {"content": "y" * (MAX_FRAME + 100)}}]}) + b"\n\n"
    stream = big + openai_chat()
    expected = stream.replace(usage_event(openai_chat()), b"", 1)
    step = 65536
    stripper = UsageStripper()
    out = []
    for i in range(0, len(stream), step):
        out.append(stripper.feed(stream[i : i + step]))
        assert len(stripper._buf) <= MAX_FRAME + step  # type: ignore[attr-defined]
    out.append(stripper.flush())
    assert b"".join(out) == expected


def test_stripper_ignores_usage_text_inside_content() -> None:
    stream = openai_chat(usage=False)
    out, stripper = strip([stream])
    assert out == stream and stripper.dropped == 0


# --------------------------------------------------------------------------- cost


def test_feed_cost_micro_benchmark() -> None:
    """Not a timed assertion: prints the cost of feed() per chunk on typical streams."""
    sse_chunk = (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1731990317,"model":"llama3.2",'
        b'"choices":[{"index":0,"delta":{"content":" token"},"finish_reason":null}]}\n\n'
    )
    ndjson_chunk = (
        b'{"model":"llama3.2","created_at":"2024-11-19T04:45:17.123Z",'
        b'"message":{"role":"assistant","content":" token"},"done":false}\n'
    )
    n = 20000
    results = {}
    for label, path, content_type, chunk in [
        ("sse", "/v1/chat/completions", SSE, sse_chunk),
        ("ndjson", "/api/chat", NDJSON, ndjson_chunk),
    ]:
        best = float("inf")
        for _ in range(5):
            scanner = make_scanner(path, content_type)
            assert scanner is not None
            feed = scanner.feed
            t0 = time.perf_counter()
            for _ in range(n):
                feed(chunk)
            best = min(best, time.perf_counter() - t0)
        results[label] = best / n * 1e6
    best = float("inf")
    for _ in range(5):
        stripper = UsageStripper()
        sfeed = stripper.feed
        t0 = time.perf_counter()
        for _ in range(n):
            sfeed(sse_chunk)
        best = min(best, time.perf_counter() - t0)
    results["stripper"] = best / n * 1e6
    print("\nfeed() per chunk: " + ", ".join(f"{k} {v:.2f} µs" for k, v in results.items()))
