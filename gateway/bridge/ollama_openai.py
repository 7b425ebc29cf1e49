"""Ollama's native API (``/api/*``) for backends that speak only OpenAI's (``/v1/*``).

| Ollama                          | OpenAI                                                        |
| ------------------------------- | ------------------------------------------------------------- |
| ``/api/chat``                   | ``/v1/chat/completions``                                      |
| ``/api/generate``               | ``/v1/chat/completions`` (system + user message: the backend  |
|                                 | applies the model's chat template, as Ollama would);          |
|                                 | ``/v1/completions`` with ``raw: true`` or a ``suffix``        |
| ``/api/embed``, ``/api/embeddings`` | ``/v1/embeddings``                                        |
| ``/api/show``                   | answered by the gateway from the backend's listing entry      |

Streams (Ollama's default) become NDJSON lines as they arrive (``ollama_stream.py``). A backend's
error comes back as ``{"error": "..."}`` with the backend's status, an in-band SSE error as an
``{"error"}`` line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import BadRequest
from .base import Translation, dumps, error_message
from .ollama_stream import FINISH_REASONS, Clock, OllamaStream, Timing, ollama_arguments, put_answer, stamp

__all__ = ["ROUTES", "OllamaTranslation"]

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
IMAGE_SIGNATURES = (
    ("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"),
)  # fmt: skip
THINK_LEVELS = frozenset({"low", "medium", "high"})


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
            doc: dict[str, Any] = {"model": self.model, "created_at": stamp(None, self.now)}
            put_answer(doc, self._key(), "")
            doc.update(done=True, done_reason="unload" if self.unload else "load")
            return dumps(doc)
        return None

    # ----------------------------------------------------------------- answers

    def error(self, status: int, body: bytes) -> bytes:
        return dumps({"error": error_message(status, body)})

    def _key(self) -> str:
        """Where an answer's text goes: ``"message"`` (``/api/chat``) or ``"response"`` (``/api/generate``)."""
        return "message" if self.kind == "chat" else "response"

    def stream(self) -> OllamaStream:
        return OllamaStream(self.model, self._key(), self.clock, self.start, self.now)

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
        timing = Timing(self.clock, self.start)
        timing.absorb(doc)
        out: dict[str, Any] = {"model": self.model, "created_at": stamp(doc.get("created"), self.now)}
        message = choice.get("message") if isinstance(choice.get("message"), dict) else None
        text = message.get("content") if message is not None else choice.get("text")
        text = text if isinstance(text, str) else ""
        thinking = _reasoning(message) if message is not None else ""
        holder = put_answer(out, self._key(), text, thinking)
        if self.kind == "chat":
            calls = ollama_tool_calls(message.get("tool_calls")) if message is not None else []
            if calls:
                holder["tool_calls"] = calls
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
        timing = Timing(self.clock, self.start)
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
        "modified_at": stamp(entry.get("created"), 0),
    }


def _factory(kind: str) -> Callable[[tuple[str, ...], dict[str, Any]], Translation | None]:
    def make(speaks: tuple[str, ...], payload: dict[str, Any]) -> Translation | None:
        return OllamaTranslation(kind, payload) if "openai" in speaks else None

    return make


ROUTES = {f"/api/{kind}": _factory(kind) for kind in ("chat", "generate", "embed", "embeddings", "show")}
