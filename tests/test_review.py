"""Defects found by trying the merged gateway as a new user would, each pinned by the real command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_check_names_the_unknown_dialect_in_speaks(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("backends:\n  - name: a\n    url: http://127.0.0.1:11434\n    speaks: [openai, klingon]\n")
    result = _check(config)
    assert result.returncode == 2
    assert "backends[0].speaks: expected a non-empty list of dialects from ollama, openai, anthropic" in result.stderr
    assert "got ['openai', 'klingon']" in result.stderr
