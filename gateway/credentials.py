"""What a client presented, read from request headers, and which models a principal may use.

Pure functions over strings: no aiohttp.web, no I/O, no secrets stored. Every function here takes
attacker-controlled input and must never raise; a broken header is reported as ``"malformed"``
(a 401 the client can act on), never as a 500.

Accepted forms (PROTOCOLS §6.1): ``Authorization: Bearer KEY`` (OpenAI SDKs, Open WebUI),
``Authorization: Basic base64(user:pass)`` (also what ``http://user:pass@host`` URLs become),
``x-api-key: KEY`` (Anthropic SDK, Claude Code) and ``api-key: KEY`` (Azure-style clients).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .names import globs_match

__all__ = [
    "MAX_SECRET_LENGTH",
    "Credential",
    "extract_credential",
    "has_control_chars",
    "model_allowed",
    "parse_basic",
]

MAX_SECRET_LENGTH = 4096  # far above any real key; bounds hashing work and rejects garbage early
# Precedence when several are sent: a client that puts the gateway user in the URL (-> Basic)
# and a placeholder in x-api-key (the Anthropic SDK insists on one) must still get in.
_KEY_HEADERS = ("x-api-key", "api-key")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1 (RFC 7617: no CTLs)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")  # invalid UTF-8 on the wire, decoded with surrogateescape
_OWS = " \t"
_AUTH_RE = re.compile(r"([!-~]+)(?:[ \t]+(.*))?\Z", re.DOTALL)  # scheme, then 1*SP credentials

Malformed = Literal["malformed"]


@dataclass(frozen=True, slots=True)
class Credential:
    """One presented secret. ``source`` names the header it came from, for error messages only."""

    kind: Literal["key", "basic"]
    secret: str = field(repr=False)
    username: str = ""
    source: str = field(default="", compare=False)


def has_control_chars(text: str) -> bool:
    return _CONTROL_RE.search(text) is not None


def parse_basic(value: str) -> tuple[str, str] | None:
    """``(user, password)`` from the token68 after ``Basic ``; None for anything not strictly valid."""
    if not isinstance(value, str) or not value or len(value) > 2 * MAX_SECRET_LENGTH:
        return None
    try:
        raw = base64.b64decode(value, validate=True)  # no whitespace, padding required
        text = raw.decode("utf-8")
    except (ValueError, binascii.Error):  # non-ASCII input, bad alphabet/padding, bad UTF-8
        return None
    user, sep, password = text.partition(":")  # first ':' only: a password may contain ':'
    if not sep or has_control_chars(text):
        return None
    return user, password


def _values(headers: Mapping[str, str], name: str) -> list[object]:
    getall = getattr(headers, "getall", None)
    if callable(getall):
        try:
            return list(getall(name, ()))
        except Exception:  # an exotic mapping; fall back to iteration
            pass
    return [v for k, v in headers.items() if isinstance(k, str) and k.lower() == name]


def _single(values: Iterable[object]) -> str | None | Malformed:
    """The one non-empty value of a header; repeated headers must agree."""
    found: str | None = None
    for value in values:
        if not isinstance(value, str):
            return "malformed"
        value = value.strip(_OWS)
        if not value:
            continue
        if found is not None and value != found:
            return "malformed"
        found = value
    return found


def _valid_secret(secret: str) -> bool:
    return len(secret) <= MAX_SECRET_LENGTH and not has_control_chars(secret) and _SURROGATE_RE.search(secret) is None


def _from_authorization(value: str) -> Credential | None | Malformed:
    match = _AUTH_RE.match(value)
    if match is None:
        return "malformed"
    scheme, rest = match.group(1).lower(), (match.group(2) or "").strip(_OWS)
    if scheme == "bearer":
        if not rest:
            return None  # "Bearer " with nothing: a client with no key configured
        return Credential("key", rest, source="Authorization") if _valid_secret(rest) else "malformed"
    if scheme == "basic":
        parsed = parse_basic(rest)
        if parsed is None:
            return "malformed"
        return Credential("basic", parsed[1], parsed[0], source="Authorization")
    return "malformed"  # an unknown scheme is a mistake worth reporting, not "missing"


def extract_credential(headers: Mapping[str, str]) -> Credential | None | Malformed:
    """The credential in ``headers``: Authorization first, then x-api-key, then api-key.

    None when nothing usable was sent. ``"malformed"`` when a header is present but broken, or
    repeated with different values. Never raises.
    """
    try:
        auth = _single(_values(headers, "authorization"))
        if auth == "malformed":
            return "malformed"
        if auth is not None:
            found = _from_authorization(auth)
            if found is not None:
                return found
        for name in _KEY_HEADERS:
            key = _single(_values(headers, name))
            if key == "malformed":
                return "malformed"
            if key is not None:
                return Credential("key", key, source=name) if _valid_secret(key) else "malformed"
    except Exception:  # a hostile or broken mapping object: refuse, don't crash the request
        return "malformed"
    return None


def model_allowed(globs: tuple[str, ...], model: str) -> bool:
    """True when a case-sensitive glob matches ``model`` or its ``:latest`` twin. Never raises."""
    if not isinstance(model, str):
        return False
    if "*" in globs:  # the common "everything" scope: no matching needed
        return True
    try:
        return globs_match(globs, model)
    except Exception:  # a glob fnmatch cannot compile: deny rather than crash
        return False
