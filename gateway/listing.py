"""Endpoints the gateway answers itself from what it knows of all backends.

``/v1/models`` (OpenAI shape) and ``/api/tags`` (Ollama shape) merge every backend's models plus
the aliases, filtered to what the caller may use, so both OpenAI clients and Ollama-native clients
(Open WebUI's "Ollama" connection) see one server. ``/api/ps`` asks the Ollama backends live,
``/api/version`` answers like Ollama (its clients use it to verify a connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from . import __version__
from .auth import ANONYMOUS, Principal
from .backends import Backend
from .credentials import model_allowed
from .discovery import fetch_json
from .errors import NotFound
from .state import PRINCIPAL, STATE, GatewayState

__all__ = ["add_listing_routes"]

EMPTY_DETAILS = {
    "parent_model": "", "format": "", "family": "", "families": [], "parameter_size": "", "quantization_level": "",
}  # fmt: skip


def _created(entry: Mapping[str, Any]) -> int:
    created = entry.get("created")
    if isinstance(created, int):
        return created
    modified = entry.get("modified_at")
    if isinstance(modified, str):
        try:
            return int(datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    return 0


def visible_models(state: GatewayState, principal: Principal) -> Iterator[tuple[str, Backend, Mapping[str, Any], str]]:
    """(listed name, backend, backend's own entry, alias target or "") for every model the caller may use."""
    seen: set[str] = set()
    for backend in state.backends:
        entries = {backend.lookup_key(m.name): m.entry for m in backend.models.values()}
        for name in state.router.listed_models(backend):
            if name in seen or not model_allowed(principal.models, name):
                continue
            seen.add(name)
            yield name, backend, entries.get(backend.lookup_key(name), {}), ""
    for alias, target in state.config.aliases.items():
        if alias in seen:
            continue
        route = state.router.resolve(alias)
        if route is None or not (model_allowed(principal.models, alias) or model_allowed(principal.models, target)):
            continue
        seen.add(alias)
        backend = route.backends[0]
        entry = backend.models.get(backend.lookup_key(target))
        yield alias, backend, entry.entry if entry else {}, target


def openai_entry(name: str, backend: Backend, entry: Mapping[str, Any], target: str) -> dict[str, Any]:
    doc: dict[str, Any] = dict(entry) if not backend.is_ollama and not target else {}
    doc.update(id=name, object="model", created=_created(entry), owned_by=backend.name)
    if target:
        doc["root"] = target
    return doc


def ollama_entry(name: str, backend: Backend, entry: Mapping[str, Any]) -> dict[str, Any]:
    if backend.is_ollama and entry:
        doc = dict(entry)
        doc.update(name=name, model=name)
        return doc
    return {
        "name": name, "model": name, "modified_at": "1970-01-01T00:00:00Z", "size": 0, "digest": "",
        "details": dict(EMPTY_DETAILS),
    }  # fmt: skip


async def list_openai(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = request.get(PRINCIPAL, ANONYMOUS)
    data = [openai_entry(*item) for item in visible_models(state, principal)]
    return web.json_response({"object": "list", "data": data})


async def get_openai(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = request.get(PRINCIPAL, ANONYMOUS)
    wanted = request.match_info["id"]
    for item in visible_models(state, principal):
        if item[0] == wanted or (item[1].is_ollama and item[1].lookup_key(item[0]) == item[1].lookup_key(wanted)):
            return web.json_response(openai_entry(*item))
    raise NotFound(f"The model '{wanted}' does not exist", param="model", code="model_not_found")


async def list_tags(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = request.get(PRINCIPAL, ANONYMOUS)
    models = [ollama_entry(name, backend, entry) for name, backend, entry, _ in visible_models(state, principal)]
    return web.json_response({"models": models})


async def list_running(request: web.Request) -> web.Response:
    state = request.app[STATE]
    principal = request.get(PRINCIPAL, ANONYMOUS)
    ollamas = [b for b in state.backends if b.is_ollama and b.up]
    assert state.session is not None
    session = state.session

    async def running(backend: Backend) -> list[Any]:
        try:
            doc = await fetch_json(session, backend, "/api/ps", backend.config.health_check.timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return []
        models = doc.get("models") if isinstance(doc, Mapping) else None
        return models if isinstance(models, list) else []

    merged = []
    seen = set()
    for models in await asyncio.gather(*(running(b) for b in ollamas)):
        for entry in models:
            name = entry.get("name") if isinstance(entry, Mapping) else None
            if isinstance(name, str) and name not in seen and model_allowed(principal.models, name):
                seen.add(name)
                merged.append(entry)
    return web.json_response({"models": merged})


async def version(request: web.Request) -> web.Response:
    """Like Ollama: the first healthy Ollama backend's version (as its last probe saw it), else ours.

    Public, and a heartbeat for Ollama clients: answered from memory, never with a backend request.
    """
    for backend in request.app[STATE].backends:
        if backend.is_ollama and backend.up and backend.version:
            return web.json_response({"version": backend.version})
    return web.json_response({"version": __version__})


async def root(request: web.Request) -> web.Response:
    # Ollama's CLI and some UIs use "GET /" as a heartbeat and look for this sentence.
    return web.Response(text="Ollama is running (local-llm-gateway)")


def add_listing_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_openai)
    app.router.add_get("/v1/models/{id:.+}", get_openai)
    app.router.add_get("/api/tags", list_tags)
    app.router.add_get("/api/ps", list_running)
    app.router.add_get("/api/version", version)
    app.router.add_get("/", root)  # add_get also answers HEAD
