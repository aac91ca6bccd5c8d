"""``consentry auth revoke``: withdraw access tokens before they expire, on every replica.

    consentry auth revoke --jti ID --reason TEXT [--store URL] [--schema S] [--key-file F]
    consentry auth revoke --subject SUB [--before TIME] --reason TEXT ...
    consentry auth revoke --client CLIENT_ID [--before TIME] --reason TEXT ...
    consentry auth revoke ... --ledger-entry N   (after a failure: the list only)

It acts on an existing gateway store only: a missing SQLite file, a PostgreSQL schema without
a ledger, or an empty ledger is refused (exit 2), so that a wrong ``--store`` (a relative
path is resolved against the operator's directory) cannot create a list no gateway reads.

A governed action: the command first appends an ``ADMIN`` ledger entry (kind 6, no
pseudonym: it is about a caller, not a patient) whose plain canonical JSON evidence names the
revocation, the reason and the operator (``{"type": "consentry/token-revocation", ...}``),
signed with the ledger key like every append; then it records the revocation in the store's list
(:mod:`middleware.storage.revocations_open`), which every gateway process on the store
enforces from its next request (PostgreSQL: pushed by NOTIFY; SQLite: seen by each worker
before its next check). ``--before`` (a subject's or client's tokens issued before it; default
now) is a date or an RFC 3339 time.

The evidence cannot be crypto-shredded, and a patient's SMART token has the patient's user id
as ``sub``: so a subject is recorded only as a keyed digest (``subject_digest``: HMAC-SHA256
under a key derived from the ledger key file's data secret); whoever holds the key file can
check which subject an entry names, nobody else can. Each entry also carries ``revocation``,
the keyed digest of what is revoked (kind, value, time).

If the list cannot be written after the entry was appended, the command exits 2 naming the
entry; ``--ledger-entry N`` then records the revocation that entry names (checked by its
``revocation`` digest; a subject's or client's time taken from it) without appending another.
Output: one JSON object (the admin entry's index, whether it was appended now, what was
revoked, and where the list is).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import hmac
import os
import sys
import time
from pathlib import Path
from typing import Final, TextIO

from middleware.audit.admin_json import canonical, parse_object
from middleware.audit.cli_common import Usage, now_us, opened, parse_time, print_json, read_key
from middleware.auth.revocation import Revocation, RevocationKind
from middleware.errors import GatewayError, SettingsError
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import LedgerError
from middleware.ledger.keyfile import LedgerKey
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_base import LogStore
from middleware.storage.revocations_open import ledger_exists, record, where

__all__ = ["REVOCATION_TYPE", "register", "revoke"]

#: The ``type`` of a revocation's admin evidence.
REVOCATION_TYPE: Final = "consentry/token-revocation"
_DEFAULT_STORE: Final = "sqlite:consentry.db"
_DEFAULT_KEY: Final = "consentry-ledger.key"
#: What the revocation digests' key is derived for (``derive_box_key``).
_DIGEST_PURPOSE: Final = "token-revocation"
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
    add(
        "--ledger-entry",
        type=int,
        metavar="N",
        help="record the revocation admin entry N names (after a failure), appending nothing",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        return revoke(args, out)
    except (Usage, LedgerError, GatewayError, SettingsError, OSError, ValueError) as exc:
        print(f"consentry auth revoke: {exc}", file=sys.stderr)
        return 2


def _revocation(args: argparse.Namespace, recorded_before: float | None = None) -> Revocation:
    kind: RevocationKind
    if args.jti is not None:
        if args.before is not None:
            raise Usage("--before goes with --subject or --client, not --jti")
        return Revocation("jti", args.jti)
    kind, value = ("subject", args.subject) if args.subject is not None else ("client", args.client)
    before_us = parse_time(args.before)  # a date: its first moment (UTC)
    if before_us is not None:
        before = before_us / 1e6
    else:
        before = time.time() if recorded_before is None else recorded_before
    return Revocation(kind, value, before)


def _digest(key: bytes, data: str) -> str:
    return hmac.new(key, data.encode("utf-8"), hashlib.sha256).hexdigest()


def _evidence(
    revocation: Revocation, key: bytes, *, reason: str, operator: str
) -> dict[str, object]:
    """The admin entry's evidence (module docstring): no subject in the clear."""
    what = {"kind": revocation.kind, "value": revocation.value, "before": revocation.before}
    named = canonical(what).decode("utf-8")
    body: dict[str, object] = {"type": REVOCATION_TYPE, "kind": revocation.kind}
    if revocation.kind == "subject":
        body["subject_digest"] = _digest(key, revocation.value)
    else:
        body["value"] = revocation.value
    body |= {
        "before": revocation.before,
        "reason": reason,
        "operator": operator,
        "revocation": _digest(key, named),
    }
    return body


async def _recorded(store: LogStore, index: int) -> dict[str, object]:
    """The evidence of admin entry ``index``, if it is a revocation's."""
    if not 0 <= index < await store.size():
        raise Usage(f"--ledger-entry {index}: the ledger has no such entry")
    evidence = await store.evidence(index)
    body = None if evidence is None else parse_object(evidence.data)
    if body is None or body.get("type") != REVOCATION_TYPE:
        raise Usage(f"--ledger-entry {index} is not a token revocation")
    return body


def _shown(args: argparse.Namespace) -> str:
    """The store, as an operator should check it (a relative path resolved)."""
    if args.store.startswith("sqlite:"):
        return f"{args.store} ({os.path.abspath(args.store.removeprefix('sqlite:'))})"
    return f"schema {args.schema!r} of {args.store}"


async def _open_existing(args: argparse.Namespace, shown: str) -> None:
    if not await ledger_exists(args.store, args.schema):
        raise Usage(f"no gateway store (no ledger) at {shown}: nothing recorded")


def revoke(args: argparse.Namespace, out: TextIO) -> int:
    """Record the revocation ``args`` describe on the ledger, then in the store's list."""
    if not args.reason.strip():
        raise Usage("--reason must say why")
    try:
        _revocation(args)  # usage errors before anything is read
    except ValueError as exc:
        raise Usage(str(exc)) from None
    ledger_key: LedgerKey = read_key(args.key_file)
    key = derive_box_key(ledger_key.data_secret, _DIGEST_PURPOSE)
    operator = args.operator or getpass.getuser()
    listed = where(args.store, args.schema)
    shown = _shown(args)

    async def run() -> dict[str, object]:
        await _open_existing(args, shown)
        recorded = now_us()
        async with opened(args) as store:
            if await store.size() == 0:
                raise Usage(f"the ledger at {shown} is empty: not a running gateway's store")
            if args.ledger_entry is None:
                revocation = _revocation(args)
                body = _evidence(revocation, key, reason=args.reason, operator=operator)
                entry = NewEntry.create(EntryKind.ADMIN, canonical(body), recorded_us=recorded)
                sign = checkpoint_signer(ledger_key.key, ledger_key.origin)
                (result,) = await store.append([entry], sign=sign)
                index = result.index
            else:
                index = args.ledger_entry
                body = await _recorded(store, index)
                before = body.get("before")
                revocation = _revocation(args, before if isinstance(before, float) else None)
                expected = _evidence(revocation, key, reason=args.reason, operator=operator)
                if not hmac.compare_digest(
                    str(body.get("revocation")), str(expected["revocation"])
                ):
                    raise Usage(f"admin entry {index} records another revocation")
        try:
            await record(
                args.store, revocation, reason=args.reason, at=recorded / 1e6, schema=args.schema
            )
        except (GatewayError, OSError) as exc:
            raise Usage(
                f"admin entry {index} records the revocation, but it is NOT in force: {exc} "
                f"({listed}); run again with --ledger-entry {index} to record it"
            ) from exc
        return {
            "admin_entry": index,
            "appended": args.ledger_entry is None,
            "kind": revocation.kind,
            "value": revocation.value,
            "before": revocation.before,
            "revocations": listed,
        }

    print_json(out, asyncio.run(run()))
    return 0
