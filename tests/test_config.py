"""Config parsing: defaults, env expansion, typed values, and errors that name their key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError
from gateway.configfile import load_config, parse_config, parse_duration, parse_size

EXAMPLE = Path(__file__).resolve().parent.parent / "gateway.example.yaml"


def errors_of(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, env=env or {})
    return caught.value.errors


def test_defaults_front_the_local_ollama() -> None:
    config = parse_config({}, env={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert [(b.name, str(b.url), b.type) for b in config.backends] == [("ollama", "http://127.0.0.1:11434", "ollama")]
    assert config.auth is None and config.cors.allow_origins == () and config.server.max_body_size == 50 * 1024 * 1024


@pytest.mark.parametrize(
    ("value", "url"),
    [("0.0.0.0", "http://127.0.0.1:11434"), ("gpu.lan:9999", "http://gpu.lan:9999"),
     ("https://ollama.example", "https://ollama.example:11434"), ("127.0.0.1:11435", "http://127.0.0.1:11435")],
)  # fmt: skip
def test_ollama_host_env_is_honoured(value: str, url: str) -> None:
    assert str(parse_config({}, env={"OLLAMA_HOST": value}).backends[0].url) == url


def test_env_expansion_and_defaults() -> None:
    config = parse_config(
        {"backends": [{"name": "gpu", "url": "${GPU_URL}", "type": "vllm", "api_key": "${KEY:-}"}],
         "limits": {"redis_url": "${REDIS_URL:-}"}, "server": {"port": "${PORT:-9000}"}},
        env={"GPU_URL": "http://10.0.0.2:8000"},
    )  # fmt: skip
    assert str(config.backends[0].url) == "http://10.0.0.2:8000" and config.backends[0].api_key is None
    assert config.limits.redis_url is None and config.server.port == 9000


def test_every_error_names_its_key_path() -> None:
    errors = errors_of(
        {
            "server": {"port": 99999, "max_body_size": "lots", "trusted_proxies": ["not-a-cidr"], "hots": 1},
            "backends": [{"name": "a", "url": "localhost:11434"}, {"name": "a", "url": "http://x/v1", "type": "tgi"}],
            "routing": {"retries": -1, "queue_timeout": "soon"},
            "cors": {"allow_origins": ["*"], "allow_credentials": True},
            "auth": {"api_keys": [{"name": "k", "hash": "plaintext-key"}]},
            "logging": {"format": "xml"},
            "metrics": {"path": "metrics"},
            "api_key": "x",
            "model": {"x": 1},
        },
        env={},
    )
    text = "\n".join(errors)
    for expected in (
        "server.port: expected a port number 0-65535, got 99999",
        "server.max_body_size: expected a size such as 50MiB, got 'lots'",
        "server.trusted_proxies[0]: expected a CIDR",
        "server.hots: unknown key (did you mean 'host'?)",
        "backends[0].url: expected an http(s) URL such as http://127.0.0.1:11434, got 'localhost:11434'",
        "backends[1].url: expected the base URL without /v1",
        "backends[1].type: expected one of ollama, vllm, lmstudio, openai, got 'tgi'",
        "backends[1].name: duplicate backend name 'a'",
        "routing.retries: expected an integer 0-10, got -1",
        "routing.queue_timeout: expected a duration such as 30s, got 'soon'",
        "cors.allow_credentials: cannot be true when allow_origins contains '*'",
        "auth.api_keys[0].hash: expected 'sha256:<64 hex digits>' or a bcrypt hash",
        "logging.format: expected text or json, got 'xml'",
        "metrics.path: expected a free path such as /metrics, got 'metrics'",
        "api_key: unknown key",
        "model: unknown key (known keys: aliases, auth, backends",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"


def test_missing_env_var_is_an_error_naming_the_key() -> None:
    errors = errors_of({"backends": [{"name": "gpu", "url": "http://x:1", "api_key": "${VLLM_API_KEY}"}]})
    assert errors == [
        "backends[0].api_key: environment variable VLLM_API_KEY is not set (use ${VLLM_API_KEY:-default} for a default)"
    ]


def test_basic_users_need_bcrypt() -> None:
    errors = errors_of({"auth": {"basic_users": [{"name": "alice", "password_hash": "sha256:" + "0" * 64}]}})
    assert errors[0].startswith("auth.basic_users[0].password_hash: expected a bcrypt hash")


def test_empty_auth_section_is_an_error() -> None:
    assert errors_of({"auth": {"api_keys": []}}) == [
        "auth: expected at least one entry in api_keys or basic_users (omit the auth section for no auth)"
    ]


def test_durations_and_sizes() -> None:
    assert [parse_duration(v) for v in (5, 2.5, "30s", "5m", "1h", "250ms", "10")] == [5, 2.5, 30, 300, 3600, 0.25, 10]
    assert [parse_size(v) for v in (100, "10MiB", "50MB", "512KiB", "1GiB", "2k")] == [
        100,
        10 * 2**20,
        50 * 10**6,
        512 * 2**10,
        2**30,
        2000,
    ]
    for bad in ("fast", -1, True, "5 minutes"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_load_config_reports_yaml_and_file_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: [1,\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad, env={})
    assert caught.value.errors[0].startswith(f"{bad}: invalid YAML (line")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "missing.yaml", env={})
    assert "cannot read the config file" in caught.value.errors[0]
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(listed, env={})
    assert caught.value.errors == ["<root>: expected a mapping, got a list"]


def test_example_config_is_valid_and_documents_every_key() -> None:
    config = load_config(EXAMPLE, env={"VLLM_API_KEY": "x"})
    assert config.source == str(EXAMPLE)
    text = EXAMPLE.read_text()
    for key in ("host", "port", "max_body_size", "allowed_hosts", "trusted_proxies", "tls",
                "allow_unauthenticated_remote",
                "name", "url", "type", "models", "api_key", "timeouts", "connect", "first_byte", "idle",
                "max_concurrency", "weight", "health_check", "interval", "rise", "fall", "retries", "queue_size",
                "queue_timeout", "discovery_interval", "aliases", "api_keys", "basic_users", "password_hash", "admin",
                "limits", "requests_per_minute", "tokens_per_minute", "max_concurrent", "redis_url", "on_redis_error",
                "allow_origins", "allow_credentials", "allow_private_network", "max_age", "enabled", "path",
                "require_auth", "inject_usage", "level", "format"):  # fmt: skip
        assert f"{key}:" in text, key


@given(st.dictionaries(st.text(min_size=1, max_size=10), st.integers(), min_size=1, max_size=3))
def test_unknown_top_level_keys_are_rejected_with_a_path(extra: dict[str, int]) -> None:
    known = {"server", "backends", "routing", "aliases", "auth", "limits", "cors", "metrics", "logging"}
    unknown = {k: v for k, v in extra.items() if k not in known}
    if not unknown:
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(unknown, env={})
    for key in unknown:
        assert any(e.startswith(f"{key}: unknown key") for e in caught.value.errors)


def test_yaml_round_trip_of_parsed_values(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"backends": [{"name": "d", "url": "http://127.0.0.1:1", "timeouts": {"idle": "90s"},
                                                 "models": ["a:*"], "weight": 2}]}))  # fmt: skip
    backend = load_config(path, env={}).backends[0]
    assert backend.timeouts.idle == 90 and backend.models == ("a:*",) and backend.weight == 2


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"server": {"max_body_size": "100B"}}, ["server.max_body_size: expected at least 1KiB, got 100 bytes"]),
        (
            {"server": {"tls": {"cert": "/nope.pem"}}},
            ["server.tls.cert: file not found: /nope.pem", "server.tls.key: is required when tls is set"],
        ),
        ({"backends": [{"url": "http://x"}]}, ["backends[0].name: is required"]),
        ({"backends": [{"name": "a"}]}, ["backends[0].url: is required (e.g. http://127.0.0.1:11434)"]),
        ({"backends": []}, ["backends: expected at least one backend"]),
        (
            {"backends": [{"name": "bad name!", "url": "http://x"}]},
            ["backends[0].name: expected letters, digits, '_', '.', '-' (at most 64), got 'bad name!'"],
        ),
    ],
)
def test_each_section_error_is_exact(data: dict[str, object], expected: list[str]) -> None:
    assert errors_of(data) == expected


def test_a_config_file_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_bytes(b"server:\n  host: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.errors == [f"{path}: the config file is not UTF-8 text"]
