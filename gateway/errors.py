"""Every error the gateway answers with, and the one function that renders them.

    GatewayError(status, message)
    ├── BadRequest              400  malformed JSON, missing model, bad field
    ├── Unauthorized            401  missing or bad credentials (+ WWW-Authenticate)
    ├── Forbidden               403  model or endpoint not allowed for this client
    ├── NotFound                404  unknown model or path
    ├── MethodNotAllowed        405
    ├── RequestTimeout          408  body not received within server.timeouts.body
    ├── PayloadTooLarge         413  body over server.max_body_size
    ├── UnsupportedMediaType    415  a Content-Encoding the gateway does not decode
    ├── TooManyRequests         429  (+ Retry-After)
    ├── BadGateway              502  backend unreachable, broke the protocol, or rejected our key
    ├── ServiceUnavailable      503  no healthy backend for the model
    └── GatewayTimeout          504  backend did not answer in time

The dialect follows the path: OpenAI ``{"error": {message, type, param, code}}`` on ``/v1/*`` (and
vLLM's ``/tokenize``), Anthropic ``{"type": "error", "error": {...}}`` on ``/v1/messages``, Ollama
``{"error": "message"}`` on ``/api/*``. Nothing here writes after a response has been prepared.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import ClassVar

from aiohttp import web

__all__ = [
    "BadGateway",
    "BadRequest",
    "Dialect",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UnsupportedMediaType",
    "dialect_for",
    "error_body",
    "error_response",
]


class Dialect(Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"


def dialect_for(path: str) -> Dialect:
    if path.startswith("/api/"):
        return Dialect.OLLAMA
    if path.startswith("/v1/messages"):
        return Dialect.ANTHROPIC
    return Dialect.OPENAI


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    anthropic_type: ClassVar[str] = "api_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    anthropic_type = "authentication_error"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"
    anthropic_type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    anthropic_type = "not_found_error"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    anthropic_type = "request_too_large"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"


class TooManyRequests(GatewayError):
    status = 429
    type = "rate_limit_error"
    anthropic_type = "rate_limit_error"


class BadGateway(GatewayError):
    status = 502
    type = "api_error"
    anthropic_type = "api_error"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    anthropic_type = "overloaded_error"


class GatewayTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    anthropic_type = "api_error"


def error_body(dialect: Dialect, err: GatewayError) -> bytes:
    if dialect is Dialect.OLLAMA:
        doc: object = {"error": err.message}
    elif dialect is Dialect.ANTHROPIC:
        doc = {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}
    else:
        doc = {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    return json.dumps(doc).encode()


def error_response(path: str, err: GatewayError) -> web.Response:
    """The only place an error body is built (the request id is added with every response's, in app.py)."""
    return web.Response(
        status=err.status,
        body=error_body(dialect_for(path), err),
        content_type="application/json",
        headers=err.headers,
    )
