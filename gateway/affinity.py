"""Conversation affinity (``routing.affinity: prefix``): a chat's later turns go where its first turn went.

Backends cache the prompt they last processed (llama.cpp ``cache_prompt``, vLLM prefix caching,
Ollama's loaded context). A multi-turn chat resends its whole history each turn, so sending turn 2
to the backend that served turn 1 skips re-reading the shared prefix. The conversation key is a
hash of the model, the system prompt (``system`` in Anthropic's Messages API, else the leading
``system`` messages) and every message up to and including the first ``user`` message: exactly what
turn 1 and all later turns of one chat have in common, for ``/v1/chat/completions``, ``/api/chat``
and ``/v1/messages`` payloads alike. Conversations that share that prefix share the cache too.

The preferred backend is moved to the front only while it is a candidate at all (healthy, circuit
closed: routing already left it out otherwise) and not saturated: at its ``max_concurrency``, or more
than ``SLACK`` requests per unit of weight above the least-loaded candidate. Memory is bounded: an LRU
of ``MAX_CONVERSATIONS`` keys. Python's ``hash`` of the strings (cached on each str object) is enough:
the map lives in one process and a rare collision only costs a cache miss.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from .backends import Backend

__all__ = ["MAX_CONVERSATIONS", "SLACK", "Affinity", "conversation_key"]

MAX_CONVERSATIONS = 10_000
SLACK = 4.0  # in-flight requests per unit of weight above the least-loaded candidate that count as saturated


def _hashable(value: Any) -> Any:
    """Strings as they are (their hash is cached); content parts (lists, dicts) as canonical JSON."""
    if value is None or isinstance(value, str | int | float):
        return value
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def conversation_key(model: str, payload: Mapping[str, Any]) -> int | None:
    """The hash of what every turn of one chat shares, or None when the payload has no messages."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    parts: list[Any] = [model, _hashable(payload.get("system"))]
    for message in messages:
        if not isinstance(message, Mapping):
            return None
        role = message.get("role")
        parts.append(role)
        parts.append(_hashable(message.get("content")))
        if role == "user":
            return hash(tuple(parts))
    return None  # no user message yet: nothing a later turn would repeat


class Affinity:
    """Conversation key -> the backend that served it, least recently used first."""

    def __init__(self, size: int = MAX_CONVERSATIONS) -> None:
        self.size = size
        self._served: OrderedDict[int, str] = OrderedDict()

    @staticmethod
    def key(model: str, payload: Mapping[str, Any]) -> int | None:
        return conversation_key(model, payload)

    def prefer(self, key: int, candidates: list[Backend]) -> list[Backend]:
        """``candidates`` with the conversation's backend first, when it is among them and not saturated."""
        name = self._served.get(key)
        if name is None:
            return candidates
        for i, backend in enumerate(candidates):
            if backend.name == name:
                if i == 0 or saturated(backend, candidates):
                    return candidates
                return [backend, *candidates[:i], *candidates[i + 1 :]]
        return candidates

    def remember(self, key: int, backend: str) -> None:
        if not backend:
            return
        served = self._served
        served[key] = backend
        served.move_to_end(key)
        if len(served) > self.size:
            served.popitem(last=False)

    def __len__(self) -> int:
        return len(self._served)


def saturated(backend: Backend, candidates: list[Backend]) -> bool:
    """At its concurrency limit, or well above the least-loaded candidate."""
    limit = backend.config.max_concurrency
    if limit and backend.in_flight >= limit:
        return True
    return backend.load > min(b.load for b in candidates) + SLACK
