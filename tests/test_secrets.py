from __future__ import annotations

import hashlib
import re
import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ApiKeyConfig, AuthConfig, BasicUserConfig
from gateway.configfile import parse_config
from gateway.secrets import (
    KEY_PREFIX,
    bcrypt_cost,
    config_warnings,
    hash_password,
    new_key,
    new_key_entry,
    sha256_hash,
    verify_bcrypt,
)

FAKE_TAIL = "5nmsIIOz51bFubcKLN2Mp.Y8kWwYj6aNE5mduHf0FRLsv0B8e13ju"  # valid bcrypt salt+digest chars


def bcrypt_string(cost: int, tail: str = FAKE_TAIL) -> str:
    return f"$2b${cost:02d}${tail}"


def test_new_key_is_prefixed_urlsafe_and_fresh() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key.removeprefix(KEY_PREFIX))


def test_sha256_hash_known_vector() -> None:
    assert sha256_hash("test") == "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert sha256_hash("é") == "sha256:" + hashlib.sha256("é".encode()).hexdigest()


def test_new_key_entry_round_trips_through_yaml_and_parse_config() -> None:
    key, snippet = new_key_entry("laptop")
    assert key not in snippet  # only the hash is printed in the config entry
    items = yaml.safe_load(snippet)
    assert items == [{"name": "laptop", "hash": sha256_hash(key), "models": ["*"], "admin": False}]
    config = parse_config({"auth": {"api_keys": items}}, env={})
    assert config.auth is not None
    (entry,) = config.auth.api_keys
    assert entry == ApiKeyConfig("laptop", sha256_hash(key), ("*",), False)


def test_new_key_entry_pastes_under_api_keys() -> None:
    _, first = new_key_entry("laptop")
    _, second = new_key_entry("phone")
    document = "auth:\n  api_keys:\n" + textwrap.indent(first + second, "    ")
    config = parse_config(yaml.safe_load(document), env={})
    assert config.auth is not None
    assert [k.name for k in config.auth.api_keys] == ["laptop", "phone"]


@pytest.mark.parametrize("name", ["true", "123", "1e3", "null", "ci.runner-1", "bob@home"])
def test_new_key_entry_names_stay_strings(name: str) -> None:
    _, snippet = new_key_entry(name)
    assert yaml.safe_load(snippet)[0]["name"] == name


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "x" * 65, 'quote"d'])
def test_new_key_entry_rejects_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid key name"):
        new_key_entry(name)


def test_hash_password_and_verify() -> None:
    hashed = hash_password("correct horse", rounds=4)
    assert hashed.startswith("$2b$04$")
    assert bcrypt_cost(hashed) == 4
    assert verify_bcrypt("correct horse", hashed) is True
    assert verify_bcrypt("correct horsf", hashed) is False
    assert verify_bcrypt("", hashed) is False
    assert hash_password("correct horse", rounds=4) != hashed  # salted
    parse_config({"auth": {"basic_users": [{"name": "a", "password_hash": hashed}]}}, env={})  # config accepts it


def test_hash_password_multibyte_counts_bytes() -> None:
    hashed = hash_password("é" * 36, rounds=4)  # 72 bytes: the maximum
    assert verify_bcrypt("é" * 36, hashed)
    with pytest.raises(ValueError, match="74 bytes"):
        hash_password("é" * 37, rounds=4)


def test_long_passwords_are_refused_not_truncated() -> None:
    with pytest.raises(ValueError, match="72"):
        hash_password("a" * 73, rounds=4)
    prefix_hash = hash_password("a" * 72, rounds=4)
    assert verify_bcrypt("a" * 72, prefix_hash)
    assert verify_bcrypt("a" * 73, prefix_hash) is False  # would match if bcrypt truncated


@pytest.mark.parametrize(
    ("password", "rounds", "message"),
    [
        ("", 4, "empty"),
        ("tab\tinside", 4, "control"),
        ("nul\x00", 4, "control"),
        ("ok", 3, "rounds"),
        ("ok", 32, "rounds"),
    ],
)
def test_hash_password_rejects(password: str, rounds: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hash_password(password, rounds=rounds)


@pytest.mark.parametrize("hashed", ["", "garbage", "sha256:00", "$2b$04$short", "$2b$99$" + FAKE_TAIL])
def test_verify_bcrypt_false_on_bad_hashes(hashed: str) -> None:
    assert verify_bcrypt("pw", hashed) is False


def test_verify_bcrypt_false_on_wrong_types() -> None:
    assert verify_bcrypt(None, "$2b$04$" + FAKE_TAIL) is False  # type: ignore[arg-type]
    assert verify_bcrypt("pw", None) is False  # type: ignore[arg-type]


@settings(max_examples=50)
@given(st.text(), st.text())
def test_verify_bcrypt_never_raises(secret: str, hashed: str) -> None:
    assert verify_bcrypt(secret, hashed) is False


def test_config_warnings_clean_setup() -> None:
    auth = AuthConfig(
        api_keys=(ApiKeyConfig("laptop", sha256_hash("k1")), ApiKeyConfig("memo", bcrypt_string(12))),
        basic_users=(BasicUserConfig("alice", bcrypt_string(10, FAKE_TAIL[::-1])),),
    )
    assert config_warnings(auth) == []


def test_config_warnings_low_and_high_cost() -> None:
    auth = AuthConfig(
        api_keys=(ApiKeyConfig("a", sha256_hash("k")), ApiKeyConfig("b", bcrypt_string(15))),
        basic_users=(BasicUserConfig("alice", bcrypt_string(9)),),
    )
    warnings = config_warnings(auth)
    assert len(warnings) == 2
    assert warnings[0].startswith("auth.api_keys[1].hash: bcrypt cost 15 ")
    assert warnings[1].startswith("auth.basic_users[0].password_hash: bcrypt cost 9 is below 10")


def test_config_warnings_duplicate_names_and_hashes() -> None:
    same = sha256_hash("shared")
    auth = AuthConfig(
        api_keys=(ApiKeyConfig("alice", same), ApiKeyConfig("ci", same)),
        basic_users=(BasicUserConfig("alice", bcrypt_string(12)),),
    )
    warnings = config_warnings(auth)
    assert (
        "auth.api_keys[1].hash: same hash as auth.api_keys[0]; that secret authenticates as the first entry only"
        in warnings
    )
    assert any(w.startswith("auth.basic_users[0].name: 'alice' is also the name of auth.api_keys[0]") for w in warnings)
    assert len(warnings) == 2


def test_config_warnings_many_bcrypt_keys() -> None:
    keys = tuple(ApiKeyConfig(f"k{i}", bcrypt_string(12, FAKE_TAIL[:-1] + c)) for i, c in enumerate("uvw"))
    warnings = config_warnings(AuthConfig(api_keys=keys))
    assert warnings == [
        "auth.api_keys: 3 keys use bcrypt hashes, so every unrecognised key costs 3 bcrypt checks; "
        "prefer sha256 keys from `gateway new-key`"
    ]


def test_bcrypt_cost_parsing() -> None:
    assert bcrypt_cost(bcrypt_string(12)) == 12
    assert bcrypt_cost("$2a$08$" + FAKE_TAIL) == 8
    assert bcrypt_cost(sha256_hash("x")) is None
    assert bcrypt_cost("$2b$xx$") is None
