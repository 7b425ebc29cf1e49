"""Running an app on a socket: the runner options every entry point shares, signals, workers.

Tests and the CLI start the gateway the same way (``make_runner``), so what the tests exercise is
what users run: ``handler_cancellation=True`` makes a client disconnect cancel its handler (and so
close the upstream request) even while nothing is being written.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import sys
import tempfile
from contextlib import suppress
from pathlib import Path

from aiohttp import web

from .app import create_app, reload_credentials
from .config import ConfigError, GatewayConfig
from .configfile import load_config
from .frontdoor import guarded_runner
from .metrics import mark_process_dead, prepare_multiprocess_dir
from .state import STATE
from .tls import TlsSite, attach_tls, reload_tls

__all__ = ["is_loopback", "make_runner", "run", "serve", "unsafe_listen_reason"]

log = logging.getLogger("gateway")
GC_THRESHOLD = 20_000  # generation-0 allocations between collections (CPython's default is 700)


def make_runner(app: web.Application) -> web.AppRunner:
    state = app[STATE]  # the front door (frontdoor.py): connection caps, slow-client deadlines, head limits
    return guarded_runner(
        app, state.config.server, state.metrics, handler_cancellation=True, access_log=None, shutdown_timeout=5.0
    )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def unsafe_listen_reason(config: GatewayConfig, host: str) -> str | None:
    """Why listening on ``host`` would expose an unauthenticated gateway, or None if it is fine."""
    if config.auth is None and not is_loopback(host) and not config.server.allow_unauthenticated_remote:
        return (
            f"refusing to listen on {host} without authentication: anyone who can reach it could use your models. "
            "Add an auth section (gateway new-key), or set server.allow_unauthenticated_remote: true"
        )
    return None


def _reload(app: web.Application, path: Path | None) -> None:
    """SIGHUP: re-read the config file and swap credentials; a bad file keeps the old ones."""
    try:
        config = load_config(path)
        reload_credentials(app, config)
    except ConfigError as exc:
        for line in exc.errors:
            log.error("reload failed, keeping the previous credentials: %s", line)
        return
    except ValueError as exc:
        log.error("reload failed, keeping the previous credentials: %s", exc)
        return
    reload_tls(app, config)  # renewed certificate files, for new connections
    auth = config.auth
    log.info(
        "reloaded credentials from %s: %d api key(s), %d basic user(s)",
        path or "<defaults>", len(auth.api_keys) if auth else 0, len(auth.basic_users) if auth else 0,
    )  # fmt: skip


async def serve(
    config: GatewayConfig, host: str, port: int, *, reuse_port: bool = False, config_path: Path | None = None
) -> None:
    """Serve until SIGINT/SIGTERM (SIGHUP reloads credentials), then shut down gracefully."""
    app = create_app(config)
    tls = attach_tls(app, config)  # before the app is frozen: SIGHUP re-reads certificates into it
    runner = make_runner(app)
    await runner.setup()
    site = TlsSite(
        runner, host, port, ssl_context=tls, handshake_timeout=config.server.timeouts.headers, reuse_port=reuse_port,
        backlog=4096,
    )  # fmt: skip
    await site.start()
    # Everything built so far lives for the whole run: move it out of the collector's sight, and
    # collect young objects less often (a request allocates a few hundred short-lived objects).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    scheme = "https" if config.server.tls else "http"
    backends = ", ".join(f"{b.name}={b.url}" for b in config.backends)
    log.info(
        "local-llm-gateway listening on %s://%s:%d (pid %d), backends: %s", scheme, host, port, os.getpid(), backends
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, _reload, app, config_path)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def _run_loop(coro_factory: object) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional: Linux wheels only
        asyncio.run(coro_factory())  # type: ignore[operator]
    else:
        uvloop.run(coro_factory())  # type: ignore[operator]


def run(config: GatewayConfig, host: str, port: int, workers: int = 1, config_path: Path | None = None) -> int:
    """Run the gateway in this process, or in ``workers`` processes sharing the port (SO_REUSEPORT)."""
    if workers <= 1:
        _run_loop(lambda: serve(config, host, port, config_path=config_path))
        return 0
    if config.metrics.enabled:
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="gateway-metrics-")
        prepare_multiprocess_dir(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    children: list[int] = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # child: its own loop, its own app, its own listening socket
            code = 0
            try:
                _run_loop(lambda: serve(config, host, port, reuse_port=True, config_path=config_path))
            except BaseException:  # noqa: BLE001 - a worker must never fall back into the parent's code
                log.exception("worker crashed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(sig: int, _frame: object) -> None:
        for child in children:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def reload_all(sig: int, _frame: object) -> None:
        for child in children:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload_all)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                if config.metrics.enabled:
                    mark_process_dead(child, os.environ["PROMETHEUS_MULTIPROC_DIR"])
                break
            except InterruptedError:
                continue
        status = status or (os.waitstatus_to_exitcode(code) or 0)
    return 1 if status else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `gateway` command")
