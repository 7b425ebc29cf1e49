"""Header rewriting in both directions (RFC 9110 §7.6.1 and PROTOCOLS.md §6).

Upstream: hop-by-hop and Connection-named headers go, so do the client's credentials, cookies,
``Origin``/``Referer`` (Ollama answers 403 to unknown origins), its ``Host`` (Ollama checks it) and
forwarding headers it could forge; ``X-Forwarded-*``, ``Via``, ``X-Request-Id`` and the backend's own
key are added. Downstream: framing, CORS, auth challenges and cookies from the backend are dropped.
The sets are built once at import; per request the work is one pass over the headers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from ipaddress import IPv4Network, IPv6Network

__all__ = [
    "client_address",
    "host_name",
    "downstream_headers",
    "upstream_headers",
]

HOP_BY_HOP: frozenset[str] = frozenset(
    h
    for h in (
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-authorization", "proxy-authenticate",
    )
)  # fmt: skip

# Never sent upstream: consumed by the gateway, forgeable, recomputed, or harmful to the backend.
DROP_UPSTREAM: frozenset[str] = HOP_BY_HOP | frozenset(
    h
    for h in (
        "authorization", "x-api-key", "api-key", "cookie", "host", "origin", "referer", "expect",
        "content-length", "content-encoding", "accept-encoding",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip", "via",
        "x-request-id",
    )
)  # fmt: skip

# Never relayed downstream: framing is aiohttp's, CORS (every ``access-control-*``) and Vary are the
# gateway's, auth challenges from the backend would blame the client's key, cookies and server
# identity are the backend's business.
DROP_DOWNSTREAM: frozenset[str] = HOP_BY_HOP | frozenset(
    ("content-length", "www-authenticate", "set-cookie", "server", "date", "vary")
)
CORS_PREFIX = "access-control-"

VIA = "1.1 local-llm-gateway"


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


def _without(headers: Mapping[str, str], drop: frozenset[str], prefix: str = "\0") -> CIMultiDict[str]:
    """A copy without the ``drop`` headers, names starting with ``prefix``, and those the
    ``Connection`` header names (RFC 9110 §7.6.1)."""
    named = _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in drop or (named and lowered in named) or lowered.startswith(prefix):
            continue
        out.add(name, value)
    return out


def upstream_headers(
    headers: CIMultiDictProxy[str],
    *,
    peer_ip: str,
    peer_trusted: bool,
    scheme: str,
    request_id: str,
    api_key: str | None,
) -> CIMultiDict[str]:
    """The headers to send to a backend for a client request.

    ``peer_ip`` is the direct peer; a trusted proxy's ``X-Forwarded-For`` is extended with it,
    anyone else's is replaced by it.
    """
    out = _without(headers, DROP_UPSTREAM)
    forwarded_for = headers.get("X-Forwarded-For") if peer_trusted else None
    out["X-Forwarded-For"] = f"{forwarded_for}, {peer_ip}" if forwarded_for else peer_ip
    out["X-Forwarded-Proto"] = scheme
    out["Via"] = VIA
    out["X-Request-Id"] = request_id
    # Compressed SSE/NDJSON would be held back by the compressor and hide usage from the scanner.
    out["Accept-Encoding"] = "identity"
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def downstream_headers(headers: CIMultiDictProxy[str], *, streamed: bool) -> CIMultiDict[str]:
    """The backend response headers to relay to the client."""
    out = _without(headers, DROP_DOWNSTREAM, CORS_PREFIX)
    if streamed:
        out["Cache-Control"] = "no-cache"
        out["X-Accel-Buffering"] = "no"
    return out


def host_name(host: str | None) -> str:
    """The name in a ``Host`` header value, lower-cased, without port or IPv6 brackets."""
    if not host:
        return ""
    if host.startswith("["):  # [v6]:port or [v6]
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    return host.rsplit(":", 1)[0].lower()


def client_address(
    peer: str | None,
    forwarded_for: str | None,
    trusted: Iterable[IPv4Network | IPv6Network],
) -> tuple[str, bool]:
    """The client's address and whether the direct peer is a trusted proxy.

    Walks ``X-Forwarded-For`` from the right while each hop is trusted: the first untrusted
    address is the client (anything left of it could be forged).
    """
    peer = peer or "unknown"
    trusted = tuple(trusted)
    if not trusted or not _is_trusted(peer, trusted):
        return peer, False
    client = peer
    if forwarded_for:
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            client = hop
            if not _is_trusted(hop, trusted):
                break
    return client, True


def _is_trusted(address: str, trusted: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in trusted)
