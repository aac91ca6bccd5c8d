"""``consentry audit suspend``: record (or lift) a 164.528(a)(2) suspension on the ledger.

45 CFR 164.528(a)(2): a health oversight agency or law enforcement official may require the
covered entity to suspend an individual's right to an accounting of the disclosures made to it,
for the time it specifies; an oral statement suspends for no more than 30 days unless a written
one follows. The command appends an ``ADMIN`` entry (kind 6, no pseudonym: a suspension is
about an agency, not a patient) whose plain canonical JSON evidence names the agency, the end,
whether the statement was oral, the reason and the operator
(:func:`middleware.audit.suspensions.suspension_evidence`). It starts when recorded. ``--lift
INDEX`` appends an entry ending the suspension recorded at ledger index ``INDEX``. The gateway's
``$accounting`` and ``consentry audit accounting`` read these entries
(:class:`~middleware.audit.suspensions.SuspensionLog`) and honour them.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
from typing import TextIO

from middleware.audit.cli_common import Usage, now_us, opened, parse_time, print_json, read_key
from middleware.audit.suspensions import SuspensionLog, lift_evidence, suspension_evidence
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.writer import checkpoint_signer

__all__ = ["suspend"]


def suspend(args: argparse.Namespace, out: TextIO) -> int:
    """Append the suspension (or its lift) described by ``args``; print what was recorded."""
    ledger_key = read_key(args.key_file)
    operator = args.operator or getpass.getuser()
    if not args.reason.strip():
        raise Usage("--reason must say why")
    recorded = now_us()
    if args.lift is not None:
        if args.agency is not None or args.until is not None or args.oral:
            raise Usage("--lift takes only --reason and --operator")
        evidence = lift_evidence(suspension=args.lift, reason=args.reason, operator=operator)
    else:
        if not args.agency or args.until is None:
            raise Usage("a suspension needs --agency and --until")
        end = parse_time(args.until, end=True)
        assert end is not None
        end += 1  # --until is inclusive; a Suspension's end is exclusive
        if end <= recorded:
            raise Usage("--until is in the past")
        evidence = suspension_evidence(
            agency=args.agency, end_us=end, oral=args.oral, reason=args.reason, operator=operator
        )

    async def run() -> dict[str, object]:
        async with opened(args) as store:
            if args.lift is not None:
                known = await SuspensionLog().current(store)
                if all(s.ledger_index != args.lift for s in known):
                    raise Usage(f"ledger index {args.lift} records no suspension")
            entry = NewEntry.create(EntryKind.ADMIN, evidence, recorded_us=recorded)
            sign = checkpoint_signer(ledger_key.key, ledger_key.origin)
            (result,) = await store.append([entry], sign=sign)
            return {"admin_entry": result.index, "lift": args.lift, "agency": args.agency}

    print_json(out, asyncio.run(run()))
    return 0
