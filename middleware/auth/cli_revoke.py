"""``consentry auth revoke``: withdraw access tokens before they expire, on every replica.

    consentry auth revoke --jti ID --reason TEXT [--store URL] [--schema S] [--key-file F]
    consentry auth revoke --subject SUB [--before TIME] --reason TEXT ...
    consentry auth revoke --client CLIENT_ID [--before TIME] --reason TEXT ...

A governed action: the command first appends an ``ADMIN`` ledger entry (kind 6, no
pseudonym: it is about a caller, not a patient) whose plain canonical JSON evidence names the
revocation, the reason and the operator (``{"type": "consentry/token-revocation", ...}``),
signed with the ledger key like every append; then it records the revocation in the store's list
(:mod:`middleware.storage.revocations_open`), which every gateway process on the store
enforces from its next request (PostgreSQL: pushed by NOTIFY; SQLite: seen by each worker
before its next check). ``--before`` (a subject's or client's tokens issued before it; default
now) is a date or an RFC 3339 time. If the second step fails the command exits 2 and can be
run again: the list keeps one row per revoked value. Output: one JSON object (the admin
entry's index and what was revoked).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from pathlib import Path
from typing import Final, TextIO

from middleware.audit.admin_json import canonical
from middleware.audit.cli_common import Usage, now_us, opened, parse_time, print_json, read_key
from middleware.auth.revocation import Revocation, RevocationKind
from middleware.errors import GatewayError, SettingsError
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import EntryKind
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.revocations_open import record

__all__ = ["REVOCATION_TYPE", "register", "revoke"]

#: The ``type`` of a revocation's admin evidence.
REVOCATION_TYPE: Final = "consentry/token-revocation"
_DEFAULT_STORE: Final = "sqlite:consentry.db"
_DEFAULT_KEY: Final = "consentry-ledger.key"
_DESCRIPTION: Final = (
    "Revoke access tokens (by jti, or a subject's or client's issued before a time)."
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``auth`` and its subcommand ``revoke`` to ``commands``; sets ``run``."""
    about = "Access token administration."
    auth = commands.add_parser("auth", help="access token administration", description=about)
    actions = auth.add_subparsers(title="commands", metavar="COMMAND", required=True)
    parser = actions.add_parser("revoke", help="revoke access tokens", description=_DESCRIPTION)
    add = parser.add_argument
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--jti", help="the token's jti claim")
    which.add_argument("--subject", help="every token of this sub issued before --before")
    which.add_argument("--client", help="every token of this client_id issued before --before")
    add("--before", help="issued before this RFC 3339 time or day's start, UTC (default now)")
    add("--reason", required=True, help="why (recorded on the ledger; write no PHI here)")
    add("--operator", help="who orders it (default: the login name)")
    add(
        "--store",
        default=_DEFAULT_STORE,
        help=f"sqlite:PATH or postgresql://... (default {_DEFAULT_STORE})",
    )
    add("--schema", default="public", help="PostgreSQL schema (default public)")
    add(
        "--key-file",
        type=Path,
        default=Path(_DEFAULT_KEY),
        help=f"the ledger's key file (default {_DEFAULT_KEY})",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        return revoke(args, out)
    except (Usage, LedgerError, GatewayError, SettingsError, OSError, ValueError) as exc:
        print(f"consentry auth revoke: {exc}", file=sys.stderr)
        return 2


def _revocation(args: argparse.Namespace) -> Revocation:
    kind: RevocationKind
    if args.jti is not None:
        if args.before is not None:
            raise Usage("--before goes with --subject or --client, not --jti")
        return Revocation("jti", args.jti)
    kind, value = ("subject", args.subject) if args.subject is not None else ("client", args.client)
    before_us = parse_time(args.before)  # a date: its first moment (UTC)
    before = time.time() if before_us is None else before_us / 1e6
    return Revocation(kind, value, before)


def revoke(args: argparse.Namespace, out: TextIO) -> int:
    """Record the revocation ``args`` describe on the ledger, then in the store's list."""
    if not args.reason.strip():
        raise Usage("--reason must say why")
    try:
        revocation = _revocation(args)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    ledger_key = read_key(args.key_file)
    operator = args.operator or getpass.getuser()
    evidence = canonical(
        {
            "type": REVOCATION_TYPE,
            "kind": revocation.kind,
            "value": revocation.value,
            "before": revocation.before,
            "reason": args.reason,
            "operator": operator,
        }
    )

    async def run() -> dict[str, object]:
        recorded = now_us()
        async with opened(args) as store:
            entry = NewEntry.create(EntryKind.ADMIN, evidence, recorded_us=recorded)
            sign = checkpoint_signer(ledger_key.key, ledger_key.origin)
            (result,) = await store.append([entry], sign=sign)
        await record(
            args.store, revocation, reason=args.reason, at=recorded / 1e6, schema=args.schema
        )
        return {
            "admin_entry": result.index,
            "kind": revocation.kind,
            "value": revocation.value,
            "before": revocation.before,
        }

    print_json(out, asyncio.run(run()))
    return 0
