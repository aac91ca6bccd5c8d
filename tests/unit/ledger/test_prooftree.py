"""The log's one shared in-memory tree (``ledger.prooftree``): grown in slices so building a
large tree never stalls the event loop, checked against the signed root, dropped when the
store disagrees with it."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import pytest

from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.note import parse_note
from middleware.ledger.prooftree import ProofTree
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.witnessing import Witnessing
from tests.unit.ledger.logs import sign
from tests.unit.ledger.test_witnessing import W1, cosigning, endpoint

#: Leaves in the "large" log: big enough that hashing it in one go stalls the loop for
#: hundreds of milliseconds (1.1 s at 10**6 entries was measured).
LARGE = 400_000
#: The longest the loop may be held while the tree is built.
MAX_LAG = 0.1


class Hashes:
    """A store holding ``hashes`` and one checkpoint over them (signed by the contract key)."""

    def __init__(self, hashes: list[bytes], root: bytes | None = None) -> None:
        self.hashes = hashes
        size = len(hashes)
        self.note = sign(size, MerkleLevels(hashes).root() if root is None else root)
        self.reads: list[tuple[int, int]] = []

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        checkpoint = parse_checkpoint(parse_note(self.note).text)
        return StoredCheckpoint(checkpoint.size, checkpoint.root_hash, self.note)

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        self.reads.append((start, end))
        return self.hashes[start:end]


async def _max_lag(work: asyncio.Task[None]) -> float:
    """The longest the event loop was held while ``work`` ran (a 5 ms ticker's lateness)."""
    worst = 0.0
    while not work.done():
        before = time.monotonic()
        await asyncio.sleep(0.005)
        worst = max(worst, time.monotonic() - before - 0.005)
    await work
    return worst


async def test_the_first_round_builds_a_large_tree_without_stalling_the_loop() -> None:
    """The witnessing task's first round on a log of 400,000 entries: requests keep being
    served (the loop is never held more than 100 ms), and the tree agrees with the root."""
    store = Hashes([os.urandom(32) for _ in range(LARGE)])

    async def open_store() -> Hashes:
        return store

    tree = ProofTree()
    async with httpx.AsyncClient(transport=httpx.MockTransport(cosigning(W1))) as client:
        witnessing = Witnessing(open_store, [endpoint(W1)], quorum=1, client=client, tree=tree)
        lag = await _max_lag(asyncio.create_task(witnessing.submit_latest()))
        await witnessing.aclose()
    assert lag < MAX_LAG, f"the loop was held {lag:.3f} s"
    assert witnessing.published_size == LARGE
    assert tree.size == LARGE


async def test_the_tree_grows_in_slices_and_only_by_what_is_new() -> None:
    hashes = [os.urandom(32) for _ in range(10)]
    store = Hashes(hashes[:7])
    tree = ProofTree(chunk=3)
    first = await tree.at(store, await _latest(store))
    assert store.reads == [(0, 3), (3, 6), (6, 7)]
    store.hashes, store.note, store.reads = hashes, Hashes(hashes).note, []
    second = await tree.at(store, await _latest(store))
    assert store.reads == [(7, 10)]
    assert first is second  # one tree, grown in place
    assert second.root() == MerkleLevels(hashes).root()


async def test_a_tree_that_disagrees_with_the_store_is_dropped() -> None:
    hashes = [os.urandom(32) for _ in range(5)]
    tree = ProofTree()
    forged = Hashes(hashes, root=bytes(32))
    with pytest.raises(LedgerError, match="disagrees"):
        await tree.at(forged, await _latest(forged))
    assert tree.size == 0  # rebuilt from the store on the next call
    honest = Hashes(hashes)
    assert (await tree.at(honest, await _latest(honest))).size == 5


async def test_a_store_returning_too_few_hashes_is_refused() -> None:
    store = Hashes([os.urandom(32) for _ in range(5)])
    signed = await _latest(store)
    store.hashes = store.hashes[:3]
    with pytest.raises(LedgerError, match="too few"):
        await ProofTree().at(store, signed)


def test_a_chunk_is_at_least_one_leaf() -> None:
    with pytest.raises(ValueError, match="chunk"):
        ProofTree(chunk=0)


async def _latest(store: Hashes) -> StoredCheckpoint:
    signed = await store.checkpoint()
    assert signed is not None
    return signed
