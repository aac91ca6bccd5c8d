"""``consentry auth revocations``: the token revocations a store's gateways enforce.

    consentry auth revocations [--prune] [--store URL] [--schema S] [--key-file F]

Prints one JSON object: ``revocations``, oldest first, each with its ``kind``, the ``value``
(a jti or client id) or, for a subject, its ``subject_digest`` (the keyed digest the ledger
entry carries, so the two can be matched: the subject itself is never printed), ``before``
(a subject's or client's time), ``revoked_at``, ``expires`` (a jti's token ``exp`` when the
revocation named it), ``reason`` and ``admin_entry`` (the ledger entry that recorded it;
null for a row recorded by an earlier version); ``count``; and ``list``, where it is. Times
are seconds since the epoch, as in ``consentry auth revoke``'s output.

``--prune`` first drops each ``jti`` revocation whose recorded ``expires`` is more than
:data:`~middleware.auth.revocation.PRUNE_MARGIN` in the past (that token is refused as expired
by every gateway anyway), and says how many (``pruned``). A jti revoked without ``--expires``,
and every subject or client revocation, stays until it is lifted: no maximum token lifetime
is assumed. Pruning appends no ledger entry: it changes what no gateway would accept.

Like ``consentry auth revoke`` it acts on an existing gateway store only (exit 2 otherwise)
and needs the ledger key file (for the subject digests).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Final, TextIO

from middleware.audit.cli_common import Usage, print_json, read_key
from middleware.auth.cli_revoke_common import add_store_options, digest, digest_key, open_existing
from middleware.auth.revocation import PRUNE_MARGIN, StoredRevocation
from middleware.errors import GatewayError, SettingsError
from middleware.ledger.errors import LedgerError
from middleware.storage.revocations_open import listed, prune, where

__all__ = ["register", "revocations"]

_DESCRIPTION: Final = (
    "List the token revocations in force (a subject as its keyed digest); "
    "--prune first drops jti revocations whose token has expired."
)


def register(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``revocations`` subcommand to ``auth``'s ``actions``."""
    parser = actions.add_parser(
        "revocations", help="list (and prune) token revocations", description=_DESCRIPTION
    )
    parser.add_argument(
        "--prune", action="store_true", help="drop jti revocations whose token has expired"
    )
    add_store_options(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        return revocations(args, out)
    except (Usage, LedgerError, GatewayError, SettingsError, OSError, ValueError) as exc:
        print(f"consentry auth revocations: {exc}", file=sys.stderr)
        return 2


def _shown(row: StoredRevocation, key: bytes) -> dict[str, object]:
    named: dict[str, object] = (
        {"subject_digest": digest(key, row.value)}
        if row.kind == "subject"
        else {"value": row.value}
    )
    return {
        "kind": row.kind,
        **named,
        "before": row.before,
        "revoked_at": row.revoked_at,
        "expires": row.expires,
        "reason": row.reason,
        "admin_entry": row.admin_entry,
    }


def revocations(args: argparse.Namespace, out: TextIO) -> int:
    """Print the store's revocations (module docstring), pruned first with ``--prune``."""
    key = digest_key(read_key(args.key_file))

    async def run() -> dict[str, object]:
        await open_existing(args)
        body: dict[str, object] = {}
        if args.prune:
            expired_before = time.time() - PRUNE_MARGIN
            body["pruned"] = await prune(
                args.store, expired_before=expired_before, schema=args.schema
            )
        rows = await listed(args.store, args.schema)
        return {
            "revocations": [_shown(row, key) for row in rows],
            "count": len(rows),
            **body,
            "list": where(args.store, args.schema),
        }

    print_json(out, asyncio.run(run()))
    return 0
