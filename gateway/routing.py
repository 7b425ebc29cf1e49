"""Which backend serves a model: aliases, per-backend globs or discovered lists, and selection.

Pure: reads ``Backend`` state, does no I/O. A requested name is first rewritten by ``aliases``, then
matched against each backend: its ``models`` globs when configured, else the names it reported.
Ollama's ``llama3.2`` and ``llama3.2:latest`` are one model (only on Ollama backends: LM Studio's
``:2`` is not a tag). Among the backends that serve a model, healthy ones whose circuit is not open
are tried least-loaded first (in-flight requests per unit of weight), ties going round-robin; when
Ollama backends serve it, boxes that hold the model in memory come first (``placement.rank``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .backends import Backend
from .names import globs_match, ollama_canonical
from .placement import rank

__all__ = ["Route", "Router"]

MAX_CACHED_ROUTES = 4096


@dataclass(frozen=True, slots=True)
class Route:
    requested: str  # what the client sent
    model: str  # the real model name sent upstream (after aliases)
    backends: tuple[Backend, ...]  # every backend serving it, config order
    placed: bool = False  # an Ollama backend is among them: order by loaded models first


class Router:
    def __init__(self, backends: Sequence[Backend], aliases: Mapping[str, str]) -> None:
        self.backends = tuple(backends)
        self.aliases = dict(aliases)
        # Ollama-style clients may send "alias:latest" for an alias defined without a tag.
        for alias, target in aliases.items():
            self.aliases.setdefault(ollama_canonical(alias), target)
        self._turn = itertools.count()
        self._cache: dict[str, Route] = {}
        self._version = -1

    def resolve(self, requested: str) -> Route | None:
        """The route for a name; found routes are cached until a backend's model list changes."""
        version = sum(b.models_version for b in self.backends)
        if version != self._version:
            self._cache.clear()
            self._version = version
        route = self._cache.get(requested)
        if route is not None:
            return route
        model = self.aliases.get(requested, requested)
        serving = tuple(b for b in self.backends if self.serves(b, model))
        if not serving:
            return None  # misses are not cached: random names must not fill memory
        route = Route(requested, model, serving, any(b.loaded is not None for b in serving))
        if len(self._cache) < MAX_CACHED_ROUTES:
            self._cache[requested] = route
        return route

    @staticmethod
    def serves(backend: Backend, model: str) -> bool:
        globs = backend.config.models
        if globs is not None:
            return globs_match(globs, model, backend.is_ollama)
        return backend.lookup_key(model) in backend.models

    def order(self, route: Route) -> list[Backend]:
        """Candidates to try, best first; backends marked down or with an open circuit are left out."""
        # Backend.available, inlined: the closed-circuit test is one attribute read per backend.
        healthy = [
            b for b in route.backends if b.up and ((c := b.circuit) is None or c.open_until == 0.0 or c.usable())
        ]
        if len(healthy) > 1:
            turn = next(self._turn)
            n = len(healthy)
            healthy = [healthy[(i + turn) % n] for i in range(n)]
            healthy.sort(key=lambda b: b.load)  # stable: rotation breaks ties
            if route.placed:  # loaded model first, then room, then idle, then busy; load order within
                now, model = time.monotonic(), route.model
                healthy.sort(key=lambda b: rank(b.loaded, b.lookup_key(model), now))
        return healthy

    def listed_models(self, backend: Backend) -> list[str]:
        """Names a backend is listed under: discovered names its globs allow, plus literal globs."""
        globs = backend.config.models
        names = [m.name for m in backend.models.values()]
        if globs is None:
            return names
        listed = [n for n in names if globs_match(globs, n, backend.is_ollama)]
        seen = {backend.lookup_key(n) for n in listed}
        for g in globs:
            if not any(c in g for c in "*?[") and backend.lookup_key(g) not in seen:
                listed.append(g)
                seen.add(backend.lookup_key(g))
        return listed
