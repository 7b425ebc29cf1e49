from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.credentials import (
    MAX_SECRET_LENGTH,
    Credential,
    extract_credential,
    has_control_chars,
    model_allowed,
    parse_basic,
)


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


# ------------------------------------------------------------------ extract_credential


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("Authorization", "Bearer sk-1")], Credential("key", "sk-1")),
        ([("authorization", "bearer sk-1")], Credential("key", "sk-1")),
        ([("AUTHORIZATION", "BEARER   sk-1  ")], Credential("key", "sk-1")),
        ([("Authorization", "Bearer\tsk-1")], Credential("key", "sk-1")),
        ([("Authorization", "Bearer two words")], Credential("key", "two words")),
        ([("x-api-key", "sk-2")], Credential("key", "sk-2")),
        ([("X-API-Key", " sk-2 ")], Credential("key", "sk-2")),
        ([("api-key", "sk-3")], Credential("key", "sk-3")),
        ([("Authorization", "Basic " + b64("alice:s3cret"))], Credential("basic", "s3cret", "alice")),
        ([("Authorization", "basic " + b64("alice:a:b:c"))], Credential("basic", "a:b:c", "alice")),
        ([("Authorization", "Basic " + b64("alice:"))], Credential("basic", "", "alice")),
        ([("Authorization", "Basic " + b64("zoë:pässword"))], Credential("basic", "pässword", "zoë")),
        # precedence: Authorization first, then x-api-key, then api-key
        (
            [("Authorization", "Basic " + b64("alice:pw")), ("x-api-key", "placeholder")],
            Credential("basic", "pw", "alice"),
        ),
        ([("x-api-key", "first"), ("api-key", "second")], Credential("key", "first")),
        ([("Authorization", "Bearer "), ("x-api-key", "sk-2")], Credential("key", "sk-2")),
        ([("Authorization", "Bearer same"), ("Authorization", "Bearer same")], Credential("key", "same")),
        # nothing usable
        ([], None),
        ([("Authorization", "")], None),
        ([("Authorization", "Bearer")], None),
        ([("Authorization", "Bearer   ")], None),
        ([("x-api-key", "  ")], None),
        ([("Cookie", "session=abc")], None),
        # present but broken
        ([("Authorization", "Token abc")], "malformed"),
        ([("Authorization", "Digest username=x")], "malformed"),
        ([("Authorization", "sk-rawkey")], "malformed"),
        ([("Authorization", "Basic not-base64!")], "malformed"),
        ([("Authorization", "Basic " + b64("no-colon"))], "malformed"),
        ([("Authorization", "Basic " + b64("alice:pw")[:-1])], "malformed"),  # padding required
        ([("Authorization", "Basic " + b64("al\x00ice:pw"))], "malformed"),
        ([("Authorization", "Basic " + b64("alice:p\nw"))], "malformed"),
        ([("Authorization", "Basic " + b64(b"alice:\xff\xfe"))], "malformed"),  # not UTF-8
        ([("Authorization", "Bearer a"), ("Authorization", "Bearer b")], "malformed"),
        ([("x-api-key", "a"), ("x-api-key", "b")], "malformed"),
        ([("x-api-key", "bad\x01key")], "malformed"),
        ([("x-api-key", "bad\udcffkey")], "malformed"),  # invalid UTF-8 arrives as surrogates
        ([("Authorization", "Bearer " + "k" * (MAX_SECRET_LENGTH + 1))], "malformed"),
        ([("Authorization", "Token abc"), ("x-api-key", "sk-2")], "malformed"),  # no silent fallback
    ],
)
def test_extract_credential_table(headers: list[tuple[str, str]], expected: object) -> None:
    assert extract_credential(CIMultiDict(headers)) == expected


def test_extract_records_the_source_header() -> None:
    found = extract_credential(CIMultiDict({"api-key": "sk"}))
    assert isinstance(found, Credential) and found.source == "api-key"
    found = extract_credential(CIMultiDict({"Authorization": "Bearer sk"}))
    assert isinstance(found, Credential) and found.source == "Authorization"


def test_extract_from_plain_dict_is_case_insensitive() -> None:
    assert extract_credential({"AUTHORIZATION": "Bearer sk-9"}) == Credential("key", "sk-9")
    assert extract_credential({"X-Api-Key": "sk-8"}) == Credential("key", "sk-8")


def test_extract_refuses_non_string_values() -> None:
    assert extract_credential({"authorization": 42}) == "malformed"  # type: ignore[dict-item]


def test_credential_repr_hides_the_secret() -> None:
    cred = Credential("basic", "hunter2", "alice")
    assert "hunter2" not in repr(cred)
    assert "alice" in repr(cred)


header_names = st.sampled_from(["Authorization", "authorization", "X-API-Key", "api-key", "Host"]) | st.text()
schemes = st.sampled_from(["Bearer ", "Basic ", "bearer\t", "BASIC  ", "", "Digest "])


@given(st.lists(st.tuples(header_names, st.text())))
def test_extract_never_raises_on_arbitrary_headers(pairs: list[tuple[str, str]]) -> None:
    result = extract_credential(CIMultiDict(pairs))
    assert result is None or result == "malformed" or isinstance(result, Credential)


@given(schemes, st.text() | st.binary().map(lambda b: base64.b64encode(b).decode()))
def test_extract_never_raises_on_authorization_values(scheme: str, rest: str) -> None:
    result = extract_credential(CIMultiDict({"Authorization": scheme + rest}))
    assert result is None or result == "malformed" or isinstance(result, Credential)
    if isinstance(result, Credential):  # what comes out is always safe to hash and compare
        assert not has_control_chars(result.secret + result.username)
        assert result.kind == "basic" or result.secret


# ------------------------------------------------------------------ parse_basic


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b64("alice:pw"), ("alice", "pw")),
        (b64(":pw"), ("", "pw")),
        (b64("alice:"), ("alice", "")),
        (b64("a:b:c"), ("a", "b:c")),
        ("", None),
        ("YWxpY2U6cHc", None),  # missing padding
        ("YWxp Y2U6cHc=", None),  # embedded space
        ("YWxpY2U6cHc=\n", None),
        ("é", None),
        (b64("alice\x7f:pw"), None),
        (b64("alice:pw\x85"), None),  # C1 control
        (b64(b"\xc3\x28:pw"), None),
    ],
)
def test_parse_basic_table(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_basic(value) == expected


@given(st.text())
def test_parse_basic_never_raises(value: str) -> None:
    result = parse_basic(value)
    assert result is None or (isinstance(result, tuple) and len(result) == 2)


no_controls = st.characters(blacklist_categories=("Cc", "Cs"))


@given(st.text(no_controls).filter(lambda u: ":" not in u), st.text(no_controls))
def test_parse_basic_round_trips(user: str, password: str) -> None:
    assert parse_basic(b64(f"{user}:{password}")) == (user, password)


# ------------------------------------------------------------------ model_allowed


@pytest.mark.parametrize(
    ("globs", "model", "allowed"),
    [
        (("*",), "anything/at:all", True),
        ((), "llama3.2", False),
        (("llama3.2",), "llama3.2", True),
        (("llama3.2",), "llama3.2:latest", True),
        (("llama3.2",), "llama3.2:3b", False),
        (("llama3.2:latest",), "llama3.2", True),
        (("llama3.2:*",), "llama3.2", True),
        (("llama3.2:*",), "llama3.2:3b", True),
        (("llama3.2:*",), "llama3.20", False),
        (("llama3.2:3b",), "llama3.2", False),
        (("Llama*",), "llama3", False),  # case-sensitive
        (("qwen*", "phi4"), "phi4:latest", True),
        (("hf.co/org/repo",), "hf.co/org/repo:Q4_K_M", False),
        (("hf.co/org/repo:latest",), "hf.co/org/repo", True),
        (("localhost:5000/model",), "localhost:5000/model:latest", True),  # ':' before '/' is a port
        (("localhost:5000/model:latest",), "localhost:5000/model", True),
        (("localhost",), "localhost:5000/model", False),
        (("qwen",), "qwen:2", False),  # LM Studio instance suffix is not ':latest'
        (("meta-llama/*",), "meta-llama/Llama-3.1-8B-Instruct", True),
        (("[",), "[", True),  # an unmatched '[' is a literal, not a crash
        (("[z-a]",), "a", False),  # an empty range matches nothing
    ],
)
def test_model_allowed_table(globs: tuple[str, ...], model: str, allowed: bool) -> None:
    assert model_allowed(globs, model) is allowed


@given(st.lists(st.text(), max_size=5).map(tuple), st.text())
def test_model_allowed_never_raises(globs: tuple[str, ...], model: str) -> None:
    assert model_allowed(globs, model) in (True, False)
    assert model_allowed(("*",) + globs, model) is True


plain_names = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters=".-_"), min_size=1)


@given(plain_names)
def test_model_allowed_latest_twins(name: str) -> None:
    assert model_allowed((name,), name)
    assert model_allowed((name,), name + ":latest")
    assert model_allowed((name + ":latest",), name)
    assert model_allowed((name + ":*",), name)
    assert not model_allowed((name,), name + ":other")
