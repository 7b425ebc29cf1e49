"""The typed, frozen configuration tree: every key of ``gateway.yaml`` and its default.

What the rest of the gateway reads. Turning a file (YAML, ``${ENV}``) into this tree, with every
error named by its key path, is ``configfile.py``'s job.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from yarl import URL

__all__ = [
    "ApiKeyConfig",
    "AuthConfig",
    "BackendConfig",
    "BackendType",
    "BasicUserConfig",
    "CircuitConfig",
    "DialectName",
    "ConfigError",
    "CorsConfig",
    "GatewayConfig",
    "HealthCheckConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MetricsConfig",
    "RateLimits",
    "RoutingConfig",
    "ServerConfig",
    "ServerTimeoutsConfig",
    "TimeoutsConfig",
    "TlsConfig",
]

BackendType = Literal["ollama", "vllm", "lmstudio", "openai"]
BACKEND_TYPES: tuple[str, ...] = ("ollama", "vllm", "lmstudio", "openai")
DialectName = Literal["ollama", "openai", "anthropic"]
DIALECTS: tuple[str, ...] = ("ollama", "openai", "anthropic")
# What each backend type serves natively when ``speaks`` is not set (see "Dialect bridge").
DEFAULT_SPEAKS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"ollama": ("ollama", "openai"), "vllm": ("openai",), "lmstudio": ("openai",), "openai": ("openai",)}
)
DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"
MiB = 1024 * 1024
NO_STRINGS: tuple[str, ...] = ()
ALL_MODELS: tuple[str, ...] = ("*",)


class ConfigError(Exception):
    """Raised with every problem found; ``errors`` holds one ``path: message`` line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# --------------------------------------------------------------------------- the tree


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class ServerTimeoutsConfig:
    """Deadlines for slow clients (slowloris): the request head, the body, an idle keep-alive connection."""

    headers: float = 10.0
    body: float = 60.0
    keep_alive: float = 75.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_size: int = 50 * MiB
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    tls: TlsConfig | None = None
    allow_unauthenticated_remote: bool = False
    shutdown_timeout: float = 30.0
    shutdown_delay: float = 0.0  # SIGTERM: keep accepting (readiness 503) this long before closing the listener
    timeouts: ServerTimeoutsConfig = ServerTimeoutsConfig()
    max_connections: int = 10_000  # 0 = unlimited
    max_connections_per_client: int = 256  # per source address (IPv6: per /64); 0 = unlimited


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect: float = 5.0
    first_byte: float = 600.0  # long: Ollama and LM Studio load the model before the first byte
    idle: float = 120.0


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    interval: float = 10.0
    timeout: float = 3.0
    rise: int = 2
    fall: int = 2


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    failures: int = 3  # consecutive request failures that take the backend out; 0 = never
    cooldown: float = 10.0  # then one trial request (or the next probe) decides


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    url: URL
    type: BackendType = "ollama"
    models: tuple[str, ...] | None = None  # None: discover from the backend
    api_key: str | None = field(default=None, repr=False)
    timeouts: TimeoutsConfig = TimeoutsConfig()
    max_concurrency: int = 0
    weight: float = 1.0
    health_check: HealthCheckConfig = HealthCheckConfig()
    circuit: CircuitConfig = CircuitConfig()
    speaks: tuple[str, ...] = ()  # dialects served natively; empty = DEFAULT_SPEAKS[type] (set by configfile)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    retries: int = 1
    queue_size: int = 100
    queue_timeout: float = 30.0
    discovery_interval: float = 30.0
    affinity: Literal["none", "prefix"] = "none"


@dataclass(frozen=True, slots=True)
class RateLimits:
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    max_concurrent: int = 0
    max_queued: int = 0


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    name: str
    hash: str = field(repr=False)
    models: tuple[str, ...] = ("*",)
    admin: bool = False
    limits: RateLimits | None = None  # complete (unset keys filled from limits.default); None: the default
    share: float = 1.0  # fair-queue weight when backends are saturated


@dataclass(frozen=True, slots=True)
class BasicUserConfig:
    name: str
    password_hash: str = field(repr=False)
    models: tuple[str, ...] = ("*",)
    admin: bool = False
    limits: RateLimits | None = None  # complete (unset keys filled from limits.default); None: the default
    share: float = 1.0  # fair-queue weight when backends are saturated


@dataclass(frozen=True, slots=True)
class AuthConfig:
    api_keys: tuple[ApiKeyConfig, ...] = ()
    basic_users: tuple[BasicUserConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    default: RateLimits = RateLimits()
    redis_url: str | None = None
    on_redis_error: Literal["allow", "deny"] = "allow"
    state_path: str = "gateway-state.sqlite3"  # resolved against the config file's folder by configfile


@dataclass(frozen=True, slots=True)
class CorsConfig:
    allow_origins: tuple[str, ...] = ()
    allow_credentials: bool = False
    allow_private_network: bool = False
    max_age: float = 600.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    path: str = "/metrics"
    require_auth: bool = False
    inject_usage: bool = False


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    backends: tuple[BackendConfig, ...]
    server: ServerConfig = ServerConfig()
    routing: RoutingConfig = RoutingConfig()
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    auth: AuthConfig | None = None  # None: no authentication (loopback only unless allowed)
    limits: LimitsConfig = LimitsConfig()
    cors: CorsConfig = CorsConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    source: str = "<defaults>"
