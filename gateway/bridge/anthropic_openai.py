"""Anthropic Messages (``/v1/messages``) to OpenAI Chat Completions, for backends that lack it.

The request becomes a ``/v1/chat/completions`` body; the answer a Messages object; a backend error
Anthropic's error shape; a stream Messages events (``anthropic_stream.py``). Pure functions over
parsed JSON: no I/O. Client input that cannot be translated raises ``BadRequest`` naming the field
(rendered in Anthropic's shape on ``/v1/messages``). A backend answer that cannot be read raises
``BadGateway`` in ``translate_response``; ``AnthropicToOpenAI.response`` turns it into an error
body, since the backend's 200 head has already gone out by then.

Not translated (refused with a 400 when present, never silently dropped): server tools (web search,
code execution, ...), ``mcp_servers``, document/search-result/container blocks. Dropped because
they have no OpenAI meaning: ``cache_control`` (prompt caching), ``citations``, ``metadata``
(Anthropic's abuse tracking id), ``service_tier``, ``speed``, ``inference_geo``, ``container``,
``thinking`` (its effect is on the answer: see ``wants_thinking``), ``output_config.effort``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from ..errors import (
    BadGateway,
    BadRequest,
    Dialect,
    Forbidden,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    error_body,
)
from .anthropic_stream import AnthropicStream, Outcome, anthropic_usage
from .base import Translation, dumps, error_message

__all__ = [
    "ROUTES",
    "AnthropicToOpenAI",
    "new_message_id",
    "translate_error",
    "translate_request",
    "translate_response",
]

UPSTREAM_PATH = "/v1/chat/completions"
IGNORED_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # earlier turns' reasoning: not resent
ERROR_CLASSES: dict[int, type[GatewayError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    413: PayloadTooLarge,
    422: BadRequest,
    429: TooManyRequests,
    503: ServiceUnavailable,
    529: ServiceUnavailable,
}


def new_message_id() -> str:
    return f"msg_{random.getrandbits(96):024x}"  # no syscall (uuid4 reads os.urandom)


# --------------------------------------------------------------------------- request


def _unsupported(where: str, what: str) -> BadRequest:
    return BadRequest(f"{where}: {what} cannot be translated for this backend (it does not speak /v1/messages)")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string, got {type(value).__name__}", param=where)
    return value


def _block_type(block: Any, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise BadRequest(f"{where}: expected a content block (an object with a 'type')", param=where)
    kind: str = block["type"]
    return kind


def _text_of(blocks: Any, where: str) -> str:
    """A string, or the text of a list of text blocks (``system``, ``tool_result.content``)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise BadRequest(f"{where}: expected a string or a list of text blocks", param=where)
    texts = []
    for i, block in enumerate(blocks):
        if _block_type(block, f"{where}[{i}]") != "text":
            raise _unsupported(f"{where}[{i}]", f"a '{block['type']}' block")
        texts.append(_str(block.get("text"), f"{where}[{i}].text"))
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        assert isinstance(source, dict)
        media = _str(source.get("media_type"), f"{where}.source.media_type")
        url = f"data:{media};base64,{_str(source.get('data'), f'{where}.source.data')}"
    elif kind == "url":
        assert isinstance(source, dict)
        url = _str(source.get("url"), f"{where}.source.url")
    else:
        raise _unsupported(f"{where}.source", f"an image source of type {kind!r}")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``tool`` message, and the images it returned (OpenAI tool messages hold text only)."""
    call_id = _str(block.get("tool_use_id"), f"{where}.tool_use_id")
    content = block.get("content", "")
    images: list[dict[str, Any]] = []
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            at = f"{where}.content[{i}]"
            kind = _block_type(part, at)
            if kind == "text":
                texts.append(_str(part.get("text"), f"{at}.text"))
            elif kind == "image":
                images.append(_image(part, at))
            else:
                raise _unsupported(at, f"a '{kind}' block")
        text = "\n".join(texts)
    else:
        text = _text_of(content, f"{where}.content")
    if block.get("is_error") is True:
        text = f"Error: {text}"  # OpenAI has no error flag on a tool result; the model still learns it
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)  # a string: every chat template takes one
    return parts


def _user(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """Tool results first (OpenAI needs them right after the assistant's calls), in order, then
    the turn's text and images as one user message."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        at = f"{where}.content[{i}]"
        kind = _block_type(block, at)
        if kind == "text":
            parts.append({"type": "text", "text": _str(block.get("text"), f"{at}.text")})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            message, images = _tool_result(block, at)
            tools.append(message)
            parts.extend(images)
        elif kind not in IGNORED_BLOCKS:
            raise _unsupported(at, f"a '{kind}' block")
    if parts or not tools:
        tools.append({"role": "user", "content": _user_content(parts)})
    return tools


def _assistant(blocks: list[Any], where: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        at = f"{where}.content[{i}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_str(block.get("text"), f"{at}.text"))
        elif kind == "tool_use":
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise BadRequest(f"{at}.input: expected an object", param=f"{at}.input")
            calls.append(
                {
                    "id": _str(block.get("id"), f"{at}.id"),
                    "type": "function",
                    "function": {
                        "name": _str(block.get("name"), f"{at}.name"),
                        "arguments": json.dumps(arguments, ensure_ascii=False),
                    },
                }
            )
        elif kind not in IGNORED_BLOCKS:
            raise _unsupported(at, f"a '{kind}' block")
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages: expected a non-empty list of messages", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where}: expected an object with 'role' and 'content'", param=where)
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise BadRequest(f"{where}.role: expected 'user' or 'assistant', got {role!r}", param=f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif isinstance(content, list):
            if role == "user":
                out.extend(_user(content, where))
            else:
                out.append(_assistant(content, where))
        else:
            raise BadRequest(f"{where}.content: expected a string or a list of content blocks", param=where)
    return out


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise BadRequest("tools: expected a list", param="tools")
    out = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where}: expected an object", param=where)
        if tool.get("type") not in (None, "custom"):
            raise _unsupported(where, f"the server tool '{tool.get('type')}'")
        schema = tool.get("input_schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise BadRequest(f"{where}.input_schema: expected a JSON schema object", param=f"{where}.input_schema")
        function: dict[str, Any] = {"name": _str(tool.get("name"), f"{where}.name"), "parameters": schema}
        if tool.get("description") is not None:
            function["description"] = _str(tool["description"], f"{where}.description")
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(raw: Any, body: dict[str, Any]) -> None:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "tool":
        name = _str(raw.get("name"), "tool_choice.name")
        body["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif kind == "none":
        body["tool_choice"] = "none"
    else:
        raise BadRequest("tool_choice: expected {'type': 'auto' | 'any' | 'tool' | 'none'}", param="tool_choice")
    if raw.get("disable_parallel_tool_use") is True and kind != "none":
        body["parallel_tool_calls"] = False


def _output_format(config: Any, body: dict[str, Any]) -> None:
    """``output_config.format`` (structured output) -> ``response_format``; ``effort`` is dropped
    (OpenAI's ``reasoning_effort`` makes Ollama refuse models that do not think)."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise BadRequest("output_config: expected an object", param="output_config")
    fmt = config.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise BadRequest(
            "output_config.format: expected {'type': 'json_schema', 'schema': {...}}", param="output_config.format"
        )
    body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def _number(payload: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = "an integer" if kind is int else "a number"
        raise BadRequest(f"{key}: expected {names}, got {value!r}", param=key)
    return value


def translate_request(payload: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions body for a Messages request.

    ``top_k`` is sent as is: vLLM, llama.cpp and LM Studio take it, Ollama's ``/v1`` ignores it."""
    messages = _messages(payload.get("messages"))
    system = payload.get("system")
    if system is not None:
        text = _text_of(system, "system")
        if text:
            messages.insert(0, {"role": "system", "content": text})
    body: dict[str, Any] = {"model": payload.get("model"), "messages": messages}
    if payload.get("max_tokens") is not None:
        body["max_tokens"] = _number(payload, "max_tokens", int)
    for key in ("temperature", "top_p"):
        if payload.get(key) is not None:
            body[key] = _number(payload, key, (int, float))
    if payload.get("top_k") is not None:
        body["top_k"] = _number(payload, "top_k", int)
    stops = payload.get("stop_sequences")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("stop_sequences: expected a list of strings", param="stop_sequences")
        body["stop"] = stops
    tools = payload.get("tools")
    if tools:
        body["tools"] = _tools(tools)
        if payload.get("tool_choice") is not None:
            _tool_choice(payload["tool_choice"], body)
    _output_format(payload.get("output_config"), body)
    if payload.get("mcp_servers"):
        raise _unsupported("mcp_servers", "MCP connectors")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest(f"stream: expected a boolean, got {stream!r}", param="stream")
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # for message_delta's usage; never shown as is
    return body


def wants_thinking(payload: Mapping[str, Any]) -> bool:
    """``thinking`` on (enabled, adaptive, between_tools): the backend's reasoning text is returned
    as ``thinking`` blocks. Otherwise it is dropped, as Anthropic's API returns none. Nothing is
    sent upstream: a local reasoning model thinks by its own chat template."""
    thinking = payload.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive", "between_tools")


# --------------------------------------------------------------------------- answer


def tool_input(arguments: Any) -> dict[str, Any]:
    """OpenAI's arguments (a JSON string) as Anthropic's ``input`` (an object)."""
    if isinstance(arguments, dict):  # some servers (Ollama) send an object already
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BadGateway(f"the backend returned tool arguments that are not a JSON object: {str(arguments)[:200]}")
    return value


def translate_response(
    doc: Any,
    *,
    model: str,
    message_id: str,
    thinking: bool = False,
    stop_sequences: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The Messages object for a Chat Completions answer."""
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadGateway("the backend's answer is not a chat completion (no choices)")
    assert isinstance(doc, dict)
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if thinking and isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):  # content parts, as a few servers answer
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for n, call in enumerate(calls if isinstance(calls, list) else ()):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id")
        content.append(
            {
                "type": "tool_use",
                "id": call_id if isinstance(call_id, str) and call_id else f"toolu_{message_id[4:]}_{n}",
                "name": function.get("name") if isinstance(function.get("name"), str) else "",
                "input": tool_input(function.get("arguments")),
            }
        )
    outcome = Outcome(stop_sequences)
    outcome.finish(choice)
    outcome.tools_called = any(block["type"] == "tool_use" for block in content)
    stop_reason, stop_sequence = outcome.stop()
    usage = doc.get("usage")
    if isinstance(usage, dict):
        outcome.usage(usage)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(outcome),
    }


# --------------------------------------------------------------------------- errors


def translate_error(status: int, body: bytes) -> bytes:
    """An error answer from the backend, in Anthropic's shape (the status is kept)."""
    cls = ERROR_CLASSES.get(status) or (BadRequest if 400 <= status < 500 else GatewayError)
    return error_body(Dialect.ANTHROPIC, cls(error_message(status, body)))


# --------------------------------------------------------------------------- the translation


class AnthropicToOpenAI(Translation):
    """One ``/v1/messages`` request's translation, holding what the answer needs from the request."""

    upstream_path = UPSTREAM_PATH
    stream_content_type = "text/event-stream"

    def __init__(self, payload: Mapping[str, Any], *, message_id: str | None = None) -> None:
        model = payload.get("model")
        self.model = model if isinstance(model, str) else ""
        self.message_id = message_id or new_message_id()
        self.thinking = wants_thinking(payload)
        stops = payload.get("stop_sequences")
        self.stop_sequences = tuple(s for s in stops if isinstance(s, str)) if isinstance(stops, list) else ()

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        return translate_request(payload)

    def response(self, body: bytes) -> bytes:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        try:
            message = translate_response(
                doc,
                model=self.model,
                message_id=self.message_id,
                thinking=self.thinking,
                stop_sequences=self.stop_sequences,
            )
        except BadGateway as exc:  # the head is the backend's 200: say what broke in the client's shape
            return error_body(Dialect.ANTHROPIC, exc)
        return dumps(message)

    def error(self, status: int, body: bytes) -> bytes:
        return translate_error(status, body)

    def stream(self) -> AnthropicStream:
        return AnthropicStream(
            model=self.model,
            message_id=self.message_id,
            thinking=self.thinking,
            stop_sequences=self.stop_sequences,
        )


def _translation(speaks: tuple[str, ...], payload: dict[str, Any]) -> Translation | None:
    return AnthropicToOpenAI(payload) if "openai" in speaks else None


ROUTES = {"/v1/messages": _translation}
