"""bench/chaos.py keeps working: a short run through a real gateway subprocess loses nothing to backend failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    args = ["--duration", "5", "--clients", "4", "--chaos-every", "1", "--sighup-every", "1", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr  # 1: something was lost
    report = json.loads(out.read_text())
    # Nothing lost, while backends fail and across the drain at the end.
    assert report["lost_total"] == 0, report["lost_examples"]
    assert report["succeeded"] > 0 and report["sent"] == report["succeeded"] + report["failed_total"]
    assert report["sighups"] >= 3 and report["gateway_exit_code"] == 0
    assert len(report["events"]) >= 5  # episodes of chaos, then the SIGTERM
    assert f"lost       {report['lost_total']}" in result.stdout
