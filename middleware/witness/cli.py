"""``consentry witness keygen|serve``: run an outside witness (C2SP tlog-witness).

    consentry witness keygen witness.example/w1 --key witness.key      # prints the vkey
    consentry witness serve --key witness.key --state witness.db --new-state \\
        --log gw.example/fhir/ledger=gw.example/fhir/ledger+1a2b3c4d+AX... [--log ...] \\
        [--host 127.0.0.1] [--port 8081]

``keygen`` writes the witness's secret key (owner-readable, never overwritten) and prints its
public vkey (type 0x04, C2SP tlog-cosignature) for the logs and clients that will trust it.
``serve`` needs only its own files: the key, the state file, and the ``--log`` pairs (origin,
then ``=``, then a verifier key of that log; repeat a pair for each key of a log). It refuses to
start on a missing state file unless ``--new-state`` says this is a new witness: a witness
that lost its state must not cosign again under the same key.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from middleware.ledger.errors import LedgerError
from middleware.ledger.note import NoteVerifier
from middleware.ledger.signing import Cosigner, Verifier
from middleware.witness.protocol import LogConfig

__all__ = ["parse_logs", "register"]


_HEADER_TIMEOUT = 10.0
_MAX_CONNECTIONS = 1024


class _Usage(Exception):
    """A command line that cannot run (exit status 2)."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``witness keygen`` and ``witness serve`` to ``consentry``'s subcommands."""
    parser = commands.add_parser(
        "witness",
        help="run an outside witness that cosigns ledger checkpoints",
        description="An outside witness (C2SP tlog-witness): it cosigns a log's checkpoints "
        "only when each provably extends the last one it cosigned.",
    )
    actions = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    keygen = actions.add_parser(
        "keygen",
        help="create a witness key",
        description="Write a new witness key to --key "
        "(never overwriting a file) and print its public verifier key.",
    )
    keygen.add_argument("name", help="the witness's name, e.g. witness.example/w1")
    keygen.add_argument("--key", type=Path, required=True, help="where to write the secret key")
    keygen.set_defaults(run=functools.partial(_run, "keygen", _keygen))
    serve = actions.add_parser(
        "serve", help="serve add-checkpoint", description="Serve POST /add-checkpoint."
    )
    serve.add_argument("--key", type=Path, required=True, help="the witness's secret key file")
    serve.add_argument("--state", type=Path, required=True, help="the witness's state file")
    serve.add_argument(
        "--new-state", action="store_true", help="create the state file (a new witness)"
    )
    serve.add_argument(
        "--log",
        action="append",
        default=[],
        metavar="ORIGIN=VKEY",
        help="a log to witness: its origin and one of its verifier keys (repeatable)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8081, help="listen port (default 8081)")
    serve.set_defaults(run=functools.partial(_run, "serve", _serve))


def parse_logs(pairs: list[str]) -> dict[str, LogConfig]:
    """``ORIGIN=VKEY`` pairs as log configurations by origin; raises ValueError/LedgerError."""
    keys: dict[str, list[NoteVerifier]] = {}
    for pair in pairs:
        origin, sep, vkey = pair.partition("=")
        if not sep or not origin or not vkey:
            raise _Usage(f"--log takes ORIGIN=VKEY, not {pair!r}")
        keys.setdefault(origin, []).append(Verifier.from_vkey(vkey))
    if not keys:
        raise _Usage("give at least one --log ORIGIN=VKEY")
    return {origin: LogConfig(origin, tuple(found)) for origin, found in keys.items()}


def _run(
    command: str,
    handler: Callable[[argparse.Namespace, TextIO], int],
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    try:
        return handler(args, out)
    except (_Usage, LedgerError, OSError, ValueError) as exc:
        print(f"consentry witness {command}: {exc}", file=sys.stderr)
        return 2


def _keygen(args: argparse.Namespace, out: TextIO) -> int:
    cosigner = Cosigner.generate(args.name)
    fd = os.open(args.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(cosigner.skey() + "\n")
    print(cosigner.vkey(), file=out)
    return 0


def _serve(args: argparse.Namespace, _out: TextIO) -> int:
    import uvicorn  # noqa: PLC0415 - only serve needs the server

    from middleware.logging import configure_logging  # noqa: PLC0415
    from middleware.proxy.connections import connection_cap, guarded_protocol  # noqa: PLC0415
    from middleware.witness.app import create_witness_app  # noqa: PLC0415
    from middleware.witness.service import Witness  # noqa: PLC0415
    from middleware.witness.state import WitnessState  # noqa: PLC0415

    logs = parse_logs(args.log)
    cosigner = Cosigner.from_skey(args.key.read_text(encoding="ascii"))
    if args.new_state == args.state.exists():
        raise _Usage(
            f"{args.state} already exists: drop --new-state"
            if args.new_state
            else f"{args.state} does not exist: pass --new-state to start a new witness"
        )
    configure_logging("info")
    state = WitnessState(args.state)
    try:
        app = create_witness_app(Witness(logs, state, cosigner))
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            # The gateway's header deadline and connection cap: a slow client cannot hold
            # connections open for ever (middleware.proxy.connections).
            http=guarded_protocol(_HEADER_TIMEOUT, connection_cap(_MAX_CONNECTIONS)),
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
        )
    finally:
        state.close()
    return 0
