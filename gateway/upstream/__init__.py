"""A lean HTTP/1.1 client for the one thing the gateway does upstream: relay a request to a backend.

Why it exists: with aiohttp's ``ClientSession`` about a third of the gateway's CPU per
non-streamed request went to client machinery that a relay does not need (``ClientRequest``
construction, a ``write_bytes`` task per request, the payload registry, per-request timers,
redirect and cookie handling). Here a request is one ``transport.write`` of head and body on a
pooled keep-alive connection, and the response is parsed by an ``asyncio.Protocol`` straight
into a small buffer that the relay drains with ``readany()``. No task, timer or thread is
created per request; under uvloop the whole path stays in the event loop's C callbacks except
for the parsing below.

What it does:

* ``UpstreamPool``: one per backend (``http://host:port``); idle keep-alive connections in a
  LIFO list (bounded, closed after ``idle_timeout``, one sweeper timer per pool); a stale pooled
  connection that the server closed before sending any byte of the response is retried once on a
  fresh connection (the classic keep-alive race).
* Response framing: Content-Length, ``Transfer-Encoding: chunked`` (incremental; size lines,
  extensions and trailers may be split anywhere), close-delimited; 1xx interim responses are
  skipped; HEAD, 204 and 304 have no body. Malformed responses raise ``UpstreamProtocolError``.
* A connection returns to the pool as soon as its response body has been completely received and
  the backend did not ask to close it (the unread body stays in the response's own buffer).
  Anything else — an incomplete body, ``close()``, ``set_exception()``, a cancelled read — closes
  it, which is how a backend learns that the client went away and stops generating.
* Backpressure: reading from the socket pauses while more than ``high_water`` bytes of body
  wait unread, and resumes once the reader drained them.

What it does not do: TLS (use aiohttp for https backends), proxies, redirects, cookies, content
decoding (bodies are relayed as sent), ``Expect: 100-continue``, streamed request bodies (the body
is ``bytes``), pipelining, HTTP/2. The caller supplies the headers and owns their hygiene; only
``Host`` and ``Content-Length`` are written here, and headers that would conflict with them or
break the framing are refused with ``ValueError``.
"""

from __future__ import annotations

from .connection import HIGH_WATER, MAX_HEAD, Connection
from .pool import UpstreamPool
from .response import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
)

__all__ = [
    "HIGH_WATER",
    "MAX_HEAD",
    "Connection",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
]
