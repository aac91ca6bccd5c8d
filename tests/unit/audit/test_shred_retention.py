"""``consentry audit retention`` keeps a shred's record forever.

The consent registry tells a consent entry a shred emptied from a damaged one by the shred's
admin entry after it on its chain (``consent.shredded``). Retention expired admin entries like
any other kind (six years by default), so years after a shred the emptied consent entries
would look damaged: logged as unrecordable at every start, and their patient failed closed
had their chain been the current one. Now a shred's record is never due; other admin entries
of the same age still are.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from middleware.audit.accounting import years_before
from middleware.consent.shredded import SHRED_TYPE
from middleware.fhir import jsoncodec
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.unit.audit.test_retention import ORIGIN, filled, retention  # noqa: F401

P = b"\x07" * 16


async def _append_old_admin(d: Path) -> tuple[int, int]:
    """A shred's record and a consent API attempt on P's chain, both seven years old."""
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    old = years_before(int(datetime.now(UTC).timestamp() * 1_000_000), 7)
    shred = jsoncodec.encode_canonical({"type": SHRED_TYPE, "reason": "r", "operator": "dpo"})
    attempt = b'{"type":"consentry/consent-api-attempt/v1"}'
    store = await SqliteLogStore.open(d / "audit.db")
    try:
        results = await store.append(
            [
                NewEntry.create(EntryKind.ADMIN, data, recorded_us=old, pseudonym=P)
                for data in (shred, attempt)
            ],
            sign=checkpoint_signer(key, ORIGIN),
        )
        return results[0].index, results[1].index
    finally:
        await store.close()


async def _has_evidence(d: Path, *indexes: int) -> list[bool]:
    store = await SqliteLogStore.open(d / "audit.db")
    try:
        return [await store.evidence(i) is not None for i in indexes]
    finally:
        await store.close()


def test_retention_keeps_a_shreds_record_and_expires_other_admin_entries(
    filled: Path,  # noqa: F811
) -> None:
    shred, attempt = asyncio.run(_append_old_admin(filled))
    status, report = retention(filled, "--apply")
    assert status == 0
    assert report["entries"]["admin"] == 1  # type: ignore[index]  # the attempt only
    assert asyncio.run(_has_evidence(filled, shred, attempt)) == [True, False]
