"""What the ledger tests share: a fixed key, entries made to order, and one check of every
invariant a log must keep (used by the contract, process and crash tests)."""

from __future__ import annotations

from middleware.ledger.entry import NewEntry, StoredCheckpoint
from middleware.ledger.leaf import EntryFlag, EntryKind, commit_evidence, decode_leaf
from middleware.ledger.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    leaf_hash,
    root,
    verify_consistency,
)
from middleware.ledger.signing import SigningKey, verify_checkpoint
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_base import LogStore

ORIGIN = "consentry.example/ledger"
KEY = SigningKey.from_seed(ORIGIN, bytes(range(32)))
SIGN = checkpoint_signer(KEY)
VERIFIER = KEY.verifier()
PSEUDONYMS = [bytes([n]) * 16 for n in range(1, 6)]


def entry(
    n: int,
    *,
    pseudonym: bytes | None = None,
    key: str | None = None,
    kind: EntryKind = EntryKind.ACCESS_DECISION,
) -> NewEntry:
    """Entry number ``n``: evidence ``b"evidence n"``, recorded at ``n`` microseconds."""
    return NewEntry.create(
        kind,
        f"evidence {n}".encode(),
        recorded_us=n,
        pseudonym=pseudonym,
        flags=EntryFlag.PERMIT,
        idempotency_key=key,
    )


async def assert_consistent(store: LogStore) -> list[bytes]:
    """Check every invariant of the log in ``store``; return its leaf hashes.

    Indexes are 0..size-1 without gaps; the state's root is RFC 9162 MTH of the leaf hashes
    and each stored hash is the hash of the stored leaf; every checkpoint is for a distinct
    size, verifies with the key, names the root of the leaves at its size, and is consistent
    with the next one; the latest checkpoint is for the current size; every leaf's
    ``previous`` is the latest earlier entry of its pseudonym; each evidence matches its
    commitment.
    """
    state = await store.state()
    assert await store.size() == state.size
    leaves = await store.leaves(0, state.size)
    hashes = await store.leaf_hashes(0, state.size)
    assert hashes == [leaf_hash(leaf) for leaf in leaves]
    assert root(hashes) == state.root
    assert state.compact_range().root() == state.root

    checkpoints = await store.checkpoints()
    sizes = [c.size for c in checkpoints]
    assert sizes == sorted(set(sizes)), "one checkpoint per size, in order"
    previous: StoredCheckpoint | None = None
    for stored in checkpoints:
        checkpoint = verify_checkpoint(stored.note, [VERIFIER], origin=ORIGIN)
        assert (checkpoint.size, checkpoint.root_hash) == (stored.size, stored.root)
        assert stored.root == root(hashes[: stored.size])
        if previous is not None:
            proof = consistency_proof(hashes, previous.size, stored.size)
            verify_consistency(previous.size, stored.size, previous.root, stored.root, proof)
        previous = stored
    if checkpoints:
        assert await store.checkpoint() == checkpoints[-1]
        assert checkpoints[-1].size == state.size, "the latest size is signed"
    else:
        assert state.root == EMPTY_ROOT

    last: dict[bytes, int] = {}
    for index, raw in enumerate(leaves):
        leaf = decode_leaf(raw)
        if leaf.pseudonym is not None:
            assert leaf.previous == last.get(leaf.pseudonym), f"chain broken at {index}"
            last[leaf.pseudonym] = index
        evidence = await store.evidence(index)
        if evidence is not None:
            assert commit_evidence(evidence.salt, evidence.data) == leaf.commitment
    for pseudonym, latest in last.items():
        chain = await store.chain(pseudonym)
        assert chain[-1] == latest
        assert chain == sorted(chain)
    return hashes
