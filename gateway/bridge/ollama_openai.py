"""Ollama's native API (``/api/*``) for backends that speak only OpenAI's (``/v1/*``).

| Ollama                          | OpenAI                                                        |
| ------------------------------- | ------------------------------------------------------------- |
| ``/api/chat``                   | ``/v1/chat/completions``                                      |
| ``/api/generate``               | ``/v1/chat/completions`` (system + user message: the backend  |
|                                 | applies the model's chat template, as Ollama would);          |
|                                 | ``/v1/completions`` with ``raw: true`` or a ``suffix``        |
| ``/api/embed``, ``/api/embeddings`` | ``/v1/embeddings``                                        |
| ``/api/show``                   | answered by the gateway from the backend's listing entry      |

Streams (Ollama's default) ask the backend for its usage chunk (``stream_options.include_usage``)
and turn each SSE event into one NDJSON line as it arrives; the usage chunk and ``[DONE]`` become
the final ``"done": true`` line with ``done_reason``, token counts and durations (nanoseconds:
llama.cpp's ``timings`` where the backend sends them, else measured by the gateway from the
request, the first token and the end). Streamed tool-call deltas are accumulated and sent as
whole ``tool_calls`` (arguments as objects) when the choice finishes. A backend's error comes back
as ``{"error": "..."}`` with the backend's status, an in-band SSE error as an ``{"error"}`` line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import BadRequest
from .base import SSEEvents, Translation, dumps, error_message, parse_json

__all__ = ["ROUTES", "OllamaStream", "OllamaTranslation"]

log = logging.getLogger("gateway.bridge")

NDJSON = "application/x-ndjson"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

# Ollama ``options`` with an OpenAI (or llama.cpp/vLLM extension) counterpart; the rest is ignored.
OPTIONS = {
    "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "num_predict": "max_tokens", "stop": "stop", "seed": "seed",
    "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
    "repeat_penalty": "repeat_penalty",
}  # fmt: skip
FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop"}
IMAGE_SIGNATURES = (
    ("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"),
)  # fmt: skip
THINK_LEVELS = frozenset({"low", "medium", "high"})

Clock = Callable[[], int]
_quote = json.encoder.encode_basestring  # a str as a JSON string, non-ASCII kept (C): what dumps does


# --------------------------------------------------------------------------- requests


def _stream_flag(payload: Mapping[str, Any]) -> bool:
    stream = payload.get("stream")
    if stream is None:
        return True  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    return stream


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"'{where}' must be a string", param=where)
    return value


def image_part(data: Any, where: str) -> dict[str, Any]:
    """An Ollama image (base64, no header) as an OpenAI ``image_url`` content part (a data URL)."""
    if not isinstance(data, str) or not data:
        raise BadRequest(f"'{where}' must be a base64-encoded image", param=where)
    if data.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": data}}
    media = next((m for sig, m in IMAGE_SIGNATURES if data.startswith(sig)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}


def _content(text: str, images: Any, where: str) -> str | list[dict[str, Any]]:
    """Text, or text and image parts; ``where`` names the images field in errors."""
    if not images:
        return text
    if not isinstance(images, list):
        raise BadRequest(f"'{where}' must be a list", param=where)
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts.extend(image_part(image, f"{where}[{i}]") for i, image in enumerate(images))
    return parts


def openai_tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """Ollama tool calls of message ``index`` (arguments an object) -> OpenAI's (a JSON string, with ids)."""
    where = f"messages[{index}]"
    if not isinstance(calls, list):
        raise BadRequest(f"'{where}.tool_calls' must be a list", param=f"{where}.tool_calls")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"'{where}.tool_calls[{j}].function.name' is required", param=f"{where}.tool_calls")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = dumps(arguments if arguments is not None else {}).decode()
        call_id = call.get("id")
        out.append({
            "id": call_id if isinstance(call_id, str) and call_id else f"call_{index}_{j}",
            "type": "function",
            "function": {"name": function["name"], "arguments": arguments},
        })  # fmt: skip
    return out


def openai_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama chat messages -> OpenAI's: images become data-URL parts, tool calls and results get ids."""
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be a list", param="messages")
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, function name) of tool calls not answered yet
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"'{where}' must be an object", param="messages")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"'{where}.role' is required", param="messages")
        text = _text(message.get("content"), f"{where}.content")
        converted: dict[str, Any] = {"role": role, "content": _content(text, message.get("images"), f"{where}.images")}
        if role == "assistant" and message.get("tool_calls"):
            calls = openai_tool_calls(message["tool_calls"], i)
            converted["tool_calls"] = calls
            pending = [(c["id"], c["function"]["name"]) for c in calls]
        elif role == "tool":
            converted["tool_call_id"] = _answered_call(message, pending, i)
        out.append(converted)
    return out


def _answered_call(message: Mapping[str, Any], pending: list[tuple[str, str]], index: int) -> str:
    """The id of the call a tool message answers: its own, by ``tool_name``, else the oldest pending."""
    own = message.get("tool_call_id")
    if isinstance(own, str) and own:
        return own
    name = message.get("tool_name") or message.get("name")
    for k, (call_id, call_name) in enumerate(pending):
        if name is None or call_name == name:
            del pending[k]
            return call_id
    return f"call_{index}"


def _options(options: Any, out: dict[str, Any]) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object", param="options")
    ignored = []
    for key, value in options.items():
        target = OPTIONS.get(key)
        if target is None:
            ignored.append(key)
            continue
        if value is None:
            continue
        if key == "num_predict" and (not isinstance(value, int) or value < 0):
            continue  # -1 (no limit) and -2 (fill the context) are the backend's default
        out[target] = [value] if key == "stop" and isinstance(value, str) else value
    if ignored:  # num_ctx, num_gpu, mirostat...: set on the OpenAI server itself, not per request
        log.debug("Ollama options with no OpenAI counterpart ignored: %s", ", ".join(sorted(ignored)))


def _format(fmt: Any, out: dict[str, Any]) -> None:
    if fmt is None or fmt == "":
        return
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    else:
        raise BadRequest("'format' must be \"json\" or a JSON schema object", param="format")


def _think(think: Any, out: dict[str, Any]) -> None:
    if isinstance(think, bool):  # vLLM and llama.cpp pass this to templates with a thinking switch
        out["chat_template_kwargs"] = {"enable_thinking": think}
    elif isinstance(think, str) and think in THINK_LEVELS:
        out["reasoning_effort"] = think
    elif think is not None:  # Ollama rejects it too; dropping it would silently change the answer
        raise BadRequest('\'think\' must be true, false, "low", "medium" or "high"', param="think")


def _generation(payload: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    stream = _stream_flag(payload)
    _options(payload.get("options"), out)
    _format(payload.get("format"), out)
    _think(payload.get("think"), out)
    out["stream"] = stream
    if stream:
        out["stream_options"] = {"include_usage": True}  # the counts for the final "done" line
    return out


# --------------------------------------------------------------------------- responses


def _stamp(created: Any, now: float | None = None) -> str:
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


def ollama_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls (whole) -> Ollama's."""
    out = []
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            arguments = ollama_arguments(function.get("arguments"))
            out.append({"function": {"name": function["name"], "arguments": arguments}})
    return out


def _reasoning(doc: Mapping[str, Any]) -> str:
    value = doc.get("reasoning_content") or doc.get("reasoning")
    return value if isinstance(value, str) else ""


class _Timing:
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
        self._timing = _Timing(clock, start)
        self._created: Any = None
        self._stamp = _stamp(None, now)  # until the backend's "created" says otherwise
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
            self._stamp = _stamp(created)
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
        if self._key == "message":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            doc["message"] = message
        else:
            doc["response"] = text
            if thinking:
                doc["thinking"] = thinking
        doc["done"] = False
        return dumps(doc) + b"\n"

    def _done(self) -> bytes:
        self._ended = True
        out = self._tool_line()
        doc: dict[str, Any] = {"model": self._model, "created_at": self._stamp}
        if self._key == "message":
            doc["message"] = {"role": "assistant", "content": ""}
        else:
            doc["response"] = ""
        doc["done"] = True
        doc["done_reason"] = self._reason or "stop"
        return out + dumps(self._timing.fields(doc)) + b"\n"


class OllamaTranslation(Translation):
    """One Ollama request for an OpenAI backend; ``kind`` is the Ollama endpoint's last part."""

    def __init__(
        self, kind: str, payload: Mapping[str, Any], clock: Clock = time.monotonic_ns, now: float | None = None
    ) -> None:
        self.kind = kind
        self.clock = clock  # durations
        self.now = now  # wall-clock time for created_at when the backend gives none (None: the real time)
        self.start = clock()
        model = payload.get("model") or payload.get("name")
        self.model = model if isinstance(model, str) else ""
        self.stream_content_type = NDJSON
        # Ollama loads (or with keep_alive 0 unloads) the model for an empty prompt: no backend call.
        self.load_only = (kind == "chat" and not payload.get("messages")) or (
            kind == "generate" and not payload.get("prompt") and not payload.get("images")
        )
        self.unload = payload.get("keep_alive") in (0, "0", "0s")
        if kind == "generate":
            raw = payload.get("raw") is True or bool(payload.get("suffix"))
            self.upstream_path = COMPLETIONS if raw else CHAT
        elif kind in ("embed", "embeddings"):
            self.upstream_path = EMBEDDINGS
        elif kind == "show":
            self.upstream_path = ""
        else:
            self.upstream_path = CHAT

    # ----------------------------------------------------------------- request

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        kind = self.kind
        out: dict[str, Any] = {"model": self.model}
        if kind == "chat":
            out["messages"] = openai_messages(payload.get("messages") or [])
            tools = payload.get("tools")
            if tools:
                if not isinstance(tools, list):
                    raise BadRequest("'tools' must be a list", param="tools")
                out["tools"] = tools  # Ollama's tool definitions are OpenAI's
            return _generation(payload, out)
        if kind == "generate":
            prompt = _text(payload.get("prompt"), "prompt")
            if self.upstream_path == COMPLETIONS:
                out["prompt"] = prompt
                suffix = payload.get("suffix")
                if suffix:
                    out["suffix"] = _text(suffix, "suffix")
            else:
                system = _text(payload.get("system"), "system")
                messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
                messages.append({"role": "user", "content": _content(prompt, payload.get("images"), "images")})
                out["messages"] = messages
            return _generation(payload, out)
        if kind == "embed":
            given = payload.get("input")
            if not isinstance(given, str) and not (
                isinstance(given, list) and given and all(isinstance(x, str) for x in given)
            ):
                raise BadRequest("'input' must be a string or a non-empty list of strings", param="input")
            out["input"] = given
            if isinstance(payload.get("dimensions"), int):
                out["dimensions"] = payload["dimensions"]
        else:  # embeddings (legacy): one prompt, one vector
            out["input"] = _text(payload.get("prompt"), "prompt")
        out["encoding_format"] = "float"
        return out

    def local(self, entry: Mapping[str, Any] | None) -> bytes | None:
        if self.kind == "show":
            return dumps(show_document(self.model, entry))
        if self.load_only:
            doc: dict[str, Any] = {"model": self.model, "created_at": _stamp(None, self.now)}
            if self.kind == "chat":
                doc["message"] = {"role": "assistant", "content": ""}
            else:
                doc["response"] = ""
            doc.update(done=True, done_reason="unload" if self.unload else "load")
            return dumps(doc)
        return None

    # ----------------------------------------------------------------- answers

    def error(self, status: int, body: bytes) -> bytes:
        return dumps({"error": error_message(status, body)})

    def stream(self) -> OllamaStream:
        key = "message" if self.kind == "chat" else "response"
        return OllamaStream(self.model, key, self.clock, self.start, self.now)

    def response(self, body: bytes) -> bytes:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return dumps({"error": "the backend's answer is not a JSON object"})
        if self.kind in ("embed", "embeddings"):
            return self._embeddings(doc)
        choices = doc.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        timing = _Timing(self.clock, self.start)
        timing.absorb(doc)
        out: dict[str, Any] = {"model": self.model, "created_at": _stamp(doc.get("created"), self.now)}
        message = choice.get("message") if isinstance(choice.get("message"), dict) else None
        text = message.get("content") if message is not None else choice.get("text")
        text = text if isinstance(text, str) else ""
        thinking = _reasoning(message) if message is not None else ""
        if self.kind == "chat":
            reply: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                reply["thinking"] = thinking
            calls = ollama_tool_calls(message.get("tool_calls")) if message is not None else []
            if calls:
                reply["tool_calls"] = calls
            out["message"] = reply
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out["done"] = True
        reason = choice.get("finish_reason")
        out["done_reason"] = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
        return dumps(timing.fields(out))

    def _embeddings(self, doc: Mapping[str, Any]) -> bytes:
        data = doc.get("data")
        items = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
        items.sort(key=_index)
        vectors = [d.get("embedding") for d in items if isinstance(d.get("embedding"), list)]
        if self.kind == "embeddings":
            return dumps({"embedding": vectors[0] if vectors else []})
        out: dict[str, Any] = {"model": self.model, "embeddings": vectors}
        timing = _Timing(self.clock, self.start)
        timing.absorb(doc)
        out["total_duration"] = max(self.clock() - self.start, 0)
        out["load_duration"] = 0
        if timing.prompt is not None:
            out["prompt_eval_count"] = timing.prompt
        return dumps(out)


def _index(item: Mapping[str, Any]) -> int:
    index = item.get("index")
    return index if isinstance(index, int) else 0


def show_document(model: str, entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """``/api/show`` for a model an OpenAI backend lists: what its ``/v1/models`` entry tells."""
    entry = entry or {}
    info: dict[str, Any] = {"general.basename": model}
    context = entry.get("max_model_len") or entry.get("context_length") or entry.get("max_context_length")
    if isinstance(context, int):
        info["general.context_length"] = context
    owner = entry.get("owned_by")
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": {
            "parent_model": entry.get("root") if isinstance(entry.get("root"), str) else "",
            "format": "",
            "family": owner if isinstance(owner, str) else "",
            "families": [],
            "parameter_size": "",
            "quantization_level": "",
        },  # fmt: skip
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": _stamp(entry.get("created"), 0),
    }


def _factory(kind: str) -> Callable[[tuple[str, ...], dict[str, Any]], Translation | None]:
    def make(speaks: tuple[str, ...], payload: dict[str, Any]) -> Translation | None:
        return OllamaTranslation(kind, payload) if "openai" in speaks else None

    return make


ROUTES = {f"/api/{kind}": _factory(kind) for kind in ("chat", "generate", "embed", "embeddings", "show")}
