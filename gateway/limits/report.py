"""What the limits look like from outside: ``gateway check``'s lines, ``/readyz`` and the status page.

Read-only views over the config and a ``Limiter``; nothing here counts or refuses.
"""

from __future__ import annotations

from typing import Any

from ..config import ApiKeyConfig, BasicUserConfig, GatewayConfig, RateLimits
from ..errors import ServiceUnavailable
from .engine import Limiter

__all__ = ["LIMIT_KEYS", "describe_limits", "effective_limit_lines", "readiness", "status_page"]

LIMIT_KEYS = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_concurrent", "max_queued")


def describe_limits(limits: RateLimits) -> str:
    """``requests_per_minute=60 tokens_per_day=2000000`` (the keys that limit), or ``unlimited``."""
    parts = [f"{key}={value}" for key in LIMIT_KEYS if (value := getattr(limits, key))]
    return " ".join(parts) or "unlimited"


def effective_limit_lines(config: GatewayConfig) -> list[str]:
    """One line per client with its effective limits (its own, else ``limits.default``) and share."""
    default = config.limits.default
    if config.auth is None:
        return [f"limits: anonymous callers, each source address (IPv6: each /64): {describe_limits(default)}"]
    lines = [f"limits: default: {describe_limits(default)}"]
    entries: tuple[ApiKeyConfig | BasicUserConfig, ...] = (*config.auth.api_keys, *config.auth.basic_users)
    for entry in entries:
        kind = "key" if isinstance(entry, ApiKeyConfig) else "user"
        whose = "its own" if entry.limits is not None else "the default"
        limits = entry.limits or default
        lines.append(f"limits: {kind} '{entry.name}' ({whose}): {describe_limits(limits)}, share {entry.share:g}")
    return lines


def readiness(limiter: Limiter | None) -> dict[str, Any] | None:
    """The ``limits`` part of ``/readyz``: which store, and whether it is healthy."""
    if limiter is None:
        return None
    ok, detail = limiter.store.status()
    return {"store": limiter.store.name, "ok": ok, "detail": detail}


def status_page(limiter: Limiter | None) -> dict[str, Any] | None:
    """The ``limits`` part of ``/dashboard/data``: the store and one row per client."""
    if limiter is None:
        return None
    try:
        clients = list(limiter.usage())
    except ServiceUnavailable:  # a shared store that is down under on_redis_error: deny has no counts to show
        clients = []
    return {**(readiness(limiter) or {}), "clients": clients}
