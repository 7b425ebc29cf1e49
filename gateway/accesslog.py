"""One access-log line per finished request, as logfmt-style text or as one JSON object.

It reads only the ``RequestRecord``, which holds names, numbers and the path: never credentials,
prompts or completions. The query string is cut off the path anyway (clients do put keys there),
and control characters are escaped so a crafted path cannot forge log lines. Nothing is formatted
when the logger would drop the line.

Text:  ``time=2025-01-02T03:04:05.678Z id=… client=laptop remote=127.0.0.1 method=POST
path=/v1/chat/completions model=llama3.2:3b backend=desktop status=200 bytes=5120 ttfb_ms=212.4
duration_ms=4210.9 tokens_in=26 tokens_out=282`` (``-`` when unknown; ``error=…`` only on failure).
JSON:  the same keys (``request_id`` for ``id``) with ``null`` when unknown, plus ``error``.
The line carries its own time, so give its handler a bare ``%(message)s`` formatter.
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from typing import Any, Literal

from .record import RequestRecord

__all__ = ["AccessLog", "BufferedLineHandler"]

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_QUOTE_TRIGGERS = frozenset(' "=\\')


class _Clock:
    """Wall-clock timestamps for log lines, with strftime run once a second, not once a line."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def timestamp(self, now: float) -> str:
        seconds = int(now)
        if self._second != seconds:
            self._second, self._text = seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        return f"{self._text}.{int((now - seconds) * 1000):03d}Z"


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes lines in batches instead of one write() syscall per request.

    Lines are flushed when ``max_lines`` are waiting, when one is older than ``max_delay`` seconds
    at the next line, and by ``flush()`` (the app calls it every second and at shutdown).
    """

    def __init__(self, stream: Any = None, max_lines: int = 64, max_delay: float = 1.0) -> None:
        super().__init__(stream)
        self.max_lines = max_lines
        self.max_delay = max_delay
        self._lines: list[str] = []
        self._since = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never raise into the request path
            self.handleError(record)
            return
        self.add_line(line)

    def add_line(self, line: str) -> None:
        lines = self._lines
        if not lines:
            self._since = time.monotonic()
        lines.append(line)
        if len(lines) >= self.max_lines or time.monotonic() - self._since >= self.max_delay:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self.acquire()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - a closed stderr must not break the gateway
            pass
        finally:
            self.release()


def _value(text: str) -> str:
    """A logfmt value: ``-`` when empty; quoted, with escapes, when it holds a space, ``"``, ``=``,
    a backslash or a non-printable character (control characters, Unicode line separators)."""
    if not text:
        return "-"
    printable = text.isprintable()
    if printable and _QUOTE_TRIGGERS.isdisjoint(text):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    if not printable:
        text = "".join(c if c.isprintable() else _ESCAPES.get(c) or f"\\u{ord(c):04x}" for c in text)
    return '"' + text + '"'


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(seconds, 0.0) * 1000, 1)


def _ms_text(start: float, at: float | None) -> str:
    return "-" if at is None else f"{max(at - start, 0.0) * 1000:.1f}"


class AccessLog:
    """Writes one INFO line per request to ``logger``, in ``text`` or ``json`` format."""

    __slots__ = ("_clock", "_json", "_logger", "_value")

    def __init__(self, format: Literal["text", "json"], logger: logging.Logger) -> None:
        if format not in ("text", "json"):
            raise ValueError(f"access log format must be 'text' or 'json', got {format!r}")
        self._json = format == "json"
        self._logger = logger
        self._clock = _Clock()
        # Names, models, addresses and paths repeat: escape each once (bounded).
        self._value = lru_cache(maxsize=4096)(_value)

    def log(self, rec: RequestRecord) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handlers = logger.handlers
        # The CLI's setup (one batching handler, no propagation, no filters): skip LogRecord building.
        if len(handlers) == 1 and not logger.propagate and not logger.filters:
            handler = handlers[0]
            if isinstance(handler, BufferedLineHandler) and not handler.filters:
                handler.add_line(self.format(rec))
                return
        logger.info("%s", self.format(rec))

    def format(self, rec: RequestRecord, now: float | None = None) -> str:
        """The line for ``rec`` (``now``: wall-clock time to print, default the current time)."""
        when = self._clock.timestamp(time.time() if now is None else now)
        path = rec.path.split("?", 1)[0]
        if self._json:
            return json.dumps(
                {
                    "time": when,
                    "request_id": rec.request_id,
                    "client": rec.client,
                    "remote": rec.remote,
                    "method": rec.method,
                    "path": path,
                    "model": rec.model or None,
                    "backend": rec.backend or None,
                    "status": rec.status,
                    "bytes": rec.bytes_out,
                    "ttfb_ms": _ms(rec.ttfb),
                    "duration_ms": _ms(rec.duration),
                    "tokens_in": rec.prompt_tokens,
                    "tokens_out": rec.completion_tokens,
                    "error": rec.error or None,
                },
                ensure_ascii=False,
            )
        value = self._value
        tokens_in, tokens_out = rec.prompt_tokens, rec.completion_tokens
        # The request id needs no escaping: the entry middleware admits only [A-Za-z0-9._:-] (app.py).
        line = (
            f"time={when} id={rec.request_id} client={value(rec.client)} remote={value(rec.remote)} "
            f"method={value(rec.method)} path={value(path)} model={value(rec.model)} "
            f"backend={value(rec.backend)} status={rec.status} bytes={rec.bytes_out} "
            f"ttfb_ms={_ms_text(rec.start, rec.first_byte)} duration_ms={_ms_text(rec.start, rec.end)} "
            f"tokens_in={'-' if tokens_in is None else tokens_in} "
            f"tokens_out={'-' if tokens_out is None else tokens_out}"
        )
        if rec.error:
            line += f" error={value(rec.error)}"
        return line
