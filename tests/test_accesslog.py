"""The access log: one line per request, text or JSON, nothing formatted when disabled."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import aiohttp
import pytest

from gateway.accesslog import AccessLog
from gateway.record import RequestRecord

from . import fakes
from .conftest import BackendFactory, GatewayFactory, backend_entry

LOGGER = "gateway.access.test"


def make_record(**overrides: Any) -> RequestRecord:
    return fakes.make_record(**{
        "request_id": "req-7f3a", "path": "/v1/chat/completions", "remote": "192.0.2.7", "start": 50.0,
        "endpoint": "/v1/chat/completions", "client": "laptop", "model": "llama3.2:3b", "backend": "desktop",
        "status": 200, "bytes_out": 5120, "first_byte": 50.2124, "end": 54.2109,
        "prompt_tokens": 26, "completion_tokens": 282, **overrides,
    })  # fmt: skip


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    return log


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_text_line(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    AccessLog("text", logger).log(make_record())
    (line,) = lines(caplog)
    assert caplog.records[0].levelno == logging.INFO
    assert re.fullmatch(
        r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z id=req-7f3a client=laptop remote=192\.0\.2\.7 method=POST "
        r"path=/v1/chat/completions model=llama3\.2:3b backend=desktop status=200 bytes=5120 ttfb_ms=212\.4 "
        r"duration_ms=4210\.9 tokens_in=26 tokens_out=282",
        line,
    ), line


def test_text_unknowns_are_dashes(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    rec = make_record(
        model="",
        backend="",
        status=401,
        bytes_out=0,
        first_byte=None,
        end=50.001,
        prompt_tokens=None,
        completion_tokens=None,
        client="anonymous",
    )
    AccessLog("text", logger).log(rec)
    (line,) = lines(caplog)
    assert " model=- backend=- status=401 bytes=0 ttfb_ms=- duration_ms=1.0 tokens_in=- tokens_out=-" in line
    assert "error=" not in line


def test_text_error_and_zero_tokens(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    AccessLog("text", logger).log(make_record(status=502, error="connect", prompt_tokens=0, completion_tokens=0))
    (line,) = lines(caplog)
    assert line.endswith(" tokens_in=0 tokens_out=0 error=connect")


def test_json_line(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    log = AccessLog("json", logger)
    log.log(make_record())
    log.log(
        make_record(
            model="",
            backend="",
            first_byte=None,
            end=None,
            prompt_tokens=None,
            completion_tokens=None,
            status=499,
            error="client_closed",
        )
    )
    first, second = (json.loads(line) for line in lines(caplog))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.pop("time"))
    assert first == {
        "request_id": "req-7f3a",
        "client": "laptop",
        "remote": "192.0.2.7",
        "method": "POST",
        "path": "/v1/chat/completions",
        "model": "llama3.2:3b",
        "backend": "desktop",
        "status": 200,
        "bytes": 5120,
        "ttfb_ms": 212.4,
        "duration_ms": 4210.9,
        "tokens_in": 26,
        "tokens_out": 282,
        "error": None,
    }
    assert (second["model"], second["backend"], second["ttfb_ms"], second["duration_ms"]) == (None, None, None, None)
    assert (second["tokens_in"], second["tokens_out"], second["status"], second["error"]) == (
        None,
        None,
        499,
        "client_closed",
    )


def test_disabled_logger_formats_nothing(
    caplog: pytest.LogCaptureFixture, logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    logger.setLevel(logging.WARNING)
    log = AccessLog("json", logger)

    def fail(*args: object, **kwargs: object) -> str:
        raise AssertionError("formatted while disabled")

    monkeypatch.setattr(AccessLog, "format", fail)
    log.log(make_record())
    assert lines(caplog) == []


def test_query_string_and_control_characters_stay_out(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    log = AccessLog("text", logger)
    log.log(make_record(path="/v1/chat/completions?api_key=sk-secret"))
    log.log(make_record(path='/api/x\n127.0.0.1 method=GET status=200 "fake'))
    log.log(make_record(path="/api/a b\u2028c"))
    first, second, third = lines(caplog)
    assert "sk-secret" not in first and " path=/v1/chat/completions " in first
    assert "\n" not in second and ' path="/api/x\\n127.0.0.1 method=GET status=200 \\"fake" ' in second
    assert ' path="/api/a b\\u2028c" ' in third


def test_json_never_contains_raw_newlines(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    AccessLog("json", logger).log(make_record(path="/api/x\ny?key=secret"))
    (line,) = lines(caplog)
    assert "\n" not in line and "secret" not in line and json.loads(line)["path"] == "/api/x\ny"


def test_fixed_time(logger: logging.Logger) -> None:
    text = AccessLog("text", logger).format(make_record(), now=1_700_000_000.25)
    assert text.startswith("time=2023-11-14T22:13:20.250Z ")


def test_bad_format_is_refused(logger: logging.Logger) -> None:
    with pytest.raises(ValueError):
        AccessLog("xml", logger)  # type: ignore[arg-type]


async def test_bytes_count_every_body_the_gateway_sends(
    backend_factory: BackendFactory, gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Relayed, built whole (a listing) and error bodies alike: ``bytes`` is what the client got."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    backend = await backend_factory("desktop", kind="openai", models=["m"])
    gw = await gateway_factory({"backends": [backend_entry(backend, type="vllm")]})
    sizes = []
    async with aiohttp.ClientSession() as http:
        for method, path, body in (
            ("POST", "/v1/chat/completions", {"model": "m", "messages": []}),
            ("GET", "/v1/models", None),
            ("POST", "/v1/chat/completions", {"model": "nope", "messages": []}),
        ):
            async with http.request(method, f"{gw.url}{path}", json=body) as resp:
                sizes.append((resp.status, len(await resp.read())))
    assert [s for s, _ in sizes] == [200, 200, 404]
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.access" and " path=/v1/" in r.getMessage()]
    assert [int(re.search(r" bytes=(\d+) ", line).group(1)) for line in logged] == [n for _, n in sizes]  # type: ignore[union-attr]
