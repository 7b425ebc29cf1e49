"""local-llm-gateway: an authenticating, routing, streaming reverse proxy for local LLM servers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
