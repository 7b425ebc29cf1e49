"""The dialect bridge's small core: what a translation is, and the pieces every pair of dialects shares.

A request in a dialect its backend does not speak (``backends[].speaks``) is translated by a
``Translation``: the client's JSON becomes the backend's JSON for ``upstream_path``, and the
backend's answer comes back in the client's dialect. The answer side is one of three byte
transforms plugged into the relay (``streaming.relay``'s ``transform``), chosen by
``adapt_response`` from the backend's status and content type: ``stream()`` for an event stream
(whole client events out as soon as whole backend events are in, never more held back than one
unfinished event), ``WholeBody(response)`` for a complete answer and ``WholeBody(error)`` for an
error. ``SSEEvents`` splits a backend's event stream cut at any byte.

Nothing here does I/O or logs; translations never raise on what a backend sends (malformed input
becomes an error in the client's dialect), only ``request`` raises ``BadRequest`` on a client body
that cannot be translated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

__all__ = [
    "JSON",
    "MAX_EVENT",
    "SSEEvents",
    "StreamTranslator",
    "Translation",
    "WholeBody",
    "adapt_response",
    "dumps",
    "error_message",
    "parse_json",
]

JSON = "application/json"
MAX_EVENT = 16 * 1024 * 1024  # an SSE event longer than this is dropped whole (no backend sends one)
# The C scanner under json.loads, without its wrappers (an attribute typeshed does not declare).
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class StreamTranslator(Protocol):
    """A relay transform: backend bytes cut anywhere in, whole client events out (maybe ``b""``)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def flush(self) -> bytes:
        """After a clean upstream end: the closing events (not called when the backend failed)."""
        ...


class Translation:
    """One request's translation from the client's dialect to the backend's (subclass per pair).

    Built per request by a ``translation_for`` factory from the client's payload, so the
    attributes may depend on it (``/api/generate`` with ``raw`` goes to ``/v1/completions``).
    """

    upstream_path: str = ""  # e.g. "/v1/chat/completions"
    stream_content_type: str = "text/event-stream"  # what the client gets for a translated stream

    def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The backend's JSON for the client's ``payload`` (not modified); BadRequest if impossible."""
        raise NotImplementedError

    def local(self, entry: Mapping[str, Any] | None) -> bytes | None:
        """A complete JSON answer the gateway gives itself without a backend call, or None.

        ``entry`` is the backend's own listing entry for the model (discovery), if it has one.
        """
        return None

    def response(self, body: bytes) -> bytes:
        """A complete (non-streamed) backend answer -> the client's body."""
        raise NotImplementedError

    def error(self, status: int, body: bytes) -> bytes:
        """A backend error answer (status >= 400) -> the client's error body."""
        raise NotImplementedError

    def stream(self) -> StreamTranslator:
        """A fresh translator for a streamed backend answer."""
        raise NotImplementedError


class WholeBody:
    """A relay transform that holds a complete answer and converts it when the backend is done."""

    __slots__ = ("_buf", "_convert")

    def __init__(self, convert: Callable[[bytes], bytes]) -> None:
        self._buf = bytearray()
        self._convert = convert

    def feed(self, chunk: bytes) -> bytes:
        self._buf += chunk
        return b""

    def flush(self) -> bytes:
        body = bytes(self._buf)
        self._buf.clear()
        return self._convert(body)


def adapt_response(translation: Translation, status: int, content_type: str) -> tuple[StreamTranslator, str]:
    """The relay transform and the client's Content-Type for a backend answer of this head."""
    if status >= 400:
        return WholeBody(lambda body: translation.error(status, body)), JSON
    if content_type.startswith("text/event-stream"):
        return translation.stream(), translation.stream_content_type
    return WholeBody(translation.response), JSON


def parse_json(data: bytes) -> Any:
    """The JSON value in ``data``, or None when it is not valid JSON (one per event: kept cheap).

    The common case (UTF-8, no surrounding whitespace) goes straight to the C scanner, which is
    about twice as fast as ``json.loads`` on a small event; anything else takes ``json.loads``.
    """
    try:
        text = data.decode()
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (UnicodeDecodeError, StopIteration, ValueError):
        pass
    try:
        return json.loads(data)
    except ValueError:
        return None


def dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON, as the gateway writes it everywhere."""
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate (a backend's escaped "\ud800"): keep it escaped
        return json.dumps(doc, separators=(",", ":")).encode()


def error_message(status: int, body: bytes) -> str:
    """The human message in a backend's error body, whatever its shape (OpenAI, FastAPI, text)."""
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = None
    for candidate in (doc,) if not isinstance(doc, dict) else (doc.get("error"), doc.get("detail"), doc.get("message")):
        if isinstance(candidate, dict):
            candidate = candidate.get("message") or candidate.get("msg")
        if isinstance(candidate, list) and candidate:  # FastAPI validation errors: [{"loc", "msg"}]
            first = candidate[0]
            candidate = first.get("msg") if isinstance(first, dict) else first
        if isinstance(candidate, str) and candidate:
            return candidate
    text = body.decode("utf-8", "replace").strip()[:1000]
    return text or f"the backend answered HTTP {status}"


class SSEEvents:
    """Splits a Server-Sent Events byte stream, cut at any byte, into complete events.

    ``feed`` returns the ``(event name, data)`` of every event completed by the chunk, in order
    (``data`` is the event's ``data:`` lines joined by ``\\n``; events without data are skipped).
    Lines may end in ``\\n``, ``\\r\\n`` or ``\\r``, a ``\\r\\n`` split between chunks included.
    """

    __slots__ = ("_buf", "_cr", "_skipping")

    def __init__(self) -> None:
        self._buf = bytearray()  # the unfinished event
        self._cr = False  # the previous chunk ended in "\r": a "\n" starting this one belongs to it
        self._skipping = False  # inside an event longer than MAX_EVENT: drop up to its end

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if 13 in chunk:  # an int: a plain memchr
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        if buf:
            start = len(buf) - 1  # "\n\n" may straddle the held tail and the chunk
            buf += chunk
            end = buf.rfind(b"\n\n", start)
            if end < 0:
                return self._hold()
            data = bytes(buf[:end])
            del buf[: end + 2]
        else:
            end = chunk.rfind(b"\n\n")
            if end < 0:
                buf += chunk
                return self._hold()
            data = chunk[:end]
            if end + 2 < len(chunk):
                buf += chunk[end + 2 :]
        if self._skipping:  # the first event completed here is the end of the oversized one
            cut = data.find(b"\n\n")
            self._skipping = False
            if cut < 0:
                self._check_size()
                return []
            data = data[cut + 2 :]
        out = []
        for event in data.split(b"\n\n"):
            if event[:5] == b"data:" and 10 not in event:  # the common case, inline: one data line
                out.append(("message", event[6:] if event[5:6] == b" " else event[5:]))
            elif (parsed := parse_event(event)) is not None:
                out.append(parsed)
        self._check_size()
        return out

    def _hold(self) -> list[tuple[str, bytes]]:
        self._check_size()
        return []

    def _check_size(self) -> None:
        if len(self._buf) > MAX_EVENT:
            self._buf.clear()
            self._skipping = True


def parse_event(event: bytes) -> tuple[str, bytes] | None:
    """(event name, data) of one event's lines (ended by ``\\n``), or None when it has no data."""
    if event.startswith(b"data:") and event.find(b"\n") < 0:  # the common case: one data line
        data = event[5:]
        return "message", data[1:] if data[:1] == b" " else data
    name = "message"
    lines = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value[:1] == b" " else value)
        elif line.startswith(b"event:"):
            value = line[6:]
            name = (value[1:] if value[:1] == b" " else value).decode("utf-8", "replace")
    if not lines:
        return None
    return name, b"\n".join(lines)
