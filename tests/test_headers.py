"""What crosses the gateway in each direction: credentials never go up, backend CORS never comes down."""

from __future__ import annotations

import ipaddress

import aiohttp
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import HOP_BY_HOP, client_address, downstream_headers, host_name, upstream_headers

from .conftest import BackendFactory, GatewayFactory, backend_entry


async def test_client_credentials_origin_cookie_never_reach_the_backend(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("gpu", kind="openai", models=["m"], cors=True)
    gw = await gateway_factory(
        {
            "backends": [backend_entry(backend, type="vllm", api_key="backend-secret")],
            "cors": {"allow_origins": ["http://app.example"]},
        }
    )
    sent = {
        "Authorization": "Bearer client-secret",
        "x-api-key": "client-secret-2",
        "api-key": "client-secret-3",
        "Origin": "http://app.example",
        "Referer": "http://app.example/page",
        "Cookie": "session=abc",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Connection": "keep-alive, X-Custom-Hop",
        "X-Custom-Hop": "drop me",
        "X-Forwarded-For": "6.6.6.6",
        "User-Agent": "OpenAI/Python 1.0",
        "X-Stainless-Lang": "python",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.url}/v1/chat/completions", json={"model": "m", "messages": []}, headers=sent
        ) as resp:
            assert resp.status == 200
            # The backend's own "*" was dropped: exactly one ACAO, the gateway's.
            assert resp.headers.getall("Access-Control-Allow-Origin") == ["http://app.example"]
    seen = {k.lower(): v for k, v in backend.requests[-1].headers.items()}
    assert seen["authorization"] == "Bearer backend-secret"
    for name in ("x-api-key", "api-key", "origin", "referer", "cookie", "proxy-authorization", "x-custom-hop"):
        assert name not in seen, name
    assert "client-secret" not in repr(seen)
    assert seen["x-forwarded-for"] == "127.0.0.1"  # the forged value was not believed
    assert seen["x-forwarded-proto"] == "http"
    assert seen["host"] == backend.url.removeprefix("http://")  # the backend's, not the client's
    assert seen["user-agent"] == "OpenAI/Python 1.0" and seen["x-stainless-lang"] == "python"
    assert seen["via"] == "1.1 local-llm-gateway"
    # A page on an origin that is not allowed is refused before any backend is touched (CSRF).
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers={"Origin": "http://evil.example"},
        ) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    assert len(backend.requests) == 1


async def test_trusted_proxy_forwarded_for_is_extended(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["m:latest"])
    gw = await gateway_factory({"server": {"trusted_proxies": ["127.0.0.0/8"]}, "backends": [backend_entry(backend)]})
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gw.url}/api/generate", json={"model": "m", "stream": False}, headers={"X-Forwarded-For": "203.0.113.9"}
        ) as resp:
            assert resp.status == 200
    assert backend.requests[-1].headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"


def test_client_address_walks_trusted_hops() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_address("10.0.0.5", "1.2.3.4, 10.0.0.7", nets) == ("1.2.3.4", True)
    assert client_address("10.0.0.5", "9.9.9.9, 1.2.3.4", nets) == ("1.2.3.4", True)  # 9.9.9.9 may be forged
    assert client_address("8.8.8.8", "1.2.3.4", nets) == ("8.8.8.8", False)
    assert client_address("10.0.0.5", None, nets) == ("10.0.0.5", True)
    assert client_address(None, "1.2.3.4", []) == ("unknown", False)


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)


@given(
    st.lists(
        st.tuples(token, st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)), max_size=12
    ),
    st.lists(token, max_size=4),
)
def test_no_hop_by_hop_or_connection_named_header_survives(pairs: list[tuple[str, str]], named: list[str]) -> None:
    raw: CIMultiDict[str] = CIMultiDict(pairs)
    if named:
        raw["Connection"] = ", ".join(named)
    for out in (
        upstream_headers(
            CIMultiDictProxy(raw), peer_ip="1.1.1.1", peer_trusted=False, scheme="http", request_id="r", api_key=None
        ),
        downstream_headers(CIMultiDictProxy(raw), streamed=True),
    ):
        for name in out:
            assert name.lower() not in HOP_BY_HOP
            assert name.lower() not in {n.lower() for n in named} or name.lower() in {
                "x-forwarded-for", "x-forwarded-proto", "via", "x-request-id", "accept-encoding",
                "cache-control", "x-accel-buffering",
            }  # fmt: skip


def test_every_backend_access_control_header_is_dropped_downstream() -> None:
    raw: CIMultiDict[str] = CIMultiDict(
        [
            ("Access-Control-Allow-Origin", "*"),
            ("access-control-allow-credentials", "true"),
            ("Access-Control-Future-Thing", "x"),  # not a name the gateway knows: still the gateway's business
            ("Content-Type", "text/event-stream"),
            ("X-Access-Control-Note", "kept"),
        ]
    )
    out = downstream_headers(CIMultiDictProxy(raw), streamed=True)
    assert [n.lower() for n in out if n.lower().startswith("access-control-")] == []
    assert out["Content-Type"] == "text/event-stream" and out["X-Access-Control-Note"] == "kept"


def test_host_name_drops_port_and_ipv6_brackets() -> None:
    cases = {
        "Example.COM:8080": "example.com",
        "gpu-box": "gpu-box",
        "[::1]:8080": "::1",
        "[::1]": "::1",
        "127.0.0.1:80": "127.0.0.1",
        "": "",
        None: "",
    }
    assert {k: host_name(k) for k in cases} == cases


async def test_allowed_hosts_refuses_other_names_but_not_probes(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory
) -> None:
    backend = await backend_factory("desktop", models=["m"])
    gw = await gateway_factory({"backends": [backend_entry(backend)], "server": {"allowed_hosts": ["gw.lan", "[::1]"]}})
    async with aiohttp.ClientSession() as http:
        for host, status in (("gw.lan:8080", 200), ("[::1]", 200), ("evil.example", 403), ("127.0.0.1", 403)):
            async with http.get(f"{gw.url}/api/tags", headers={"Host": host}) as resp:
                assert resp.status == status, host
                if status == 403:
                    assert "server.allowed_hosts" in (await resp.json())["error"]
        async with http.get(f"{gw.url}/healthz", headers={"Host": "10.0.0.7:8080"}) as resp:
            assert resp.status == 200  # probes address the gateway by pod IP
