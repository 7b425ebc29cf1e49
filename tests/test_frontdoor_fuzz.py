"""Hypothesis over request heads and bodies, sent through a real socket to a gateway with auth on.

Whatever arrives, without credentials: the answer is a 4xx or a close (a 2xx only for the public
probe paths and OPTIONS), never a 5xx; the gateway stays up; the backend receives nothing.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import BackendFactory, GatewayFactory, RunningGateway, backend_entry
from .fakes import FakeBackend
from .rawhttp import exchange, request

PUBLIC = {"/", "/healthz", "/readyz", "/api/version", "/metrics", "/dashboard"}
PATHS = [
    "/", "/api/generate", "/api/chat", "/api/pull", "/api/delete", "/api/blobs/sha256:00", "/v1/chat/completions",
    "/v1/messages", "/v1/models", "/metrics", "/healthz", "/api/tags", "/tokenize",
]  # fmt: skip
METHODS = ["GET", "POST", "DELETE", "HEAD", "PUT", "OPTIONS", "PATCH", "CONNECT", "TRACE", "get", "P0ST", ""]
HEADER_NAMES = [
    "Content-Length", "Transfer-Encoding", "Content-Encoding", "Authorization", "X-Api-Key", "Host", "Connection",
    "Expect", "Upgrade", "X-Request-Id", "X-Forwarded-For", "Content-Type", "Cookie", "Origin",
]  # fmt: skip
HEADER_VALUES = [
    "chunked", "gzip", "identity", "close", "keep-alive", "100-continue", "websocket", "0", "-1", "10", "1e3",
    "99999999999999999999", "Bearer sk-not-a-key", "Basic Og==", "chunked, chunked", "application/json", " ",
]  # fmt: skip

ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=40)
weird = st.binary(max_size=40)
paths = st.one_of(
    st.sampled_from(PATHS),
    st.builds(
        lambda p, s: p + s, st.sampled_from(PATHS), st.sampled_from(["/", "//", "/..", "%2e%2e", "?a=1", "#x", ";"])
    ),
    ascii_text.map(lambda t: "/" + t),
)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "HTTP/2.0", "HTTP/1.1 x", "", "HTTP/1.10", "http/1.1"])
header_lines = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES)).map(
            lambda t: f"{t[0]}: {t[1]}".encode()
        ),
        st.tuples(ascii_text, ascii_text).map(lambda t: f"{t[0]}: {t[1]}".encode()),
        weird,
    ),
    max_size=6,
)
bodies = st.one_of(
    st.just(b""),
    weird,
    st.just(json.dumps({"model": "llama3.2:latest", "prompt": "hi"}).encode()),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(1, 50_000)),
    st.sampled_from([b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"1f4\r\nabc"]),
)
separators = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n"])


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    line = f"{method} {draw(paths)} {draw(versions)}".encode("latin-1", "replace")
    sep = draw(separators)
    head = sep.join([line, b"Host: gateway", *draw(header_lines)])
    return head + b"\r\n\r\n" + draw(bodies)


@pytest.fixture
async def guarded(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> tuple[FakeBackend, RunningGateway]:
    backend = await backend_factory("desktop")
    key_hash = "sha256:" + hashlib.sha256(b"sk-the-only-key").hexdigest()
    gw = await gateway_factory(
        {
            "backends": [backend_entry(backend)],
            "auth": {"api_keys": [{"name": "ops", "hash": key_hash, "admin": True}]},
            "server": {"max_body_size": "64KiB", "timeouts": {"headers": "1s", "body": "1s"}},
        }
    )
    return backend, gw


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=raw_requests())
async def test_any_request_without_credentials_is_refused_cleanly(
    guarded: tuple[FakeBackend, RunningGateway], data: bytes
) -> None:
    backend, gw = guarded
    answer = await exchange(gw.url, data, timeout=5)
    if answer.status is not None:
        assert answer.status < 500, (data, answer)
        if answer.status < 400 and not data.startswith(b"OPTIONS "):  # OPTIONS is answered before auth (CORS)
            path = data.split(b" ", 2)[1].split(b"?")[0].decode("latin-1") if data.count(b" ") >= 2 else ""
            assert path in PUBLIC, (data, answer)
    assert backend.requests == []
    ok = await exchange(gw.url, request("GET", "/healthz"), timeout=5)
    assert ok.status == 200  # the gateway is still up and answering
