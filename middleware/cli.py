"""The ``consentry`` command.

``consentry serve --upstream URL [--host H] [--port P] [--base-path /fhir] [--config FILE]``
runs the gateway (uvicorn, uvloop, httptools) on the embedded default store. Settings come from
the TOML file, then ``CONSENTRY_*`` variables, then these flags; a bad value stops it at once
with every problem listed.

``consentry ledger verify|export`` and ``consentry keys generate|policy|rotate`` are described
in :mod:`middleware.ledger.cli`; ``consentry mappings check|explain`` in
:mod:`middleware.mapping.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from middleware import __version__
from middleware.errors import GatewayError, SettingsError
from middleware.logging import configure_logging
from middleware.settings import load_settings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consentry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"consentry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--upstream", help="upstream FHIR base URL, e.g. http://127.0.0.1:8103/fhir")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--base-path", dest="base_path", help="FHIR base path (default /fhir)")
    serve.add_argument("--public-url", dest="public_url", help="absolute FHIR base clients see")
    serve.add_argument("--store", help="sqlite:PATH (default sqlite:consentry.db) or memory:")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    token = commands.add_parser("token", help="development tokens (see `token issue --help`)")
    token.add_argument("action", choices=["issue"], help="mint a token from a local key")
    token.add_argument("rest", nargs=argparse.REMAINDER, help="options of `token issue`")
    for group, actions, about in (
        ("ledger", ("verify", "export"), "verify the ledger offline, or export it"),
        ("keys", ("generate", "policy", "rotate"), "manage the ledger's signing keys"),
        ("mappings", ("check", "explain"), "lint the mapping files, or explain a mapping"),
    ):
        sub = commands.add_parser(group, help=f"{about} (see `{group} {actions[0]} --help`)")
        sub.add_argument("action", choices=actions)
        sub.add_argument("rest", nargs=argparse.REMAINDER, help=f"options of `{group} ACTION`")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``consentry`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        from middleware.auth.cli import issue_token_command  # noqa: PLC0415

        return issue_token_command(args.rest)
    if args.command in ("ledger", "keys"):
        from middleware.ledger.cli import run_command  # noqa: PLC0415

        return run_command(args.command, args.action, args.rest)
    if args.command == "mappings":
        from middleware.mapping.cli import run_command as run_mappings  # noqa: PLC0415

        return run_mappings(args.action, args.rest)
    return 2  # pragma: no cover - argparse enforces the subcommand


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        key: getattr(args, key)
        for key in ("upstream", "host", "port", "base_path", "public_url", "store")
    }
    try:
        settings = load_settings(config_file=args.config, env=os.environ, overrides=overrides)
    except SettingsError as exc:
        print(f"consentry: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)

    import uvicorn  # noqa: PLC0415 - only the serve command needs the server

    from middleware.app import create_app  # noqa: PLC0415

    try:
        app = create_app(settings)
    except (SettingsError, GatewayError) as exc:
        print(f"consentry: cannot start: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
