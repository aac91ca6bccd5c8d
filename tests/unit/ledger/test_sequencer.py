"""Sequencing a batch (pure): indexes, duplicates, chains, the new state, and signing checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.entry import NewEntry, TreeState
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.leaf import SALT_SIZE, EntryKind, decode_leaf
from middleware.ledger.merkle import CompactRange, leaf_hash, root
from middleware.ledger.sequencer import (
    distinct_keys,
    distinct_pseudonyms,
    plan_batch,
    sign_state,
)
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from tests.contract.helpers import PSEUDONYMS, SIGN, entry

EMPTY = TreeState.of(CompactRange())


def test_indexes_continue_from_the_state() -> None:
    compact = CompactRange()
    compact.extend([leaf_hash(b"a"), leaf_hash(b"b")])
    plan = plan_batch(TreeState.of(compact), [entry(0), entry(1)], recorded={}, last_index={})
    assert [row.index for row in plan.leaves] == [2, 3]
    assert [(r.index, r.size) for r in plan.results] == [(2, 4), (3, 4)]
    planned = [row.leaf_hash for row in plan.leaves]
    assert plan.state.root == root([leaf_hash(b"a"), leaf_hash(b"b"), *planned])


def test_recorded_and_repeated_keys_are_duplicates_that_write_nothing() -> None:
    batch = [entry(0, key="old"), entry(1, key="new"), entry(2, key="new"), entry(3)]
    plan = plan_batch(EMPTY, batch, recorded={"old": 7}, last_index={})
    assert [(r.index, r.duplicate) for r in plan.results] == [
        (7, True),
        (0, False),
        (0, True),
        (1, False),
    ]
    assert [row.idempotency_key for row in plan.leaves] == ["new", None]


def test_previous_comes_from_the_log_then_from_the_batch() -> None:
    a, b = PSEUDONYMS[:2]
    batch = [entry(0, pseudonym=a), entry(1, pseudonym=b), entry(2, pseudonym=a)]
    plan = plan_batch(EMPTY, batch, recorded={}, last_index={a: 41})
    assert [decode_leaf(row.leaf).previous for row in plan.leaves] == [41, None, 0]


def test_distinct_keys_and_pseudonyms_keep_first_seen_order() -> None:
    a, b = PSEUDONYMS[:2]
    batch = [entry(0, key="y", pseudonym=b), entry(1, key="x", pseudonym=a), entry(2, key="y")]
    assert distinct_keys(batch) == ["y", "x"]
    assert distinct_pseudonyms(batch) == [b, a]


def test_sign_state_accepts_the_right_note_only() -> None:
    state = plan_batch(EMPTY, [entry(0)], recorded={}, last_index={}).state
    assert sign_state(SIGN, state).size == 1
    with pytest.raises(VerificationError, match="size"):
        sign_state(lambda size, r: SIGN(size + 1, r), state)
    with pytest.raises(VerificationError, match="root"):
        sign_state(lambda size, r: SIGN(size, bytes(32)), state)
    with pytest.raises(MalformedError):
        sign_state(lambda size, r: "not a note", state)


class _Exact:
    """A signer that claims ``exact_body`` (as ``checkpoint_signer``'s does) but signs what
    ``change`` makes of the size and root: the claim must not let a wrong note through."""

    exact_body = True

    def __init__(self, change: Callable[[int, bytes], tuple[int, bytes]]) -> None:
        self._change = change

    def __call__(self, size: int, root: bytes) -> str:
        return SIGN(*self._change(size, root))


def test_a_signer_claiming_an_exact_body_is_still_held_to_the_size_and_root() -> None:
    """The quick check of an ``exact_body`` signer compares the note's size and root lines;
    a note for another size or root is still refused with the full check's error, and the
    note the writer's own signer makes is stored as the full check would store it."""
    state = plan_batch(EMPTY, [entry(0)], recorded={}, last_index={}).state
    assert sign_state(_Exact(lambda size, r: (size, r)), state) == sign_state(SIGN, state)
    with pytest.raises(VerificationError, match="size"):
        sign_state(_Exact(lambda size, r: (size + 1, r)), state)
    with pytest.raises(VerificationError, match="root"):
        sign_state(_Exact(lambda size, r: (size, bytes(32))), state)
    key = SigningKey.from_seed("example.com/log", bytes(32))
    ours = checkpoint_signer(key, "example.com/log")
    assert getattr(ours, "exact_body", False) is True

    def parsed(size: int, root: bytes) -> str:  # no exact_body: checked the full way
        return ours(size, root)

    assert sign_state(ours, state).note == sign_state(parsed, state).note


# --- NewEntry and TreeState validate on construction ----------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"salt": b"short"}, "salt"),
        ({"idempotency_key": ""}, "idempotency"),
        ({"idempotency_key": "x" * 201}, "idempotency"),
        ({"idempotency_key": "line\nbreak"}, "idempotency"),
        ({"pseudonym": bytes(16)}, "pseudonym"),
        ({"recorded_us": -1}, "recorded"),
    ],
    ids=["salt", "empty-key", "long-key", "newline-key", "zero-pseudonym", "negative-time"],
)
def test_new_entry_rejects_bad_values(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "kind": EntryKind.ADMIN,
        "recorded_us": 0,
        "salt": bytes(SALT_SIZE),
        "evidence": b"e",
    }
    fields.update(changes)
    with pytest.raises(MalformedError, match=message):
        NewEntry(**fields)  # type: ignore[arg-type]


def test_tree_state_round_trips_through_its_packed_form() -> None:
    compact = CompactRange()
    compact.extend(leaf_hash(bytes([n])) for n in range(11))
    state = TreeState.of(compact)
    assert TreeState.unpack(11, state.packed_hashes(), state.root) == state
    with pytest.raises(MalformedError):
        TreeState.unpack(12, state.packed_hashes(), state.root)


# --- property: planning batch after batch is one growing RFC 9162 tree ----------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6)), max_size=6),
        max_size=6,
    )
)
def test_planned_batches_extend_one_tree(batches: list[list[tuple[int, int]]]) -> None:
    """Pseudonym 0 = none and key 0 = none; otherwise small ranges so they repeat."""
    state, hashes = EMPTY, list[bytes]()
    keys: dict[str, int] = {}
    last: dict[bytes, int] = {}
    for n, batch in enumerate(batches):
        entries = [
            entry(n, pseudonym=PSEUDONYMS[p - 1] if p else None, key=f"k{k}" if k else None)
            for p, k in batch
        ]
        plan = plan_batch(state, entries, recorded=keys, last_index=last)
        for row in plan.leaves:
            assert row.index == len(hashes)
            hashes.append(row.leaf_hash)
            if row.idempotency_key:
                keys[row.idempotency_key] = row.index
            if row.pseudonym:
                assert decode_leaf(row.leaf).previous == last.get(row.pseudonym)
                last[row.pseudonym] = row.index
        for e, result in zip(entries, plan.results, strict=True):
            if e.idempotency_key:
                assert result.index == keys[e.idempotency_key]
        state = plan.state
        assert state.root == root(hashes)
