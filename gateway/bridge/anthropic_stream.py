"""An OpenAI Chat Completions SSE stream, rewritten as Anthropic Messages events as it arrives.

``AnthropicStream.feed`` takes upstream bytes split anywhere and returns the client events for
every upstream event completed by them (``base.SSEEvents`` holds only an incomplete trailing
event, never a finished one). Each client event is ``event: <type>\\ndata: <json>\\n\\n``:

    message_start                      (usage.input_tokens as known: usually 0 until the end)
    content_block_start / _delta / _stop   per block, indices in order: ``thinking`` (when asked
                                       for), ``text`` (text_delta), ``tool_use`` (input_json_delta
                                       with the arguments as they stream)
    message_delta                      stop_reason, stop_sequence, usage (the final counts)
    message_stop

A new block closes the open one. Text after a tool call opens a new text block. OpenAI servers
send one tool call after another; an argument piece for a call whose block is already closed
(interleaved calls) is still sent, at that block's index, so no input is lost.

The stream ends cleanly on ``[DONE]`` or, in ``flush``, when the backend's stream ended after a
``finish_reason``. An upstream ``{"error": ...}`` event or an end without a ``finish_reason``
becomes an Anthropic ``error`` event and the end of the translation,
never a clean ``message_stop``. Nothing here raises on any input.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

from .base import SSEEvents, dumps, parse_json

__all__ = ["FINISH_REASONS", "AnthropicStream", "Outcome", "anthropic_usage", "sse_event"]

FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
TEXT, THINKING, TOOL = "text", "thinking", "tool_use"
_quote = encode_basestring  # one JSON string (C), for the text fast path


def sse_event(kind: str, doc: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), dumps(doc))


class Outcome:
    """How the answer ended and what it cost, from the backend's ``finish_reason`` and ``usage``."""

    __slots__ = ("cached", "completion", "finish_reason", "matched", "prompt", "stop_sequences", "tools_called")

    def __init__(self, stop_sequences: tuple[str, ...] = ()) -> None:
        self.stop_sequences = stop_sequences
        self.finish_reason: str | None = None
        self.matched: str | None = None  # vLLM names the stop string that ended the answer
        self.tools_called = False
        self.prompt: int | None = None
        self.completion: int | None = None
        self.cached = 0

    def finish(self, choice: dict[str, Any]) -> None:
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self.finish_reason = reason
            matched = choice.get("stop_reason")
            self.matched = matched if isinstance(matched, str) else None

    def usage(self, usage: dict[str, Any]) -> None:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and not isinstance(prompt, bool):
            self.prompt = prompt
            details = usage.get("prompt_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            self.cached = cached if isinstance(cached, int) and 0 < cached <= prompt else 0
        if isinstance(completion, int) and not isinstance(completion, bool):
            self.completion = completion

    def stop(self) -> tuple[str, str | None]:
        """(stop_reason, stop_sequence). A tool call with a plain "stop" (as some servers send) is
        still ``tool_use``: agents run tools only on that."""
        reason = self.finish_reason
        if self.tools_called and reason in (None, "stop", "tool_calls", "function_call"):
            return "tool_use", None
        if reason == "stop" and self.matched is not None and self.matched in self.stop_sequences:
            return "stop_sequence", self.matched
        return FINISH_REASONS.get(reason or "stop", "end_turn"), None


def anthropic_usage(outcome: Outcome) -> dict[str, int]:
    """OpenAI counts cached prompt tokens inside ``prompt_tokens``; Anthropic apart from ``input_tokens``."""
    usage = {"input_tokens": (outcome.prompt or 0) - outcome.cached, "output_tokens": outcome.completion or 0}
    if outcome.cached:
        usage["cache_read_input_tokens"] = outcome.cached
    return usage


class AnthropicStream:
    """The translator of one streamed answer (see the module docstring)."""

    __slots__ = ("_block", "_done", "_kind", "_next", "_pending", "_sse", "_started",
                 "_text_prefix", "_tools", "message_id", "model", "outcome", "thinking")  # fmt: skip

    def __init__(
        self, *, model: str, message_id: str, thinking: bool = False, stop_sequences: tuple[str, ...] = ()
    ) -> None:
        self.model = model
        self.message_id = message_id
        self.thinking = thinking
        self.outcome = Outcome(stop_sequences)
        self._sse = SSEEvents()  # holds the incomplete trailing event, nothing else
        self._started = False  # message_start sent
        self._done = False  # message_stop or error sent: nothing more is translated
        self._kind: str | None = None  # the open block's kind
        self._block = -1  # the open block's index
        self._next = 0  # the next block's index
        self._text_prefix = b""  # the open text block's delta event, up to the text
        self._tools: dict[int | str, int] = {}  # OpenAI tool call index (or id) -> block index
        self._pending: dict[int | str, list[Any]] = {}  # tool calls whose name has not arrived: [id, args...]

    # ------------------------------------------------------------------ bytes in, events out

    def feed(self, chunk: bytes) -> bytes:
        if self._done or not chunk:
            return b""
        out: list[bytes] = []
        for _, data in self._sse.feed(chunk):
            self._data(data, out)
            if self._done:
                break
        return b"".join(out)

    def flush(self) -> bytes:
        """After the backend's stream ended cleanly: the closing events, or an error if it ended early."""
        if self._done:
            return b""
        out: list[bytes] = []
        for _, data in self._sse.feed(b"\n\n"):  # a last event without its blank line still counts
            self._data(data, out)
        if not self._done:
            if self.outcome.finish_reason is not None:
                self._end(out)
            else:
                self._fail(out, "api_error", "the backend's stream ended before the answer was complete")
        return b"".join(out)

    # ------------------------------------------------------------------ one upstream event

    def _data(self, data: bytes, out: list[bytes]) -> None:
        # Per event, kept lean: plain lookups, and each rare field costs one dict lookup when absent.
        if data == b"[DONE]":
            self._end(out)
            return
        chunk = parse_json(data)
        if type(chunk) is not dict:
            return  # not an event we can use
        if "error" in chunk:  # vLLM and others report a failure mid-stream this way
            self._fail(out, "api_error", _upstream_message(chunk["error"]))
            return
        usage = chunk.get("usage")
        if usage and type(usage) is dict:
            self.outcome.usage(usage)
        if not self._started:
            self._start(out)
        try:
            choice = chunk["choices"][0]
            delta = choice.get("delta")
        except (KeyError, IndexError, TypeError, AttributeError):
            return  # the usage chunk (no choices), or nothing for us
        if type(delta) is dict:
            if self.thinking:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning and type(reasoning) is str:
                    self._thinking(reasoning, out)
            text = delta.get("content")
            if text and type(text) is str:
                self._text(text, out)
            calls = delta.get("tool_calls")
            if calls and type(calls) is list:
                for position, call in enumerate(calls):
                    if type(call) is dict:
                        self._tool_call(call, position, out)
        if choice.get("finish_reason"):
            self.outcome.finish(choice)

    def _start(self, out: list[bytes]) -> None:
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage(self.outcome),
        }
        out.append(sse_event("message_start", {"type": "message_start", "message": message}))

    # ------------------------------------------------------------------ blocks

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        index = self._block = self._next
        self._next += 1
        self._kind = kind
        doc = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(sse_event("content_block_start", doc))
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._kind is not None:
            out.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": self._block}))
            self._kind = None

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._kind != TEXT:
            index = self._open(TEXT, {"type": "text", "text": ""}, out)
            self._text_prefix = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"text_delta","text":' % index
            )
        try:
            quoted = _quote(text).encode()
        except UnicodeEncodeError:  # a lone surrogate (a backend's escaped "\ud800"): keep it escaped
            quoted = json.dumps(text).encode()
        out.append(self._text_prefix + quoted + b"}}\n\n")

    def _thinking(self, text: str, out: list[bytes]) -> None:
        if self._kind != THINKING:
            self._open(THINKING, {"type": "thinking", "thinking": "", "signature": ""}, out)
        delta = {"type": "thinking_delta", "thinking": text}
        out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": self._block,
                                                     "delta": delta}))  # fmt: skip

    def _tool_call(self, call: dict[str, Any], position: int, out: list[bytes]) -> None:
        slot: int | str = position
        given, call_id = call.get("index"), call.get("id")
        if isinstance(given, int) and not isinstance(given, bool):
            slot = given
        elif isinstance(call_id, str) and call_id:
            slot = call_id  # without an index (servers that send each call whole): known by its id
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(arguments, dict):  # an object already (Ollama): its JSON text
            arguments = dumps(arguments).decode()
        arguments = arguments if isinstance(arguments, str) else ""
        index = self._tools.get(slot)
        if index is None:
            pending = self._pending.get(slot)
            if pending is None:
                pending = self._pending[slot] = [call.get("id")]
            elif pending[0] is None:
                pending[0] = call.get("id")
            if arguments:
                pending.append(arguments)
            if not (isinstance(name, str) and name):
                return  # the name comes first in every server's stream; hold the call until it does
            index = self._open_tool(slot, name, out)
            arguments = ""
        if arguments:
            self._arguments(index, arguments, out)

    def _open_tool(self, slot: int | str, name: str, out: list[bytes]) -> int:
        pending = self._pending.pop(slot)
        call_id = pending[0] if isinstance(pending[0], str) and pending[0] else f"toolu_{self.message_id[4:]}_{slot}"
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        index = self._tools[slot] = self._open(TOOL, block, out)
        self.outcome.tools_called = True
        for piece in pending[1:]:
            self._arguments(index, piece, out)
        return index

    def _arguments(self, index: int, piece: str, out: list[bytes]) -> None:
        delta = {"type": "input_json_delta", "partial_json": piece}
        out.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": delta}))  # fmt: skip

    # ------------------------------------------------------------------ the end

    def _end(self, out: list[bytes]) -> None:
        if not self._started:
            self._start(out)
        for slot in list(self._pending):  # a call whose name never came still reaches the client
            self._open_tool(slot, "", out)
        self._close(out)
        stop_reason, stop_sequence = self.outcome.stop()
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        usage = anthropic_usage(self.outcome)
        out.append(sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        self._done = True

    def _fail(self, out: list[bytes], kind: str, message: str) -> None:
        out.append(sse_event("error", {"type": "error", "error": {"type": kind, "message": message}}))
        self._done = True


def _upstream_message(error: Any) -> str:
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else json.dumps(error, ensure_ascii=False)
