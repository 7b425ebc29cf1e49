"""Reading ``gateway.yaml`` into the typed tree of ``config.py``: YAML, ``${VAR}``/``${VAR:-default}``,
validation of every key and value.

Parsing collects *all* errors, each naming its key path (``backends[1].url: expected ...``), so
``gateway check`` can print them together; unknown keys get a "did you mean" hint. Does no
network I/O; reading the file is the only side effect.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, cast

import yaml
from yarl import URL

from .config import (
    ALL_MODELS,
    BACKEND_TYPES,
    DEFAULT_OLLAMA_URL,
    DEFAULT_SPEAKS,
    DIALECTS,
    NO_STRINGS,
    ApiKeyConfig,
    AuthConfig,
    BackendConfig,
    BackendType,
    BasicUserConfig,
    CircuitConfig,
    ConfigError,
    CorsConfig,
    GatewayConfig,
    HealthCheckConfig,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    RateLimits,
    RoutingConfig,
    ServerConfig,
    ServerTimeoutsConfig,
    TimeoutsConfig,
    TlsConfig,
)

__all__ = [
    "default_config",
    "find_config_file",
    "load_config",
    "ollama_url_from_env",
    "parse_config",
    "parse_duration",
    "parse_size",
]


# --------------------------------------------------------------------------- scalars

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
}  # fmt: skip
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_ORIGIN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://(\*\.)?[A-Za-z0-9_.\-\[\]:]+?(:(\d{1,5}|\*))?$")
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_BCRYPT_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


def parse_duration(value: object) -> float:
    """Seconds from a number or a ``500ms``/``30s``/``5m``/``1h`` string."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError
        return float(value)
    if isinstance(value, str) and (m := _DURATION_RE.match(value)):
        return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError


def parse_size(value: object) -> int:
    """Bytes from a number or a ``10MiB``/``50MB``/``512KiB`` string."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE_RE.match(value)):
        unit = (m.group(2) or "").lower()
        if unit in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError


# --------------------------------------------------------------------------- reader

T = TypeVar("T")
_MISSING: Any = object()


class _Section:
    """A mapping being read at ``path``: typed getters that record errors instead of raising."""

    def __init__(self, data: object, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error("", f"expected a mapping, got {_describe(data)}")
            data = {}
        self.data: Mapping[str, Any] = data

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.key_path(key) if key else self.path or '<root>'}: {message}")

    def get(self, key: str, convert: Callable[[object], T], default: T, expected: str) -> T:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        try:
            return convert(value)
        except (ValueError, TypeError):
            self.error(key, f"expected {expected}, got {_describe(value)}")
            return default

    def section(self, key: str) -> _Section:
        self.seen.add(key)
        return _Section(self.data.get(key), self.key_path(key), self.errors)

    def items(self, key: str) -> list[_Section]:
        """Each mapping of the list at ``key``."""
        self.seen.add(key)
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"expected a list, got {_describe(value)}")
            return []
        return [_Section(item, f"{self.key_path(key)}[{i}]", self.errors) for i, item in enumerate(value)]

    def finish(self) -> None:
        """Report keys nobody asked for, with a "did you mean" hint."""
        for key in self.data:
            if key in self.seen:
                continue
            hint = difflib.get_close_matches(str(key), sorted(self.seen), n=1)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else f" (known keys: {', '.join(sorted(self.seen))})"
            self.error(str(key), f"unknown key{suffix}")


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        # A short list of names is shown, so the bad one can be seen (speaks: [klingon]).
        if all(isinstance(v, str) for v in value) and len(repr(value)) <= 80:
            return repr(value)
        return "a list"
    return repr(value)


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError


def _int(minimum: int = 0, maximum: int | None = None) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            else:
                raise ValueError
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError
        return value

    return convert


def _str(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError


def _choice(*choices: str) -> Callable[[object], Any]:
    def convert(value: object) -> str:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise ValueError

    return convert


def _str_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError


def _optional_str(value: object) -> str | None:
    text = _str(value)
    return text or None  # "${VAR:-}" expanding to "" means "not set"


def _redis_url(value: object) -> str | None:
    url = _optional_str(value)
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError
    return url


# --------------------------------------------------------------------------- sections


def _parse_server(s: _Section) -> ServerConfig:
    d = ServerConfig()
    host = s.get("host", _str, d.host, "a host name or IP address")
    port = s.get("port", _int(0, 65535), d.port, "a port number 0-65535")
    max_body = s.get("max_body_size", parse_size, d.max_body_size, "a size such as 50MiB")
    if max_body < 1024:
        s.error("max_body_size", f"expected at least 1KiB, got {max_body} bytes")
    allowed_hosts = s.get("allowed_hosts", _str_list, NO_STRINGS, "a list of host names")
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for i, cidr in enumerate(s.get("trusted_proxies", _str_list, NO_STRINGS, "a list of CIDRs such as 10.0.0.0/8")):
        try:
            proxies.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            s.error(f"trusted_proxies[{i}]", f"expected a CIDR such as 10.0.0.0/8, got {cidr!r}")
    tls = None
    if s.data.get("tls") is not None:
        t = s.section("tls")
        cert = t.get("cert", _str, "", "a certificate file path")
        key = t.get("key", _str, "", "a private key file path")
        t.finish()
        for name, path in (("cert", cert), ("key", key)):
            if not path:
                t.error(name, "is required when tls is set")
            elif not Path(path).is_file():
                t.error(name, f"file not found: {path}")
        tls = TlsConfig(cert, key)
    else:
        s.seen.add("tls")
    remote = s.get("allow_unauthenticated_remote", _bool, False, "true or false")
    shutdown_timeout = s.get("shutdown_timeout", parse_duration, d.shutdown_timeout, "a duration such as 30s")
    shutdown_delay = s.get("shutdown_delay", parse_duration, d.shutdown_delay, "a duration such as 5s (0 = none)")
    t = s.section("timeouts")
    td = ServerTimeoutsConfig()
    timeouts = ServerTimeoutsConfig(
        headers=t.get("headers", _positive_duration, td.headers, "a positive duration such as 10s"),
        body=t.get("body", _positive_duration, td.body, "a positive duration such as 60s"),
        keep_alive=t.get("keep_alive", _positive_duration, td.keep_alive, "a positive duration such as 75s"),
    )
    t.finish()
    max_connections = s.get("max_connections", _int(0), d.max_connections, "a non-negative integer (0 = unlimited)")
    per_client = s.get(
        "max_connections_per_client", _int(0), d.max_connections_per_client, "a non-negative integer (0 = unlimited)"
    )
    s.finish()
    return ServerConfig(
        host=host,
        port=port,
        max_body_size=max_body,
        allowed_hosts=tuple(h.strip("[]").lower() for h in allowed_hosts),  # IPv6 with or without brackets
        trusted_proxies=tuple(proxies),
        tls=tls,
        allow_unauthenticated_remote=remote,
        shutdown_timeout=shutdown_timeout,
        shutdown_delay=shutdown_delay,
        timeouts=timeouts,
        max_connections=max_connections,
        max_connections_per_client=per_client,
    )


def _url(value: object) -> URL:
    if not isinstance(value, str):
        raise ValueError
    url = URL(value.strip())
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError
    return url


def _parse_backend(s: _Section, index: int) -> BackendConfig | None:
    name = s.get("name", _str, "", "a name")
    if not name:
        s.error("name", "is required")
    elif not _NAME_RE.match(name):
        s.error("name", f"expected letters, digits, '_', '.', '-' (at most 64), got {name!r}")
    url = s.get("url", _url, None, "an http(s) URL such as http://127.0.0.1:11434")
    if "url" not in s.data:
        s.error("url", "is required (e.g. http://127.0.0.1:11434)")
    elif url is not None and url.path.rstrip("/").endswith("/v1"):
        s.error(
            "url",
            f"expected the base URL without /v1, got '{url}' (use '{url.with_path(url.path.rstrip('/')[:-3] or '/')}')",
        )
    backend_type = s.get("type", _choice(*BACKEND_TYPES), "ollama", "one of " + ", ".join(BACKEND_TYPES))
    models = s.get("models", _str_list, None, "a list of model names or globs")
    api_key = s.get("api_key", _optional_str, None, "a string")
    t = s.section("timeouts")
    td = TimeoutsConfig()
    timeouts = TimeoutsConfig(
        connect=t.get("connect", parse_duration, td.connect, "a duration such as 5s"),
        first_byte=t.get("first_byte", parse_duration, td.first_byte, "a duration such as 10m"),
        idle=t.get("idle", parse_duration, td.idle, "a duration such as 2m"),
    )
    t.finish()
    max_conc = s.get("max_concurrency", _int(0), 0, "a non-negative integer (0 = unlimited)")
    weight = s.get("weight", _positive_number, 1.0, "a positive number")
    h = s.section("health_check")
    hd = HealthCheckConfig()
    health = HealthCheckConfig(
        interval=h.get("interval", parse_duration, hd.interval, "a duration such as 10s"),
        timeout=h.get("timeout", parse_duration, hd.timeout, "a duration such as 3s"),
        rise=h.get("rise", _int(1), hd.rise, "a positive integer"),
        fall=h.get("fall", _int(1), hd.fall, "a positive integer"),
    )
    h.finish()
    c = s.section("circuit")
    cd = CircuitConfig()
    circuit = CircuitConfig(
        failures=c.get("failures", _int(0), cd.failures, "a non-negative integer (0 = never)"),
        cooldown=c.get("cooldown", _positive_duration, cd.cooldown, "a positive duration such as 10s"),
    )
    c.finish()
    speaks = s.get("speaks", _dialects, DEFAULT_SPEAKS.get(backend_type, ("openai",)), _DIALECTS_EXPECTED)
    s.finish()
    if not name or url is None:
        return None
    return BackendConfig(
        name,
        url,
        cast(BackendType, backend_type),
        models,
        api_key,
        timeouts,
        max_conc,
        weight,
        health,
        circuit,
        speaks,
    )


_DIALECTS_EXPECTED = "a non-empty list of dialects from " + ", ".join(DIALECTS)


def _dialects(value: object) -> tuple[str, ...]:
    names = _str_list(value)
    if not names or any(n not in DIALECTS for n in names):
        raise ValueError
    return tuple(dict.fromkeys(names))


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError
    return seconds


def _positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError
    return float(value)


def _parse_limits(s: _Section, base: RateLimits | None = None) -> RateLimits:
    """A limits mapping; keys it leaves out keep ``base``'s value (a client's own limits override the default)."""
    base = base or RateLimits()
    expected = "a non-negative integer (0 = unlimited)"
    limits = RateLimits(
        requests_per_minute=s.get("requests_per_minute", _int(0), base.requests_per_minute, expected),
        tokens_per_minute=s.get("tokens_per_minute", _int(0), base.tokens_per_minute, expected),
        tokens_per_day=s.get("tokens_per_day", _int(0), base.tokens_per_day, expected),
        max_concurrent=s.get("max_concurrent", _int(0), base.max_concurrent, expected),
        max_queued=s.get("max_queued", _int(0), base.max_queued, expected),
    )
    s.finish()
    return limits


def _parse_principal_common(
    s: _Section, default_limits: RateLimits
) -> tuple[str, tuple[str, ...], bool, RateLimits | None, float]:
    name = s.get("name", _str, "", "a name")
    if not name:
        s.error("name", "is required")
    elif not _NAME_RE.match(name):
        s.error("name", f"expected letters, digits, '_', '.', '@', '-' (at most 64), got {name!r}")
    models = s.get("models", _str_list, ALL_MODELS, "a list of model names or globs")
    admin = s.get("admin", _bool, False, "true or false")
    limits = _parse_limits(s.section("limits"), default_limits) if s.data.get("limits") is not None else None
    s.seen.add("limits")
    share = s.get("share", _positive_number, 1.0, "a positive number (fair-queue weight)")
    return name, models, admin, limits, share


def _hash(value: object) -> str:
    text = _str(value).strip()
    if _SHA256_RE.match(text) or _BCRYPT_RE.match(text):
        return text
    raise ValueError


_HASH_EXPECTED = (
    "'sha256:<64 hex digits>' or a bcrypt hash '$2b$12$...' "
    "(make one with `gateway new-key` or `gateway hash-password`)"
)


def _parse_auth(s: _Section, default_limits: RateLimits) -> AuthConfig:
    keys = []
    for k in s.items("api_keys"):
        name, models, admin, limits, share = _parse_principal_common(k, default_limits)
        hashed = k.get("hash", _hash, "", _HASH_EXPECTED)
        if "hash" not in k.data:
            k.error("hash", f"is required: {_HASH_EXPECTED}")
        k.finish()
        if name and hashed:
            keys.append(ApiKeyConfig(name, hashed, models, admin, limits, share))
    users = []
    for u in s.items("basic_users"):
        name, models, admin, limits, share = _parse_principal_common(u, default_limits)
        hashed = u.get("password_hash", _hash, "", "a bcrypt hash '$2b$12$...' (make one with `gateway hash-password`)")
        if "password_hash" not in u.data:
            u.error("password_hash", "is required: a bcrypt hash (make one with `gateway hash-password`)")
        elif hashed.startswith("sha256:"):
            u.error(
                "password_hash", "expected a bcrypt hash: passwords are chosen by people, sha256 is too fast for them"
            )
        u.finish()
        if name and hashed:
            users.append(BasicUserConfig(name, hashed, models, admin, limits, share))
    s.finish()
    if not s.errors and not keys and not users:
        s.error("", "expected at least one entry in api_keys or basic_users (omit the auth section for no auth)")
    return AuthConfig(tuple(keys), tuple(users))


def _origin(value: object) -> str:
    text = _str(value).strip().rstrip("/")
    if text == "*" or text == "null" or _ORIGIN_RE.match(text):
        return text
    raise ValueError


def _parse_cors(s: _Section) -> CorsConfig:
    d = CorsConfig()
    origins: list[str] = []
    raw = s.get("allow_origins", _str_list, NO_STRINGS, "a list of origins such as http://localhost:3000")
    for i, origin in enumerate(raw):
        try:
            origins.append(_origin(origin))
        except ValueError:
            s.error(
                f"allow_origins[{i}]",
                "expected '*' or an origin such as https://app.example.com, https://*.example.com, "
                f"http://localhost:* or chrome-extension://<id>, got {origin!r}",
            )
    credentials = s.get("allow_credentials", _bool, d.allow_credentials, "true or false")
    if credentials and "*" in origins:
        s.error(
            "allow_credentials",
            "cannot be true when allow_origins contains '*': browsers reject it; list the origins instead",
        )
    cors = CorsConfig(
        allow_origins=tuple(origins),
        allow_credentials=credentials,
        allow_private_network=s.get("allow_private_network", _bool, d.allow_private_network, "true or false"),
        max_age=s.get("max_age", parse_duration, d.max_age, "a duration such as 10m"),
    )
    s.finish()
    return cors


def _parse_metrics(s: _Section) -> MetricsConfig:
    d = MetricsConfig()
    path = s.get("path", _str, d.path, "a path such as /metrics")
    if (
        not path.startswith("/")
        or path.startswith(("/v1/", "/api/"))
        or path in ("/", "/healthz", "/readyz", "/dashboard")
    ):
        s.error("path", f"expected a free path such as /metrics, got {path!r}")
    metrics = MetricsConfig(
        enabled=s.get("enabled", _bool, d.enabled, "true or false"),
        path=path,
        require_auth=s.get("require_auth", _bool, d.require_auth, "true or false"),
        inject_usage=s.get("inject_usage", _bool, d.inject_usage, "true or false"),
    )
    s.finish()
    return metrics


def _aliases(s: _Section, key: str) -> Mapping[str, str]:
    s.seen.add(key)
    raw = s.data.get(key)
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        s.error(key, f"expected a mapping of requested name -> real model name, got {_describe(raw)}")
        return MappingProxyType({})
    result: dict[str, str] = {}
    for name, target in raw.items():
        if not isinstance(target, str) or not target:
            s.error(f"{key}.{name}", f"expected a model name, got {_describe(target)}")
        else:
            result[str(name)] = target
    return MappingProxyType(result)


def parse_config(data: object, source: str = "<config>", env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Build and validate the whole tree from a decoded YAML document; raise ConfigError with every problem."""
    errors: list[str] = []
    data = _expand_env(data, "", os.environ if env is None else env, errors)
    root = _Section(data, "", errors)
    server = _parse_server(root.section("server"))
    backends: list[BackendConfig] = []
    root.seen.add("backends")
    if "backends" not in root.data:
        backends.append(_default_backend(os.environ if env is None else env))
    else:
        items = root.items("backends")
        if not items and not any(e.startswith("backends:") for e in errors):
            root.error("backends", "expected at least one backend")
        names: list[object] = []
        for i, b in enumerate(items):
            name = b.data.get("name")
            if name is not None and name in names:
                errors.append(f"backends[{i}].name: duplicate backend name {name!r}")
            names.append(name)
            backend = _parse_backend(b, i)
            if backend is not None:
                backends.append(backend)
    r = root.section("routing")
    rd = RoutingConfig()
    routing = RoutingConfig(
        retries=r.get("retries", _int(0, 10), rd.retries, "an integer 0-10"),
        queue_size=r.get("queue_size", _int(0), rd.queue_size, "a non-negative integer"),
        queue_timeout=r.get("queue_timeout", parse_duration, rd.queue_timeout, "a duration such as 30s"),
        discovery_interval=r.get("discovery_interval", parse_duration, rd.discovery_interval, "a duration such as 30s"),
        affinity=r.get("affinity", _choice("none", "prefix"), rd.affinity, "none or prefix"),
    )
    r.finish()
    aliases = _aliases(root, "aliases")
    lim = root.section("limits")
    limits = LimitsConfig(
        default=_parse_limits(lim.section("default")),
        redis_url=lim.get("redis_url", _redis_url, None, "a redis://, rediss:// or unix:// URL"),
        on_redis_error=lim.get("on_redis_error", _choice("allow", "deny"), "allow", "allow or deny"),
        state_path=_state_path(lim.get("state_path", _str, LimitsConfig().state_path, "a file path"), source),
    )
    if limits.redis_url and importlib.util.find_spec("redis") is None:
        lim.error("redis_url", "needs the 'redis' package: pip install 'local-llm-gateway[redis]'")
    # A client's own limits are complete: the keys it sets, the default's for the rest.
    auth = _parse_auth(root.section("auth"), limits.default) if root.data.get("auth") is not None else None
    root.seen.add("auth")
    lim.finish()
    cors = _parse_cors(root.section("cors"))
    metrics = _parse_metrics(root.section("metrics"))
    lg = root.section("logging")
    logging_config = LoggingConfig(
        level=lg.get("level", _choice("debug", "info", "warning", "error"), "info", "debug, info, warning or error"),
        format=lg.get("format", _choice("text", "json"), "text", "text or json"),
    )
    lg.finish()
    root.finish()
    if errors:
        raise ConfigError(errors)
    return GatewayConfig(
        backends=tuple(backends),
        server=server,
        routing=routing,
        aliases=aliases,
        auth=auth,
        limits=limits,
        cors=cors,
        metrics=metrics,
        logging=logging_config,
        source=source,
    )


def _state_path(value: str, source: str) -> str:
    """``limits.state_path`` relative to the config file's folder (the working folder without a file)."""
    path = Path(value).expanduser()
    if path.is_absolute() or source.startswith("<"):
        return str(path)
    return str(Path(source).resolve().parent / path)


def _expand_env(value: object, path: str, env: Mapping[str, str], errors: list[str]) -> object:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; a missing VAR without default is an error."""
    if isinstance(value, str):

        def replace(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env and (env[name] or default is None):
                return env[name]
            if default is not None:
                return default
            errors.append(
                f"{path or '<root>'}: environment variable {name} is not set (use ${{{name}:-default}} for a default)"
            )
            return ""

        return _ENV_RE.sub(replace, value)
    if isinstance(value, Mapping):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), env, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", env, errors) for i, v in enumerate(value)]
    return value


def _default_backend(env: Mapping[str, str]) -> BackendConfig:
    """The local Ollama, honouring ``$OLLAMA_HOST`` the way the ollama CLI reads it."""
    return BackendConfig(name="ollama", url=ollama_url_from_env(env.get("OLLAMA_HOST", "")), type="ollama")


def ollama_url_from_env(value: str) -> URL:
    value = value.strip()
    if not value:
        return URL(DEFAULT_OLLAMA_URL)
    if "://" not in value:
        value = "http://" + value
    url = URL(value)
    host = url.host or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # a bind-all address; connect over loopback
        host = "127.0.0.1"
    port = url.explicit_port or 11434
    return URL.build(scheme=url.scheme or "http", host=host, port=port)


def default_config(env: Mapping[str, str] | None = None) -> GatewayConfig:
    return parse_config({}, "<defaults>", env)


def find_config_file(explicit: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """``-c FILE``, else ``$GATEWAY_CONFIG``, else ``./gateway.yaml`` if it exists, else None (defaults)."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get("GATEWAY_CONFIG"):
        return Path(env["GATEWAY_CONFIG"])
    local = Path("gateway.yaml")
    return local if local.is_file() else None


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and validate ``path`` (None: built-in defaults); raise ConfigError, never a traceback-worthy error."""
    if path is None:
        return default_config(env)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: invalid YAML{where}: {problem}"]) from None
    return parse_config(data, str(path), env)
