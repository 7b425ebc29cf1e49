"""CorsPolicy as a pure function (tables + Hypothesis), and the middleware/hook inside a tiny aiohttp app."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient

from gateway.config import ConfigError, CorsConfig
from gateway.configfile import parse_config
from gateway.cors import (
    ALLOW_METHODS,
    EXPOSE_HEADERS,
    CorsPolicy,
    make_cors_middleware,
    make_cors_prepare_hook,
)
from gateway.errors import GatewayError, Unauthorized, error_response

ACAO = "Access-Control-Allow-Origin"
ACAC = "Access-Control-Allow-Credentials"
ACAH = "Access-Control-Allow-Headers"
ACAM = "Access-Control-Allow-Methods"
ACMA = "Access-Control-Max-Age"
ACEH = "Access-Control-Expose-Headers"
ACAPN = "Access-Control-Allow-Private-Network"
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


def policy(
    *origins: str, credentials: bool = False, private_network: bool = False, max_age: float = 600.0
) -> CorsPolicy:
    return CorsPolicy(CorsConfig(tuple(origins), credentials, private_network, max_age))


# --------------------------------------------------------------------------- origin matching

MATCH_TABLE = [
    # (allow_origins, origin, allowed)
    (("http://localhost:3000",), "http://localhost:3000", True),
    (("http://localhost:3000",), "http://localhost:3001", False),
    (("http://localhost:3000",), "https://localhost:3000", False),
    (("http://localhost:3000",), "http://localhost:3000.evil.com", False),
    (("https://app.example.com",), "https://app.example.com", True),
    (("https://app.example.com/",), "https://app.example.com", True),  # trailing slash in config
    (("https://app.example.com:443",), "https://app.example.com", True),  # default port dropped
    (("http://app.example.com:80",), "http://app.example.com", True),
    (("HTTPS://App.Example.com",), "https://app.example.com", True),  # config is case-insensitive
    (("*",), "https://anything.test", True),
    (("*",), "http://127.0.0.1:9999", True),
    (("*",), "null", False),  # '*' never covers the opaque origin
    (("*", "null"), "null", True),
    (("null",), "null", True),
    (("http://localhost:3000",), "null", False),
    (("https://*.example.com",), "https://a.example.com", True),
    (("https://*.example.com",), "https://a.b.example.com", True),  # one or more labels
    (("https://*.example.com",), "https://example.com", False),  # the apex is not a subdomain
    (("https://*.example.com",), "http://a.example.com", False),  # scheme must match
    (("https://*.example.com",), "https://a.example.com:8443", False),  # default port only
    (("https://*.example.com",), "https://a.example.com.evil.com", False),
    (("https://*.example.com",), "https://evilexample.com", False),
    (("https://*.example.com",), "https://evil.com/.example.com", False),
    (("https://*.example.com",), "https://evil.com?.example.com", False),
    (("https://*.example.com",), "https://.example.com", False),
    (("https://*.example.com",), "https://a.example.com\n", False),
    (("https://*.example.com:*",), "https://a.example.com:8443", True),
    (("http://localhost:*",), "http://localhost:5173", True),
    (("http://localhost:*",), "http://localhost", True),  # any port includes the default one
    (("http://localhost:*",), "https://localhost:5173", False),
    (("http://localhost:*",), "http://localhost:5173.evil.com", False),
    (("http://localhost:*",), "http://localhost:123456", False),
    (("http://localhost:*",), "http://localhost.evil.com:5173", False),
    (("http://[::1]:*",), "http://[::1]:8080", True),
    (("http://127.0.0.1:*", "https://*.example.com"), "https://x.example.com", True),
    (("http://127.0.0.1:*", "https://*.example.com"), "http://127.0.0.1:5500", True),
    (("http://127.0.0.1:*", "https://*.example.com"), "http://127.0.0.2:5500", False),
    (("chrome-extension://abcdefgh",), "chrome-extension://abcdefgh", True),  # if the config ever accepts it
    (("chrome-extension://abcdefgh",), "chrome-extension://other", False),
    ((), "http://localhost:3000", False),  # disabled
    (("http://localhost:3000",), "", False),
]


@pytest.mark.parametrize(("origins", "origin", "expected"), MATCH_TABLE)
def test_allowed(origins: tuple[str, ...], origin: str, expected: bool) -> None:
    assert policy(*origins).allowed(origin) is expected


def test_enabled() -> None:
    assert policy().enabled is False
    assert policy("*").enabled is True


def test_star_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError):
        policy("*", credentials=True)


# --------------------------------------------------------------------------- preflight

SDK_HEADERS = (
    "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
    "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout"
)


def test_preflight_exact_origin() -> None:
    headers = policy("http://localhost:3000").preflight_headers("http://localhost:3000", "POST", SDK_HEADERS, False)
    assert headers == {
        ACAO: "http://localhost:3000",
        ACAM: ALLOW_METHODS,
        ACAH: SDK_HEADERS.replace(",", ", "),
        ACMA: "600",
        "Vary": PREFLIGHT_VARY,
    }


def test_preflight_disallowed_origin() -> None:
    assert policy("http://localhost:3000").preflight_headers("https://evil.com", "POST", "authorization", False) is None
    assert policy().preflight_headers("http://localhost:3000", "GET", None, False) is None


def test_preflight_star() -> None:
    headers = policy("*").preflight_headers("https://x.test", "POST", "Authorization", False)
    assert headers is not None
    assert headers[ACAO] == "*"
    assert headers[ACAH] == "authorization"  # listed by name: '*' never covers Authorization
    assert ACAC not in headers


def test_preflight_star_and_listed_null() -> None:
    p = policy("*", "null")
    assert p.preflight_headers("null", "GET", None, False)[ACAO] == "null"  # type: ignore[index]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (None, None),
        ("", None),
        (" , ,", None),
        ("x-api-key", "x-api-key"),
        ("Authorization, Content-Type", "authorization, content-type"),
        ("authorization,AUTHORIZATION, authorization", "authorization"),
        (
            "x-api-key, anthropic-version, anthropic-dangerous-direct-browser-access",
            "x-api-key, anthropic-version, anthropic-dangerous-direct-browser-access",
        ),
        ("good, bad header, bad:colon, ok-2", "good, ok-2"),
        ("*", None),  # never turn an echo into a wildcard
        ("a\r\nSet-Cookie: x=1", None),
        ("é-header, x-ok", "x-ok"),
    ],
)
def test_preflight_allow_headers_echo(requested: str | None, expected: str | None) -> None:
    headers = policy("http://a.test").preflight_headers("http://a.test", "POST", requested, False)
    assert headers is not None
    assert headers.get(ACAH) == expected


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "HEAD", "PUT", "PATCH", "bogus"])
def test_preflight_methods_constant(method: str) -> None:
    headers = policy("http://a.test").preflight_headers("http://a.test", method, None, False)
    assert headers is not None
    assert headers[ACAM] == "GET, POST, DELETE, HEAD, OPTIONS"  # PUT/PATCH are then refused by the browser


@pytest.mark.parametrize(
    ("max_age", "expected"), [(0, "0"), (5, "5"), (600.0, "600"), (7200, "7200"), (86400, "7200"), (12.7, "12")]
)
def test_preflight_max_age_capped(max_age: float, expected: str) -> None:
    headers = policy("http://a.test", max_age=max_age).preflight_headers("http://a.test", "GET", None, False)
    assert headers is not None
    assert headers[ACMA] == expected


def test_preflight_credentials() -> None:
    headers = policy("https://*.example.com", credentials=True).preflight_headers(
        "https://a.example.com", "POST", "authorization", False
    )
    assert headers is not None
    assert headers[ACAO] == "https://a.example.com"
    assert headers[ACAC] == "true"


@pytest.mark.parametrize(
    ("enabled", "asked", "allow_header", "vary_suffix"),
    [
        (False, False, False, ""),
        (False, True, False, ""),
        (True, False, False, ", Access-Control-Request-Private-Network"),
        (True, True, True, ", Access-Control-Request-Private-Network"),
    ],
)
def test_preflight_private_network(enabled: bool, asked: bool, allow_header: bool, vary_suffix: str) -> None:
    headers = policy("http://a.test", private_network=enabled).preflight_headers("http://a.test", "GET", None, asked)
    assert headers is not None
    assert (headers.get(ACAPN) == "true") is allow_header
    assert headers["Vary"] == PREFLIGHT_VARY + vary_suffix


def test_preflight_dict_is_a_fresh_copy() -> None:
    p = policy("http://a.test")
    first = p.preflight_headers("http://a.test", "GET", "x-a", False)
    assert first is not None
    first["X-Mutated"] = "1"
    assert "X-Mutated" not in (p.preflight_headers("http://a.test", "GET", None, False) or {})


# --------------------------------------------------------------------------- actual responses


def test_response_headers_allowed() -> None:
    p = policy("http://localhost:3000", credentials=True)
    assert dict(p.response_headers("http://localhost:3000")) == {
        ACAO: "http://localhost:3000",
        ACAC: "true",
        ACEH: EXPOSE_HEADERS,
        "Vary": "Origin",
    }


def test_response_headers_star() -> None:
    assert dict(policy("*").response_headers("https://x.test")) == {ACAO: "*", ACEH: EXPOSE_HEADERS, "Vary": "Origin"}


@pytest.mark.parametrize("origin", [None, "https://evil.com", "null", ""])
def test_response_headers_not_allowed(origin: str | None) -> None:
    assert dict(policy("http://localhost:3000").response_headers(origin)) == {"Vary": "Origin"}


def test_response_headers_disabled() -> None:
    assert dict(policy().response_headers("http://localhost:3000")) == {}
    assert dict(policy().response_headers(None)) == {}


def test_response_headers_cache_is_bounded_and_read_only() -> None:
    p = policy("https://*.example.com")
    for i in range(5000):
        p.response_headers(f"https://h{i}.example.com")
        p.response_headers(f"https://h{i}.evil.com")
    assert len(p._cache) <= 512
    headers = p.response_headers("https://a.example.com")
    assert headers[ACAO] == "https://a.example.com"
    with pytest.raises(TypeError):
        headers[ACAO] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ([], "Origin"),
        (["Accept-Encoding"], "Accept-Encoding, Origin"),
        (["Origin"], "Origin"),
        (["origin, Accept-Encoding"], "origin, Accept-Encoding"),
        (["Accept-Encoding", "Origin"], "Accept-Encoding, Origin"),
        (["Accept-Encoding, Cookie", "accept-encoding"], "Accept-Encoding, Cookie, Origin"),
        (["*"], "*"),
        ([" , "], "Origin"),
    ],
)
def test_apply_merges_vary(existing: list[str], expected: str) -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Vary", v) for v in existing])
    policy("http://a.test").apply_response_headers(headers, "http://a.test")
    assert headers.getall("Vary") == [expected]


def test_apply_strips_backend_cors_headers() -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        [
            ("access-control-allow-origin", "*"),
            ("Access-Control-Allow-Origin", "https://other.test"),
            ("Access-Control-Allow-Methods", "*"),
            ("ACCESS-CONTROL-ALLOW-CREDENTIALS", "true"),
            ("Content-Type", "application/json"),
        ]
    )
    policy("*").apply_response_headers(headers, "https://x.test")
    assert headers.getall(ACAO) == ["*"]
    assert ACAC not in headers and ACAM not in headers
    assert headers["Content-Type"] == "application/json"


def test_apply_disabled_strips_and_adds_nothing() -> None:
    headers: CIMultiDict[str] = CIMultiDict([(ACAO, "*"), ("Vary", "Accept-Encoding")])
    policy().apply_response_headers(headers, "https://x.test")
    assert dict(headers) == {"Vary": "Accept-Encoding"}


# --------------------------------------------------------------------------- properties

_hosts = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True)
_ports = st.one_of(st.none(), st.integers(1, 65535).map(str))
_exact_origins = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}" + (f":{port}" if port else ""),
    st.sampled_from(["http", "https"]),
    _hosts,
    _ports,
)
_entries = st.one_of(
    _exact_origins,
    st.builds(lambda scheme, host: f"{scheme}://*.{host}", st.sampled_from(["http", "https"]), _hosts),
    st.builds(lambda scheme, host: f"{scheme}://{host}:*", st.sampled_from(["http", "https"]), _hosts),
    st.sampled_from(["*", "null", "http://localhost:*", "https://*.example.com", "http://[::1]:*"]),
)
_origins = st.one_of(
    st.none(),
    st.text(max_size=60),
    _exact_origins,
    st.sampled_from(
        ["null", "", "https://a.example.com", "https://a.b.example.com", "http://localhost", "http://localhost:5173"]
    ),
)
_raw_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "Access-Control-Allow-Origin",
                "access-control-allow-credentials",
                "Vary",
                "Content-Type",
                "Access-Control-Expose-Headers",
            ]
        ),
        st.sampled_from(["*", "true", "Origin", "Accept-Encoding", "https://evil.test", "", "null"]),
    ),
    max_size=6,
)


@st.composite
def _configs(draw: st.DrawFn) -> CorsConfig:
    """Only configs the loader accepts: the same validation the gateway applies at startup."""
    raw = {
        "allow_origins": draw(st.lists(_entries, max_size=5)),
        "allow_credentials": draw(st.booleans()),
        "allow_private_network": draw(st.booleans()),
        "max_age": draw(st.one_of(st.integers(0, 10**7), st.sampled_from(["10m", "2h", "500ms", "1.5s"]))),
    }
    try:
        return parse_config({"cors": raw}, env={}).cors
    except ConfigError:
        assume(False)
        raise


def _check(headers: CIMultiDict[str] | dict[str, str], origin: str | None, enabled: bool = True) -> None:
    values = (
        headers.getall(ACAO, []) if isinstance(headers, CIMultiDict) else ([headers[ACAO]] if ACAO in headers else [])
    )
    assert len(values) <= 1
    if values:
        assert values[0] in ("*", origin)
        if values[0] == "*":
            assert headers.get(ACAC) != "true"
    if isinstance(headers, CIMultiDict):
        assert len(headers.getall(ACAC, [])) <= 1
        if enabled:  # disabled: the response's own Vary is left alone
            assert len(headers.getall("Vary", [])) <= 1


@settings(max_examples=400, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(
    config=_configs(),
    origin=_origins,
    method=st.text(max_size=10),
    requested=st.one_of(st.none(), st.text(max_size=80), st.just(SDK_HEADERS)),
    private_network=st.booleans(),
    raw=_raw_headers,
)
def test_property_never_two_origins_nor_star_with_credentials(
    config: CorsConfig,
    origin: str | None,
    method: str,
    requested: str | None,
    private_network: bool,
    raw: list[tuple[str, str]],
) -> None:
    p = CorsPolicy(config)
    if origin is not None:
        p.allowed(origin)
        pre = p.preflight_headers(origin, method, requested, private_network)
        if pre is not None:
            _check(pre, origin)
            assert pre.get(ACAC) == ("true" if config.allow_credentials else None)
            assert 0 <= int(pre["Access-Control-Max-Age"]) <= 7200
            for name in (pre.get(ACAH) or "x").split(", "):
                assert name and name != "*" and " " not in name
    _check(dict(p.response_headers(origin)), origin)
    headers: CIMultiDict[str] = CIMultiDict(raw)
    p.apply_response_headers(headers, origin)
    _check(headers, origin, p.enabled)
    if p.enabled:
        vary = [t.strip().lower() for t in headers["Vary"].split(",")]
        assert vary == ["*"] or vary.count("origin") == 1


# --------------------------------------------------------------------------- aiohttp app

ALLOWED = "http://allowed.test"


@web.middleware
async def local_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stand-in for the lead's error middleware: GatewayError -> dialect-right JSON response."""
    try:
        return await handler(request)
    except GatewayError as err:
        return error_response(request.path, err)


@web.middleware
async def fake_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request needs a bearer token, so a preflight (which never carries one) proves it never got here."""
    if request.headers.get("Authorization") != "Bearer sk-test":
        raise Unauthorized("missing or bad credentials")
    return await handler(request)


async def json_handler(request: web.Request) -> web.Response:
    # What a relayed backend response may look like: vLLM's own CORS and a Vary of its own.
    return web.json_response(
        {"ok": True}, headers={ACAO: "*", "Vary": "Accept-Encoding", "Access-Control-Allow-Methods": "*"}
    )


async def stream_handler(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.headers.add(ACAO, "*")
    response.headers.add("Vary", "Accept-Encoding")
    response.headers.add("Vary", "Origin")
    await response.prepare(request)
    for i in range(3):
        await response.write(f"data: {i}\n\n".encode())
    await response.write_eof()
    return response


async def raising_handler(request: web.Request) -> web.Response:
    raise Unauthorized("bad key", headers={"WWW-Authenticate": 'Basic realm="gateway"'})


def make_app(cors: CorsPolicy, *, auth: bool = True) -> web.Application:
    middlewares = [local_error_middleware, make_cors_middleware(cors)]
    if auth:
        middlewares.append(fake_auth_middleware)
    app = web.Application(middlewares=middlewares)
    app.on_response_prepare.append(make_cors_prepare_hook(cors))
    app.router.add_post("/v1/chat/completions", json_handler)
    app.router.add_get("/v1/stream", stream_handler)
    app.router.add_get("/api/boom", raising_handler)
    return app


AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(make_app(policy(ALLOWED, "https://*.example.com", private_network=True)))


async def test_app_json_response_has_one_origin_and_merged_vary(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.post("/v1/chat/completions", json={}, headers={"Origin": ALLOWED, **AUTH})
    assert resp.status == 200
    assert resp.headers.getall(ACAO) == [ALLOWED]
    assert resp.headers.getall("Vary") == ["Accept-Encoding, Origin"]
    assert resp.headers[ACEH] == EXPOSE_HEADERS
    assert "Access-Control-Allow-Methods" not in resp.headers  # the backend's was dropped
    assert await resp.json() == {"ok": True}


async def test_app_streamed_response(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/v1/stream", headers={"Origin": "https://a.b.example.com", **AUTH})
    assert resp.status == 200
    assert resp.headers.getall(ACAO) == ["https://a.b.example.com"]
    assert resp.headers.getall("Vary") == ["Accept-Encoding, Origin"]
    assert await resp.text() == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_app_error_response_carries_cors(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/api/boom", headers={"Origin": ALLOWED, **AUTH})
    assert resp.status == 401
    assert resp.headers.getall(ACAO) == [ALLOWED]
    assert resp.headers.getall("Vary") == ["Origin"]
    assert await resp.json() == {"error": "bad key"}


async def test_app_auth_error_and_aiohttp_404_carry_cors(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post("/v1/chat/completions", json={}, headers={"Origin": ALLOWED})
    assert resp.status == 401
    assert resp.headers.getall(ACAO) == [ALLOWED]
    assert json.loads(await resp.text())["error"]["message"] == "missing or bad credentials"
    resp = await client.get("/nowhere", headers={"Origin": ALLOWED, **AUTH})
    assert resp.status == 404
    assert resp.headers.getall(ACAO) == [ALLOWED]


async def test_app_no_origin_gets_only_vary(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post("/v1/chat/completions", json={}, headers=AUTH)
    assert resp.status == 200
    assert ACAO not in resp.headers and ACEH not in resp.headers
    assert resp.headers.getall("Vary") == ["Accept-Encoding, Origin"]


async def test_app_preflight_answered_before_auth(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.options(
        "/v1/chat/completions",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert resp.status == 204
    assert resp.headers.getall(ACAO) == [ALLOWED]
    assert resp.headers[ACAH] == "authorization, content-type, x-stainless-os"
    assert resp.headers[ACAM] == ALLOW_METHODS
    assert resp.headers[ACAPN] == "true"
    assert resp.headers.getall("Vary") == [PREFLIGHT_VARY + ", Access-Control-Request-Private-Network"]
    assert ACEH not in resp.headers


async def test_app_preflight_on_any_path(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.options("/no/such/path", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "GET"})
    assert resp.status == 204
    assert resp.headers[ACAO] == ALLOWED


async def test_app_preflight_disallowed_origin_403_without_cors(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://evil.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert resp.status == 403
    assert not [k for k in resp.headers if k.lower().startswith("access-control-")]


async def test_app_bare_options(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.options("/v1/chat/completions")
    assert resp.status == 204
    assert resp.headers["Allow"] == ALLOW_METHODS
    resp = await client.options("/v1/chat/completions", headers={"Origin": ALLOWED})  # Origin but no request method
    assert resp.status == 204
    assert resp.headers["Allow"] == ALLOW_METHODS


async def test_app_disallowed_cross_site_request_is_403(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post(
        "/v1/chat/completions", data="{}", headers={"Origin": "https://evil.test", "Content-Type": "text/plain", **AUTH}
    )
    assert resp.status == 403
    assert ACAO not in resp.headers
    body = await resp.json()
    assert body["error"]["message"] == "origin 'https://evil.test' is not allowed by the gateway's cors.allow_origins"
    assert body["error"]["type"] == "permission_error"
    resp = await client.post("/api/boom", headers={"Origin": "null", **AUTH})
    assert resp.status == 403  # the opaque origin too (sandboxed iframes, file://)


async def test_app_same_origin_request_passes(client: TestClient[web.Request, web.Application]) -> None:
    host = f"{client.server.host}:{client.server.port}"
    resp = await client.post("/v1/chat/completions", json={}, headers={"Origin": f"http://{host}", **AUTH})
    assert resp.status == 200
    assert ACAO not in resp.headers
    resp = await client.post(
        "/v1/chat/completions", json={}, headers={"Origin": "http://gw.test", "Host": "gw.test:80", **AUTH}
    )
    assert resp.status == 200  # default port on either side
    resp = await client.post(
        "/v1/chat/completions", json={}, headers={"Origin": "http://gw.test:8080", "Host": "gw.test", **AUTH}
    )
    assert resp.status == 403


async def test_app_cors_disabled(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(policy(), auth=False))
    resp = await client.post("/v1/chat/completions", json={})
    assert resp.status == 200
    assert ACAO not in resp.headers
    assert resp.headers.getall("Vary") == ["Accept-Encoding"]
    resp = await client.post("/v1/chat/completions", json={}, headers={"Origin": "http://localhost:3000"})
    assert resp.status == 403  # cross-site browser pages are refused until cors.allow_origins lists them
    resp = await client.options(
        "/v1/chat/completions", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 403
