"""Token accounting from the response bytes the proxy relays, without buffering or delaying them.

A ``Scanner`` is fed a *copy* of every relayed chunk, in order, and extracts the backend's own token
counts into a ``RequestRecord`` when the request is over:

* Ollama NDJSON (``/api/chat``, ``/api/generate``): the final object's ``prompt_eval_count``,
  ``eval_count`` and ``eval_duration`` (nanoseconds).
* SSE: a chunk whose ``usage`` is an object (Chat/Completions ``prompt_tokens``/``completion_tokens``),
  the ``response`` of ``response.completed``/``.incomplete``/``.failed`` (Responses ``input_tokens``/
  ``output_tokens``), Anthropic ``message_start`` ``message.usage`` and the last ``message_delta``
  ``usage``.
* A non-streamed JSON body of any of those shapes, or Ollama's counts (``/api/embed`` has only
  ``prompt_eval_count``).

It is cheap by construction: per chunk it keeps only the unfinished tail (after the last newline for
NDJSON, after the last blank line for SSE) and runs one or two C-level byte searches for a marker
(``eval_count"``; ``"usage"`` not followed by ``null``). Only a line or event holding a marker is
decoded as JSON, which is a handful per request. A line, event or body longer than ``MAX_FRAME`` is
never held whole: its first and last ``EDGE`` bytes are kept and searched for the fields by key. A
field that never arrived stays ``None`` ("unknown"), never 0.

``inject_usage`` and ``UsageStripper`` implement ``metrics.inject_usage``: ask an OpenAI-style stream
for its usage chunk, then hide that one chunk from a client that did not ask for it, forwarding every
other event byte for byte as soon as it is complete.

Nothing here does I/O, logs, or raises on malformed input.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.record import RequestRecord

__all__ = [
    "EDGE",
    "INJECTABLE_ENDPOINTS",
    "MAX_FRAME",
    "USAGE_ENDPOINTS",
    "Scanner",
    "UsageStripper",
    "count_whole_body",
    "inject_usage",
    "make_scanner",
]

MAX_FRAME = 1024 * 1024  # a line, event or body up to this size is decoded whole when it holds a marker
EDGE = 64 * 1024  # of a longer one only the first and last EDGE bytes are kept (usage sits at an end)

# Endpoints whose responses carry token counts. Anything else (model lists, /api/show, /api/pull) gets
# no scanner: nothing to find, and no reason to hold a copy of its body.
USAGE_ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/api/chat",
        "/api/generate",
        "/api/embed",
    }
)
# Where ``stream_options.include_usage`` exists (OpenAI Chat/Completions semantics).
INJECTABLE_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions"})

_USAGE = b'"usage"'
_EVAL = b'eval_count"'  # matches "prompt_eval_count" and "eval_count", which only final objects carry
_RESPONSE_DONE = frozenset({"response.completed", "response.incomplete", "response.failed"})
_KEY_INT = re.compile(rb"\s*:\s*(\d{1,18})(?=[^\d])")  # a number cut off by the end of the data is not one
_KEY_OBJECT = re.compile(rb"\s*:\s*\{")
_DECODER = json.JSONDecoder()
# Two line terminators in a row end an SSE event; "\r\n" is one terminator, not two.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)


# --------------------------------------------------------------------------- extraction


def _count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _has_usage(data: bytes | bytearray, end: int) -> bool:
    """True when ``data[:end]`` has a ``"usage"`` key whose value is not ``null``."""
    find = data.find
    i = find(_USAGE, 0, end)
    while i >= 0:
        i += 7
        if data[i : i + 16].lstrip(b" \t\r\n:")[:4] != b"null":
            return True
        i = find(_USAGE, i, end)
    return False


def _has_any(data: bytes | bytearray, end: int) -> bool:
    return data.find(_EVAL, 0, end) >= 0 or _has_usage(data, end)


class _Usage:
    """Token counts seen so far; a later report replaces an earlier one (they are cumulative)."""

    __slots__ = ("prompt", "completion", "eval_count", "eval_duration")

    def __init__(self) -> None:
        self.prompt: int | None = None
        self.completion: int | None = None
        self.eval_count: int | None = None
        self.eval_duration: int | None = None

    def absorb(self, obj: object) -> None:
        """Take the counts from one decoded object of any supported shape."""
        if not isinstance(obj, dict):
            return
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage(usage)
        kind = obj.get("type")
        if kind is not None:
            inner = None
            if kind in _RESPONSE_DONE:
                inner = obj.get("response")
            elif kind == "message_start":
                inner = obj.get("message")
            if isinstance(inner, dict) and isinstance(inner.get("usage"), dict):
                self.usage(inner["usage"])
        if "eval_count" in obj or "prompt_eval_count" in obj:
            self.ollama(obj.get("prompt_eval_count"), obj.get("eval_count"), obj.get("eval_duration"))

    def usage(self, usage: dict[str, Any]) -> None:
        prompt = _count(usage.get("prompt_tokens"))
        if prompt is None:
            prompt = _count(usage.get("input_tokens"))
            if prompt is not None:
                # Anthropic counts cache reads/writes apart from input_tokens (OpenAI and the
                # Responses API include cached tokens in their totals); add them so "prompt" means
                # the same everywhere.
                for key in ("cache_creation_input_tokens", "cache_read_input_tokens"):
                    prompt += _count(usage.get(key)) or 0
        completion = _count(usage.get("completion_tokens"))
        if completion is None:
            completion = _count(usage.get("output_tokens"))
        if prompt is not None:
            self.prompt = prompt
        if completion is not None:
            self.completion = completion

    def ollama(self, prompt_eval: object, eval_count: object, eval_duration: object) -> None:
        prompt, count, duration = _count(prompt_eval), _count(eval_count), _count(eval_duration)
        if prompt is not None:
            self.prompt = prompt
        if count is not None:
            self.completion = self.eval_count = count
        if duration is not None:
            self.eval_duration = duration

    def absorb_json(self, data: bytes | bytearray) -> None:
        if len(data) > MAX_FRAME:
            self.absorb_partial(data[:EDGE])
            self.absorb_partial(data[-EDGE:])
            return
        try:
            obj = json.loads(data)
        except ValueError:  # includes UnicodeDecodeError
            return
        self.absorb(obj)

    def absorb_partial(self, data: bytes | bytearray) -> None:
        """Find the fields by key in a fragment of JSON too long to decode whole.

        Inside a JSON string a quote is escaped, so ``"usage"`` followed by ``:`` can only be a key.
        The last occurrence wins: usage and Ollama's counts follow the (long) content they describe.
        """
        data = bytes(data)
        if data.find(_USAGE) >= 0:
            self._usage_by_key(data)
        if data.find(_EVAL) >= 0:
            self._ollama_by_key(data)

    def _usage_by_key(self, data: bytes) -> None:
        end = len(data)
        while (i := data.rfind(_USAGE, 0, end)) >= 0:
            end = i
            m = _KEY_OBJECT.match(data, i + len(_USAGE))
            if m is None:
                continue
            start = m.end() - 1
            try:
                obj, _ = _DECODER.raw_decode(data[start : start + 4096].decode("utf-8", "replace"))
            except ValueError:
                continue
            if isinstance(obj, dict):
                self.usage(obj)
                return

    def _ollama_by_key(self, data: bytes) -> None:
        found: list[int | None] = []
        for key in (b'"prompt_eval_count"', b'"eval_count"', b'"eval_duration"'):
            i = data.rfind(key)
            m = _KEY_INT.match(data, i + len(key)) if i >= 0 else None
            found.append(int(m.group(1)) if m else None)
        if any(v is not None for v in found):
            self.ollama(*found)

    def write(self, rec: RequestRecord) -> None:
        if self.prompt is not None:
            rec.prompt_tokens = self.prompt
        if self.completion is not None:
            rec.completion_tokens = self.completion
        if self.eval_count is not None:
            rec.eval_count = self.eval_count
        if self.eval_duration is not None:
            rec.eval_duration_ns = self.eval_duration


# --------------------------------------------------------------------------- scanners


class Scanner:
    """Fed every relayed chunk in order; ``finish`` writes what it found into the record."""

    __slots__ = ("_usage",)

    def __init__(self) -> None:
        self._usage = _Usage()

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError

    def finish(self, rec: RequestRecord) -> None:
        raise NotImplementedError


class _FramedScanner(Scanner):
    """A stream of frames ended by ``SEP``: NDJSON lines (``\\n``) or SSE events (``\\n\\n``).

    Line endings are normalised to ``\\n`` on the scanner's own copy (``\\r\\n`` and ``\\r`` are legal
    in SSE), a ``\\r\\n`` split between two chunks included.
    """

    __slots__ = ("_buf", "_cr", "_over", "_head")
    SEP = b"\n"
    MARKER = b""  # a frame without this bytes cannot hold usage; ``_marker`` then looks closer

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()  # the unfinished frame (or, when _over, the last bytes of a long one)
        self._cr = False  # the previous chunk ended in "\r"
        self._over = False  # inside a frame longer than MAX_FRAME
        self._head = b""  # the first EDGE bytes of that frame

    def feed(self, chunk: bytes) -> None:
        # Hot path: a few C-level searches per chunk. ``13 in chunk`` (an int) is a plain memchr,
        # several times cheaper than ``b"\r" in chunk``.
        if not chunk:
            return
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if 13 in chunk:
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._over:
            chunk = self._long_frame(chunk)
            if self._over:
                return
        sep = self.SEP
        buf = self._buf
        if not buf:
            end = chunk.rfind(sep)
            if end >= 0:
                if chunk.find(self.MARKER, 0, end) >= 0 and self._marker(chunk, end):
                    self._frames(chunk[:end])
                end += len(sep)
                if end == len(chunk):
                    return  # the common case: the chunk ended on a frame boundary
                chunk = chunk[end:]
            buf += chunk
        else:
            start = len(buf) - len(sep) + 1  # a separator may straddle the old tail and the chunk
            buf += chunk
            end = buf.rfind(sep, start if start > 0 else 0)
            if end >= 0:
                if buf.find(self.MARKER, 0, end) >= 0 and self._marker(buf, end):
                    self._frames(bytes(buf[:end]))
                del buf[: end + len(sep)]
        if len(buf) > MAX_FRAME:
            self._head = bytes(buf[:EDGE])
            del buf[:-EDGE]
            self._over = True

    def _long_frame(self, chunk: bytes) -> bytes:
        """Skip through a frame too long to keep; return what follows its end (b"" if not yet)."""
        buf = self._buf
        sep = self.SEP
        start = max(len(buf) - len(sep) + 1, 0)
        buf += chunk
        i = buf.find(sep, start)
        if i < 0:
            if len(buf) > 2 * EDGE:
                del buf[:-EDGE]
            return b""
        self._usage.absorb_partial(self._head)
        self._usage.absorb_partial(buf[max(i - EDGE, 0) : i])
        rest = bytes(buf[i + len(sep) :])
        buf.clear()
        self._head = b""
        self._over = False
        return rest

    def _marker(self, data: bytes | bytearray, end: int) -> bool:
        raise NotImplementedError

    def _frames(self, region: bytes) -> None:
        for frame in region.split(self.SEP):
            if frame.find(self.MARKER) >= 0 and self._marker(frame, len(frame)):
                self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        raise NotImplementedError

    def finish(self, rec: RequestRecord) -> None:
        # A last frame without its terminator (stream cut, or a lenient server) is still read: if it
        # is truncated, decoding fails and nothing is taken from it.
        if self._over:
            self._usage.absorb_partial(self._head)
            self._usage.absorb_partial(self._buf)
        elif self._buf.find(self.MARKER) >= 0 and self._marker(self._buf, len(self._buf)):
            self._frames(bytes(self._buf))
        self._buf.clear()
        self._head = b""
        self._over = False
        self._usage.write(rec)


class _NDJSONScanner(_FramedScanner):
    """Ollama's native stream: counts are only in the final ``"done": true`` object."""

    __slots__ = ()
    SEP = b"\n"
    MARKER = _EVAL

    def _marker(self, data: bytes | bytearray, end: int) -> bool:
        return data.find(_EVAL, 0, end) >= 0

    def _frame(self, frame: bytes) -> None:
        self._usage.absorb_json(frame)


class _SSEScanner(_FramedScanner):
    """OpenAI, Responses and Anthropic event streams: every usage report has a ``"usage": {`` in it."""

    __slots__ = ()
    SEP = b"\n\n"
    MARKER = _USAGE

    def _marker(self, data: bytes | bytearray, end: int) -> bool:
        return _has_usage(data, end)

    def _frame(self, frame: bytes) -> None:
        payload = _event_data(frame)
        if payload is not None:
            self._usage.absorb_json(payload)


def _event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event (lines ended by ``\\n``), or None."""
    if event.startswith(b"data:") and event.find(b"\ndata:") < 0:
        payload = event[5:]  # the common case: exactly one data line
        nl = payload.find(b"\n")
        if nl >= 0:
            payload = payload[:nl]
        return payload[1:] if payload[:1] == b" " else payload
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[1:] if line[:1] == b" " else line for line in lines)


class _JSONScanner(Scanner):
    """A non-streamed JSON body: decoded once at the end, or searched by key when it is long."""

    __slots__ = ("_buf", "_head", "_over")

    def __init__(self) -> None:
        super().__init__()
        self._buf = bytearray()
        self._head = b""
        self._over = False

    def feed(self, chunk: bytes) -> None:
        buf = self._buf
        buf += chunk
        if self._over:
            if len(buf) > 2 * EDGE:
                del buf[:-EDGE]
        elif len(buf) > MAX_FRAME:  # e.g. a big batch of embeddings: keep both ends only
            self._head = bytes(buf[:EDGE])
            del buf[:-EDGE]
            self._over = True

    def finish(self, rec: RequestRecord) -> None:
        if self._over:
            self._usage.absorb_partial(self._head)
            self._usage.absorb_partial(self._buf)
        elif _has_any(self._buf, len(self._buf)):
            # Only the usage object is decoded (found by key), never the whole body: a chat
            # completion's text or an embedding's vectors cost nothing to skip.
            self._usage.absorb_partial(self._buf)
        self._buf.clear()
        self._head = b""
        self._over = False
        self._usage.write(rec)


def count_whole_body(body: bytes, rec: RequestRecord) -> None:
    """The counts in a complete, small JSON body, without a scanner object or a copy of the body."""
    usage = _Usage()
    usage.absorb_partial(body)
    usage.write(rec)


def make_scanner(path: str, content_type: str) -> Scanner | None:
    """The scanner for a response of ``content_type`` on ``path`` (route template), or None."""
    if path not in USAGE_ENDPOINTS:
        return None
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return _SSEScanner()
    if media in _NDJSON_TYPES:
        return _NDJSONScanner()
    if media == "application/json" or media.endswith("+json"):
        return _JSONScanner()
    return None


# --------------------------------------------------------------------------- usage injection


def inject_usage(payload: dict[str, Any], *, backend_type: str | None = None) -> bool:
    """Ask a streaming OpenAI-style request for its usage chunk; True when the client had not asked.

    Only when ``stream`` is true (vLLM answers 400 to ``stream_options`` without it). A client that
    set ``include_usage: true`` asked already (False, body unchanged); one that set it false, or
    sent no ``stream_options``, gets it injected (True: strip the usage chunk from its stream).
    vLLM treats a present ``stream_options`` object without ``include_usage`` as asking, so pass
    ``backend_type="vllm"`` to respect that. A malformed ``stream_options`` is left for the
    backend to reject.
    """
    if payload.get("stream") is not True:
        return False
    options = payload.get("stream_options")
    if options is None:
        payload["stream_options"] = {"include_usage": True}
        return True
    if not isinstance(options, dict):
        return False
    asked = options.get("include_usage")
    if asked is True or (asked is None and backend_type == "vllm"):
        return False
    options["include_usage"] = True
    return True


def _events(region: bytes) -> list[bytes]:
    """Split complete events, each keeping its own terminator, so that joining them is ``region``."""
    if 13 not in region:
        parts = region.split(b"\n\n")
        return [part + b"\n\n" for part in parts[:-1]]
    events = []
    start = 0
    for m in _EVENT_END.finditer(region):
        events.append(region[start : m.end()])
        start = m.end()
    return events


class UsageStripper:
    """Relays an SSE stream whose usage chunk the gateway asked for, minus that chunk.

    ``feed`` returns the bytes to forward now (possibly ``b""``): every complete event as soon as
    it is complete, byte for byte, except a ``"choices": []`` event carrying ``usage`` (read
    first). Only an incomplete trailing event is held back, and one that grows past ``MAX_FRAME``
    (which no usage chunk does) is forwarded as it arrives. ``flush`` returns what is still held
    when the upstream stream ends; ``finish`` writes the usage into the record like a Scanner's.

    A bare ``"\\r"`` ending what has arrived may be the first half of a ``"\\r\\n"``; the flags
    below keep such a ``"\\n"`` with the event it terminates, forwarded or dropped.
    """

    __slots__ = ("_buf", "_usage", "_passing", "_drop_lf", "_after_cr", "dropped")

    def __init__(self) -> None:
        self._buf = bytearray()  # the incomplete trailing event
        self._usage = _Usage()
        self._passing = False  # forwarding a long event straight through until it ends
        self._drop_lf = False  # the last event, dropped, ended in a bare "\r" at the end of the data
        self._after_cr = False  # the last event, forwarded, did
        self.dropped = 0  # usage events removed so far

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        if self._drop_lf:
            self._drop_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._passing:
            return self._pass_long(chunk)
        buf = self._buf
        if buf:
            buf += chunk
            data: bytes | bytearray = buf
        else:
            data = chunk
        cr = 13 in data
        if cr:
            end = 0
            for m in _EVENT_END.finditer(data):
                end = m.end()
        else:
            end = data.rfind(b"\n\n") + 2
            if end == 1:
                end = 0
        if end == 0:
            if data is chunk:
                buf += chunk
            if len(buf) > MAX_FRAME:
                return self._pass_long(b"")
            return b""
        if data.find(_USAGE, 0, end) >= 0 and _has_usage(data, end):
            out = self._strip(bytes(data[:end]), end == len(data))
        else:
            self._after_cr = cr and data[end - 1] == 13
            if data is chunk and end == len(chunk):
                return chunk  # the common case: whole events in one chunk, nothing to hold or strip
            out = bytes(data[:end])
        if data is chunk:
            buf += chunk[end:]
        else:
            del buf[:end]
        return out

    def _strip(self, region: bytes, at_end: bool) -> bytes:
        events = _events(region)
        last = len(events) - 1
        after_cr = self._after_cr
        self._after_cr = False
        kept = []
        for i, event in enumerate(events):
            if not (event.find(_USAGE) >= 0 and _has_usage(event, len(event)) and self._read(event)):
                kept.append(event)
                if i == last:
                    self._after_cr = event[-1] == 13
                continue
            self.dropped += 1
            if i == 0 and after_cr and event[:1] == b"\n":
                kept.append(b"\n")  # the second half of the "\r\n" that ended the forwarded event
            if i == last:
                self._drop_lf = at_end and event[-1] == 13
        return b"".join(kept)

    def _read(self, event: bytes) -> bool:
        """Take the event's usage; True when it is the usage chunk to drop."""
        if 13 in event:
            event = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        payload = _event_data(event)
        obj = _decode(payload) if payload is not None else None
        self._usage.absorb(obj)
        return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)

    def _pass_long(self, chunk: bytes) -> bytes:
        """Forward a held event too long to be a usage chunk, up to its end; resume after it."""
        buf = self._buf
        if not self._passing:
            self._passing = True
            out = bytes(buf)
            buf.clear()
            buf += out[-3:]  # already forwarded; kept to see an event end that straddles chunks
            return out
        seen = bytes(buf)
        data = seen + chunk
        m = _EVENT_END.search(data)
        buf.clear()
        if m is None:
            buf += data[-3:]
            return chunk
        self._passing = False
        self._after_cr = data[m.end() - 1] == 13
        end = max(m.end() - len(seen), 0)  # the event ends in this chunk
        return chunk[:end] + self.feed(chunk[end:])

    def flush(self) -> bytes:
        """The bytes still held when the upstream stream ends (an unterminated last event)."""
        held = bytes(self._buf)
        self._buf.clear()
        if self._passing:
            self._passing = False
            return b""  # only the straddle guard, already forwarded
        if held.find(_USAGE) >= 0 and _has_usage(held, len(held)) and self._read(held):
            self.dropped += 1
            return b"\n" if self._after_cr and held[:1] == b"\n" else b""
        return held

    def finish(self, rec: RequestRecord) -> None:
        self._usage.write(rec)


def _decode(payload: bytes) -> object:
    if len(payload) > MAX_FRAME:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None
