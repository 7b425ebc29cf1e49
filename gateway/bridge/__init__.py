"""The dialect bridge: requests in a dialect the chosen backend does not speak, translated both ways.

``proxy.forward`` asks ``translation_for`` once per attempt, and only when the backend's
``speaks`` lacks the endpoint's dialect: a request the backend speaks is never touched. Each pair
of dialects lives in its own module and registers its endpoints in ``ROUTES`` (below); a pair
that has nothing for an endpoint (or a backend speaking no dialect it can target) returns None,
and the request passes through unchanged, as before the bridge existed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from aiohttp import web

from ..backends import Backend
from ..record import RequestRecord
from . import anthropic_openai, ollama_openai
from .base import SSEEvents, StreamTranslator, Translation, WholeBody, adapt_response

__all__ = [
    "ROUTES",
    "SSEEvents",
    "StreamTranslator",
    "Translation",
    "TranslationFactory",
    "WholeBody",
    "adapt_response",
    "local_answer",
    "translation_for",
]

# (the backend's ``speaks``, the client's payload) -> the request's Translation, or None
TranslationFactory = Callable[[tuple[str, ...], dict[str, Any]], Translation | None]

# Client endpoint (route template) -> factory. A new pair of dialects adds its module's ROUTES here.
ROUTES: Mapping[str, TranslationFactory] = MappingProxyType({**ollama_openai.ROUTES, **anthropic_openai.ROUTES})


def translation_for(endpoint_path: str, speaks: tuple[str, ...], payload: dict[str, Any]) -> Translation | None:
    """The translation of a request on ``endpoint_path`` for a backend speaking ``speaks``, or None.

    Raises BadRequest (in the endpoint's dialect, via the error middleware) for a body that is
    valid JSON but cannot be translated.
    """
    factory = ROUTES.get(endpoint_path)
    return factory(speaks, payload) if factory is not None else None


def local_answer(translation: Translation, backend: Backend, rec: RequestRecord) -> web.Response | None:
    """The answer when the gateway knows it without asking the backend (e.g. a translated /api/show)."""
    known = backend.models.get(backend.lookup_key(rec.model))
    local = translation.local(known.entry if known is not None else None)
    if local is None:
        return None
    return web.Response(body=local, content_type="application/json", headers=rec.response_headers)
