"""The LogStore contract, part two: the log cannot be edited, and what replay does when it was.

A DBA's ``UPDATE``, ``DELETE``, ``REPLACE``, ``TRUNCATE`` or out-of-order ``INSERT`` on the
log tables is refused by the database itself (SQLite and PostgreSQL). An edit made with the
triggers switched off is caught when the store replays the log (``rebuild_state``, and on open);
a state row left behind the leaves is rebuilt; a missing checkpoint is signed again.
"""

from __future__ import annotations

import pytest

from middleware.ledger.entry import TreeState
from middleware.ledger.errors import VerificationError
from middleware.ledger.leaf import encode_leaf
from middleware.ledger.merkle import CompactRange, leaf_hash
from tests.contract.backends import REFUSED_EDITS, Backend, EditRefused
from tests.contract.helpers import PSEUDONYMS, SIGN, assert_consistent, entry


async def _filled(backend: Backend) -> None:
    store = await backend.open()
    await store.append([entry(0, pseudonym=PSEUDONYMS[0]), entry(1), entry(2)], sign=SIGN)
    await store.append([entry(3, pseudonym=PSEUDONYMS[0])], sign=SIGN)
    await store.close()


# --- a DBA's edit is refused ----------------------------------------------------------------


@pytest.mark.parametrize("edit", sorted(REFUSED_EDITS))
async def test_sql_edits_of_the_log_are_refused(sql_backend: Backend, edit: str) -> None:
    await _filled(sql_backend)
    assert sql_backend.dialect is not None
    with pytest.raises(EditRefused, match=r"append-only|next ind|signed once"):
        await sql_backend.dba(REFUSED_EDITS[edit][sql_backend.dialect])
    store = await sql_backend.open()
    try:
        assert await store.size() == 4
        await assert_consistent(store)
    finally:
        await store.close()


async def test_evidence_can_be_shredded_without_breaking_the_log(sql_backend: Backend) -> None:
    await _filled(sql_backend)
    await sql_backend.dba("DELETE FROM consentry_ledger_evidence WHERE idx = 1")
    await sql_backend.dba("UPDATE consentry_ledger_evidence SET data = NULL WHERE idx = 2")
    store = await sql_backend.open()
    try:
        assert await store.evidence(1) is None
        assert await store.evidence(2) is None
        assert await store.evidence(3) is not None
        await assert_consistent(store)
    finally:
        await store.close()


# --- replay: forgeries are detected, a lagging state is rebuilt -----------------------------


@pytest.mark.parametrize("rehash", [False, True], ids=["bytes-only", "bytes-and-hash"])
async def test_a_forged_leaf_is_detected_on_rebuild_and_on_open(
    backend: Backend, rehash: bool
) -> None:
    await _filled(backend)
    store = await backend.open()
    original = (await store.leaves(1, 2))[0]
    forged = encode_leaf(entry(99).leaf(None))
    assert forged != original
    await backend.tamper_leaf(1, forged, leaf_hash(forged) if rehash else leaf_hash(original))
    try:
        with pytest.raises(VerificationError):
            await store.rebuild_state()
    finally:
        await store.close()
    with pytest.raises(VerificationError):
        await backend.open()


async def test_a_state_behind_the_leaves_is_rebuilt(backend: Backend) -> None:
    await _filled(backend)
    store = await backend.open()
    full = await store.state()
    compact = CompactRange()
    compact.extend(await store.leaf_hashes(0, 2))
    await backend.set_state(TreeState.of(compact))
    try:
        assert (await store.state()).size == 2
        assert await store.rebuild_state() == full
        assert await store.state() == full
        assert [r.index for r in await store.append([entry(4)], sign=SIGN)] == [4]
        await assert_consistent(store)
    finally:
        await store.close()


async def test_a_state_ahead_of_the_leaves_refuses_to_open(backend: Backend) -> None:
    await _filled(backend)
    store = await backend.open()
    compact = (await store.state()).compact_range()
    compact.append(leaf_hash(b"never appended"))
    await store.close()
    await backend.set_state(TreeState.of(compact))
    with pytest.raises(VerificationError):
        await backend.open()


async def test_a_lost_checkpoint_is_signed_again_with_the_same_root(backend: Backend) -> None:
    await _filled(backend)
    store = await backend.open()
    latest = await store.checkpoint()
    assert latest is not None
    await backend.drop_checkpoint(latest.size)
    await store.close()
    store = await backend.open()
    try:
        assert (await store.checkpoint()) != latest
        await store.append([], sign=SIGN)
        # Ed25519 is deterministic: same key, same size and root, the very same note.
        assert await store.checkpoint() == latest
        await assert_consistent(store)
    finally:
        await store.close()
