"""The ``consentry`` command.

``consentry serve --upstream URL [--host H] [--port P] [--base-path /fhir] [--workers N]
[--config FILE]`` runs the gateway (uvicorn, uvloop, httptools; :mod:`middleware.serving`) on
the embedded default store, in one process unless ``--workers`` asks for more (0: one per CPU).
Settings come from the TOML file, then ``CONSENTRY_*`` variables, then these flags; a bad value
stops it at once with every problem listed.

The other commands are registered, with their subcommands, by the module that implements
them: ``consentry ledger verify|export`` and ``consentry keys generate|policy|rotate`` by
:mod:`middleware.ledger.cli`, ``consentry token issue`` by :mod:`middleware.auth.cli`,
``consentry mappings check|explain`` by :mod:`middleware.mapping.cli`, ``consentry audit ...``
by :mod:`middleware.audit.cli`, ``consentry witness keygen|serve`` by
:mod:`middleware.witness.cli`. Each subcommand parser sets ``run(args, out) -> exit status``;
the help shown to users is the plain text given there, never these docstrings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from middleware import __version__
from middleware.audit.cli import register as register_audit
from middleware.auth.cli import register as register_token
from middleware.auth.cli_revoke import register as register_auth
from middleware.devsetup import add_init_parser
from middleware.errors import SettingsError
from middleware.ledger.cli import register as register_ledger
from middleware.logging import configure_logging
from middleware.mapping.cli import register as register_mappings
from middleware.settings import load_settings
from middleware.witness.cli import register as register_witness

__all__ = ["main"]

_DESCRIPTION = (
    "Consentry, a consent-enforcing FHIR gateway. `consentry COMMAND --help` describes each "
    "command; `consentry init` writes a local development configuration to start from."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="consentry", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"consentry {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, title="commands", metavar="COMMAND"
    )
    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Settings come from the TOML file, then CONSENTRY_* "
        "environment variables, then these options; a bad value stops it with every "
        "problem listed.",
    )
    serve.add_argument("--upstream", help="upstream FHIR base URL, e.g. http://127.0.0.1:8103/fhir")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--base-path", dest="base_path", help="FHIR base path (default /fhir)")
    serve.add_argument("--public-url", dest="public_url", help="absolute FHIR base clients see")
    serve.add_argument(
        "--store",
        help="sqlite:PATH (default sqlite:consentry.db), postgresql://... (several replicas "
        "sharing one ledger) or memory: (tests)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port and the store (default 1; 0: one per CPU "
        "the process may run on; always 1 with a memory: store)",
    )
    serve.add_argument("--config", type=Path, help="TOML settings file (- reads stdin)")
    add_init_parser(commands)
    # Each module registers its own commands and subcommands (each sets ``run``).
    register_token(commands)
    register_auth(commands)
    register_ledger(commands)
    register_audit(commands)
    register_mappings(commands)
    register_witness(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``consentry`` console script; returns the exit status (0 done,
    1 a check failed, 2 a usage error or a command that could not run, its reason on
    standard error)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "serve":
        return _serve(args)
    run: Callable[[argparse.Namespace, TextIO], int] = args.run
    return run(args, sys.stdout)


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        key: getattr(args, key)
        for key in ("upstream", "host", "port", "base_path", "public_url", "store", "workers")
    }
    try:
        settings = load_settings(config_file=args.config, env=os.environ, overrides=overrides)
    except SettingsError as exc:
        print(f"consentry: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)

    from middleware.serving import serve  # noqa: PLC0415 - only the serve command needs it

    return serve(settings)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
