"""The log's consent position (``LogStore.latest_consent`` and ``consents_after``) on memory,
SQLite and PostgreSQL: read from the leaves' kind byte, so it names exactly the ``consent``
and ``consent-revoke`` entries, whoever appended them, and holds for a log written before
the index existed."""

from __future__ import annotations

from middleware.ledger.leaf import EntryKind
from middleware.storage.ledger_base import LogStore
from tests.contract.backends import Backend
from tests.contract.helpers import PSEUDONYMS, SIGN, entry

CONSENT, REVOKE, ACCESS = EntryKind.CONSENT, EntryKind.CONSENT_REVOKE, EntryKind.DISCLOSURE
#: Kinds in append order, in two batches: the consent entries are at 1, 2, 5 and 7.
FIRST = (ACCESS, CONSENT, REVOKE, ACCESS)
SECOND = (EntryKind.ADMIN, CONSENT, EntryKind.ACCESS_OUTCOME, CONSENT, ACCESS)


async def _append(store: LogStore, kinds: tuple[EntryKind, ...], start: int) -> None:
    batch = [
        entry(start + n, kind=kind, pseudonym=None if kind is EntryKind.ADMIN else PSEUDONYMS[0])
        for n, kind in enumerate(kinds)
    ]
    await store.append(batch, sign=SIGN)


async def test_an_empty_log_has_no_consent_position(store: LogStore) -> None:
    assert await store.latest_consent() is None
    assert await store.consents_after(-1) == []
    await _append(store, (ACCESS,), 0)
    assert await store.latest_consent() is None


async def test_the_position_names_every_consent_entry_of_every_appender(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    try:
        await _append(one, FIRST, 0)
        assert await two.latest_consent() == 2
        await _append(two, SECOND, len(FIRST))
        for store in (one, two):
            assert await store.latest_consent() == 7
            assert await store.consents_after(-1) == [1, 2, 5, 7]
            assert await store.consents_after(2) == [5, 7]
            assert await store.consents_after(7) == []
    finally:
        await one.close()
        await two.close()


async def test_a_log_written_before_the_index_existed_is_read_whole(
    sql_backend: Backend,
) -> None:
    """Dropping the partial index models a log from before it; opening builds it again over
    the leaves already there (``CREATE INDEX IF NOT EXISTS``)."""
    store = await sql_backend.open()
    await _append(store, FIRST, 0)
    await store.close()
    await sql_backend.dba("DROP INDEX consentry_ledger_leaves_consent")
    reopened = await sql_backend.open()
    try:
        assert await reopened.consents_after(-1) == [1, 2]
        assert await reopened.latest_consent() == 2
    finally:
        await reopened.close()
