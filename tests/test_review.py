"""Defects found by trying the merged gateway as a new user would, pinned through real sockets or commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp

from . import test_bridge_ollama
from .conftest import GatewayFactory, RunningGateway
from .fakes import FakeBackend
from .test_bridge_ollama import OpenAIFactory, bridged

openai_factory = test_bridge_ollama.openai_factory  # the fixture, shared


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
    config.write_text("backends:\n  - name: a\n    url: http://127.0.0.1:11434\n    speaks: []\n")
    assert (
        "speaks: expected a non-empty list of dialects from ollama, openai, anthropic, got []" in _check(config).stderr
    )


def _key_paths(node: object, prefix: str) -> list[str]:
    """Every mapping key under ``node`` as a dotted path, list items as ``[]``."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in [f"{prefix}{k}", *_key_paths(v, f"{prefix}{k}.")]]
    if isinstance(node, list):
        return [p for item in node for p in _key_paths(item, prefix.rstrip(".") + "[].")]
    return []


def test_readme_configuration_table_names_every_server_backend_and_routing_key() -> None:
    """The table is where a user looks a key up; keys documented only in prose were missed."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    example = yaml.safe_load((root / "gateway.example.yaml").read_text())
    readme = (root / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("### Fair queueing")]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    missing = []
    for path in _key_paths({k: example[k] for k in ("server", "backends", "routing")}, ""):
        if "." not in path or path.count(".") > 1:
            continue  # sub-keys are described in their parent's row
        leaf = path.rsplit(".", 1)[-1]
        parent = path.rsplit(".", 1)[0]
        if not any(f"`{path}`" in row or (f"`{parent}." in row and f"{leaf}`" in row) for row in rows):
            missing.append(path)
    assert sorted(set(missing)) == []


async def test_readme_metrics_table_lists_every_exported_family(
    single: tuple[FakeBackend, RunningGateway], http: aiohttp.ClientSession
) -> None:
    """What /metrics really exports is what a user will look up in the table."""
    _, gw = single
    async with http.get(f"{gw.url}/metrics") as resp:
        assert resp.status == 200
        exported = {line.split()[2] for line in (await resp.text()).splitlines() if line.startswith("# TYPE ")}
    assert "gateway_requests_total" in exported
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Metrics, logs and health") :]
    table = section[: section.index("Label values come")]
    assert sorted(name for name in exported if f"| `{name}` |" not in table) == []


async def test_bridge_rejects_an_unknown_think_value_in_ollama_shape(
    openai_factory: OpenAIFactory, gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """`think: "x"` was dropped and the backend asked without it; Ollama itself answers 400."""
    fake, gw, _ = await bridged(openai_factory, gateway_factory)
    for think in ("x", 1, ["high"]):
        payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "think": think}
        async with http.post(gw.url + "/api/chat", json=payload) as resp:
            assert resp.status == 400, think
            assert await resp.json() == {"error": '\'think\' must be true, false, "low", "medium" or "high"'}
    assert fake.requests == []
