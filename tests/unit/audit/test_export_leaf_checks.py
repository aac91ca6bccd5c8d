"""A forged log gives no export made in parts (``export_parallel``): a leaf changed under its
stored hash or with it, in the command's part or a worker's, leaves the file to the
sequential export, which refuses it as it always did. The batched leaf-hash check of
``export_collect._check_lines`` reports what the check leaf by leaf reported, also for a
stored hash column re-split between two neighbours (the same root)."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from middleware.audit.export import Role
from middleware.audit.export_collect import _check_lines
from middleware.audit.proofs import ProofMaker
from middleware.cli import main
from middleware.ledger.errors import VerificationError
from middleware.ledger.merkle import leaf_hash
from middleware.ledger.tree import hash_leaves
from middleware.storage.ledger_bulk import read_bulk
from tests.unit.audit.test_export_parallel import (
    COUNT,
    _argv,
    _fill,
    _hour,
    _in_parts,
    _leftovers,
    _sequential,
)


def _edit(store: str, sql: str, args: tuple[object, ...]) -> None:
    """A superuser's edit of the leaf table (its append-only triggers dropped first, its
    CHECK constraints ignored: whoever holds the file can do both)."""
    conn = sqlite3.connect(store.removeprefix("sqlite:"))
    try:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        for suffix in ("no_update", "no_delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS consentry_ledger_leaves_{suffix}")
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def _forged(store: str, index: int) -> bytes:
    """Leaf ``index`` with its recorded time changed (valid, another hash)."""
    conn = sqlite3.connect(store.removeprefix("sqlite:"))
    try:
        row = conn.execute("SELECT leaf FROM consentry_ledger_leaves WHERE idx = ?", (index,))
        forged = bytearray(row.fetchone()[0])
    finally:
        conn.close()
    forged[15] ^= 1  # the recorded time's last byte
    return bytes(forged)


def _refused_in_parts(tmp_path: Path, store: str, key: Path) -> None:
    """No file in parts, nothing left behind, and the command exits 2 as the sequential
    export does."""
    assert _in_parts(_argv(store, key, tmp_path / "parts"), 3) is None
    assert not (tmp_path / "parts").exists()
    assert _leftovers(tmp_path) == []
    assert multiprocessing.active_children() == []
    with pytest.raises(AssertionError):  # _sequential asserts exit status 0
        _sequential(_argv(store, key, tmp_path / "one"))


@pytest.mark.parametrize("index", [5, COUNT // 2 + 3], ids=["first part", "a worker's part"])
def test_a_leaf_forged_under_its_stored_hash_gives_no_file_in_parts(
    tmp_path: Path, index: int
) -> None:
    """The stored hashes keep the signed root; the leaves' own hashes do not."""
    store, key = _fill(tmp_path, [(COUNT, 0)])
    _edit(
        store,
        "UPDATE consentry_ledger_leaves SET leaf = ? WHERE idx = ?",
        (_forged(store, index), index),
    )
    _refused_in_parts(tmp_path, store, key)


def test_a_leaf_forged_with_its_hash_gives_no_file_in_parts(tmp_path: Path) -> None:
    """A leaf and its stored hash both changed: neither has the signed root."""
    store, key = _fill(tmp_path, [(COUNT, 0)])
    forged = _forged(store, 7)
    _edit(
        store,
        "UPDATE consentry_ledger_leaves SET leaf = ?, leaf_hash = ? WHERE idx = 7",
        (forged, leaf_hash(forged)),
    )
    _refused_in_parts(tmp_path, store, key)


def _resplit(hashes: list[bytes], left: int) -> list[bytes]:
    """``hashes`` with the hashes of siblings ``left`` and ``left + 1`` re-split 31 + 33
    bytes: the same concatenation, so the same parent node and the same root."""
    joined = hashes[left] + hashes[left + 1]
    return [*hashes[:left], joined[:31], joined[31:], *hashes[left + 2 :]]


def test_a_hash_column_resplit_between_neighbours_gives_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export of a few rows proves against the stored hash column (``StoreView``): with
    leaves 10 and 11's hashes re-split the signed root holds and the leaves are untouched,
    yet neither leaf hashes to its stored hash (their proofs would be wrong). The command
    exits 2 naming leaf 10 and writes no file."""
    store, key = _fill(tmp_path, [(COUNT, 0)])
    hashes = _resplit(hash_leaves(asyncio.run(read_bulk(store)).leaves), 10)
    for index in (10, 11):
        _edit(
            store,
            "UPDATE consentry_ledger_leaves SET leaf_hash = ? WHERE idx = ?",
            (hashes[index], index),
        )
    out = tmp_path / "few.csv"
    period = ["--since", _hour(9), "--until", _hour(12), "--format", "csv", "--jobs", "1"]
    assert main(_argv(store, key, out, *period)) == 2
    assert "stored hash of leaf 10 does not match its bytes" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def leaves(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    store, _ = _fill(tmp_path_factory.mktemp("leaves"), [(COUNT, 0)])
    return asyncio.run(read_bulk(store)).leaves


@pytest.mark.parametrize("bad", [0, 17, COUNT - 1], ids=["first", "middle", "last"])
def test_the_batched_hash_check_reports_the_leaf_that_does_not_match(
    leaves: list[bytes], bad: int
) -> None:
    """One valid leaf that does not hash to the tree's leaf among many (hashed in one
    batch): the error names it, as the check leaf by leaf did."""
    tree = ProofMaker(hash_leaves(leaves))
    lines: list[tuple[Role, int]] = [("row", i) for i in range(len(leaves))]
    changed = dict(enumerate(leaves))
    forged = bytearray(leaves[bad])
    forged[15] ^= 1
    changed[bad] = bytes(forged)
    with pytest.raises(VerificationError, match=f"stored hash of leaf {bad} does not match"):
        _check_lines(lines, changed, tree, None)
    _check_lines(lines, dict(enumerate(leaves)), tree, None)  # the honest leaves pass


def test_a_malformed_leaf_before_a_mismatch_is_reported_first(leaves: list[bytes]) -> None:
    """Line by line, as before the batch: the first line's fault is the one reported."""
    tree = ProofMaker(hash_leaves(leaves))
    lines: list[tuple[Role, int]] = [("row", i) for i in range(len(leaves))]
    changed = dict(enumerate(leaves))
    changed[3] = b"not a leaf"
    forged = bytearray(leaves[20])
    forged[15] ^= 1
    changed[20] = bytes(forged)
    with pytest.raises(VerificationError, match="leaf 3 is malformed"):
        _check_lines(lines, changed, tree, None)


def test_the_batched_hash_check_refuses_a_hash_column_resplit(leaves: list[bytes]) -> None:
    """Each stored hash is compared with its leaf's, not only their concatenation."""
    tree = ProofMaker(_resplit(hash_leaves(leaves), 10))
    assert tree.root() == ProofMaker(hash_leaves(leaves)).root()
    lines: list[tuple[Role, int]] = [("row", i) for i in range(len(leaves))]
    with pytest.raises(VerificationError, match="stored hash of leaf 10 does not match"):
        _check_lines(lines, dict(enumerate(leaves)), tree, None)
