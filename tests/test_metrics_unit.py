"""Metrics without a server: exact sample values, bounded labels, exposition, snapshot, multiprocess."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import string
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, values

from gateway.metrics import (
    LATENCY_BUCKETS,
    MAX_MODELS,
    Metrics,
    mark_process_dead,
    prepare_multiprocess_dir,
)
from gateway.record import RequestRecord

from . import fakes

CHAT = "/v1/chat/completions"
NAMES = [
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "gateway_time_to_first_byte_seconds",
    "gateway_tokens_total",
    "gateway_in_flight_requests",
    "gateway_backend_up",
    "gateway_auth_failures_total",
    "gateway_upstream_errors_total",
    "gateway_generation_tokens_per_second",
]


def make_record(**overrides: Any) -> RequestRecord:
    return fakes.make_record(**{
        "path": CHAT, "start": 100.0, "endpoint": CHAT, "client": "laptop", "model": "llama3.2:3b",
        "backend": "desktop", "status": 200, "first_byte": 100.25, "end": 102.0, **overrides,
    })  # fmt: skip


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def label_values(m: Metrics, label: str) -> set[str]:
    return {s.labels[label] for family in m.registry.collect() for s in family.samples if label in s.labels}


ROUTE = {"backend": "desktop", "model": "llama3.2:3b", "endpoint": CHAT}


def test_one_request_counts_everything() -> None:
    m = Metrics(["desktop", "gpu"])
    m.record(make_record(prompt_tokens=26, completion_tokens=282, eval_count=282, eval_duration_ns=4_535_599_000))
    assert sample(m, "gateway_requests_total", **ROUTE, code="200", client="laptop") == 1
    assert sample(m, "gateway_request_duration_seconds_count", **ROUTE) == 1
    assert sample(m, "gateway_request_duration_seconds_sum", **ROUTE) == 2.0
    assert sample(m, "gateway_request_duration_seconds_bucket", **ROUTE, le="1.0") == 0
    assert sample(m, "gateway_request_duration_seconds_bucket", **ROUTE, le="2.5") == 1
    assert sample(m, "gateway_time_to_first_byte_seconds_sum", **ROUTE) == 0.25
    assert sample(m, "gateway_time_to_first_byte_seconds_bucket", **ROUTE, le="0.1") == 0
    assert sample(m, "gateway_time_to_first_byte_seconds_bucket", **ROUTE, le="0.25") == 1
    tokens = {"backend": "desktop", "model": "llama3.2:3b", "client": "laptop"}
    assert sample(m, "gateway_tokens_total", **tokens, kind="prompt") == 26
    assert sample(m, "gateway_tokens_total", **tokens, kind="completion") == 282
    speed = {"backend": "desktop", "model": "llama3.2:3b"}
    assert sample(m, "gateway_generation_tokens_per_second_count", **speed) == 1
    assert sample(m, "gateway_generation_tokens_per_second_sum", **speed) == pytest.approx(282 / 4.535599)
    assert sample(m, "gateway_generation_tokens_per_second_bucket", **speed, le="50.0") == 0
    assert sample(m, "gateway_generation_tokens_per_second_bucket", **speed, le="75.0") == 1
    # Configured backends have in-flight series from the start; nobody else has any yet.
    assert sample(m, "gateway_in_flight_requests", backend="gpu") == 0
    assert label_values(m, "backend") == {"desktop", "gpu"}


def test_repeated_requests_accumulate_and_codes_split() -> None:
    m = Metrics(["desktop"])
    for status in (200, 200, 200, 502, 499):
        m.record(make_record(status=status, prompt_tokens=10, completion_tokens=5))
    assert sample(m, "gateway_requests_total", **ROUTE, code="200", client="laptop") == 3
    assert sample(m, "gateway_requests_total", **ROUTE, code="502", client="laptop") == 1
    assert sample(m, "gateway_requests_total", **ROUTE, code="499", client="laptop") == 1
    assert sample(m, "gateway_request_duration_seconds_count", **ROUTE) == 5
    tokens = {"backend": "desktop", "model": "llama3.2:3b", "client": "laptop"}
    assert sample(m, "gateway_tokens_total", **tokens, kind="prompt") == 50
    assert sample(m, "gateway_tokens_total", **tokens, kind="completion") == 25


def test_unknown_model_and_backend_and_missing_timings() -> None:
    m = Metrics(["desktop"])
    m.record(make_record(model="", backend="", status=404, first_byte=None, end=None, client="anonymous"))
    route = {"backend": "none", "model": "unknown", "endpoint": CHAT}
    assert sample(m, "gateway_requests_total", **route, code="404", client="anonymous") == 1
    assert sample(m, "gateway_request_duration_seconds_count", **route) == 0
    assert sample(m, "gateway_time_to_first_byte_seconds_count", **route) == 0


def test_unknown_tokens_create_no_token_series() -> None:
    m = Metrics(["desktop"])
    m.record(make_record(prompt_tokens=None, completion_tokens=None, eval_count=282, eval_duration_ns=None))
    assert "gateway_tokens_total" not in {s.name for f in m.registry.collect() for s in f.samples}
    assert sample(m, "gateway_generation_tokens_per_second_count", backend="desktop", model="llama3.2:3b") is None
    m.record(make_record(prompt_tokens=7, completion_tokens=None))  # half known: only that half counts
    tokens = {"backend": "desktop", "model": "llama3.2:3b", "client": "laptop"}
    assert sample(m, "gateway_tokens_total", **tokens, kind="prompt") == 7
    assert sample(m, "gateway_tokens_total", **tokens, kind="completion") == 0


def test_junk_models_passed_as_unknown_add_no_label_values() -> None:
    m = Metrics(["desktop"])
    rng = random.Random(5)
    for _ in range(1000):
        junk = "".join(rng.choices(string.printable, k=rng.randint(1, 40)))
        # The proxy only labels routed models; an unroutable name reaches metrics as "".
        m.record(make_record(model="", path=f"/v1/chat/completions?{junk}", status=404, prompt_tokens=1))
    assert label_values(m, "model") == {"unknown"}
    assert (
        sample(
            m, "gateway_requests_total", backend="desktop", model="unknown", endpoint=CHAT, code="404", client="laptop"
        )
        == 1000
    )
    series = sum(len(f.samples) for f in m.registry.collect())
    m.record(make_record(model="", status=404, prompt_tokens=1))
    assert sum(len(f.samples) for f in m.registry.collect()) == series


def test_model_label_values_are_capped() -> None:
    m = Metrics(["desktop"])
    for i in range(MAX_MODELS + 300):
        m.record(make_record(model=f"model-{i}"))
    models = label_values(m, "model")
    assert len(models) == MAX_MODELS + 1 and "other" in models
    assert (
        sample(
            m, "gateway_requests_total", backend="desktop", model="other", endpoint=CHAT, code="200", client="laptop"
        )
        == 300
    )


def test_gauges_and_error_counters() -> None:
    m = Metrics(["desktop", "gpu"])
    m.started("desktop")
    m.started("desktop")
    m.started("elsewhere")
    m.finished("desktop")
    assert sample(m, "gateway_in_flight_requests", backend="desktop") == 1
    assert sample(m, "gateway_in_flight_requests", backend="elsewhere") == 1
    assert sample(m, "gateway_backend_up", backend="desktop") is None  # unknown until first checked
    m.backend_up("desktop", True)
    m.backend_up("gpu", True)
    m.backend_up("gpu", False)
    assert sample(m, "gateway_backend_up", backend="desktop") == 1
    assert sample(m, "gateway_backend_up", backend="gpu") == 0
    for reason in ("missing", "invalid", "invalid"):
        m.auth_failure(reason)
    assert sample(m, "gateway_auth_failures_total", reason="invalid") == 2
    assert sample(m, "gateway_auth_failures_total", reason="missing") == 1
    m.upstream_error("gpu", "connect")
    m.upstream_error("gpu", "connect")
    m.upstream_error("desktop", "timeout")
    assert sample(m, "gateway_upstream_errors_total", backend="gpu", reason="connect") == 2
    assert sample(m, "gateway_upstream_errors_total", backend="desktop", reason="timeout") == 1


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(["desktop"]), Metrics(["desktop"])
    a.record(make_record())
    assert sample(a, "gateway_requests_total", **ROUTE, code="200", client="laptop") == 1
    assert sample(b, "gateway_requests_total", **ROUTE, code="200", client="laptop") is None
    assert REGISTRY.get_sample_value("gateway_requests_total", {**ROUTE, "code": "200", "client": "laptop"}) is None


def test_render_text_has_every_metric() -> None:
    m = Metrics(["desktop"])
    m.record(make_record(prompt_tokens=1, completion_tokens=2, eval_count=2, eval_duration_ns=10**9))
    m.backend_up("desktop", True)
    m.auth_failure("invalid")
    m.upstream_error("desktop", "reset")
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    text = body.decode()
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text or f"# TYPE {name}" in text, name
    assert "_created" not in text
    buckets = [line for line in text.splitlines() if line.startswith("gateway_request_duration_seconds_bucket")]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    body, content_type = m.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus)")
def test_render_passes_promtool() -> None:
    assert PROMTOOL is not None
    m = Metrics(["desktop", "gpu"])
    for status in (200, 500):
        m.record(make_record(status=status, prompt_tokens=3, completion_tokens=4, eval_count=4, eval_duration_ns=10**8))
    m.record(make_record(model="", backend="", status=401, client="anonymous", first_byte=None))
    m.started("desktop")
    m.backend_up("gpu", False)
    m.auth_failure("invalid")
    m.upstream_error("gpu", "connect")
    body, _ = m.render()
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_snapshot_totals_and_quantiles() -> None:
    m = Metrics(["desktop", "gpu"])
    for ttfb in [0.03] * 4 + [0.2] * 6:
        m.record(make_record(first_byte=100 + ttfb, prompt_tokens=10, completion_tokens=20))
    m.record(make_record(model="qwen", backend="gpu", client="alice", status=503, first_byte=None, prompt_tokens=None))
    m.record(make_record(model="qwen", backend="gpu", client="alice", eval_count=100, eval_duration_ns=2 * 10**9))
    m.started("gpu")
    m.backend_up("desktop", True)
    m.backend_up("gpu", False)
    snap = m.snapshot()
    assert snap["totals"] == {
        "requests": 12,
        "errors": 1,
        "prompt_tokens": 100,
        "completion_tokens": 200,
        "in_flight": 1,
    }
    assert snap["backends"]["desktop"] == {
        "up": True,
        "in_flight": 0,
        "requests": 10,
        "errors": 0,
        "prompt_tokens": 100,
        "completion_tokens": 200,
    }
    assert snap["backends"]["gpu"] == {
        "up": False,
        "in_flight": 1,
        "requests": 2,
        "errors": 1,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    assert snap["clients"]["alice"]["requests"] == 2 and snap["clients"]["laptop"]["requests"] == 10
    llama = snap["models"]["llama3.2:3b"]
    assert llama["requests"] == 10 and llama["prompt_tokens"] == 100
    # 4 in (0.025, 0.05], 6 in (0.1, 0.25]: p50 rank 5 -> 0.1 + 0.15 * 1/6, p95 rank 9.5 -> 0.1 + 0.15 * 5.5/6
    assert llama["ttfb_p50"] == pytest.approx(0.125)
    assert llama["ttfb_p95"] == pytest.approx(0.2375)
    assert llama["tokens_per_second_p50"] is None
    qwen = snap["models"]["qwen"]
    assert qwen["ttfb_p50"] == pytest.approx(0.1 + 0.15 * (0.5 - 0) / 1)  # one observation at 0.25 -> (0.1, 0.25]
    assert qwen["tokens_per_second_p50"] == pytest.approx(40 + 10 * 0.5)  # 50 tok/s in (40, 50]


def test_snapshot_max_age_reuses_a_recent_snapshot() -> None:
    m = Metrics(["desktop"])
    first = m.snapshot(max_age=60)
    m.record(make_record())
    assert m.snapshot(max_age=60) is first
    assert m.snapshot()["totals"]["requests"] == 1
    assert m.snapshot(max_age=60)["totals"]["requests"] == 1


def test_snapshot_of_an_idle_gateway() -> None:
    snap = Metrics(["desktop"]).snapshot()
    assert snap["backends"] == {
        "desktop": {"up": None, "in_flight": 0, "requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0}
    }
    assert snap["models"] == {} and snap["totals"]["requests"] == 0


# --------------------------------------------------------------------------- multiprocess


def _worker(path: str, up: bool, started: int) -> None:
    m = Metrics(["desktop", "gpu"], multiprocess_dir=path)
    for _ in range(3):
        m.record(make_record(prompt_tokens=10, completion_tokens=20, eval_count=50, eval_duration_ns=10**9))
    for _ in range(started):
        m.started("desktop")
    m.backend_up("gpu", up)
    m.cold_load("desktop", "llama3.2:3b")


def test_multiprocess_render_sums_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "prom")
    prepare_multiprocess_dir(path)
    Path(path, "counter_999999.db").write_bytes(b"stale")  # a previous run's file
    prepare_multiprocess_dir(path)
    assert os.listdir(path) == []
    ctx = multiprocessing.get_context("spawn")
    pids = []
    for up, started in ((False, 1), (True, 2)):  # the second worker reports last: gpu is up
        proc = ctx.Process(target=_worker, args=(path, up, started))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
        pids.append(proc.pid)
        time.sleep(0.01)  # distinct timestamps for the "most recent" backend_up
    # Read them back through a Metrics of this process (restored afterwards: the mode is per process).
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", path)
    try:
        m = Metrics(["desktop", "gpu"], multiprocess_dir=path)
        assert sample(m, "gateway_requests_total", **ROUTE, code="200", client="laptop") == 6
        assert sample(m, "gateway_request_duration_seconds_count", **ROUTE) == 6
        assert sample(m, "gateway_request_duration_seconds_bucket", **ROUTE, le="2.5") == 6
        assert (
            sample(
                m, "gateway_tokens_total", backend="desktop", model="llama3.2:3b", client="laptop", kind="completion"
            )
            == 120
        )
        assert sample(m, "gateway_in_flight_requests", backend="desktop") == 3
        assert sample(m, "gateway_cold_loads_total", backend="desktop", model="llama3.2:3b") == 2
        assert sample(m, "gateway_backend_up", backend="gpu") == 1
        body, _ = m.render()
        assert (
            'gateway_requests_total{backend="desktop",client="laptop",code="200",endpoint="/v1/chat/completions",'
            'model="llama3.2:3b"} 6.0' in body.decode()
        )
        if PROMTOOL is not None:
            result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
            assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        snap = m.snapshot()
        assert snap["totals"]["requests"] == 6 and snap["totals"]["completion_tokens"] == 120
        assert snap["backends"]["desktop"]["in_flight"] == 3 and snap["backends"]["gpu"]["up"] is True
        # 6 observations of 50 tok/s: rank 3 of 6 in (40, 50]
        assert snap["models"]["llama3.2:3b"]["tokens_per_second_p50"] == pytest.approx(45.0)
        # A worker that died takes its in-flight requests (a live gauge) with it.
        mark_process_dead(pids[1], path)
        assert sample(m, "gateway_in_flight_requests", backend="desktop") == 1
        assert sample(m, "gateway_requests_total", **ROUTE, code="200", client="laptop") == 6
        # This process's own writes land in the same files.
        m.record(make_record())
        assert sample(m, "gateway_requests_total", **ROUTE, code="200", client="laptop") == 7
    finally:
        values.close_all_multiprocess_files()


# --------------------------------------------------------------------------- cost


def test_record_cost_micro_benchmark() -> None:
    """Not a timed assertion: prints record() per call, and the same work through .labels()."""
    m = Metrics(["desktop"])
    rec = make_record(prompt_tokens=26, completion_tokens=282, eval_count=282, eval_duration_ns=4_535_599_000)
    n = 20000
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            m.record(rec)
        best = min(best, time.perf_counter() - t0)
    cached = best / n * 1e6

    def naive(r: RequestRecord) -> None:
        m.requests.labels(r.backend, r.model, r.endpoint, str(r.status), r.client).inc()
        m.duration.labels(r.backend, r.model, r.endpoint).observe(r.end - r.start)  # type: ignore[operator]
        m.ttfb.labels(r.backend, r.model, r.endpoint).observe(r.first_byte - r.start)  # type: ignore[operator]
        m.tokens.labels(r.backend, r.model, r.client, "prompt").inc(r.prompt_tokens or 0)
        m.tokens.labels(r.backend, r.model, r.client, "completion").inc(r.completion_tokens or 0)
        m.generation_speed.labels(r.backend, r.model).observe(282 / 4.535599)

    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            naive(rec)
        best = min(best, time.perf_counter() - t0)
    print(f"\nrecord(): {cached:.2f} µs per request (the same through .labels(): {best / n * 1e6:.2f} µs)")
