"""The command line: exit codes and messages, never tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway import __version__
from gateway.cli import main
from gateway.configfile import parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "gateway.example.yaml"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0 and capsys.readouterr().out.strip() == f"local-llm-gateway {__version__}"


def test_check_ok_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {EXAMPLE}: 2 backend(s) (desktop, gpu), 2 alias(es), 1 api key(s), 1 basic user(s)")


def test_check_prints_every_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"server": {"port": "x"}, "backends": [{"name": "a", "url": "ftp://x"}], "cors": {"max_age": "y"}}
        )
    )
    assert main(["check", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error: server.port: expected a port number 0-65535, got 'x'" in err
    assert "error: backends[0].url: expected an http(s) URL" in err
    assert "error: cors.max_age: expected a duration such as 10m, got 'y'" in err
    assert "3 error(s)" in err and "Traceback" not in err


def test_serve_refuses_remote_listen_without_auth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "g.yaml"
    config.write_text("backends: [{name: a, url: 'http://127.0.0.1:9'}]\n")
    assert main(["serve", "-c", str(config), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refusing to listen on 0.0.0.0 without authentication")


def test_serve_with_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", str(tmp_path / "missing.yaml")]) == 2  # plain `gateway -c FILE` means serve
    assert "cannot read the config file" in capsys.readouterr().err


def test_new_key_prints_key_once_and_a_hash_only_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-key", "--name", "laptop"]) == 0
    captured = capsys.readouterr()
    key, *entry_lines = captured.out.strip().splitlines()
    entry = yaml.safe_load("\n".join(entry_lines))
    item = entry[0] if isinstance(entry, list) else entry
    assert item["name"] == "laptop" and item["hash"].startswith("sha256:") and key not in "\n".join(entry_lines)
    parse_config({"auth": {"api_keys": [item]}}, env={})  # the printed entry is valid config


def test_hash_password_reads_stdin_not_argv() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-password", "--rounds", "4"],
        input="correct horse\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    import bcrypt

    assert bcrypt.checkpw(b"correct horse", result.stdout.strip().encode())
