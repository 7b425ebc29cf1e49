"""CORS: the origin policy, the preflight short-circuit and the headers on every real response.

``CorsPolicy`` is built once from ``CorsConfig`` and precomputes everything it can (exact-origin
set, one compiled regex for the patterns, the constant header dicts), so per-request work is a set
lookup, maybe one regex match, and a dict copy — the way Starlette's CORSMiddleware does it. The
policy uses nothing from ``aiohttp.web`` and never raises on request input, so it is
property-tested as a pure function.

The aiohttp glue lives here too:

* ``make_cors_gate`` answers preflights itself (before auth; an ``OPTIONS`` is never forwarded
  upstream) and rejects actual requests from a cross-site ``Origin`` that is not allowlisted with
  403, as Ollama does: CORS only stops the *reading* of a response, and a "simple" cross-site POST
  (``text/plain`` body, no preflight) would otherwise still reach the GPU.
* ``CorsPolicy.apply_response_headers`` puts the gateway's headers on a response about to be sent,
  after dropping any ``Access-Control-*`` a backend sent (vLLM adds ``*`` by default; two
  ``Access-Control-Allow-Origin`` values make browsers reject the response), and merges ``Vary``.
  The gateway calls both from its one entry middleware (``app.py``) and from the relay, before a
  stream's head goes out: no extra middleware layer or signal per request.
* ``make_cors_middleware`` and ``make_cors_prepare_hook`` wire the same two into any aiohttp app
  (a middleware, and an ``on_response_prepare`` hook that every response passes), which is how
  the tests exercise this module on its own.

Origin patterns (``cors.allow_origins``):

* ``*`` — any origin except ``null``; answered with ``Access-Control-Allow-Origin: *`` (the config
  forbids it together with ``allow_credentials``).
* ``https://app.example.com`` — exactly that origin (a default port such as ``:443`` is dropped,
  as browsers drop it when serializing an origin).
* ``https://*.example.com`` — any origin whose host ends in ``.example.com`` with **one or more**
  labels before it (``a.example.com``, ``a.b.example.com``), same scheme, default port only. It does
  not match ``https://example.com`` itself: list that separately.
* ``http://localhost:*`` — that scheme and host on any port, *including* the default one
  (``http://localhost``). Both forms combine: ``https://*.example.com:*``.
* ``null`` (sandboxed iframes, ``file://`` pages) is allowed only when listed literally.

Matching is case-insensitive; the ``Access-Control-Allow-Origin`` value is the request's ``Origin``
echoed byte for byte (or ``*``), so it always equals what the browser compares it with.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict

from gateway.config import CorsConfig
from gateway.errors import Forbidden

__all__ = [
    "ALLOW_METHODS",
    "EXPOSE_HEADERS",
    "MAX_AGE_CAP",
    "CorsPolicy",
    "is_preflight",
    "make_cors_gate",
    "make_cors_middleware",
    "make_cors_prepare_hook",
]

ALLOW_METHODS: Final = "GET, POST, DELETE, HEAD, OPTIONS"
EXPOSE_HEADERS: Final = "X-Request-Id, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset"
MAX_AGE_CAP: Final = 7200  # Chromium ignores anything longer; Firefox caps at 86400
ORIGIN_CACHE_SIZE: Final = 512  # per-origin response-header dicts kept (FIFO beyond that)

_ACAO = "Access-Control-Allow-Origin"
_ACAC = "Access-Control-Allow-Credentials"
_ACAM = "Access-Control-Allow-Methods"
_ACAH = "Access-Control-Allow-Headers"
_ACMA = "Access-Control-Max-Age"
_ACEH = "Access-Control-Expose-Headers"
_ACAPN = "Access-Control-Allow-Private-Network"
_ACRPN = "Access-Control-Request-Private-Network"
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_RESPONSE_CORS_NAMES = (_ACAO, _ACAC, _ACAM, _ACAH, _ACMA, _ACEH, _ACAPN)

_EMPTY: Mapping[str, str] = MappingProxyType({})
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field-name token
# Any scheme, so app-style origins (chrome-extension://id, tauri://localhost) work once the config accepts them.
_ENTRY_RE = re.compile(r"([a-z][a-z0-9+.\-]*)://(\*\.)?([a-z0-9.\-\[\]:]+?)(?::(\d{1,5}|\*))?", re.ASCII)
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_LABELS = r"(?:[a-z0-9_-]+\.)+"  # one or more DNS labels, as serialized (punycode) by browsers


def _normalize_entry(entry: str) -> tuple[str | None, str | None]:
    """``(exact_origin, None)`` or ``(None, regex_source)`` for one allow_origins entry."""
    text = entry.strip().rstrip("/").lower()
    if text == "null":
        return "null", None
    m = _ENTRY_RE.fullmatch(text)
    if m is None:  # the config loader already rejected it; match nothing rather than guess
        return None, None
    scheme, wildcard_host, host, port = m.groups()
    if port == _DEFAULT_PORTS.get(scheme):
        port = None
    if not wildcard_host and port != "*":
        return f"{scheme}://{host}" + (f":{port}" if port else ""), None
    source = re.escape(f"{scheme}://") + (_LABELS if wildcard_host else "") + re.escape(host)
    if port == "*":
        source += r"(?::[0-9]{1,5})?"
    elif port:
        source += re.escape(f":{port}")
    return None, source


def _vary_tokens(values: list[str]) -> list[str]:
    """Split ``Vary`` header values into tokens, dropping duplicates case-insensitively."""
    seen: set[str] = set()
    tokens: list[str] = []
    for value in values:
        for raw in value.split(","):
            token = raw.strip()
            if token and token.lower() not in seen:
                seen.add(token.lower())
                tokens.append(token)
    return tokens


class CorsPolicy:
    """The answer to "may this origin read this gateway's responses", with its headers precomputed."""

    __slots__ = (
        "_any_origin",
        "_cache",
        "_exact",
        "_pattern",
        "_preflight_base",
        "_preflight_vary",
        "_private_network",
        "_response_base",
        "_vary_only",
        "_wildcard_response",
        "credentials",
        "enabled",
    )

    def __init__(self, config: CorsConfig) -> None:
        if config.allow_credentials and "*" in config.allow_origins:
            raise ValueError("cors: '*' origins cannot be combined with allow_credentials")
        self.enabled = bool(config.allow_origins)
        self.credentials = config.allow_credentials
        self._private_network = config.allow_private_network
        self._any_origin = "*" in config.allow_origins
        exact: set[str] = set()
        patterns: list[str] = []
        for entry in config.allow_origins:
            if entry == "*":
                continue
            origin, source = _normalize_entry(entry)
            if origin is not None:
                exact.add(origin)
            elif source is not None:
                patterns.append(source)
        self._exact = frozenset(exact)
        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns), re.ASCII) if patterns else None

        credentials = {_ACAC: "true"} if self.credentials else {}
        max_age = config.max_age if math.isfinite(config.max_age) else MAX_AGE_CAP
        self._preflight_vary = _PREFLIGHT_VARY + (f", {_ACRPN}" if self._private_network else "")
        self._preflight_base: Mapping[str, str] = MappingProxyType(
            {
                _ACAM: ALLOW_METHODS,
                _ACMA: str(int(max(0.0, min(max_age, MAX_AGE_CAP)))),
                **credentials,
                hdrs.VARY: self._preflight_vary,
            }
        )
        self._response_base: Mapping[str, str] = MappingProxyType(
            {**credentials, _ACEH: EXPOSE_HEADERS, hdrs.VARY: "Origin"}
        )
        self._wildcard_response: Mapping[str, str] = MappingProxyType({_ACAO: "*", **self._response_base})
        self._vary_only: Mapping[str, str] = MappingProxyType({hdrs.VARY: "Origin"}) if self.enabled else _EMPTY
        self._cache: dict[str, Mapping[str, str]] = {}

    # ------------------------------------------------------------------ policy

    def allowed(self, origin: str) -> bool:
        """True if ``origin`` is allowlisted; ``null`` only when listed literally."""
        if not self.enabled:
            return False
        key = origin.lower()
        if key in self._exact:
            return True
        if key == "null":
            return False
        if self._any_origin:
            return True
        return self._pattern is not None and self._pattern.fullmatch(key) is not None

    def _allow_origin_value(self, origin: str) -> str:
        # '*' only in wildcard mode (the constructor refuses it with credentials); echo otherwise.
        return "*" if self._any_origin and origin.lower() not in self._exact else origin

    def preflight_headers(
        self,
        origin: str,
        request_method: str,
        request_headers: str | None,
        private_network: bool,
    ) -> dict[str, str] | None:
        """The headers of a 204 preflight answer, or None when ``origin`` may not use the gateway.

        ``Access-Control-Allow-Headers`` echoes the requested names (valid tokens only): that covers
        ``Authorization`` (never covered by ``*``), ``x-api-key`` and every ``x-stainless-*`` header
        the OpenAI SDKs add, without chasing SDK releases. An unsupported ``request_method`` still
        gets the method list; the browser then fails the preflight itself.
        """
        if not self.allowed(origin):
            return None
        headers = dict(self._preflight_base)
        headers[_ACAO] = self._allow_origin_value(origin)
        if request_headers:
            names = _vary_tokens([request_headers])  # same split-and-dedupe as Vary
            allowed = [n.lower() for n in names if n != "*" and _TOKEN_RE.fullmatch(n)]
            if allowed:
                headers[_ACAH] = ", ".join(allowed)
        if private_network and self._private_network:
            headers[_ACAPN] = "true"
        return headers

    def response_headers(self, origin: str | None) -> Mapping[str, str]:
        """CORS headers for an actual response (read-only; ``Vary: Origin`` alone when not allowed)."""
        if origin is None or not self.enabled:
            return self._vary_only
        cached = self._cache.get(origin)
        if cached is not None:
            return cached
        if not self.allowed(origin):
            result = self._vary_only
        elif self._any_origin and origin.lower() not in self._exact:
            result = self._wildcard_response
        else:
            result = MappingProxyType({_ACAO: origin, **self._response_base})
        if len(self._cache) >= ORIGIN_CACHE_SIZE:  # bounded: arbitrary Origin values must not grow it
            del self._cache[next(iter(self._cache))]
        self._cache[origin] = result
        return result

    def apply_response_headers(self, headers: CIMultiDict[str], origin: str | None) -> None:
        """Replace the ``Access-Control-*`` response headers in ``headers`` with ours; merge ``Vary``.

        Relayed backend headers reach here without any ``Access-Control-*`` (``headers.py`` drops
        them); removing the standard names again keeps this function safe on its own.
        """
        for name in _RESPONSE_CORS_NAMES:
            if name in headers:
                headers.popall(name)
        ours = self.response_headers(origin)
        if not ours:
            return
        vary = ours.get(hdrs.VARY)
        for name, value in ours.items():
            if name != hdrs.VARY:
                headers[name] = value
        if vary is not None:
            existing = headers.getall(hdrs.VARY, None)
            if existing is None:
                headers[hdrs.VARY] = vary
                return
            tokens = _vary_tokens([*existing, vary])
            headers[hdrs.VARY] = "*" if "*" in tokens else ", ".join(tokens)


# --------------------------------------------------------------------------- aiohttp glue

PrepareHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


def is_preflight(request: web.BaseRequest) -> bool:
    """``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method`` (Fetch standard)."""
    headers = request.headers
    return (
        request.method == hdrs.METH_OPTIONS and hdrs.ORIGIN in headers and hdrs.ACCESS_CONTROL_REQUEST_METHOD in headers
    )


def _same_origin(origin: str, host: str | None) -> bool:
    """Origin's ``host[:port]`` equals the request's Host (default ports ignored, case-insensitive)."""
    scheme, sep, authority = origin.lower().partition("://")
    if not sep or not host:
        return False
    default = _DEFAULT_PORTS.get(scheme)
    host = host.lower()
    if default is not None:
        authority = authority.removesuffix(f":{default}")
        host = host.removesuffix(f":{default}")
    return authority == host


Gate = Callable[[web.BaseRequest], web.Response | None]


def make_cors_gate(policy: CorsPolicy) -> Gate:
    """The request side: a preflight's answer (204, or 403 without CORS headers), a raised 403 for
    a cross-site ``Origin`` that is not allowed, or None to let the request go on (to auth)."""
    no_cors_vary = MappingProxyType({hdrs.VARY: _PREFLIGHT_VARY})
    bare_options = MappingProxyType({hdrs.ALLOW: ALLOW_METHODS})

    def cors_gate(request: web.BaseRequest) -> web.Response | None:
        headers = request.headers
        origin = headers.get(hdrs.ORIGIN)
        if request.method == hdrs.METH_OPTIONS:
            method = headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
            if origin is None or method is None:
                return web.Response(status=204, headers=bare_options)
            answer = policy.preflight_headers(
                origin,
                method,
                headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS),
                headers.get(_ACRPN, "").strip().lower() == "true",
            )
            if answer is None:
                return web.Response(status=403, headers=no_cors_vary)
            return web.Response(status=204, headers=answer)
        if origin is not None and not policy.allowed(origin) and not _same_origin(origin, headers.get(hdrs.HOST)):
            shown = origin if len(origin) <= 200 else origin[:200] + "..."
            raise Forbidden(f"origin {shown!r} is not allowed by the gateway's cors.allow_origins")
        return None

    return cors_gate


def make_cors_middleware(policy: CorsPolicy) -> Middleware:
    """``make_cors_gate`` as a middleware, for apps that use this module on its own."""
    gate = make_cors_gate(policy)

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        answer = gate(request)
        return answer if answer is not None else await handler(request)

    return cors_middleware


def make_cors_prepare_hook(policy: CorsPolicy) -> PrepareHook:
    """An ``app.on_response_prepare`` hook: the gateway's CORS headers, and only those, on every response."""

    async def cors_prepare_hook(request: web.Request, response: web.StreamResponse) -> None:
        if is_preflight(request):
            return  # answered by the middleware with its own headers
        policy.apply_response_headers(response.headers, request.headers.get(hdrs.ORIGIN))

    return cors_prepare_hook
