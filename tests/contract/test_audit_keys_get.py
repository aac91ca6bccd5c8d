"""``LogStore.audit_keys_get`` (many keys in one read) answers what ``audit_key_get`` answers
for each pseudonym, on memory, SQLite and PostgreSQL alike: keys stored, never stored and
shredded, a pseudonym named twice, more pseudonyms than one SQLite statement binds, none."""

from __future__ import annotations

import pytest

from middleware.storage.ledger_base import LogStore
from tests.contract.helpers import PSEUDONYMS

#: 1,201 pseudonyms: past two of the SQLite store's 500-pseudonym statements.
MANY = [n.to_bytes(16, "big") for n in range(1, 1202)]


async def test_many_keys_read_at_once_are_each_key_read_alone(store: LogStore) -> None:
    stored = MANY[::3]  # every third has a key
    for n, pseudonym in enumerate(stored):
        await store.audit_key(pseudonym, b"key-%d" % n)
    shredded = stored[7]
    await store.shred(shredded)
    asked = [*MANY, MANY[3], PSEUDONYMS[0]]  # one named twice, one never seen
    got = await store.audit_keys_get(asked)
    alone = {p: k for p in asked if (k := await store.audit_key_get(p)) is not None}
    assert got == alone
    assert len(got) == len(stored) - 1  # the shredded one has none
    assert shredded not in got
    assert got[MANY[0]] == b"key-0"
    assert await store.audit_keys_get([]) == {}


@pytest.mark.parametrize("bad", [b"short", PSEUDONYMS[0] + b"x"], ids=["short", "long"])
async def test_a_malformed_pseudonym_among_many_is_refused(store: LogStore, bad: bytes) -> None:
    with pytest.raises(ValueError, match="pseudonym"):
        await store.audit_keys_get([PSEUDONYMS[0], bad])
