"""The ``gateway`` command: ``serve`` (default), ``check``, ``new-key``, ``hash-password``, ``--version``.

Thin by design: parse arguments, load config, call into the package. Every user error is one
clear line (or, for ``check``, one line per config error) and an exit code; never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

from . import __version__
from .accesslog import BufferedLineHandler
from .config import ConfigError, GatewayConfig
from .configfile import find_config_file, load_config

__all__ = ["main"]

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="An authenticating, routing, streaming reverse proxy for Ollama, vLLM, LM Studio "
        "and other OpenAI-compatible servers.",
    )
    parser.add_argument("--version", action="version", version=f"local-llm-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c", "--config", metavar="FILE",
            help="config file (default: $GATEWAY_CONFIG, else ./gateway.yaml if present, else built-in defaults)",
        )  # fmt: skip

    serve = sub.add_parser("serve", help="run the gateway (the default command)")
    config_arg(serve)
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT); default 1")
    check = sub.add_parser("check", help="validate a config: exit 0 and a summary, or exit 2 and every error")
    config_arg(check)
    new_key = sub.add_parser("new-key", help="print a fresh API key once, and the YAML entry holding only its hash")
    new_key.add_argument("--name", required=True, help="the client's name (shown in logs and metrics)")
    hash_pw = sub.add_parser("hash-password", help="read a password (prompt, or stdin when piped), print a bcrypt hash")
    hash_pw.add_argument("--rounds", type=int, default=12, help="bcrypt cost (default 12; at least 10 is advised)")
    return parser


def _load(path_arg: str | None) -> GatewayConfig:
    return load_config(find_config_file(path_arg))


def _print_errors(errors: Sequence[str]) -> None:
    for line in errors:
        print(f"error: {line}", file=sys.stderr)


def _setup_logging(config: GatewayConfig) -> None:
    logging.basicConfig(
        level=config.logging.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The access log prints its own complete lines (text or JSON): no prefix.
    access = logging.getLogger("gateway.access")
    handler = BufferedLineHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
    logging.getLogger("aiohttp.access").disabled = True


def cmd_check(args: argparse.Namespace) -> int:
    from .secrets import config_warnings

    try:
        config = _load(args.config)
    except ConfigError as exc:
        _print_errors(exc.errors)
        print(f"{len(exc.errors)} error(s) in {args.config or 'the configuration'}", file=sys.stderr)
        return EXIT_CONFIG
    warnings = config_warnings(config.auth) if config.auth else []
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    auth = (
        "no auth (loopback only)"
        if config.auth is None
        else (f"{len(config.auth.api_keys)} api key(s), {len(config.auth.basic_users)} basic user(s)")
    )
    print(
        f"ok: {config.source}: {len(config.backends)} backend(s) ({', '.join(b.name for b in config.backends)}), "
        f"{len(config.aliases)} alias(es), {auth}, listening on {config.server.host}:{config.server.port}"
    )
    from .limits.report import effective_limit_lines

    for line in effective_limit_lines(config):
        print(line)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run, unsafe_listen_reason

    try:
        config = _load(args.config)
    except ConfigError as exc:
        _print_errors(exc.errors)
        return EXIT_CONFIG
    server = config.server  # `run` gets the file's config: a reload compares its listen address with the file's
    if args.host is not None or args.port is not None:
        server = replace(server, host=args.host or server.host, port=server.port if args.port is None else args.port)
    if not 0 <= server.port <= 65535:
        print(f"error: --port: expected 0-65535, got {server.port}", file=sys.stderr)
        return EXIT_CONFIG
    if args.workers < 1:
        print(f"error: --workers: expected at least 1, got {args.workers}", file=sys.stderr)
        return EXIT_CONFIG
    reason = unsafe_listen_reason(config, server.host)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(config)
    if config.auth is not None:
        from .secrets import config_warnings

        for line in config_warnings(config.auth):
            logging.getLogger("gateway").warning("%s", line)
    try:
        return run(config, server.host, server.port, args.workers, find_config_file(args.config))
    except OSError as exc:
        print(f"error: cannot listen on {server.host}:{server.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def cmd_new_key(args: argparse.Namespace) -> int:
    from .secrets import new_key_entry

    try:
        key, entry = new_key_entry(args.name)
    except ValueError as exc:
        print(f"error: --name: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"# API key for '{args.name}' (shown once; store it in the client):", file=sys.stderr)
    print(key)
    print("# Add this under auth.api_keys in gateway.yaml (it holds only the hash):", file=sys.stderr)
    print(entry, end="" if entry.endswith("\n") else "\n")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    from .secrets import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 1
    try:
        print(hash_password(password, rounds=args.rounds))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    handlers = {"serve": cmd_serve, "check": cmd_check, "new-key": cmd_new_key, "hash-password": cmd_hash_password}
    if not args_list or (args_list[0] not in handlers and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "serve")  # plain `gateway [-c FILE] ...` means `gateway serve ...`
    args = _parser().parse_args(args_list)
    return handlers[args.command](args)
