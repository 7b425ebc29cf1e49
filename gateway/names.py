"""Model names as Ollama treats them: ``llama3.2`` and ``llama3.2:latest`` are one model.

Used by routing (which backend serves a name), by backends (lookup keys) and by credentials (which
names a key may use), so the three agree on what counts as the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

__all__ = ["globs_match", "ollama_canonical", "ollama_variants"]


def ollama_canonical(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest``; names that carry a tag are left alone.

    The tag is what follows the last ``:`` after the last ``/`` (``hf.co/org/repo:Q4`` has one,
    ``host:5000/repo`` does not).
    """
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def ollama_variants(name: str) -> tuple[str, ...]:
    """``name`` and its twin: ``x`` <-> ``x:latest``; a name with another tag has no twin."""
    canonical = ollama_canonical(name)
    bare = canonical.removesuffix(":latest")
    return tuple(dict.fromkeys((name, canonical, bare)))


def globs_match(globs: Sequence[str], name: str, ollama: bool = True) -> bool:
    """Whether a case-sensitive glob matches ``name`` (for Ollama names, or its twin)."""
    names = ollama_variants(name) if ollama else (name,)
    return any(fnmatchcase(n, g) for g in globs for n in names)
