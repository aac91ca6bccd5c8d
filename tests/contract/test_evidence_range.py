"""LogStore.evidence_range on memory, SQLite and PostgreSQL: the evidence of a range of
leaves in one read, equal to :meth:`evidence` of each (removed evidence absent), the range
checked as :meth:`leaves` checks it."""

from __future__ import annotations

import pytest

from middleware.ledger.entry import Evidence
from middleware.ledger.errors import OutOfRangeError
from middleware.storage.ledger_base import LogStore
from tests.contract.helpers import PSEUDONYMS, SIGN, entry


async def test_a_range_reads_what_each_entry_reads(store: LogStore) -> None:
    await store.append([entry(n, pseudonym=PSEUDONYMS[n % 2]) for n in range(6)], sign=SIGN)
    await store.shred_entries([2, 4])
    each: dict[int, Evidence] = {}
    for index in range(1, 5):
        found = await store.evidence(index)
        if found is not None:
            each[index] = found
    got = await store.evidence_range(1, 5)
    assert got == each
    assert set(got) == {1, 3}
    assert got[3].data == b"evidence 3"
    assert await store.evidence_range(6, 6) == {}
    assert set(await store.evidence_range(0, 6)) == {0, 1, 3, 5}


@pytest.mark.parametrize(
    ("start", "end"),
    [(-1, 2), (3, 2), (0, 7), (6, 7)],
    ids=["negative", "reversed", "past-the-end", "empty-past-the-end"],
)
async def test_a_range_outside_the_log_is_refused(store: LogStore, start: int, end: int) -> None:
    await store.append([entry(n) for n in range(6)], sign=SIGN)
    with pytest.raises(OutOfRangeError):
        await store.evidence_range(start, end)
