"""Attacks on what is stored: leaves, evidence, rows and notes, edited in the database or in
an export. Each test names the attack and asserts what the offline verifier (pure function
and CLI) and the running gateway report."""

from __future__ import annotations

from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.merkle import leaf_hash
from tests.adversarial.harness import Target, codes, edit_leaves
from tests.contract.backends import EditRefused, SqliteBackend


def _flip(leaf: bytes, offset: int) -> bytes:
    return leaf[:offset] + bytes([leaf[offset] ^ 0x01]) + leaf[offset + 1 :]


async def test_one_byte_flipped_in_a_leaf(target: Target) -> None:
    """Attack: flip one bit of one stored leaf (its evidence commitment), in an export and,
    with the triggers off, in the database, leaving the stored hash as it was."""
    export = await target.export()
    edit_leaves(export, lambda leaves: [*leaves[:5], _flip(leaves[5], 60), *leaves[6:]])
    report = target.verify_export(export)
    assert not report.ok
    assert codes(report) == {"checkpoint-root"}  # no evidence in a PHI-free export

    store = await target.backend.open()
    (leaf,) = await store.leaves(5, 6)
    (stored_hash,) = await store.leaf_hashes(5, 6)
    await store.close()
    await target.backend.tamper_leaf(5, _flip(leaf, 60), stored_hash)
    assert await target.gateway_refuses()  # replay: the stored hash is not the leaf's
    status, found = await target.verify_store()
    assert status == 1
    assert found == {"leaf-hash", "checkpoint-root", "evidence", "state"}


async def test_two_leaves_reordered(sqlite_target: Target) -> None:
    """Attack: swap two entries (rows and hashes moved together), in an export and in the
    database."""
    export = await sqlite_target.export()
    edit_leaves(export, lambda leaves: [*leaves[:3], leaves[4], leaves[3], *leaves[5:]])
    assert codes(sqlite_target.verify_export(export)) >= {"checkpoint-root", "chain"}

    sqlite_target.sqlite(
        "UPDATE consentry_ledger_leaves SET idx = 1000 WHERE idx = 3",
        "UPDATE consentry_ledger_leaves SET idx = 3 WHERE idx = 4",
        "UPDATE consentry_ledger_leaves SET idx = 4 WHERE idx = 1000",
    )
    assert await sqlite_target.gateway_refuses()
    assert await sqlite_target.readyz() == (503, 503)
    status, found = await sqlite_target.verify_store()
    assert status == 1
    assert {"checkpoint-root", "chain", "evidence"} <= found


async def test_evidence_edited(sqlite_target: Target) -> None:
    """Attack: rewrite one entry's evidence (the AuditEvent beside the ledger). Evidence is
    mutable by design (crypto-shredding), so the gateway opens; its commitment in the leaf
    does not match any more, which the verifier reports wherever evidence is present."""
    sqlite_target.sqlite("UPDATE consentry_ledger_evidence SET data = 'rewritten' WHERE idx = 7")
    assert not await sqlite_target.gateway_refuses()
    status, found = await sqlite_target.verify_store()
    assert (status, found) == (1, {"evidence"})

    with_evidence = await sqlite_target.export("full", with_evidence=True)
    assert codes(sqlite_target.verify_export(with_evidence)) == {"evidence"}
    phi_free = await sqlite_target.export("default")
    assert sqlite_target.verify_export(phi_free).ok  # no evidence exported: nothing to check


async def test_a_middle_entry_deleted(sqlite_target: Target) -> None:
    """Attack: remove entry 6 from an export, and from the database (triggers off)."""
    export = await sqlite_target.export()
    edit_leaves(export, lambda leaves: leaves[:6] + leaves[7:])
    assert {"checkpoint-root", "chain"} <= codes(sqlite_target.verify_export(export))

    sqlite_target.sqlite(
        "DELETE FROM consentry_ledger_evidence WHERE idx = 6",
        "DELETE FROM consentry_ledger_leaves WHERE idx = 6",
    )
    assert await sqlite_target.gateway_refuses()  # replay: indexes are not contiguous
    status, found = await sqlite_target.verify_store()
    assert status == 1
    assert {"index-gap", "checkpoint-root"} <= found


async def test_a_forged_entry_inserted(sqlite_target: Target) -> None:
    """Attack: insert a made-up entry in the middle (an export, and the database with the
    later rows renumbered), hashes computed correctly."""
    store = await sqlite_target.backend.open()
    (forged,) = await store.leaves(0, 1)  # a well-formed leaf, here a copy of entry 0
    await store.close()
    export = await sqlite_target.export()
    edit_leaves(export, lambda leaves: [*leaves[:4], forged, *leaves[4:]])
    assert {"checkpoint-root", "chain"} <= codes(sqlite_target.verify_export(export))

    sqlite_target.sqlite(
        "UPDATE consentry_ledger_evidence SET idx = idx + 1000 WHERE idx >= 4",
        "UPDATE consentry_ledger_leaves SET idx = idx + 1000 WHERE idx >= 4",
        "UPDATE consentry_ledger_leaves SET idx = idx - 999 WHERE idx >= 1000",
        "UPDATE consentry_ledger_evidence SET idx = idx - 999 WHERE idx >= 1000",
        f"INSERT INTO consentry_ledger_leaves VALUES (4, x'{forged.hex()}', "
        f"x'{leaf_hash(forged).hex()}', NULL, NULL)",
    )
    assert await sqlite_target.gateway_refuses()
    status, found = await sqlite_target.verify_store()
    assert status == 1
    assert {"checkpoint-root", "state"} <= found


async def test_a_well_formed_entry_appended_at_the_tail_by_a_dba(sqlite_target: Target) -> None:
    """Attack (and a documented limit): a DBA appends a well-formed leaf after the last one.
    The verifier reports it as long as no checkpoint covers it; the gateway cannot tell it from
    its own unsigned tail after a crash and signs it when it opens."""
    made_up = NewEntry.create(EntryKind.ADMIN, b"made up", recorded_us=99).leaf_bytes(None)
    sqlite_target.sqlite(
        f"INSERT INTO consentry_ledger_leaves VALUES (12, x'{made_up.hex()}', "
        f"x'{leaf_hash(made_up).hex()}', NULL, NULL)"
    )
    status, found = await sqlite_target.verify_store()
    assert (status, found) == (1, {"unsigned-leaves", "state"})
    assert not await sqlite_target.gateway_refuses()  # opened, and signed size 13
    status, found = await sqlite_target.verify_store()
    assert (status, found) == (0, set())


async def test_a_dba_editing_rows_directly(target: Target) -> None:
    """Attack: a DBA's UPDATE/DELETE is refused by triggers; a superuser who switches them off
    and rewrites a leaf together with its hash is caught by the signed roots."""
    for sql in (
        "UPDATE consentry_ledger_leaves SET leaf = leaf WHERE idx = 2",
        "DELETE FROM consentry_ledger_checkpoints WHERE size = 12",
    ):
        try:
            await target.backend.dba(sql)
        except EditRefused:
            continue
        raise AssertionError(f"not refused: {sql}")

    store = await target.backend.open()
    (leaf,) = await store.leaves(2, 3)
    await store.close()
    forged = _flip(leaf, 10)  # another recorded time
    await target.backend.tamper_leaf(2, forged, leaf_hash(forged))
    assert await target.gateway_refuses()
    status, found = await target.verify_store()
    assert status == 1
    assert {"checkpoint-root", "state"} <= found


async def test_malformed_and_badly_signed_notes(sqlite_target: Target) -> None:
    """Attack: garble a stored checkpoint note; separately, forge its signature bytes.

    A garbled note stops the gateway (replay parses every note). A note that parses but
    carries a bad signature is reported by the verifier; the gateway judges only its own
    key's signature on the latest checkpoint, which it will not continue from when forged."""
    export = await sqlite_target.export()
    lines = (export / "checkpoints.jsonl").read_text().splitlines()
    (export / "checkpoints.jsonl").write_text("\n".join([*lines, '{"note": "garbage"}']) + "\n")
    assert "checkpoint-malformed" in codes(sqlite_target.verify_export(export))

    assert isinstance(sqlite_target.backend, SqliteBackend)
    store = await sqlite_target.backend.open()
    latest = await store.checkpoint()
    await store.close()
    assert latest is not None
    text, _, signature = latest.note.rpartition(" ")
    forged = text + " " + ("B" if signature[0] == "A" else "A") + signature[1:]
    sqlite_target.sqlite(
        f"UPDATE consentry_ledger_checkpoints SET note = '{forged}' WHERE size = {latest.size}"
    )
    assert await sqlite_target.gateway_refuses()
    status, found = await sqlite_target.verify_store()
    assert (status, found) == (1, {"checkpoint-signature", "unsigned-leaves"})

    sqlite_target.sqlite("UPDATE consentry_ledger_checkpoints SET note = 'garbage' WHERE size = 4")
    assert await sqlite_target.gateway_refuses()
    status, found = await sqlite_target.verify_store()
    assert status == 1
    assert "checkpoint-malformed" in found
