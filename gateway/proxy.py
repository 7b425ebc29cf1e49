"""The routed endpoints: read the body once, pick a backend by model, forward, relay.

Per request: a bounded body read, one JSON parse (only to find ``model``), alias rewrite (the only
time the body is re-serialised, besides opt-in usage injection), backend choice, the upstream call
with a first-byte deadline, then ``streaming.relay``. Failures before any byte reached the client
are retried on the next backend serving the model (``routing.retries``); after that they end the
response abnormally. Client disconnects cancel the handler (``handler_cancellation``), which closes
the upstream connection at once so the GPU stops.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .attempt import Attempt
from .auth import ANONYMOUS
from .backends import Backend
from .bridge import Translation, adapt_response, local_answer, translation_for
from .circuit import unavailable
from .errors import (
    BadGateway,
    BadRequest,
    Dialect,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    dialect_for,
)
from .fairqueue import anonymous_client
from .frontdoor import check_content_encoding
from .headers import upstream_headers
from .limits import Pending
from .record import RequestRecord
from .state import PRINCIPAL, RECORD, STATE, GatewayState
from .streaming import Transform, relay
from .upstream import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
)
from .usage import USAGE_ENDPOINTS, UsageStripper, inject_usage

__all__ = ["ENDPOINTS", "Endpoint", "add_proxy_routes"]

LARGE_BODY = 1 << 20
MAX_MODEL_NAME = 256
Upstream = aiohttp.ClientResponse | UpstreamResponse
BACKEND_HEADER = "X-Gateway-Backend"  # admin endpoints only: which Ollama receives a pull/create/blob


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str  # aiohttp route template; also the metrics label
    methods: tuple[str, ...] = ("POST",)
    model_keys: tuple[str, ...] = ("model",)  # body keys that may hold the routing name, in order
    admin: bool = False
    json_body: bool = True
    model_optional: bool = False  # vLLM's tokenizer endpoints use the default model
    new_model: bool = False  # the model may not exist yet (pull, create, blobs): any Ollama may take it
    changes_models: bool = False  # refresh discovery afterwards
    openai_stream: bool = False  # OpenAI-style "stream"/"stream_options" semantics
    # Derived from ``path`` once, not per request:
    dialect: Dialect = field(init=False)
    counts_usage: bool = field(init=False)  # token counts are read from its responses
    speaks_as: str = field(init=False)  # the dialect's name in backends[].speaks (a str: no Enum per request)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dialect", dialect_for(self.path))
        object.__setattr__(self, "speaks_as", self.dialect.value)
        object.__setattr__(self, "counts_usage", self.path in USAGE_ENDPOINTS)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("/v1/chat/completions", openai_stream=True),
    Endpoint("/v1/completions", openai_stream=True),
    Endpoint("/v1/embeddings"),
    Endpoint("/v1/responses"),
    Endpoint("/v1/messages"),
    Endpoint("/api/chat"),
    Endpoint("/api/generate"),
    Endpoint("/api/embed"),
    Endpoint("/api/embeddings"),
    Endpoint("/api/show", model_keys=("model", "name")),
    Endpoint("/tokenize", model_optional=True),
    Endpoint("/detokenize", model_optional=True),
    Endpoint("/api/pull", model_keys=("model", "name"), admin=True, new_model=True, changes_models=True),
    Endpoint("/api/push", model_keys=("model", "name"), admin=True),
    Endpoint("/api/create", model_keys=("model", "name"), admin=True, new_model=True, changes_models=True),
    Endpoint("/api/copy", model_keys=("source",), admin=True, changes_models=True),
    Endpoint("/api/delete", ("DELETE",), model_keys=("model", "name"), admin=True, changes_models=True),
    Endpoint("/api/blobs/{digest}", ("POST", "HEAD"), admin=True, json_body=False, new_model=True),
)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (early on Content-Length, else while reading)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body is {length} bytes; the limit (server.max_body_size) is {limit}")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body exceeds the limit (server.max_body_size) of {limit} bytes") from None
    except web.RequestPayloadError as exc:  # bad chunked framing or Content-Encoding data
        cause = exc.__cause__ or exc
        raise BadRequest(f"request body could not be read: {type(cause).__name__}") from None


def parse_payload(body: bytes) -> dict[str, Any]:
    if not body or body.isspace():  # not body.strip(): that would copy a body of up to max_body_size
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        payload = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested thousands deep: refuse, never a 500
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(payload).__name__}")
    return payload


def requested_model(payload: dict[str, Any], spec: Endpoint) -> tuple[str, str] | None:
    """(body key, model name) of the first routing key present, or None."""
    for key in spec.model_keys:
        value = payload.get(key)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"'{key}' must be a non-empty string", param=key)
            if len(value) > MAX_MODEL_NAME:  # it reaches logs, metrics and error messages
                raise BadRequest(f"'{key}' is too long ({len(value)} characters, at most {MAX_MODEL_NAME})", param=key)
            return key, value
    return None


def make_handler(spec: Endpoint) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        # In flight for the drain: past server.shutdown_timeout it is ended in its dialect (drain.py).
        in_flight = state.drain.in_flight
        task = request.task
        in_flight.add(task)
        try:
            limiter = state.limiter
            if limiter is None or spec.admin:  # admin model management is never limited
                return await handle(request, spec)
            # Inside the client's limits (limits/): admitted (or 429) before the body is read, charged when over.
            rec = request[RECORD]
            client = limiter.admit(request.get(PRINCIPAL, ANONYMOUS), rec)  # sets rec.response_headers
            if isinstance(client, Pending):  # only shared stores: a round trip decides
                client = await limiter.settle(client, rec)
            try:
                return await handle(request, spec)
            except GatewayError as err:
                if rec.response_headers:
                    err.headers = {**rec.response_headers, **err.headers}
                raise
            finally:
                limiter.finish(client, rec)
        finally:
            in_flight.discard(task)

    return handler


def add_proxy_routes(app: web.Application) -> None:
    for spec in ENDPOINTS:
        handler = make_handler(spec)
        for method in spec.methods:
            app.router.add_route(method, spec.path, handler)


async def handle(request: web.Request, spec: Endpoint) -> web.StreamResponse:
    state = request.app[STATE]
    rec = request[RECORD]
    rec.endpoint = spec.path
    principal = request.get(PRINCIPAL, ANONYMOUS)
    if spec.admin and not principal.admin:
        raise Forbidden(f"{spec.path} is an admin endpoint; the credentials used ('{principal.name}') are not admin")
    check_content_encoding(request)
    body: bytes | aiohttp.StreamReader | None = None
    payload: dict[str, Any] | None = None
    model_key, requested = "model", ""
    if spec.json_body:
        body = await read_body(request, state.config.server.max_body_size)
        payload = parse_payload(body)
        found = requested_model(payload, spec)
        if found is not None:
            model_key, requested = found
        elif not spec.model_optional:
            raise BadRequest("model is required", param="model", code="missing_model")
    elif request.method != "HEAD":
        body = request.content  # blobs: stream the upload through, never hold it in memory

    # Before routing: a name outside the caller's scope is 403 whether or not it exists (no probing).
    if requested and not (
        principal.may_use(requested) or principal.may_use(state.router.aliases.get(requested, requested))
    ):
        raise Forbidden(
            f"model '{requested}' is not allowed for '{principal.name}'", param="model", code="model_not_allowed"
        )
    candidates, model = await choose_backends(request, state, spec, requested)
    rec.model = model
    affinity = state.affinity  # None unless routing.affinity is prefix
    conversation = None
    if affinity is not None and payload is not None:
        conversation = affinity.key(model, payload)
        if conversation is not None:
            candidates = affinity.prefer(conversation, candidates)

    transform: UsageStripper | None = None
    if payload is not None:
        changed = False
        if model and model != requested:
            payload[model_key] = model
            changed = True
        streaming_req = payload.get("stream") is True
        if (
            spec.openai_stream
            and streaming_req
            and (
                state.config.metrics.inject_usage
                or (state.limiter is not None and state.limiter.counts_tokens(principal))
            )
            and inject_usage(payload, backend_type=candidates[0].config.type)
        ):
            transform = UsageStripper()
            changed = True
        if changed:
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        response = await forward(request, state, spec, rec, candidates, body, transform, payload)
        if conversation is not None and affinity is not None and response.status < 500:
            affinity.remember(conversation, rec.backend)
    finally:
        if spec.changes_models and state.discovery is not None:
            state.discovery.refresh_soon()
    return response


async def choose_backends(
    request: web.Request, state: GatewayState, spec: Endpoint, requested: str
) -> tuple[list[Backend], str]:
    """Backends to try (best first) and the real model name; raises 404/503 in the endpoint's dialect."""
    router = state.router
    if spec.new_model:
        named = request.headers.get(BACKEND_HEADER)
        if named:
            match = [b for b in state.backends if b.name == named]
            if not match:
                raise NotFound(f"no backend named '{named}' ({BACKEND_HEADER})")
            return match, requested
    if not requested:
        kind = "ollama" if spec.new_model else "vllm"
        fallback = [b for b in state.backends if b.config.type == kind and b.up]
        if not fallback:
            raise BadRequest("model is required", param="model", code="missing_model")
        return fallback, ""
    route = router.resolve(requested)
    if route is None and state.discovery is not None:
        await state.discovery.refresh()  # maybe it was just pulled; rate-limited inside
        route = router.resolve(requested)
    if route is None:
        if spec.new_model:
            ollamas = [b for b in state.backends if b.is_ollama and b.up]
            if ollamas:
                return ollamas[:1], requested
        raise NotFound(f"model '{requested}' not found", param="model", code="model_not_found")
    ordered = router.order(route)
    if not ordered:
        raise unavailable(requested, route.backends)
    return ordered, route.model


async def forward(
    request: web.Request,
    state: GatewayState,
    spec: Endpoint,
    rec: RequestRecord,
    candidates: list[Backend],
    body: bytes | aiohttp.StreamReader | None,
    transform: UsageStripper | None,
    payload: dict[str, Any] | None = None,
) -> web.StreamResponse:
    assert state.session is not None
    config = state.config
    metrics = state.metrics
    in_flight = metrics if metrics is not None and metrics.counts_in_flight else None
    attempts = candidates[: config.routing.retries + 1] if isinstance(body, bytes | None) else candidates[:1]
    principal = request.get(PRINCIPAL, ANONYMOUS)
    client = principal.name if principal is not ANONYMOUS else anonymous_client(rec.remote)  # its fair-queue line
    max_queued = (principal.limits or config.limits.default).max_queued
    error: GatewayError | None = None
    for i, backend in enumerate(attempts):
        last_try = i == len(attempts) - 1
        rec.backend = backend.name
        # The dialect bridge, decided per attempt: a failover may reach a backend speaking another dialect.
        translation: Translation | None = None
        sent, path_qs = body, None
        if payload is not None and spec.speaks_as not in backend.config.speaks:
            translation = translation_for(spec.path, backend.config.speaks, payload)
            if translation is not None:
                local = local_answer(translation, backend, rec)
                if local is not None:
                    return local
                sent = json.dumps(translation.request(payload), ensure_ascii=False, separators=(",", ":")).encode()
                path_qs = translation.upstream_path
        await backend.acquire(
            client, principal.share, max_queued, config.routing.queue_size, config.routing.queue_timeout
        )
        if in_flight is not None:
            in_flight.started(backend.name)
        attempt = Attempt(backend)
        try:
            keep_alive = payload.get("keep_alive") if payload is not None else None
            if not attempt.enter(backend, rec.model, spec.path, keep_alive):
                continue
            headers = upstream_headers(
                request.headers,
                peer_ip=request.remote or rec.remote,
                peer_trusted=rec.via_proxy,
                scheme=request.scheme,
                request_id=rec.request_id,
                api_key=backend.config.api_key,
            )
            if spec.json_body:
                headers["Content-Type"] = "application/json"
            elif request.content_type and body is not None:
                headers["Content-Type"] = request.content_type
            try:
                upstream = await open_upstream(state.session, backend, request, headers, sent, rec, path_qs)
            except (BadGateway, GatewayTimeout) as exc:  # a 400 (unforwardable request) is the client's
                if metrics is not None:
                    metrics.upstream_error(backend.name, rec.error)
                attempt.no_response(rec.error)
                error = exc
                if rec.error == "timeout":  # the first-byte budget is spent: another backend cannot meet it
                    break
                continue
            if upstream.status in (401, 407):
                upstream.close()
                rec.error = "status"
                if metrics is not None:
                    metrics.upstream_error(backend.name, "status")
                raise BadGateway(
                    f"backend '{backend.name}' rejected the gateway's credentials (HTTP {upstream.status}); "
                    f"check backends[{backend.index}].api_key"
                )
            if not attempt.head(upstream.status) and not last_try:
                upstream.close()
                rec.error = "status"
                if metrics is not None:
                    metrics.upstream_error(backend.name, "status")
                continue
            rec.error = ""
            relayed: Transform | None = transform
            client_type = None
            if translation is not None:
                relayed, client_type = adapt_response(
                    translation, upstream.status, upstream.headers.get("Content-Type", "")
                )
            try:
                return await relay(
                    request,
                    upstream,
                    rec,
                    dialect=spec.dialect,
                    first_byte=backend.config.timeouts.first_byte,
                    idle=backend.config.timeouts.idle,
                    count_usage=spec.counts_usage and (metrics is not None or state.limiter is not None),
                    transform=relayed,
                    cors=state.cors if state.cors.enabled else None,
                    loop=state.loop,
                    content_type=client_type,
                    drain=state.drain,
                )
            finally:
                if rec.error and metrics is not None:
                    metrics.upstream_error(backend.name, rec.error)
                attempt.relayed(rec.error)
        finally:
            attempt.close(rec.error)
            backend.release(client)
            if in_flight is not None:
                in_flight.finished(backend.name)
    raise error or ServiceUnavailable("no backend available", headers={"Retry-After": "1"})


def payload_of(body: bytes | aiohttp.StreamReader | None) -> bytes | io.BytesIO | aiohttp.StreamReader | None:
    """Large bodies go as BytesIO so aiohttp writes them in chunks with backpressure (no copy)."""
    if isinstance(body, bytes) and len(body) > LARGE_BODY:
        return io.BytesIO(body)
    return body


async def open_upstream(
    session: aiohttp.ClientSession,
    backend: Backend,
    request: web.Request,
    headers: Any,
    body: bytes | aiohttp.StreamReader | None,
    rec: RequestRecord,
    path_qs: str | None = None,
) -> Upstream:
    """Send the request and wait for the response head, mapping failures to 502/504.

    Plain-HTTP backends go through the backend's lean keep-alive pool (``upstream/``); HTTPS
    backends and streamed uploads (blobs) through aiohttp's client. ``path_qs`` replaces the
    client's (a translated request).
    """
    if path_qs is None:
        path_qs = request.path_qs
    timeouts = backend.config.timeouts
    deadline = rec.start + timeouts.first_byte
    pool = backend.pool
    if pool is not None and not isinstance(body, aiohttp.StreamReader):
        try:
            return await pool.request(
                request.method, backend.prefix + path_qs, headers, body, timeouts.connect, deadline
            )
        except ValueError as exc:  # a header that cannot be written safely (e.g. CR/LF in a value)
            raise BadRequest(f"the request cannot be forwarded: {exc}") from None
        except (UpstreamError, TimeoutError) as exc:
            raise no_response(backend, rec, exc) from None
    try:
        async with asyncio.timeout_at(deadline):
            return await session.request(
                request.method,
                backend.url(path_qs),
                data=payload_of(body),
                headers=headers,
                timeout=backend.client_timeout,
                allow_redirects=False,
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise no_response(backend, rec, exc) from None


def no_response(backend: Backend, rec: RequestRecord, exc: BaseException) -> GatewayError:
    """The 502/504 for a request that got no response head from ``backend``; sets ``rec.error``.

    One mapping for both clients (the lean pool and aiohttp's): connect timeout and first-byte
    timeout are 504, unreachable, invalid response and closed connection are 502.
    """
    name, timeouts = backend.name, backend.config.timeouts
    if isinstance(exc, UpstreamConnectTimeout | aiohttp.ConnectionTimeoutError):
        rec.error = "connect"
        return GatewayTimeout(f"backend '{name}' did not accept a connection within {timeouts.connect:g}s")
    if isinstance(exc, TimeoutError):
        rec.error = "timeout"
        return GatewayTimeout(
            f"backend '{name}' sent no response within {timeouts.first_byte:g}s (timeouts.first_byte)"
        )
    if isinstance(exc, UpstreamConnectError | aiohttp.ClientConnectorError):
        rec.error = "connect"
        reason = exc.os_error.strerror if isinstance(exc, aiohttp.ClientConnectorError) else None
        return BadGateway(f"backend '{name}' is unreachable: {reason or exc}")
    if isinstance(exc, UpstreamProtocolError | aiohttp.ClientResponseError):
        rec.error = "protocol"
        detail = exc.message if isinstance(exc, aiohttp.ClientResponseError) else exc
        return BadGateway(f"backend '{name}' sent an invalid response: {detail}")
    rec.error = "reset"  # closed or reset before the head (incl. a stale keep-alive connection)
    return BadGateway(f"backend '{name}' closed the connection: {exc}")
