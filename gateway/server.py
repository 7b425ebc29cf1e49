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
import math
import os
import signal
import sys
import tempfile
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from .app import create_app
from .config import ConfigError, GatewayConfig
from .configfile import load_config
from .drain import STREAM_END_GRACE, shut_down
from .frontdoor import guarded_runner
from .metrics import mark_process_dead, prepare_multiprocess_dir
from .reload import keep_restart_only, reload_state
from .state import STATE
from .tls import TlsSite, attach_tls, reload_tls

__all__ = ["is_loopback", "make_runner", "run", "serve", "unsafe_listen_reason"]

log = logging.getLogger("gateway")
WORKER_EXIT_MARGIN = 5.0  # seconds the parent adds to a worker's drain before killing it
GC_THRESHOLD = 20_000  # generation-0 allocations between collections (CPython's default is 700)


def make_runner(app: web.Application, shutdown_timeout: float = 5.0) -> web.AppRunner:
    state = app[STATE]  # the front door (frontdoor.py): connection caps, slow-client deadlines, head limits
    return guarded_runner(
        app,
        state.config.server,
        state.metrics,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
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


def _reload(app: web.Application, path: Path | None, host: str, port: int, file_listen: tuple[str, int]) -> None:
    """SIGHUP: re-read the config file and apply it to new requests; a bad file changes nothing."""
    state = app[STATE]
    if state.drain.active:
        log.warning("reload ignored: the gateway is shutting down")
        return
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            log.error("reload failed, keeping the previous configuration: %s", line)
        return
    reason = unsafe_listen_reason(loaded, host)
    if reason:
        log.error("reload failed, keeping the previous configuration: %s", reason)
        return
    if (loaded.server.host, loaded.server.port) != file_listen:
        log.warning(
            "server.host/server.port changed to %s:%d: needs a restart (still listening on %s:%d)",
            loaded.server.host, loaded.server.port, host, port,
        )  # fmt: skip
    config, pending = keep_restart_only(state.config, with_listen(loaded, host, port))
    for key in pending:
        log.warning("%s changed: needs a restart to take effect (keeping the running value)", key)
    report = reload_state(state, config)
    reload_tls(app, config)  # renewed certificate files, for new connections
    auth = config.auth
    log.info(
        "reloaded %s: backends %s; %d alias(es); auth: %s",
        path or "<defaults>", report.summary(), len(config.aliases),
        f"{len(auth.api_keys)} api key(s), {len(auth.basic_users)} basic user(s)" if auth else "off",
    )  # fmt: skip


def with_listen(config: GatewayConfig, host: str, port: int) -> GatewayConfig:
    """``config`` as it runs: ``--host``/``--port`` override the file's listen address."""
    if (config.server.host, config.server.port) == (host, port):
        return config
    return replace(config, server=replace(config.server, host=host, port=port))


async def serve(
    config: GatewayConfig, host: str, port: int, *, reuse_port: bool = False, config_path: Path | None = None
) -> None:
    """Serve until SIGINT/SIGTERM (SIGHUP reloads the config), then drain gracefully (``drain.py``).

    ``config`` is the file as loaded; ``host``/``port`` are where to listen (they may override it).
    """
    file_listen = (config.server.host, config.server.port)
    config = with_listen(config, host, port)
    app = create_app(config)
    # Signals first: once "listening" is logged, a supervisor may send any of them.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, _reload, app, config_path, host, port, file_listen)
    tls = attach_tls(app, config)  # before the app is frozen: SIGHUP re-reads certificates into it
    runner = make_runner(app)  # its shutdown timeout is set when the drain starts (drain.py)
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
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal while draining changes nothing
            with suppress(NotImplementedError):
                loop.add_signal_handler(sig, log.info, "already draining")
        server = app[STATE].config.server  # as last reloaded
        log.info("shutting down: draining for up to %gs", server.shutdown_delay + server.shutdown_timeout)
        await shut_down(runner, app[STATE].drain, server.shutdown_delay, server.shutdown_timeout)
    log.info("stopped")


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
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # an early SIGHUP must not kill it (serve handles it)
            code = 0
            try:
                _run_loop(lambda: serve(config, host, port, reuse_port=True, config_path=config_path))
            except BaseException:  # noqa: BLE001 - a worker must never fall back into the parent's code
                log.exception("worker crashed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    # The parent drains the workers: it forwards SIGTERM, then waits as long as a worker's drain may
    # take (the shutdown settings as last reloaded) plus a margin, and kills what is still running.
    drain_time = [config.server.shutdown_delay + config.server.shutdown_timeout]

    def forward(sig: int, _frame: object) -> None:
        if drain_time[0] < 0:
            return  # already draining
        for child in children:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        signal.signal(signal.SIGALRM, kill_all)
        signal.alarm(math.ceil(drain_time[0] + STREAM_END_GRACE + WORKER_EXIT_MARGIN))
        drain_time[0] = -1.0

    def kill_all(sig: int, _frame: object) -> None:
        log.error("workers still running after the drain: killing them")
        for child in children:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def reload_all(sig: int, _frame: object) -> None:
        for child in children:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGHUP)
        if drain_time[0] >= 0:
            with suppress(ConfigError, OSError):  # the workers log a broken file; here only the drain time matters
                server = load_config(config_path).server
                drain_time[0] = server.shutdown_delay + server.shutdown_timeout

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
        stopped = drain_time[0] < 0 and os.WIFSIGNALED(code) and os.WTERMSIG(code) == signal.SIGTERM
        if not stopped:  # (a worker still starting when the SIGTERM came ends by it: that is a clean stop)
            status = status or (os.waitstatus_to_exitcode(code) or 0)
    signal.alarm(0)
    return 1 if status else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `gateway` command")
