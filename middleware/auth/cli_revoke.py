"""``consentry auth revoke``: withdraw access tokens before they expire, on every replica.

    consentry auth revoke --jti ID [--expires TIME] --reason TEXT [--store URL] [--schema S]
        [--key-file F]
    consentry auth revoke --subject SUB [--before TIME] --reason TEXT ...
    consentry auth revoke --client CLIENT_ID [--before TIME] --reason TEXT ...
    consentry auth revoke --lift (--jti ID | --subject SUB | --client ID) --reason TEXT ...
    consentry auth revoke ... --ledger-entry N   (after a failure: the list only)

It acts on an existing gateway store only: a missing SQLite file, a PostgreSQL schema without
a ledger, or an empty ledger is refused (exit 2), so that a wrong ``--store`` (a relative
path is resolved against the operator's directory) cannot create a list no gateway reads.

A governed action: the command first appends an ``ADMIN`` ledger entry (kind 6, no
pseudonym: it is about a caller, not a patient) whose plain canonical JSON evidence names the
revocation, the reason and the operator (``{"type": "consentry/token-revocation", ...}``),
signed with the ledger key like every append; then it records the revocation, with that
entry's index, in the store's list (:mod:`middleware.storage.revocations_open`), which every
gateway process on the store enforces from its next request (PostgreSQL: pushed by NOTIFY;
SQLite: seen by each worker before its next check). ``--before`` (a subject's or client's
tokens issued before it; default now) is a date or an RFC 3339 time. ``--expires`` (a
``jti`` only: the token's ``exp``, an RFC 3339 time or a NumericDate; a date alone is read as
its last moment, so that a row is never pruned before its token expired) lets
``consentry auth revocations --prune`` drop the row once that token has expired everywhere.
An ``--expires`` more than :data:`~middleware.auth.revocation.PRUNE_MARGIN` in the past, or
after the year 9999, is refused: the first would be pruned at once (a mistyped ``exp`` would
let a valid token back in), the second is no token's ``exp``.

A subject is recorded and printed only as a keyed digest (``subject_digest``,
:mod:`middleware.auth.cli_revoke_common`). Each entry also carries ``revocation``, the keyed
digest of what is revoked (kind, value, time).

``--lift`` undoes a revocation the same way (:mod:`middleware.auth.cli_lift`): an option of
this command rather than a command of its own because it takes the very same selector,
store, key and ``--ledger-entry`` options, and reads as what it is, a revocation lifted.

If the list cannot be written after the entry was appended, the command exits 2 naming the
entry; ``--ledger-entry N`` then records the revocation that entry names (checked by its
``revocation`` digest; a subject's or client's time, and a jti's ``expires``, taken from it:
an entry without ``expires`` is recorded without one, never pruned, and an ``--expires`` that
differs from the entry's is refused, since only the ledger's says what was ordered) without
appending another. A lift appended after the entry wins (the ledger's order): the
revocation is then not recorded and the command exits 2 saying so. Output: one JSON object
(the admin entry's index, whether it was appended now, what was revoked: a subject as its
``subject_digest``, as ``consentry auth revocations`` lists it; and where the list is).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hmac
import math
import sys
import time
from typing import Final, TextIO

from middleware.audit.admin_json import canonical
from middleware.audit.cli_common import Usage, now_us, opened, parse_time, print_json, read_key
from middleware.auth import cli_lift, cli_revocations
from middleware.auth.cli_revoke_common import (
    add_store_options,
    append_admin,
    digest,
    digest_key,
    open_existing,
    recorded_body,
    require_entries,
)
from middleware.auth.revocation import PRUNE_MARGIN, Revocation, RevocationKind
from middleware.errors import GatewayError, SettingsError
from middleware.ledger.errors import LedgerError
from middleware.storage.revocations_open import record, where

__all__ = ["REVOCATION_TYPE", "register", "revoke"]

#: The ``type`` of a revocation's admin evidence.
REVOCATION_TYPE: Final = "consentry/token-revocation"
#: ``--expires`` must be before 10000-01-01T00:00:00Z (no RFC 3339 time is later).
_YEAR_10000: Final = 253402300800.0
_DESCRIPTION: Final = (
    "Revoke access tokens (by jti, or a subject's or client's issued before a time), "
    "or lift a revocation (--lift)."
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``auth`` and its subcommands ``revoke`` and ``revocations``; sets ``run``."""
    about = "Access token administration."
    auth = commands.add_parser("auth", help="access token administration", description=about)
    actions = auth.add_subparsers(title="commands", metavar="COMMAND", required=True)
    parser = actions.add_parser(
        "revoke", help="revoke access tokens, or lift a revocation", description=_DESCRIPTION
    )
    add = parser.add_argument
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--jti", help="the token's jti claim")
    which.add_argument("--subject", help="every token of this sub issued before --before")
    which.add_argument("--client", help="every token of this client_id issued before --before")
    add("--before", help="issued before this RFC 3339 time or day's start, UTC (default now)")
    add(
        "--expires",
        help="--jti: the token's exp (RFC 3339 time, NumericDate, or a date: its end, UTC), "
        "so the row can be pruned",
    )
    add("--lift", action="store_true", help="lift the revocation of --jti/--subject/--client")
    add("--reason", required=True, help="why (recorded on the ledger; write no PHI here)")
    add("--operator", help="who orders it (default: the login name)")
    add_store_options(parser)
    add(
        "--ledger-entry",
        type=int,
        metavar="N",
        help="record what admin entry N names (after a failure), appending nothing",
    )
    parser.set_defaults(run=_run)
    cli_revocations.register(actions)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        return cli_lift.lift(args, out) if args.lift else revoke(args, out)
    except (Usage, LedgerError, GatewayError, SettingsError, OSError, ValueError) as exc:
        print(f"consentry auth revoke: {exc}", file=sys.stderr)
        return 2


def _revocation(args: argparse.Namespace, recorded_before: float | None = None) -> Revocation:
    kind: RevocationKind
    if args.jti is not None:
        if args.before is not None:
            raise Usage("--before goes with --subject or --client, not --jti")
        return Revocation("jti", args.jti)
    if args.expires is not None:
        raise Usage("--expires goes with --jti (a subject's or client's row is never pruned)")
    kind, value = ("subject", args.subject) if args.subject is not None else ("client", args.client)
    before_us = parse_time(args.before)  # a date: its first moment (UTC)
    if before_us is not None:
        before = before_us / 1e6
    else:
        before = time.time() if recorded_before is None else recorded_before
    return Revocation(kind, value, before)


def _expires(text: str | None) -> float | None:
    """``--expires``: a NumericDate (RFC 7519 §2, ASCII digits), an RFC 3339 time or a date
    (its last microsecond, UTC: a row pruned later than the token's real ``exp``, never
    earlier); Usage from :data:`_YEAR_10000` on (a long digit run would be ``inf``, which no
    JSON evidence can carry)."""
    if text is None:
        return None
    value: float | None
    if text.isascii() and text.isdigit():
        value = float(text)
    else:
        moment = parse_time(text, end=True)
        value = None if moment is None else moment / 1e6
    if value is not None and not (math.isfinite(value) and value < _YEAR_10000):
        raise Usage(f"--expires {text!r} is after the year 9999: no token's exp")
    return value


def _not_past(text: str, expires: float) -> None:
    """Refuse an ``--expires`` that ``revocations --prune`` would drop at once: the token
    is refused as expired everywhere already, or ``exp`` was mistyped (module docstring)."""
    if expires < time.time() - PRUNE_MARGIN:
        raise Usage(
            f"--expires {text!r} is more than {PRUNE_MARGIN:.0f} s past: that token is refused "
            "as expired already, and the row would be pruned at once; check the token's exp, "
            "or leave --expires out (the row is then never pruned)"
        )


def _entry_expires(body: dict[str, object], index: int, given: float | None) -> float | None:
    """The ``expires`` admin entry ``index`` records (None: never pruned); an ``--expires``
    ``given`` with ``--ledger-entry`` must be that one (it is not in the entry's digest)."""
    named = body.get("expires")
    recorded = (
        float(named) if isinstance(named, int | float) and not isinstance(named, bool) else None
    )
    if given is not None and given != recorded:
        says = "no expires" if recorded is None else f"expires {recorded}"
        raise Usage(
            f"admin entry {index} records {says}, not {given}: leave --expires out (the "
            "entry's is used)"
        )
    return recorded


def _evidence(
    revocation: Revocation, key: bytes, *, reason: str, operator: str, expires: float | None
) -> dict[str, object]:
    """The admin entry's evidence (module docstring): no subject in the clear."""
    what = {"kind": revocation.kind, "value": revocation.value, "before": revocation.before}
    named = canonical(what).decode("utf-8")
    body: dict[str, object] = {"type": REVOCATION_TYPE, "kind": revocation.kind}
    if revocation.kind == "subject":
        body["subject_digest"] = digest(key, revocation.value)
    else:
        body["value"] = revocation.value
    body |= {"before": revocation.before, "reason": reason, "operator": operator}
    if expires is not None:
        body["expires"] = expires
    body["revocation"] = digest(key, named)
    return body


def revoke(args: argparse.Namespace, out: TextIO) -> int:
    """Record the revocation ``args`` describe on the ledger, then in the store's list."""
    if not args.reason.strip():
        raise Usage("--reason must say why")
    try:
        _revocation(args)  # usage errors before anything is read
        expires = _expires(args.expires)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    if expires is not None and args.ledger_entry is None:
        _not_past(args.expires, expires)  # a replay records the entry's, whatever its age
    ledger_key = read_key(args.key_file)
    key = digest_key(ledger_key)
    operator = args.operator or getpass.getuser()
    listed = where(args.store, args.schema)

    async def run() -> dict[str, object]:
        nonlocal expires
        await open_existing(args)
        recorded = now_us()
        async with opened(args) as store:
            await require_entries(store, args)
            if args.ledger_entry is None:
                revocation = _revocation(args)
                body = _evidence(
                    revocation, key, reason=args.reason, operator=operator, expires=expires
                )
                index = await append_admin(store, ledger_key, body, recorded)
            else:
                index = args.ledger_entry
                body = await recorded_body(store, index, REVOCATION_TYPE, "token revocation")
                before = body.get("before")
                revocation = _revocation(args, before if isinstance(before, float) else None)
                expires = _entry_expires(body, index, expires)
                expected = _evidence(
                    revocation, key, reason=args.reason, operator=operator, expires=expires
                )
                if not hmac.compare_digest(
                    str(body.get("revocation")), str(expected["revocation"])
                ):
                    raise Usage(f"admin entry {index} records another revocation")
        try:
            lifted_by = await record(
                args.store,
                revocation,
                reason=args.reason,
                at=recorded / 1e6,
                schema=args.schema,
                entry=index,
                expires=expires,
            )
        except (GatewayError, OSError) as exc:
            raise Usage(
                f"admin entry {index} records the revocation, but it is NOT in force: {exc} "
                f"({listed}); run again with --ledger-entry {index} to record it"
            ) from exc
        if lifted_by is not None:
            raise Usage(
                f"admin entry {index} records the revocation, but admin entry {lifted_by}, "
                f"appended after it, lifts it (the ledger's order wins): it is NOT in force; "
                "revoke again if it must be"
            )
        named = (
            {"subject_digest": digest(key, revocation.value)}
            if revocation.kind == "subject"
            else {"value": revocation.value}
        )
        return {
            "admin_entry": index,
            "appended": args.ledger_entry is None,
            "kind": revocation.kind,
            **named,
            "before": revocation.before,
            "expires": expires,
            "revocations": listed,
        }

    print_json(out, asyncio.run(run()))
    return 0
