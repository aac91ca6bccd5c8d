"""The export format: header, lines, the chain plan, and the cached inclusion checks."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit.export import (
    EXPORT_FORMAT,
    PROOF_COLUMNS,
    ROW_COLUMNS,
    format_time,
    plan_chain,
    row_columns,
)
from middleware.audit.inclusion import InclusionChecker
from middleware.audit.proofs import ProofMaker
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import OutOfRangeError, VerificationError
from middleware.ledger.merkle import leaf_hash, verify_inclusion
from middleware.ledger.tree import MerkleLevels, hash_leaves
from tests.contract.helpers import ORIGIN
from tests.unit.audit.export_fixtures import PATIENTS, T0, build_log, export

LOG = build_log()


def test_the_ndjson_header_says_what_the_export_is() -> None:
    header = json.loads(export(LOG).splitlines()[0])
    assert header == {
        "format": EXPORT_FORMAT,
        "report": "access-report",
        "patient": "Patient/a",
        "agent": None,
        "since": "2026-01-01T02:00:00.000000Z",
        "until": "2026-01-01T08:00:00.000000Z",
        "columns": list(ACCESS_NAMES),
        "origin": ORIGIN,
        "checkpoint": LOG.note,
        "chain": PATIENTS["Patient/a"].hex(),
        "rules": None,
    }


#: The access report's columns (docs/audit.md), the ledger index being every line's own.
ACCESS_NAMES = (
    "date",
    "patient",
    "agent",
    "organization",
    "client",
    "what",
    "action",
    "result",
    "purpose_codes",
    "break_glass",
)


def test_a_date_range_export_carries_every_row_element() -> None:
    text = export(LOG, report="date-range")
    header = json.loads(text.splitlines()[0])
    assert header["columns"] == list(ROW_COLUMNS)
    row = json.loads(text.splitlines()[2])
    assert row["columns"]["recorded"] == "2026-01-01T03:00:00.000000Z"
    assert row["columns"]["shredded"] == "false"


def test_the_csv_has_the_header_line_then_the_report_and_proof_columns() -> None:
    text = export(LOG, fmt="csv")
    first, _, rest = text.partition("\r\n")
    assert json.loads(first.removeprefix("#"))["format"] == EXPORT_FORMAT
    records = list(csv.reader(io.StringIO(rest)))
    assert records[0] == [*ACCESS_NAMES, *PROOF_COLUMNS]
    row = dict(zip(records[0], records[2], strict=True))  # records[1] is the 'before' line
    assert row["role"] == "row"
    assert row["ledger_index"] == "3"
    assert row["patient"] == "Patient/a"
    assert row["date"] == "2026-01-01T03:00:00.000000Z"
    assert (row["what"], row["result"]) == ("Observation", "released")
    assert records[1][: len(ACCESS_NAMES)] == [""] * len(ACCESS_NAMES)


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "1970-01-01T00:00:00.000000Z"),
        (T0 + 6, "2026-01-01T00:00:00.000006Z"),
        (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
    ],
    ids=["epoch", "micros", "leap-day"],
)
def test_times_are_rfc3339_utc_with_microseconds(us: int, text: str) -> None:
    assert format_time(us) == text


def test_row_columns_follow_the_column_names() -> None:
    row = LOG.rows[3]
    values = dict(zip(ROW_COLUMNS, row_columns(row), strict=True))
    assert values["agent"] == row.agent
    assert values["purposes"] == " ".join(row.purposes)
    assert values["break_glass"] == "false"
    assert values["kind"] == "5"


# -- the chain plan: (index, time) pairs, period -> before, inside, after ---------------------

CHAIN = [(1, 10), (4, 20), (7, 30), (9, 40)]


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (15, 35, (1, [4, 7], 9)),
        (None, None, (None, [1, 4, 7, 9], None)),
        (0, 5, (None, [], 1)),
        (45, 50, (9, [], None)),
        (21, 29, (4, [], 7)),
        (20, 20, (1, [4], 7)),
        (10, 40, (None, [1, 4, 7, 9], None)),
    ],
    ids=["middle", "open", "before-all", "after-all", "between", "one-instant", "exact-bounds"],
)
def test_plan_chain(
    since: int | None, until: int | None, expected: tuple[int | None, list[int], int | None]
) -> None:
    assert plan_chain(CHAIN, since, until) == expected


def test_an_empty_chain_has_nothing() -> None:
    assert plan_chain([], 0, 10) == (None, [], None)


# -- cached inclusion checks agree with RFC 9162 §2.1.3.2 -------------------------------------


def _tree(size: int) -> tuple[list[bytes], MerkleLevels, Checkpoint]:
    leaves = [n.to_bytes(4, "big") for n in range(size)]
    tree = MerkleLevels.of_leaves(leaves)
    return leaves, tree, Checkpoint(ORIGIN, size, tree.root())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1)))))
def test_every_genuine_proof_passes_in_any_order(case: tuple[int, list[int]]) -> None:
    size, order = case
    leaves, tree, checkpoint = _tree(size)
    checker = InclusionChecker(checkpoint)
    for index in order:
        assert checker.check(index, leaves[index], b"".join(tree.inclusion_proof(index)))


@settings(max_examples=80, deadline=None)
@given(
    st.integers(2, 70).flatmap(
        lambda n: st.tuples(
            st.just(n), st.lists(st.integers(0, n - 1), max_size=8), st.integers(0, n - 1)
        )
    ),
    st.integers(0, 10_000),
)
def test_a_flipped_byte_fails_as_the_reference_says(
    case: tuple[int, list[int], int], where: int
) -> None:
    """After any genuine proofs warmed the cache, flipping one byte of a proof (or of the
    leaf) fails the cached check exactly when the reference verifier fails."""
    size, warm, index = case
    leaves, tree, checkpoint = _tree(size)
    checker = InclusionChecker(checkpoint)
    for i in warm:
        checker.check(i, leaves[i], b"".join(tree.inclusion_proof(i)))
    proof = bytearray(b"".join(tree.inclusion_proof(index)))
    leaf = bytearray(leaves[index])
    target = proof if proof and where % 3 else leaf
    target[where % len(target)] ^= 1 << (where % 8)
    hashes = [bytes(proof[i : i + 32]) for i in range(0, len(proof), 32)]
    try:
        verify_inclusion(leaf_hash(bytes(leaf)), index, size, hashes, checkpoint.root_hash)
        reference = True
    except VerificationError:
        reference = False
    assert checker.check(index, bytes(leaf), bytes(proof)) is reference is False


@pytest.mark.parametrize(
    ("index", "proof_len"),
    [(5, 3), (8, 0), (-1, 4)],
    ids=["wrong-length", "past-size", "negative"],
)
def test_malformed_proofs_fail(index: int, proof_len: int) -> None:
    leaves, tree, checkpoint = _tree(8)
    checker = InclusionChecker(checkpoint)
    proof = b"".join(tree.inclusion_proof(0))[: proof_len * 32 - 1]
    assert not checker.check(index, leaves[0], proof)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 600).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_the_export_s_proofs_are_the_ledger_s(case: tuple[int, int]) -> None:
    """ProofMaker's path equals the ledger's reference (MerkleLevels, RFC 9162 §2.1.3.1)."""
    size, index = case
    leaves, tree, _ = _tree(size)
    maker = ProofMaker(hash_leaves(leaves))
    assert maker.inclusion_proof(index) == tree.inclusion_proof(index)


@pytest.mark.parametrize(
    ("index", "size"), [(5, None), (-1, None), (0, 4)], ids=["past", "negative", "other-size"]
)
def test_proofs_outside_the_tree_are_refused(index: int, size: int | None) -> None:
    maker = ProofMaker(hash_leaves([b"a", b"b", b"c", b"d", b"e"]))
    with pytest.raises(OutOfRangeError):
        maker.inclusion_proof(index, size)
