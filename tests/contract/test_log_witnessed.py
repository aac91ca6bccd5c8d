"""The witnessed checkpoints a log store keeps (``LogStore.witnessed`` / ``keep_witnessed``,
:mod:`middleware.storage.ledger_witnessed`) on every backend: append-only by size, the first
note of a size stays, every store object on the log sees what another kept; and (SQL) a DBA's
update, delete or insert below the newest size is refused."""

from __future__ import annotations

import asyncio

import pytest

from middleware.ledger.errors import MalformedError
from middleware.ledger.note import parse_note
from middleware.ledger.signing import Cosigner
from middleware.storage.ledger_base import LogStore
from tests.contract.backends import Backend, EditRefused
from tests.contract.helpers import SIGN, entry

W1 = Cosigner.generate("w1.test")
W2 = Cosigner.generate("w2.test")
NOW = 1_700_000_000


async def _grown_and_cosigned(store: LogStore, size: int, *, by: Cosigner = W1) -> str:
    """Grow the log to ``size`` entries; its checkpoint note with ``by``'s cosignature."""
    have = await store.size()
    await store.append([entry(n) for n in range(have, size)], sign=SIGN)
    signed = await store.checkpoint(size)
    assert signed is not None
    return signed.note + by.cosign(parse_note(signed.note).text, NOW).line()


async def test_nothing_is_kept_at_first(store: LogStore) -> None:
    assert await store.witnessed() is None


async def test_a_kept_note_is_the_newest_for_every_store_on_the_log(
    store: LogStore, backend: Backend
) -> None:
    note = await _grown_and_cosigned(store, 3)
    assert await store.keep_witnessed(note)
    assert await store.witnessed() == (3, note)
    other = await backend.open()  # another replica on the same database
    try:
        assert await other.witnessed() == (3, note)
    finally:
        await other.close()


async def test_only_larger_sizes_are_kept_and_the_first_of_a_size_stays(store: LogStore) -> None:
    small = await _grown_and_cosigned(store, 2)
    large = await _grown_and_cosigned(store, 5)
    assert await store.keep_witnessed(large)
    assert not await store.keep_witnessed(small)  # older: never kept after a newer one
    text = parse_note(large).text
    same = large.removesuffix(W1.cosign(text, NOW).line()) + W2.cosign(text, NOW).line()
    assert not await store.keep_witnessed(same)  # the same size: the first stays
    assert await store.witnessed() == (5, large)
    newer = await _grown_and_cosigned(store, 6)
    assert await store.keep_witnessed(newer)
    assert await store.witnessed() == (6, newer)


async def test_two_stores_keeping_at_once_leave_the_larger_newest(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    try:
        small = await _grown_and_cosigned(one, 4)
        large = await _grown_and_cosigned(one, 7)
        results = await asyncio.gather(one.keep_witnessed(large), two.keep_witnessed(small))
        assert results[0]  # the larger is always kept; the smaller only if it came first
        assert await two.witnessed() == (7, large)
        assert not await one.keep_witnessed(small)
    finally:
        await one.close()
        await two.close()


async def test_a_note_that_states_no_checkpoint_is_malformed(store: LogStore) -> None:
    with pytest.raises(MalformedError):
        await store.keep_witnessed("not a note\n")
    assert await store.witnessed() is None


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE consentry_ledger_witnessed SET note = 'forged'",
        "DELETE FROM consentry_ledger_witnessed",
        "INSERT INTO consentry_ledger_witnessed (size, note) VALUES (1, 'older')",
        "INSERT INTO consentry_ledger_witnessed (size, note) VALUES (3, 'same size')",
    ],
    ids=["update", "delete", "insert-older", "insert-same-size"],
)
async def test_a_dba_cannot_rewrite_or_roll_back_what_is_kept(
    sql_backend: Backend, sql: str
) -> None:
    store = await sql_backend.open()
    try:
        note = await _grown_and_cosigned(store, 3)
        assert await store.keep_witnessed(note)
        with pytest.raises(EditRefused):
            await sql_backend.dba(sql)
        assert await store.witnessed() == (3, note)
    finally:
        await store.close()
