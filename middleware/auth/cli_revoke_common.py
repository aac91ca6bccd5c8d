"""What ``consentry auth revoke`` (and its ``--lift``) and ``consentry auth revocations``
share: the store and key options, refusing a store that is not a gateway's, the keyed digest
that stands for a subject, and appending the signed admin entry that governs a change.

A subject is never written to the ledger or printed by a listing in the clear: a patient's
SMART token has the patient's user id as ``sub``, and the ledger's evidence cannot be
crypto-shredded. It appears as ``subject_digest``, HMAC-SHA256 under a key derived from the
ledger key file's data secret (:func:`digest_key`): whoever holds the key file can check which
subject it names, nobody else can.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
from pathlib import Path
from typing import Final

from middleware.audit.admin_json import canonical, parse_object
from middleware.audit.cli_common import Usage
from middleware.ledger.entry import NewEntry
from middleware.ledger.keyfile import LedgerKey
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_base import LogStore
from middleware.storage.revocations_open import ledger_exists

__all__ = [
    "add_store_options",
    "append_admin",
    "digest",
    "digest_key",
    "open_existing",
    "recorded_body",
    "require_entries",
    "shown",
]

_DEFAULT_STORE: Final = "sqlite:consentry.db"
_DEFAULT_KEY: Final = "consentry-ledger.key"
#: What the revocation digests' key is derived for (``derive_box_key``).
_DIGEST_PURPOSE: Final = "token-revocation"


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--store``, ``--schema`` and ``--key-file``."""
    add = parser.add_argument
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


def digest_key(ledger_key: LedgerKey) -> bytes:
    """The key of the revocation digests (module docstring)."""
    return derive_box_key(ledger_key.data_secret, _DIGEST_PURPOSE)


def digest(key: bytes, data: str) -> str:
    """HMAC-SHA256 of ``data`` under ``key``, in hex."""
    return hmac.new(key, data.encode("utf-8"), hashlib.sha256).hexdigest()


def shown(args: argparse.Namespace) -> str:
    """The store, as an operator should check it (a relative path resolved)."""
    if args.store.startswith("sqlite:"):
        return f"{args.store} ({os.path.abspath(args.store.removeprefix('sqlite:'))})"
    return f"schema {args.schema!r} of {args.store}"


async def open_existing(args: argparse.Namespace) -> None:
    """Refuse a store without a ledger: a wrong ``--store`` must create nothing."""
    if not await ledger_exists(args.store, args.schema):
        raise Usage(f"no gateway store (no ledger) at {shown(args)}: nothing recorded")


async def require_entries(store: LogStore, args: argparse.Namespace) -> None:
    """Refuse an empty ledger: not a running gateway's store."""
    if await store.size() == 0:
        raise Usage(f"the ledger at {shown(args)} is empty: not a running gateway's store")


async def append_admin(
    store: LogStore, ledger_key: LedgerKey, body: dict[str, object], recorded_us: int
) -> int:
    """Append an ``ADMIN`` entry whose evidence is ``body`` (canonical JSON), signed with the
    ledger key; its index."""
    entry = NewEntry.create(EntryKind.ADMIN, canonical(body), recorded_us=recorded_us)
    sign = checkpoint_signer(ledger_key.key, ledger_key.origin)
    (result,) = await store.append([entry], sign=sign)
    return result.index


async def recorded_body(store: LogStore, index: int, kind: str, what: str) -> dict[str, object]:
    """The evidence of admin entry ``index`` (``--ledger-entry``), if its type is ``kind``
    (``what`` names it in the error)."""
    if not 0 <= index < await store.size():
        raise Usage(f"--ledger-entry {index}: the ledger has no such entry")
    evidence = await store.evidence(index)
    body = None if evidence is None else parse_object(evidence.data)
    if body is None or body.get("type") != kind:
        raise Usage(f"--ledger-entry {index} is not a {what}")
    return body
