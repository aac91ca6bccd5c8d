"""The LogStore contract (``middleware.storage.ledger_base``), run on memory, SQLite and
PostgreSQL alike: sequencing, idempotency, roots and checkpoints, chains, evidence, reads."""

from __future__ import annotations

import asyncio

import pytest

from middleware.errors import ServiceUnavailable
from middleware.ledger.errors import OutOfRangeError, VerificationError
from middleware.ledger.leaf import commit_evidence, decode_leaf
from middleware.ledger.merkle import EMPTY_ROOT, leaf_hash, root
from middleware.ledger.signing import verify_checkpoint
from middleware.storage.ledger_base import LogStore
from tests.contract.backends import Backend
from tests.contract.helpers import (
    ORIGIN,
    PSEUDONYMS,
    SIGN,
    VERIFIER,
    assert_consistent,
    entry,
)

# --- sequencing -----------------------------------------------------------------------------


async def test_a_new_log_is_empty_and_unsigned(store: LogStore) -> None:
    state = await store.state()
    assert (state.size, state.root, await store.size()) == (0, EMPTY_ROOT, 0)
    assert await store.checkpoint() is None
    assert await store.checkpoints() == []


async def test_an_empty_append_signs_the_current_size_once(store: LogStore) -> None:
    assert await store.append([], sign=SIGN) == []
    assert await store.append([], sign=SIGN) == []
    assert [c.size for c in await store.checkpoints()] == [0]
    assert verify_checkpoint((await store.checkpoints())[0].note, [VERIFIER]).size == 0


async def test_sequential_appends_get_consecutive_indexes(store: LogStore) -> None:
    first = await store.append([entry(0), entry(1), entry(2)], sign=SIGN)
    second = await store.append([entry(3)], sign=SIGN)
    assert [(r.index, r.size, r.duplicate) for r in first + second] == [
        (0, 3, False),
        (1, 3, False),
        (2, 3, False),
        (3, 4, False),
    ]
    assert await store.size() == 4
    await assert_consistent(store)


async def test_each_batch_writes_one_checkpoint_for_its_new_size(store: LogStore) -> None:
    for n in range(5):
        await store.append([entry(2 * n), entry(2 * n + 1)], sign=SIGN)
    assert [c.size for c in await store.checkpoints()] == [2, 4, 6, 8, 10]
    assert (await store.checkpoint(6)) == (await store.checkpoints())[2]
    assert await store.checkpoint(5) is None
    assert (await store.checkpoint()) == (await store.checkpoints())[-1]
    await assert_consistent(store)


async def test_roots_are_rfc9162_roots_of_the_leaf_hashes(store: LogStore) -> None:
    for n in range(7):
        await store.append([entry(10 * n + k) for k in range(n)], sign=SIGN)
        hashes = await store.leaf_hashes(0, await store.size())
        assert (await store.state()).root == root(hashes)
    latest = await store.checkpoint()
    assert latest is not None
    checkpoint = verify_checkpoint(latest.note, [VERIFIER], origin=ORIGIN)
    assert (checkpoint.size, checkpoint.root_hash) == (21, root(hashes))


async def test_stores_on_one_log_append_concurrently_without_gaps(backend: Backend) -> None:
    stores = [await backend.open() for _ in range(3)]
    try:
        batches = [
            s.append([entry(100 * i + k, pseudonym=PSEUDONYMS[k % 2]) for k in range(5)], sign=SIGN)
            for i, s in enumerate(stores * 4)
        ]
        results = await asyncio.gather(*batches)
        indexes = sorted(r.index for batch in results for r in batch)
        assert indexes == list(range(60))
        for s in stores:
            assert await s.size() == 60
        await assert_consistent(stores[0])
    finally:
        for s in stores:
            await s.close()


async def test_stores_opened_at_once_create_one_log(backend: Backend) -> None:
    """Several replicas starting together on a new database create the tables once."""
    stores = await asyncio.gather(*(backend.open() for _ in range(4)))
    try:
        await asyncio.gather(*(s.append([entry(n)], sign=SIGN) for n, s in enumerate(stores)))
        assert await stores[-1].size() == 4
        await assert_consistent(stores[0])
    finally:
        for s in stores:
            await s.close()


async def test_a_reopened_store_continues_the_same_log(backend: Backend) -> None:
    first = await backend.open()
    await first.append([entry(0), entry(1)], sign=SIGN)
    before = await first.state()
    await first.close()
    second = await backend.open()
    try:
        assert await second.state() == before
        assert [r.index for r in await second.append([entry(2)], sign=SIGN)] == [2]
        await assert_consistent(second)
    finally:
        await second.close()


# --- idempotency ----------------------------------------------------------------------------


async def test_a_retried_key_returns_the_first_index_and_records_nothing(store: LogStore) -> None:
    await store.append([entry(0, key="a"), entry(1, key="b")], sign=SIGN)
    retried = await store.append([entry(9, key="b"), entry(2, key="c")], sign=SIGN)
    assert [(r.index, r.duplicate) for r in retried] == [(1, True), (2, False)]
    assert await store.size() == 3
    again = await store.append([entry(9, key="b")], sign=SIGN)
    assert [(r.index, r.size, r.duplicate) for r in again] == [(1, 3, True)]
    assert [c.size for c in await store.checkpoints()] == [2, 3], "no new checkpoint"
    await assert_consistent(store)


async def test_a_key_twice_in_one_batch_is_recorded_once(store: LogStore) -> None:
    results = await store.append([entry(0, key="k"), entry(1), entry(2, key="k")], sign=SIGN)
    assert [(r.index, r.duplicate) for r in results] == [(0, False), (1, False), (0, True)]
    assert await store.size() == 2


# --- per-pseudonym chain --------------------------------------------------------------------


async def test_previous_links_each_pseudonym_across_and_within_batches(store: LogStore) -> None:
    a, b = PSEUDONYMS[:2]
    await store.append([entry(0, pseudonym=a), entry(1), entry(2, pseudonym=b)], sign=SIGN)
    await store.append([entry(3, pseudonym=a), entry(4, pseudonym=a)], sign=SIGN)
    leaves = [decode_leaf(raw) for raw in await store.leaves(0, 5)]
    assert [leaf.previous for leaf in leaves] == [None, None, None, 0, 3]
    assert [leaf.pseudonym for leaf in leaves] == [a, None, b, a, a]
    assert await store.chain(a) == [0, 3, 4]
    assert await store.chain(b) == [2]
    assert await store.chain(PSEUDONYMS[4]) == []


# --- evidence and reads ---------------------------------------------------------------------


async def test_evidence_round_trips_and_matches_the_commitment(store: LogStore) -> None:
    made = [entry(0), entry(1, pseudonym=PSEUDONYMS[0])]
    await store.append(made, sign=SIGN)
    for index, new in enumerate(made):
        evidence = await store.evidence(index)
        assert evidence is not None
        assert (evidence.salt, evidence.data) == (new.salt, new.evidence)
        leaf = decode_leaf((await store.leaves(index, index + 1))[0])
        assert leaf.commitment == commit_evidence(evidence.salt, evidence.data) == new.commitment
    with pytest.raises(OutOfRangeError):
        await store.evidence(2)


async def test_ranges_are_half_open_and_checked(store: LogStore) -> None:
    await store.append([entry(n) for n in range(6)], sign=SIGN)
    leaves = await store.leaves(2, 5)
    assert [decode_leaf(raw).recorded_us for raw in leaves] == [2, 3, 4]
    assert await store.leaf_hashes(2, 5) == [leaf_hash(raw) for raw in leaves]
    assert await store.leaves(6, 6) == []
    for start, end in [(-1, 2), (3, 2), (0, 7), (6, 7)]:
        with pytest.raises(OutOfRangeError):
            await store.leaves(start, end)
        with pytest.raises(OutOfRangeError):
            await store.leaf_hashes(start, end)


# --- failures leave the log as it was -------------------------------------------------------


async def test_a_failing_signer_records_nothing(store: LogStore) -> None:
    await store.append([entry(0)], sign=SIGN)

    def broken(size: int, root_hash: bytes) -> str:
        raise RuntimeError("HSM unplugged")

    with pytest.raises(RuntimeError):
        await store.append([entry(1), entry(2)], sign=broken)
    assert await store.size() == 1
    assert [c.size for c in await store.checkpoints()] == [1]
    assert [r.index for r in await store.append([entry(3)], sign=SIGN)] == [1]
    await assert_consistent(store)


async def test_a_signer_that_signs_another_tree_is_refused(store: LogStore) -> None:
    def lying(size: int, root_hash: bytes) -> str:
        return SIGN(size + 1, root_hash)

    with pytest.raises(VerificationError):
        await store.append([entry(0)], sign=lying)
    assert await store.size() == 0
    assert await store.checkpoints() == []


async def test_a_closed_store_is_unavailable(backend: Backend) -> None:
    opened = await backend.open()
    await opened.ping()
    await opened.close()
    await opened.close()
    with pytest.raises(ServiceUnavailable):
        await opened.ping()
    with pytest.raises(ServiceUnavailable):
        await opened.append([entry(0)], sign=SIGN)
