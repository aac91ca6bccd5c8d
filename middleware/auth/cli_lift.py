"""``consentry auth revoke --lift``: undo a revocation, on every replica, on the ledger first.

    consentry auth revoke --lift (--jti ID | --subject SUB | --client ID) --reason TEXT
        [--operator NAME] [--store URL] [--schema S] [--key-file F] [--ledger-entry N]

The revocation of that ``jti``, subject or client must be in the store's list: otherwise the
command exits 2 saying so and appends nothing. It then appends an ``ADMIN`` ledger entry
(``{"type": "consentry/token-revocation-lift", ...}``: kind, the value or, for a subject, its
``subject_digest``, ``lifts`` the keyed digest of kind and value, ``revoked_by`` the admin
entry that recorded the revocation (None for a row older than that column), reason, operator),
signed with the ledger key; only then does it remove the row, and every gateway process stops
refusing those tokens as it would start refusing a revocation (PostgreSQL: NOTIFY in the same
transaction; SQLite: ``PRAGMA data_version``). No entry, no lift: a ledger that cannot be
appended to leaves the revocation in force (the command cannot always tell whether an append
that failed was committed, a connection lost after the commit, so it says the revocation is
in force and how to apply such an entry, not that there is none).

A lift and a revocation of the same thing may race (two operators). Each is ordered by its
admin entry's index, and the store applies them so that the one appended last wins whatever
order they reach it in: the lift leaves a row of its own (kind, value, entry) that refuses a
revocation from an earlier entry, and does not remove a revocation recorded by a later entry
(exit 2 naming that entry: lift it again if it must go). When two revocations of one subject
or client were merged (the later time kept), a lift keeps or removes the merged row as a
whole.

If the list cannot be written after the entry was appended, the command exits 2 naming the
entry (the revocation is still in force); ``--ledger-entry N`` then applies the lift entry N
names (checked by its ``lifts`` digest) without appending another. Output: one JSON object
(a subject as its ``subject_digest``, as ``consentry auth revocations`` lists it).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hmac
from typing import Final, TextIO

from middleware.audit.admin_json import canonical
from middleware.audit.cli_common import Usage, now_us, opened, print_json, read_key
from middleware.auth.cli_revoke_common import (
    append_admin,
    digest,
    digest_key,
    open_existing,
    recorded_body,
    require_entries,
)
from middleware.auth.revocation import Revocation, RevocationKind
from middleware.errors import GatewayError
from middleware.ledger.errors import LedgerError
from middleware.storage.revocations_open import find, where
from middleware.storage.revocations_open import lift as lift_in_list

__all__ = ["LIFT_TYPE", "lift"]

#: The ``type`` of a lift's admin evidence.
LIFT_TYPE: Final = "consentry/token-revocation-lift"


def _selected(args: argparse.Namespace) -> tuple[str, str]:
    """The kind and value ``--jti``/``--subject``/``--client`` name (checked like a
    revocation's); usage errors for the options a lift does not take."""
    if args.before is not None or args.expires is not None:
        raise Usage("--lift takes neither --before nor --expires: it lifts the whole revocation")
    kind: RevocationKind
    before: float | None = None
    if args.jti is not None:
        kind, value = "jti", args.jti
    else:
        kind, value = (
            ("subject", args.subject) if args.subject is not None else ("client", args.client)
        )
        before = 0.0
    try:
        Revocation(kind, value, before)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    return kind, value


def _named(kind: str, value: str) -> str:
    """What is lifted, for an error message (a subject not repeated: it may be a patient's)."""
    return "that subject" if kind == "subject" else f"{kind} {value!r}"


def _evidence(
    kind: str, value: str, key: bytes, *, revoked_by: int | None, reason: str, operator: str
) -> dict[str, object]:
    body: dict[str, object] = {"type": LIFT_TYPE, "kind": kind}
    if kind == "subject":
        body["subject_digest"] = digest(key, value)
    else:
        body["value"] = value
    return body | {
        "lifts": digest(key, canonical({"kind": kind, "value": value}).decode("utf-8")),
        "revoked_by": revoked_by,
        "reason": reason,
        "operator": operator,
    }


def lift(args: argparse.Namespace, out: TextIO) -> int:
    """Record the lift ``args`` describe on the ledger, then remove the revocation."""
    if not args.reason.strip():
        raise Usage("--reason must say why")
    kind, value = _selected(args)
    ledger_key = read_key(args.key_file)
    key = digest_key(ledger_key)
    operator = args.operator or getpass.getuser()
    listed = where(args.store, args.schema)

    async def run() -> dict[str, object]:
        await open_existing(args)
        recorded = now_us()
        async with opened(args) as store:
            await require_entries(store, args)
            if args.ledger_entry is None:
                found = await find(args.store, kind, value, args.schema)
                if found is None:
                    raise Usage(f"{_named(kind, value)} is not revoked ({listed}): nothing lifted")
                revoked_by = found.admin_entry
                body = _evidence(
                    kind, value, key, revoked_by=revoked_by, reason=args.reason, operator=operator
                )
                try:
                    index = await append_admin(store, ledger_key, body, recorded)
                except (GatewayError, LedgerError) as exc:
                    raise Usage(
                        f"the ledger append failed ({exc}): nothing lifted, the revocation is "
                        "in force; if a lift entry was committed all the same (the ledger's "
                        "newest admin entries), --ledger-entry N applies it"
                    ) from exc
            else:
                index = args.ledger_entry
                body = await recorded_body(store, index, LIFT_TYPE, "revocation lift")
                named = body.get("revoked_by")
                revoked_by = named if isinstance(named, int) else None
                expected = _evidence(
                    kind, value, key, revoked_by=revoked_by, reason=args.reason, operator=operator
                )
                if not hmac.compare_digest(str(body.get("lifts")), str(expected["lifts"])):
                    raise Usage(f"admin entry {index} records another lift")
        try:
            lifted = await lift_in_list(
                args.store, kind, value, entry=index, at=recorded / 1e6, schema=args.schema
            )
        except (GatewayError, OSError) as exc:
            raise Usage(
                f"admin entry {index} records the lift, but the revocation is STILL in force: "
                f"{exc} ({listed}); run again with --ledger-entry {index} to lift it"
            ) from exc
        if lifted.outcome == "kept":
            raise Usage(
                f"admin entry {index} records the lift, but admin entry {lifted.stands}, "
                "appended after it, revoked it again (the ledger's order wins): it is STILL "
                "revoked; lift again if it must go"
            )
        named = {"subject_digest": digest(key, value)} if kind == "subject" else {"value": value}
        return {
            "admin_entry": index,
            "appended": args.ledger_entry is None,
            "lifted": kind,
            **named,
            "revoked_by": revoked_by,
            "removed": lifted.outcome == "removed",
            "revocations": listed,
        }

    print_json(out, asyncio.run(run()))
    return 0
