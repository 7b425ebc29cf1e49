"""The deployment files stay consistent with what the gateway exports and accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from gateway.configfile import parse_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_grafana_dashboard_uses_only_exported_metric_names() -> None:
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "grafana" / "check_dashboard.py")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_yaml_files_parse_and_gateway_configs_validate() -> None:
    for path in DEPLOY.rglob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs, path
    compose_config = yaml.safe_load((DEPLOY / "gateway.compose.yaml").read_text())
    parse_config(compose_config, env={"GATEWAY_KEY_HASH": "sha256:" + "a" * 64})


def _duration(text: str) -> float:
    from gateway.configfile import parse_duration

    return parse_duration(text.strip())


def test_grace_periods_outlast_the_gateways_drain() -> None:
    """Every supervisor waits longer than a full drain before SIGKILL, and Kubernetes sleeps in preStop first."""
    from gateway.config import ServerConfig
    from gateway.drain import STREAM_END_GRACE

    margin = STREAM_END_GRACE + 2.0  # the timeout, then ending what is left, then exiting
    configmap = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    in_cluster = parse_config(
        yaml.safe_load(configmap["data"]["gateway.yaml"]), env={"GATEWAY_KEY_HASH": "sha256:" + "a" * 64}
    )
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    sleep = float(pre_stop[-1].rsplit("(", 1)[1].rstrip(")")) if pre_stop[0] == "python" else float(pre_stop[-1])
    assert 1 <= sleep <= 15  # short: only for the endpoint removal to propagate
    drain = in_cluster.server.shutdown_delay + in_cluster.server.shutdown_timeout
    assert pod["terminationGracePeriodSeconds"] > sleep + drain + margin

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["gateway"]
    in_compose = parse_config(
        yaml.safe_load((DEPLOY / "gateway.compose.yaml").read_text()), env={"GATEWAY_KEY_HASH": "sha256:" + "a" * 64}
    )
    assert compose.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert (
        _duration(compose["stop_grace_period"])
        > in_compose.server.shutdown_delay + in_compose.server.shutdown_timeout + margin
    )

    unit = dict(
        line.split("=", 1) for line in (DEPLOY / "systemd" / "gateway.service").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )  # fmt: skip
    default = ServerConfig()
    assert unit.get("KillSignal", "SIGTERM") == "SIGTERM" and unit["KillMode"] == "mixed"  # the parent drains workers
    assert _duration(unit["TimeoutStopSec"]) > default.shutdown_delay + default.shutdown_timeout + margin
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"
