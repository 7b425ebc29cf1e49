"""Making and checking stored secrets: API keys, their sha256 digests, bcrypt password hashes.

Backs ``gateway new-key`` and ``gateway hash-password`` and the bcrypt check the authenticator
runs in its thread pool. Holds no state. The config file only ever stores hashes:

* ``sha256:<hex>`` for keys this module generates (256 bits of entropy: a fast hash is enough,
  and a lookup costs nothing per request);
* bcrypt ``$2b$...`` for anything a person chose (passwords, memorable keys).

bcrypt only reads the first 72 bytes of a password and bcrypt 5 raises rather than truncate.
We refuse such passwords when hashing (a clear error at setup time) and ``verify_bcrypt`` answers
False for them, so nothing silently depends on truncation.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import Counter

import bcrypt
import yaml

from .config import AuthConfig, ConfigError
from .configfile import parse_config
from .credentials import has_control_chars

__all__ = [
    "BCRYPT_MAX_BYTES",
    "KEY_PREFIX",
    "MIN_BCRYPT_COST",
    "bcrypt_cost",
    "config_warnings",
    "hash_password",
    "new_key",
    "new_key_entry",
    "sha256_hash",
    "verify_bcrypt",
]

KEY_PREFIX = "sk-gw-"  # recognisable in leaked-secret scanners and logs; "sk-" keeps OpenAI SDKs happy
BCRYPT_MAX_BYTES = 72
MIN_BCRYPT_COST = 10
SLOW_BCRYPT_COST = 14  # above this one uncached check costs about a second of CPU
MANY_BCRYPT_KEYS = 3  # an unknown key is checked against every bcrypt-hashed key


def new_key() -> str:
    """A fresh API key: the prefix and 32 random bytes, URL-safe base64 (43 characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def sha256_hash(key: str) -> str:
    """The ``sha256:<hex>`` form stored in ``auth.api_keys[].hash``."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key_entry(name: str) -> tuple[str, str]:
    """A new key and the YAML ``auth.api_keys`` list item holding only its hash.

    Raises ValueError when ``name`` is not a valid config name: the snippet is checked by the real
    config parser, so what we print is always accepted.
    """
    key = new_key()
    snippet = (
        f"- name: {json.dumps(name)}\n"  # a JSON string is a valid YAML double-quoted scalar
        f'  hash: "{sha256_hash(key)}"\n'
        '  models: ["*"]\n'
        "  admin: false\n"
    )
    try:
        parse_config({"auth": {"api_keys": yaml.safe_load(snippet)}}, "<new-key>", env={})
    except ConfigError as exc:
        message = exc.errors[0].split(": ", 1)[-1]
        raise ValueError(f"invalid key name {name!r}: {message}") from None
    return key, snippet


def hash_password(password: str, rounds: int = 12) -> str:
    """A ``$2b$`` bcrypt hash; ValueError for a password that could never be presented or verified."""
    if not isinstance(password, str) or not password:
        raise ValueError("the password is empty")
    if has_control_chars(password):
        raise ValueError("the password contains control characters, which HTTP Basic cannot carry")
    data = password.encode("utf-8")  # a str from input()/stdin is always encodable
    if len(data) > BCRYPT_MAX_BYTES:
        raise ValueError(f"the password is {len(data)} bytes long; bcrypt reads at most {BCRYPT_MAX_BYTES}")
    if not 4 <= rounds <= 31:
        raise ValueError(f"bcrypt rounds must be 4-31, got {rounds}")
    return bcrypt.hashpw(data, bcrypt.gensalt(rounds=rounds, prefix=b"2b")).decode("ascii")


def verify_bcrypt(secret: str, hashed: str) -> bool:
    """True when ``secret`` matches the bcrypt ``hashed``. Never raises; blocking (use a thread)."""
    try:
        data = secret.encode("utf-8", "surrogatepass")
        if len(data) > BCRYPT_MAX_BYTES:
            return False
        return bcrypt.checkpw(data, hashed.encode("ascii"))
    except (ValueError, TypeError, AttributeError):  # malformed hash, wrong types
        return False


def bcrypt_cost(hashed: str) -> int | None:
    """The cost factor of a ``$2?$NN$`` hash, None for anything else."""
    if len(hashed) > 7 and hashed.startswith("$2") and hashed[3] == "$" and hashed[6] == "$":
        cost = hashed[4:6]
        return int(cost) if cost.isdigit() else None
    return None


def config_warnings(auth: AuthConfig) -> list[str]:
    """Weak or confusing auth setups: valid config, but worth a line at startup and in ``check``."""
    warnings: list[str] = []
    entries = [(f"auth.api_keys[{i}]", "hash", k.name, k.hash) for i, k in enumerate(auth.api_keys)]
    entries += [
        (f"auth.basic_users[{i}]", "password_hash", u.name, u.password_hash) for i, u in enumerate(auth.basic_users)
    ]
    for path, field_name, _, hashed in entries:
        cost = bcrypt_cost(hashed)
        if cost is not None and cost < MIN_BCRYPT_COST:
            warnings.append(
                f"{path}.{field_name}: bcrypt cost {cost} is below {MIN_BCRYPT_COST}; anyone who reads this file "
                f"can guess the secret quickly (re-hash with `gateway hash-password`)"
            )
        elif cost is not None and cost > SLOW_BCRYPT_COST:
            warnings.append(
                f"{path}.{field_name}: bcrypt cost {cost} makes every uncached check take seconds of CPU; "
                f"{MIN_BCRYPT_COST}-12 is plenty"
            )
    names: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for path, field_name, name, hashed in entries:
        if name in names:
            warnings.append(
                f"{path}.name: {name!r} is also the name of {names[name]}; "
                "the two are indistinguishable in metrics and logs"
            )
        names.setdefault(name, path)
        if hashed in hashes:
            warnings.append(
                f"{path}.{field_name}: same hash as {hashes[hashed]}; that secret authenticates as the first entry only"
            )
        hashes.setdefault(hashed, path)
    kinds = Counter("bcrypt" if bcrypt_cost(k.hash) is not None else "sha256" for k in auth.api_keys)
    if kinds["bcrypt"] >= MANY_BCRYPT_KEYS:
        warnings.append(
            f"auth.api_keys: {kinds['bcrypt']} keys use bcrypt hashes, so every unrecognised key costs "
            f"{kinds['bcrypt']} bcrypt checks; prefer sha256 keys from `gateway new-key`"
        )
    return warnings
