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
