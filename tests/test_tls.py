"""HTTPS (server.tls) with certificates made in the test: the real openai client, TLS 1.2 minimum,
and certificate files re-read on SIGHUP by the real `gateway` process, without a restart."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import sys
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
import trustme
import yaml
from aiohttp import web

from gateway.app import create_app
from gateway.configfile import parse_config
from gateway.server import make_runner
from gateway.tls import TlsSite, attach_tls, reload_tls

from .conftest import BackendFactory, backend_entry
from .gateway_process import free_port


def new_ca(folder: Path) -> tuple[trustme.CA, Path]:
    """A fresh certificate authority, its certificate written to folder/ca.pem (for clients to trust)."""
    ca = trustme.CA()
    ca_path = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ca, ca_path


def issue(ca: trustme.CA, folder: Path, name: str) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))  # the chain, key included, in one file
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@asynccontextmanager
async def https_gateway(config: dict[str, object]) -> AsyncIterator[tuple[str, web.Application]]:
    parsed = parse_config(config, "<test>")
    app = create_app(parsed)
    context = attach_tls(app, parsed)
    runner = make_runner(app)
    await runner.setup()
    try:
        site = TlsSite(runner, "127.0.0.1", 0, ssl_context=context, handshake_timeout=parsed.server.timeouts.headers)
        await site.start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}", app
    finally:
        await runner.cleanup()


def peer_certificate(port: int, ca_path: Path) -> bytes:
    """The DER certificate a new TLS connection to the gateway is shown (verified against ``ca_path``)."""
    context = ssl.create_default_context(cafile=str(ca_path))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


async def test_the_openai_client_trusting_the_ca_gets_answers_and_streams_over_https(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    ca, ca_path = new_ca(tmp_path)
    cert, key = issue(ca, tmp_path, "gw")
    backend = await backend_factory("vllm", kind="openai", models=["fake"])
    config = {"backends": [backend_entry(backend)], "server": {"tls": {"cert": str(cert), "key": str(key)}}}
    async with https_gateway(config) as (url, _):
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca_path))) as http:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http, max_retries=0)
            reply = await client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "Hello!"
            stream = await client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
            assert "".join(p for p in pieces if p) == "Hello!"
        # A client that does not trust the CA is refused by its own verification.
        async with httpx.AsyncClient() as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"{url}/healthz")
    assert [r.path for r in backend.requests] == ["/v1/chat/completions", "/v1/chat/completions"]


async def test_tls_1_1_and_plain_http_are_refused(tmp_path: Path, backend_factory: BackendFactory) -> None:
    ca = trustme.CA()
    cert, key = issue(ca, tmp_path, "gw")
    backend = await backend_factory("desktop")
    config = {"backends": [backend_entry(backend)], "server": {"tls": {"cert": str(cert), "key": str(key)}}}
    async with https_gateway(config) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        try:
            with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = ssl.TLSVersion.TLSv1_1
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError) as exc:
            pytest.skip(f"this OpenSSL cannot even offer TLS 1.1: {exc}")

        def handshake() -> str | None:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with old.wrap_socket(raw) as tls:
                    return tls.version()

        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(handshake)
        # Plain HTTP on the TLS port gets no HTTP answer.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert not data.startswith(b"HTTP/1.1 200")
        # TLS 1.2 and later work.
        modern = ssl.create_default_context(cafile=None)
        modern.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=modern, server_hostname="127.0.0.1")
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
        assert version in ("TLSv1.2", "TLSv1.3")
    assert backend.requests == []


async def test_reload_tls_keeps_the_running_certificate_when_the_new_files_are_broken(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    ca, ca_path = new_ca(tmp_path)
    cert, key = issue(ca, tmp_path, "gw")
    backend = await backend_factory("desktop")
    doc = {"backends": [backend_entry(backend)], "server": {"tls": {"cert": str(cert), "key": str(key)}}}
    async with https_gateway(doc) as (url, app):
        port = int(url.rsplit(":", 1)[1])
        before = await asyncio.to_thread(peer_certificate, port, ca_path)
        _, other_key = issue(trustme.CA(), tmp_path, "other")
        mismatched = parse_config(
            {**doc, "server": {"tls": {"cert": str(cert), "key": str(other_key)}}}, "<test>"
        )  # a key that does not match the certificate
        assert reload_tls(app, mismatched) is False
        assert await asyncio.to_thread(peer_certificate, port, ca_path) == before
        renewed_cert, renewed_key = issue(ca, tmp_path, "renewed")
        renewed = parse_config({**doc, "server": {"tls": {"cert": str(renewed_cert), "key": str(renewed_key)}}}, "<t>")
        assert reload_tls(app, renewed) is True
        after = await asyncio.to_thread(peer_certificate, port, ca_path)
        assert after != before


async def test_turning_tls_on_or_off_by_reload_is_refused_and_logged(
    tmp_path: Path, backend_factory: BackendFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = issue(trustme.CA(), tmp_path, "gw")
    backend = await backend_factory("desktop")
    plain = {"backends": [backend_entry(backend)]}
    with_tls = {**plain, "server": {"tls": {"cert": str(cert), "key": str(key)}}}
    async with https_gateway(with_tls) as (_, app):
        assert reload_tls(app, parse_config(plain, "<t>")) is False
    app = create_app(parse_config(plain, "<t>"))
    assert attach_tls(app, parse_config(plain, "<t>")) is None
    assert reload_tls(app, parse_config(with_tls, "<t>")) is False
    assert caplog.text.count("server.tls was added or removed: that takes effect only after a restart") == 2


async def test_a_stalled_tls_handshake_is_cut_after_the_head_deadline(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    cert, key = issue(trustme.CA(), tmp_path, "gw")
    backend = await backend_factory("desktop")
    server = {"tls": {"cert": str(cert), "key": str(key)}, "timeouts": {"headers": "0.5s"}}
    async with https_gateway({"backends": [backend_entry(backend)], "server": server}) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(bytes.fromhex("160301"))  # the start of a ClientHello, then nothing
        start = time.monotonic()
        try:
            rest = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            rest = b""
        writer.close()
        assert rest == b""
        assert 0.4 <= time.monotonic() - start < 5.0  # asyncio's own default would be 60 s


async def read_until(stream: asyncio.StreamReader, marker: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    while marker not in seen:
        line = await asyncio.wait_for(stream.readline(), timeout)
        if not line:
            raise AssertionError(f"{marker!r} never logged; log so far:\n{seen.decode(errors='replace')}")
        seen += line
    return seen


async def test_sighup_makes_the_real_gateway_serve_swapped_certificate_files(
    tmp_path: Path, backend_factory: BackendFactory
) -> None:
    ca, ca_path = new_ca(tmp_path)
    cert, key = issue(ca, tmp_path, "live")
    backend = await backend_factory("desktop")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"backends": [{"name": "desktop", "url": backend.url}],
                                      "server": {"tls": {"cert": str(cert), "key": str(key)}}}))  # fmt: skip
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "error::DeprecationWarning", "-m", "gateway", "serve", "-c", str(config),
        "--port", str(port), cwd=tmp_path,
        env={**os.environ}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        log = await read_until(proc.stderr, b"listening on https://127.0.0.1:")
        first = await asyncio.to_thread(peer_certificate, port, ca_path)
        # Renewal: new files written over the old paths (as certbot or cert-manager do), then SIGHUP.
        new_cert, new_key = issue(ca, tmp_path, "renewal")
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        proc.send_signal(signal.SIGHUP)
        log += await read_until(proc.stderr, b"TLS certificate reloaded")
        second = await asyncio.to_thread(peer_certificate, port, ca_path)
        assert second != first
        leaf = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", new_cert.read_text(), re.S)
        assert leaf is not None and second == ssl.PEM_cert_to_DER_cert(leaf.group(0))
        # A broken file on the next SIGHUP changes nothing.
        key.write_text("not a key")
        proc.send_signal(signal.SIGHUP)
        log += await read_until(proc.stderr, b"TLS reload failed, keeping the previous certificate")
        assert await asyncio.to_thread(peer_certificate, port, ca_path) == second
        assert proc.returncode is None  # never restarted
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
    assert proc.returncode == 0
    assert b"Traceback" not in log
