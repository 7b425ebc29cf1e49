"""``gateway_queue_wait_seconds{backend}``: tallied at scrape time in one process, in files with workers."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from prometheus_client import values

from gateway.metrics import Metrics, prepare_multiprocess_dir


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_waits_are_tallied_per_backend_and_exported() -> None:
    m = Metrics(["desktop", "gpu"])
    assert sample(m, "gateway_queue_wait_seconds_count", backend="gpu") is None  # nobody waited yet
    for seconds in (0.02, 0.3, 4.0):
        m.queue_waited("gpu", seconds)
    assert sample(m, "gateway_queue_wait_seconds_count", backend="gpu") == 3
    assert sample(m, "gateway_queue_wait_seconds_sum", backend="gpu") == pytest.approx(4.32)
    assert sample(m, "gateway_queue_wait_seconds_bucket", backend="gpu", le="0.025") == 1
    assert sample(m, "gateway_queue_wait_seconds_bucket", backend="gpu", le="0.5") == 2
    assert sample(m, "gateway_queue_wait_seconds_bucket", backend="gpu", le="+Inf") == 3
    assert sample(m, "gateway_queue_wait_seconds_count", backend="desktop") is None
    body, _ = m.render()
    assert b"# TYPE gateway_queue_wait_seconds histogram" in body
    assert b'gateway_queue_wait_seconds_count{backend="gpu"} 3.0' in body


def _worker(path: str, waits: int) -> None:
    m = Metrics(["gpu"], multiprocess_dir=path)
    for _ in range(waits):
        m.queue_waited("gpu", 0.2)


def test_workers_waits_are_summed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "prom")
    prepare_multiprocess_dir(path)
    ctx = multiprocessing.get_context("spawn")
    for waits in (2, 3):
        proc = ctx.Process(target=_worker, args=(path, waits))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # the mode is per process: restored afterwards
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", path)
    m = Metrics(["gpu"], multiprocess_dir=path)
    assert sample(m, "gateway_queue_wait_seconds_count", backend="gpu") == 5
    assert sample(m, "gateway_queue_wait_seconds_sum", backend="gpu") == pytest.approx(1.0)
    m.queue_waited("gpu", 0.5)  # this process's own writes land in the same files
    assert sample(m, "gateway_queue_wait_seconds_count", backend="gpu") == 6
