from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Iterator

import pytest
import yaml
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import ANONYMOUS, Authenticator, AuthTuning, Principal, source_key
from gateway.config import ApiKeyConfig, AuthConfig, BasicUserConfig, RateLimits
from gateway.configfile import parse_config
from gateway.errors import TooManyRequests, Unauthorized
from gateway.secrets import hash_password, new_key_entry, sha256_hash, verify_bcrypt

SHA_KEY = "sk-gw-sha256-test-key"
MEMO_KEY = "memorable-key"  # a human-chosen key, stored as bcrypt
MEMO_HASH = hash_password(MEMO_KEY, rounds=4)
ALICE_PW = "alice:pw with colon"
ALICE_HASH = hash_password(ALICE_PW, rounds=4)
BASIC_CHALLENGE = 'Basic realm="gateway", charset="UTF-8"'
LAPTOP = Principal("laptop", admin=False, models=("llama3.2:*",), limits=RateLimits(requests_per_minute=5))
MEMO = Principal("memo", admin=True, models=("*",))
ALICE = Principal("alice", admin=False, models=("qwen*",))


def make_auth(*, basic: bool = True, bcrypt_keys: bool = True) -> AuthConfig:
    keys = [ApiKeyConfig("laptop", sha256_hash(SHA_KEY), LAPTOP.models, False, LAPTOP.limits)]
    if bcrypt_keys:
        keys.append(ApiKeyConfig("memo", MEMO_HASH, ("*",), True))
    users = (BasicUserConfig("alice", ALICE_HASH, ALICE.models, False),) if basic else ()
    return AuthConfig(tuple(keys), users)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Verify:
    """verify_bcrypt that records every call (hash, thread) and can be held at a gate."""

    def __init__(self, gate: threading.Event | None = None, answer: bool | None = None) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.started = threading.Semaphore(0)
        self.gate = gate
        self.answer = answer
        self._lock = threading.Lock()

    def __call__(self, secret: str, hashed: str) -> bool:
        with self._lock:
            self.calls.append((hashed, threading.get_ident(), threading.current_thread().name))
        self.started.release()
        if self.gate is not None:
            assert self.gate.wait(10)
        return verify_bcrypt(secret, hashed) if self.answer is None else self.answer

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, 10)


class Env:
    """An Authenticator under test, with its clock, verify spy and reported failure reasons."""

    def __init__(self, config: AuthConfig | None = None, *, gate: threading.Event | None = None,
                 answer: bool | None = None, **tuning: float) -> None:  # fmt: skip
        self.clock = Clock()
        self.verify = Verify(gate, answer)
        self.reasons: list[str] = []
        self.auth = Authenticator(
            make_auth() if config is None else config,
            on_failure=self.reasons.append,
            clock=self.clock,
            tuning=AuthTuning(**tuning),  # type: ignore[arg-type]
            verify=self.verify,
        )

    async def __call__(self, headers: dict[str, str], remote: str = "192.0.2.1") -> Principal:
        return await self.auth.authenticate(headers, remote)

    async def fails(self, headers: dict[str, str], remote: str = "192.0.2.1") -> Unauthorized:
        with pytest.raises(Unauthorized) as info:
            await self.auth.authenticate(headers, remote)
        return info.value

    async def throttled(self, headers: dict[str, str], remote: str = "192.0.2.1") -> TooManyRequests:
        with pytest.raises(TooManyRequests) as info:
            await self.auth.authenticate(headers, remote)
        return info.value


@pytest.fixture
def envs() -> Iterator[list[Env]]:
    made: list[Env] = []
    yield made
    for env in made:
        env.auth.close()


@pytest.fixture
def env(envs: list[Env]) -> Env:
    envs.append(Env())
    return envs[-1]


def new_env(envs: list[Env], config: AuthConfig | None = None, **kwargs: object) -> Env:
    envs.append(Env(config, **kwargs))  # type: ignore[arg-type]
    return envs[-1]


# ------------------------------------------------------------------ who gets in


async def test_no_auth_config_is_anonymous_full_access() -> None:
    auth = Authenticator(None)
    assert not auth.enabled
    assert await auth.authenticate({}, "127.0.0.1") is ANONYMOUS
    assert await auth.authenticate({"Authorization": "Token junk"}, "127.0.0.1") is ANONYMOUS
    assert ANONYMOUS.admin and ANONYMOUS.may_use("anything:7b")
    auth.close()


@pytest.mark.parametrize("headers", [bearer(SHA_KEY), {"x-api-key": SHA_KEY}, {"api-key": SHA_KEY}])
async def test_sha256_key_in_every_header(env: Env, headers: dict[str, str]) -> None:
    assert await env(headers) == LAPTOP
    assert env.verify.calls == []  # sha256 keys never touch bcrypt
    assert env.reasons == []


async def test_bcrypt_key_and_basic_user(env: Env) -> None:
    assert await env(bearer(MEMO_KEY)) == MEMO
    assert await env(basic("alice", ALICE_PW)) == ALICE
    assert [c[0] for c in env.verify.calls] == [MEMO_HASH, ALICE_HASH]


async def test_new_key_entry_works_end_to_end(envs: list[Env]) -> None:
    key, snippet = new_key_entry("ci")
    config = parse_config({"auth": {"api_keys": yaml.safe_load(snippet)}}, env={})
    assert config.auth is not None
    env = new_env(envs, config.auth)
    assert await env({"x-api-key": key}) == Principal("ci", admin=False, models=("*",))
    await env.fails({"x-api-key": key[:-1]})


async def test_duplicate_sha256_entries_first_wins(envs: list[Env]) -> None:
    same = sha256_hash(SHA_KEY)
    env = new_env(envs, AuthConfig((ApiKeyConfig("first", same), ApiKeyConfig("second", same, admin=True))))
    assert (await env(bearer(SHA_KEY))).name == "first"


# ------------------------------------------------------------------ who does not


async def test_wrong_key_is_401_with_challenge(env: Env) -> None:
    err = await env.fails(bearer("sk-wrong-SECRET"))
    assert err.status == 401
    assert err.code == "invalid_api_key"
    assert err.headers == {"WWW-Authenticate": BASIC_CHALLENGE}
    assert err.message == "Invalid API key (from the Authorization header)"
    assert env.reasons == ["invalid"]
    assert [c[0] for c in env.verify.calls] == [MEMO_HASH]  # only the bcrypt-hashed key needed a check


async def test_bearer_challenge_without_basic_users(envs: list[Env]) -> None:
    env = new_env(envs, make_auth(basic=False))
    assert not env.auth.basic_enabled
    err = await env.fails({"x-api-key": "nope"})
    assert err.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert err.message == "Invalid API key (from the x-api-key header)"


async def test_missing_and_malformed(env: Env) -> None:
    assert env.auth.basic_enabled
    missing = await env.fails({"Content-Type": "application/json"})
    assert "x-api-key" in missing.message and "Basic" in missing.message
    malformed = await env.fails({"Authorization": "Token SECRET"})
    assert malformed.message.startswith("Malformed credentials")
    assert malformed.headers == {"WWW-Authenticate": BASIC_CHALLENGE}
    assert env.reasons == ["missing", "malformed"]
    assert env.verify.calls == []


async def test_wrong_password_and_unknown_user(env: Env) -> None:
    bad = await env.fails(basic("alice", "wrong"))
    unknown = await env.fails(basic("mallory", ALICE_PW))
    assert bad.message == unknown.message == "Invalid username or password"
    assert env.reasons == ["invalid", "invalid"]
    hashes = [c[0] for c in env.verify.calls]
    assert hashes[0] == ALICE_HASH
    assert hashes[1] != ALICE_HASH and hashes[1].startswith("$2b$04$")  # dummy check at the users' cost


async def test_dummy_check_result_is_discarded(envs: list[Env]) -> None:
    env = new_env(envs, answer=True)  # every bcrypt check "matches"
    await env.fails(basic("mallory", "anything"))
    assert len(env.verify.calls) == 1  # the dummy check ran ...
    assert await env(basic("alice", "anything")) == ALICE  # ... and only a real user can pass


async def test_basic_without_users_and_keys_without_bcrypt_skip_bcrypt(envs: list[Env]) -> None:
    env = new_env(envs, make_auth(basic=False, bcrypt_keys=False))
    await env.fails(basic("alice", ALICE_PW))
    await env.fails(bearer("sk-wrong"))
    assert env.verify.calls == []
    assert env.reasons == ["invalid", "invalid"]


async def test_password_is_not_a_key(env: Env) -> None:
    await env.fails({"x-api-key": ALICE_PW})
    await env.fails(basic("memo", MEMO_KEY))  # a key name is not a user name


async def test_errors_never_contain_the_secret(env: Env) -> None:
    errors: list[Exception] = [
        await env.fails(bearer("sk-SECRET-1")),
        await env.fails({"x-api-key": "SECRET\x01"}),
        await env.fails(basic("alice", "SECRET-2")),
        await env.fails(basic("SECRET-user", "SECRET-3")),
        await env.fails({"Authorization": "Digest SECRET"}),
    ]
    for err in errors:
        assert "SECRET" not in str(err) and "SECRET" not in repr(getattr(err, "headers", ""))


# ------------------------------------------------------------------ caches


async def test_success_is_cached_until_ttl(env: Env) -> None:
    for _ in range(3):
        assert await env(bearer(MEMO_KEY)) == MEMO
        assert await env(basic("alice", ALICE_PW)) == ALICE
    assert len(env.verify.calls) == 2
    env.clock.now += 299
    await env(bearer(MEMO_KEY))
    assert len(env.verify.calls) == 2
    env.clock.now += 2  # past the 300 s lifetime
    await env(bearer(MEMO_KEY))
    assert len(env.verify.calls) == 3


def wire(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Headers as aiohttp hands them to the gateway (the fast path only serves those)."""
    return CIMultiDictProxy(CIMultiDict(pairs))


async def test_accepted_authorization_header_takes_the_fast_path_until_ttl(env: Env) -> None:
    headers = wire(("Authorization", f"Bearer {MEMO_KEY}"))
    assert env.auth.cached(headers) is None  # never seen: no shortcut
    assert await env.auth.authenticate(headers, "192.0.2.1") == MEMO
    assert env.auth.cached(headers) == MEMO
    assert env.auth.cached(wire(("Authorization", f"Bearer {MEMO_KEY}x"))) is None
    env.clock.now += 301  # the fast path ages out with the credential cache
    assert env.auth.cached(headers) is None
    assert await env.auth.authenticate(headers, "192.0.2.1") == MEMO
    assert len(env.verify.calls) == 2


async def test_fast_path_refuses_a_second_differing_authorization_header(env: Env) -> None:
    good = ("Authorization", f"Bearer {MEMO_KEY}")
    await env.auth.authenticate(wire(good), "192.0.2.1")
    twice = wire(good, ("Authorization", "Bearer sk-other"))
    assert env.auth.cached(twice) is None
    with pytest.raises(Unauthorized):
        await env.auth.authenticate(twice, "192.0.2.1")


async def test_fast_path_only_remembers_credentials_read_from_authorization(env: Env) -> None:
    headers = wire(("Authorization", "Bearer "), ("x-api-key", MEMO_KEY))  # empty bearer: x-api-key is used
    assert await env.auth.authenticate(headers, "192.0.2.1") == MEMO
    assert env.auth.cached(headers) is None
    assert env.auth.cached(wire(("Authorization", "Bearer "))) is None


async def test_cache_is_bounded(envs: list[Env]) -> None:
    env = new_env(envs, cache_size=1)
    await env(bearer(MEMO_KEY))
    await env(basic("alice", ALICE_PW))  # evicts the key
    await env(basic("alice", ALICE_PW))
    await env(bearer(MEMO_KEY))
    assert [c[0] for c in env.verify.calls] == [MEMO_HASH, ALICE_HASH, MEMO_HASH]


async def test_cache_entry_is_bound_to_user_and_kind(env: Env) -> None:
    await env(basic("alice", ALICE_PW))
    await env.fails(basic("mallory", ALICE_PW))
    await env.fails({"x-api-key": ALICE_PW})
    assert len(env.verify.calls) == 3


async def test_repeated_wrong_secret_hits_the_negative_cache(env: Env) -> None:
    for _ in range(3):
        await env.fails(bearer("sk-wrong"))
    assert len(env.verify.calls) == 1
    assert env.reasons == ["invalid"] * 3
    env.clock.now += 31
    await env.fails(bearer("sk-wrong"))
    assert len(env.verify.calls) == 2


# ------------------------------------------------------------------ bounding the work


async def test_failure_budget_per_source(envs: list[Env]) -> None:
    env = new_env(envs, failure_burst=3, failure_refill=6.0)
    for i in range(3):
        await env.fails(bearer(f"sk-wrong-{i}"), "10.0.0.1")
    err = await env.throttled(bearer("sk-wrong-3"), "10.0.0.1")
    assert err.status == 429 and err.code == "rate_limit_exceeded"
    assert err.headers == {"Retry-After": "6"}
    assert env.reasons == ["invalid"] * 3 + ["throttled"]
    assert len(env.verify.calls) == 3  # the throttled attempt cost no bcrypt
    await env.fails(bearer("sk-wrong-4"), "10.0.0.2")  # another source is still served
    assert await env(bearer(SHA_KEY), "10.0.0.1") == LAPTOP  # a generated key still works
    await env.throttled(bearer(MEMO_KEY), "10.0.0.1")  # an uncached bcrypt check does not
    env.clock.now += 3
    assert (await env.throttled(bearer(MEMO_KEY), "10.0.0.1")).headers == {"Retry-After": "3"}
    env.clock.now += 3
    assert await env(bearer(MEMO_KEY), "10.0.0.1") == MEMO  # a success gives its token back
    await env.fails(bearer("sk-wrong-5"), "10.0.0.1")
    await env.throttled(bearer("sk-wrong-6"), "10.0.0.1")


async def test_cached_credentials_pass_a_throttled_source(envs: list[Env]) -> None:
    env = new_env(envs, failure_burst=1)
    assert await env(basic("alice", ALICE_PW), "10.0.0.9") == ALICE
    await env.fails(basic("alice", "guess-1"), "10.0.0.9")
    await env.throttled(basic("alice", "guess-2"), "10.0.0.9")
    assert await env(basic("alice", ALICE_PW), "10.0.0.9") == ALICE
    assert len(env.verify.calls) == 2


async def test_cheap_failures_spend_the_budget_too(envs: list[Env]) -> None:
    env = new_env(envs, make_auth(basic=False, bcrypt_keys=False), failure_burst=2)
    await env.fails(bearer("guess-1"))  # sha256 miss, no bcrypt involved
    await env.fails(bearer("guess-2"))
    await env.throttled(bearer("guess-3"))
    env = new_env(envs, failure_burst=2)
    for _ in range(2):
        await env.fails(bearer("same-wrong"))  # the second is a negative-cache hit
    await env.throttled(bearer("same-wrong"))
    assert len(env.verify.calls) == 1


async def test_unknown_users_spend_the_budget_too(envs: list[Env]) -> None:
    env = new_env(envs, failure_burst=2)
    await env.fails(basic("nobody-1", "x"))
    await env.fails(basic("nobody-2", "x"))
    await env.throttled(basic("nobody-3", "x"))
    assert len(env.verify.calls) == 2


async def test_ipv6_sources_share_a_budget_per_64(envs: list[Env]) -> None:
    env = new_env(envs, failure_burst=1)
    await env.fails(bearer("w1"), "2001:db8::1")
    await env.throttled(bearer("w2"), "2001:db8::2")  # same /64
    await env.fails(bearer("w3"), "2001:db8:0:1::1")  # next /64
    await env.fails(bearer("w4"), "198.51.100.7")
    await env.throttled(bearer("w5"), "::ffff:198.51.100.7")  # IPv4-mapped: the same client


def test_source_key() -> None:
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("unix-socket") == "unix-socket"


async def test_failure_buckets_are_bounded(envs: list[Env]) -> None:
    env = new_env(envs, failure_burst=1, max_sources=1)
    await env.fails(bearer("w1"), "10.0.0.1")
    await env.throttled(bearer("w2"), "10.0.0.1")
    await env.fails(bearer("w3"), "10.0.0.2")  # evicts 10.0.0.1's bucket: memory stays bounded
    await env.fails(bearer("w4"), "10.0.0.1")


async def test_verification_queue_is_bounded(envs: list[Env]) -> None:
    gate = threading.Event()
    env = new_env(envs, gate=gate, workers=1, max_pending=2)
    first = asyncio.create_task(env(bearer("wrong-a"), "10.0.0.1"))
    second = asyncio.create_task(env(bearer("wrong-b"), "10.0.0.2"))
    await env.verify.wait_started()  # one running, one queued behind it
    err = await env.throttled(bearer("wrong-c"), "10.0.0.3")
    assert err.headers == {"Retry-After": "1"}
    assert env.reasons == ["throttled"]
    gate.set()
    for task in (first, second):
        with pytest.raises(Unauthorized):
            await task
    await env.fails(bearer("wrong-c"), "10.0.0.3")  # the slots are free again
    assert len(env.verify.calls) == 3


async def test_concurrent_identical_credentials_share_one_check(envs: list[Env]) -> None:
    gate = threading.Event()
    env = new_env(envs, gate=gate, workers=1, max_pending=1)
    tasks = [asyncio.create_task(env(bearer(MEMO_KEY), f"10.0.1.{i}")) for i in range(10)]
    await env.verify.wait_started()
    gate.set()
    assert await asyncio.gather(*tasks) == [MEMO] * 10
    assert len(env.verify.calls) == 1


async def test_a_client_leaving_does_not_free_its_slot_early(envs: list[Env]) -> None:
    gate = threading.Event()
    env = new_env(envs, gate=gate, workers=1, max_pending=1)
    leaver = asyncio.create_task(env(bearer(MEMO_KEY)))
    await env.verify.wait_started()
    leaver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaver
    await env.throttled(bearer("other"), "10.0.0.5")  # the thread is still busy
    follower = asyncio.create_task(env(bearer(MEMO_KEY), "10.0.0.6"))  # joins the running check
    gate.set()
    assert await follower == MEMO
    await env.fails(bearer("other"), "10.0.0.5")
    assert await env(bearer(MEMO_KEY)) == MEMO  # the abandoned check's answer was cached
    assert [c[0] for c in env.verify.calls] == [MEMO_HASH, MEMO_HASH]  # MEMO once, "other" once


async def test_bcrypt_never_runs_on_the_loop_thread(env: Env) -> None:
    loop_thread = threading.get_ident()
    await env(bearer(MEMO_KEY))
    await env(basic("alice", ALICE_PW))
    await env.fails(basic("nobody", "x"))
    assert len(env.verify.calls) == 3
    for _, thread_id, name in env.verify.calls:
        assert thread_id != loop_thread
        assert name.startswith("gateway-bcrypt")


async def test_real_bcrypt_without_a_spy() -> None:
    auth = Authenticator(make_auth())
    assert await auth.authenticate(basic("alice", ALICE_PW), "::1") == ALICE
    with pytest.raises(Unauthorized):
        await auth.authenticate(basic("alice", ALICE_PW + "x"), "::1")
    auth.close()


async def test_after_close_only_cheap_checks_succeed(env: Env) -> None:
    await env(bearer(MEMO_KEY))
    env.auth.close()
    assert await env(bearer(MEMO_KEY)) == MEMO  # cached
    assert await env(bearer(SHA_KEY)) == LAPTOP
    err = await env.throttled(basic("alice", ALICE_PW))
    assert err.headers == {"Retry-After": "1"}
    env.auth.close()  # idempotent


# ------------------------------------------------------------------ small pieces


def test_principal_may_use() -> None:
    assert LAPTOP.may_use("llama3.2") and LAPTOP.may_use("llama3.2:1b")
    assert not LAPTOP.may_use("qwen2.5:7b")


@pytest.mark.parametrize("field", ["workers", "max_pending", "cache_size", "failure_burst", "max_sources"])
def test_tuning_rejects_zero_sizes(field: str) -> None:
    with pytest.raises(ValueError):
        AuthTuning(**{field: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AuthTuning(failure_refill=0)
