"""An OpenAI SSE stream (chat or completions), rewritten as Ollama NDJSON lines as it arrives.

Streams (Ollama's default) ask the backend for its usage chunk (``stream_options.include_usage``)
and turn each SSE event into one NDJSON line as it arrives; the usage chunk and ``[DONE]`` become
the final ``"done": true`` line with ``done_reason``, token counts and durations (nanoseconds:
llama.cpp's ``timings`` where the backend sends them, else measured by the gateway from the
request, the first token and the end). Streamed tool-call deltas are accumulated and sent as
whole ``tool_calls`` (arguments as objects) when the choice finishes. An in-band SSE error
becomes an ``{"error"}`` line and the end of the stream.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .base import SSEEvents, dumps, error_message, parse_json

__all__ = ["FINISH_REASONS", "Clock", "OllamaStream", "Timing", "ollama_arguments", "put_answer", "stamp"]

log = logging.getLogger("gateway.bridge")

FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop"}

Clock = Callable[[], int]
_quote = json.encoder.encode_basestring  # a str as a JSON string, non-ASCII kept (C): what dumps does


def stamp(created: Any, now: float | None = None) -> str:
    """Ollama's ``created_at`` (RFC 3339, UTC) from OpenAI's ``created`` (Unix seconds), else ``now``."""
    if isinstance(created, int | float) and not isinstance(created, bool):
        seconds = created
    else:
        seconds = time.time() if now is None else now
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    except (OverflowError, OSError, ValueError):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _ms_to_ns(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e12:
        return int(value * 1_000_000)
    return None


def ollama_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as the object Ollama's clients expect ({} when unreadable)."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str) and arguments.strip():
        try:
            parsed = json.loads(arguments)
        except ValueError:
            log.debug("tool call arguments are not JSON: %.200r", arguments)
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def put_answer(doc: dict[str, Any], key: str, text: str, thinking: str = "") -> dict[str, Any]:
    """Put an answer's text (and thinking, if any) in ``doc`` where Ollama has it: under ``key``
    ``"message"`` an assistant message (``/api/chat``), under ``"response"`` the top level
    (``/api/generate``). Returns the dict that holds them, for the tool calls a message adds."""
    if key == "message":
        holder: dict[str, Any] = {"role": "assistant", "content": text}
        doc["message"] = holder
    else:
        doc["response"] = text
        holder = doc
    if thinking:
        holder["thinking"] = thinking
    return holder


class Timing:
    """What the final ``done`` object reports: counts from usage, durations from timings or the clock."""

    __slots__ = ("clock", "start", "first", "prompt", "completion", "prompt_ns", "eval_ns")

    def __init__(self, clock: Clock, start: int) -> None:
        self.clock = clock
        self.start = start
        self.first: int | None = None  # when the first token arrived
        self.prompt: int | None = None
        self.completion: int | None = None
        self.prompt_ns: int | None = None
        self.eval_ns: int | None = None

    def absorb(self, doc: Mapping[str, Any]) -> None:
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.prompt = _count(usage.get("prompt_tokens"))
            self.completion = _count(usage.get("completion_tokens"))
        timings = doc.get("timings")  # llama.cpp's server: prompt_ms, predicted_ms
        if isinstance(timings, dict):
            self.prompt_ns = _ms_to_ns(timings.get("prompt_ms"))
            self.eval_ns = _ms_to_ns(timings.get("predicted_ms"))

    def fields(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Add the counts and durations to a final object. Without a first-token time (a whole
        answer) the prompt's share is unknown: ``eval_duration`` then covers the whole request."""
        now = self.clock()
        total = max(now - self.start, 0)
        doc["total_duration"] = total
        doc["load_duration"] = 0  # not observable through OpenAI's API: part of prompt_eval_duration
        if self.prompt is not None:
            doc["prompt_eval_count"] = self.prompt
        if self.prompt_ns is not None:
            doc["prompt_eval_duration"] = self.prompt_ns
        elif self.first is not None:
            doc["prompt_eval_duration"] = max(self.first - self.start, 0)
        if self.completion is not None:
            doc["eval_count"] = self.completion
        if self.eval_ns is not None:
            doc["eval_duration"] = self.eval_ns
        else:
            doc["eval_duration"] = max(now - self.first, 0) if self.first is not None else total
        return doc


class OllamaStream:
    """An OpenAI SSE stream (chat or completions) -> Ollama NDJSON, one line per content event.

    ``key`` is where the text goes: ``"message"`` (``/api/chat``) or ``"response"`` (``/api/generate``).
    """

    __slots__ = ("_events", "_model", "_key", "_timing", "_stamp", "_created", "_reason", "_tools", "_ended",
                 "_head")  # fmt: skip

    def __init__(self, model: str, key: str, clock: Clock, start: int, now: float | None = None) -> None:
        self._events = SSEEvents()
        self._model = model
        self._key = key
        self._timing = Timing(clock, start)
        self._created: Any = None
        self._stamp = stamp(None, now)  # until the backend's "created" says otherwise
        self._head = b""  # the bytes every content line starts with (model, created_at): built per timestamp
        self._new_head()
        self._reason = ""
        self._tools: dict[int, list[str]] = {}  # index -> [name, arguments so far]
        self._ended = False  # the done line (or an error line) went out: nothing follows it

    def feed(self, chunk: bytes) -> bytes:
        if self._ended:
            return b""
        out = b""
        for _, data in self._events.feed(chunk):
            line = self._event(data)
            if line:
                out += line
            if self._ended:
                break
        return out

    def flush(self) -> bytes:
        """A stream that ended cleanly without ``[DONE]`` still gets its final line."""
        return b"" if self._ended else self._done()

    def _event(self, data: bytes) -> bytes:
        # Once per token: plain lookups and type() checks, no helper calls on the common path.
        if data == b"[DONE]":
            return self._done()
        doc = parse_json(data)
        if type(doc) is not dict:
            return b""
        get = doc.get
        if get("error") is not None:  # an in-band error (vLLM): Ollama's error line ends the stream
            self._ended = True
            return dumps({"error": error_message(500, data)}) + b"\n"
        if get("usage") is not None or "timings" in doc:  # OpenAI sends "usage": null in every chunk
            self._timing.absorb(doc)
        choices = get("choices")
        if type(choices) is not list or not choices or type(choices[0]) is not dict:
            return b""
        choice = choices[0]
        created = get("created")
        if created is not None and created != self._created:
            self._created = created
            self._stamp = stamp(created)
            self._new_head()
        delta = choice.get("delta")
        if type(delta) is dict:
            text = delta.get("content")
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if delta.get("tool_calls"):
                self._tool_deltas(delta["tool_calls"])
                if self._timing.first is None:
                    self._timing.first = self._timing.clock()
        else:
            text, thinking = choice.get("text"), None
        if type(text) is not str:
            text = ""
        if type(thinking) is not str:
            thinking = ""
        out = b""
        if text or thinking:
            if self._timing.first is None:
                self._timing.first = self._timing.clock()
            out = self._line(text, thinking)
        reason = choice.get("finish_reason")
        if reason and type(reason) is str:
            self._reason = FINISH_REASONS.get(reason, "stop")
            out += self._tool_line()
        return out

    def _tool_deltas(self, deltas: Any) -> None:
        for delta in deltas if isinstance(deltas, list) else []:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", len(self._tools))
            entry = self._tools.setdefault(index if isinstance(index, int) else len(self._tools), ["", ""])
            function = delta.get("function")
            if isinstance(function, dict):
                name = function.get("name")
                if isinstance(name, str) and name != entry[0]:  # llama.cpp repeats the name in every delta
                    entry[0] += name
                if isinstance(function.get("arguments"), str):
                    entry[1] += function["arguments"]

    def _tool_line(self) -> bytes:
        if not self._tools:
            return b""
        calls = [{"function": {"name": name, "arguments": ollama_arguments(args)}}
                 for _, (name, args) in sorted(self._tools.items())]  # fmt: skip
        self._tools = {}
        if self._key == "message":
            doc: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": calls}
            return dumps({"model": self._model, "created_at": self._stamp, "message": doc, "done": False}) + b"\n"
        return b""  # /api/generate has no tool calls

    def _new_head(self) -> None:
        head = dumps({"model": self._model, "created_at": self._stamp})[:-1]
        self._head = head + (
            b',"message":{"role":"assistant","content":' if self._key == "message" else b',"response":'
        )

    def _line(self, text: str, thinking: str) -> bytes:
        if not thinking:  # the hot path: one token of text, written without building a document
            tail = b'},"done":false}\n' if self._key == "message" else b',"done":false}\n'
            try:
                quoted = _quote(text).encode()
            except UnicodeEncodeError:  # a lone surrogate (a backend's escaped "\ud800"): keep it escaped
                quoted = json.encoder.encode_basestring_ascii(text).encode()
            return self._head + quoted + tail
        doc: dict[str, Any] = {"model": self._model, "created_at": self._stamp}
        put_answer(doc, self._key, text, thinking)
        doc["done"] = False
        return dumps(doc) + b"\n"

    def _done(self) -> bytes:
        self._ended = True
        out = self._tool_line()
        doc: dict[str, Any] = {"model": self._model, "created_at": self._stamp}
        put_answer(doc, self._key, "")
        doc["done"] = True
        doc["done_reason"] = self._reason or "stop"
        return out + dumps(self._timing.fields(doc)) + b"\n"
