"""Replay.feed_rows, the replay's one-loop path, against the step-by-step checks it replaces.

The reference is the replay as it was before the loop (a Leaf decoded and a CompactRange
extended per row), kept here: on random logs with random edits (a row's index, bytes, stored
hash, pseudonym column; a checkpoint's root or note; the state row) both must end with the same
outcome or refuse with the same error. ``leaf_link``, the leaf check the loop calls, must
accept exactly the bytes the loop's earlier reader (``chain_fields``, kept in
``leaf_reference``) and ``decode_leaf`` accepted, and read the same fields.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.entry import StoredCheckpoint, TreeState
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.leaf import LEAF_SIZE, NO_INDEX, EntryKind, leaf_link
from middleware.ledger.merkle import CompactRange, leaf_hash
from middleware.ledger.replay import LeafRow, Outcome, Replay
from middleware.ledger.sequencer import check_checkpoint_note, plan_batch, sign_state
from tests.contract.helpers import PSEUDONYMS, SIGN, entry
from tests.unit.ledger.leaf_reference import reference_chain_fields, reference_decode_leaf


class _ReferenceReplay:
    """The replay before :meth:`Replay.feed_rows` (verbatim but for the class name and the
    leaf reader: ``decode_leaf`` as it was then, ``leaf_reference``)."""

    def __init__(self, checkpoints: Iterable[StoredCheckpoint]) -> None:
        self._compact = CompactRange()
        self._last: dict[bytes, int] = {}
        self._checkpoints = {c.size: c for c in checkpoints}
        if 0 in self._checkpoints:
            self._check_checkpoint(self._checkpoints[0])

    def feed(self, index: int, leaf: bytes, stored_hash: bytes, pseudonym: bytes | None) -> None:
        if index != self._compact.size:
            raise VerificationError(
                "leaf indexes are not contiguous", expected=self._compact.size, computed=index
            )
        computed = leaf_hash(leaf)
        if not hmac.compare_digest(computed, stored_hash):
            raise VerificationError(
                f"stored hash of leaf {index} does not match its bytes",
                expected=stored_hash,
                computed=computed,
            )
        try:
            decoded = reference_decode_leaf(leaf)
        except MalformedError as exc:
            raise VerificationError(f"leaf {index} is malformed: {exc}") from exc
        if decoded.pseudonym != pseudonym:
            raise VerificationError(f"pseudonym column of leaf {index} differs from the leaf")
        if decoded.pseudonym is not None:
            expected_previous = self._last.get(decoded.pseudonym)
            if decoded.previous != expected_previous:
                raise VerificationError(
                    f"leaf {index} breaks its pseudonym chain",
                    expected=expected_previous,
                    computed=decoded.previous,
                )
            self._last[decoded.pseudonym] = index
        self._compact.append(computed)
        size = self._compact.size
        if size in self._checkpoints:
            self._check_checkpoint(self._checkpoints[size])

    def finish(self, stored: TreeState | None) -> Outcome:
        replayed = TreeState.of(self._compact)
        beyond = [s for s in self._checkpoints if s > replayed.size]
        if beyond:
            raise VerificationError(
                "a checkpoint is beyond the stored leaves",
                expected=replayed.size,
                computed=max(beyond),
            )
        unsigned = replayed.size not in self._checkpoints
        if stored is None:
            return Outcome(replayed, rebuilt=True, unsigned=unsigned)
        if stored.size > replayed.size:
            raise VerificationError(
                "tree state is ahead of the leaves", expected=replayed.size, computed=stored.size
            )
        if stored.size < replayed.size:
            return Outcome(replayed, rebuilt=True, unsigned=unsigned)
        if stored.hashes != replayed.hashes or not hmac.compare_digest(stored.root, replayed.root):
            raise VerificationError(
                "stored tree state does not match the leaves",
                expected=replayed.root,
                computed=stored.root,
            )
        return Outcome(replayed, rebuilt=False, unsigned=unsigned)

    def _check_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        computed = self._compact.root()
        if not hmac.compare_digest(checkpoint.root, computed):
            raise VerificationError(
                f"checkpoint for size {checkpoint.size} has another root than the leaves",
                expected=checkpoint.root,
                computed=computed,
            )
        try:
            check_checkpoint_note(checkpoint.note, checkpoint.size, checkpoint.root)
        except MalformedError as exc:
            raise VerificationError(f"checkpoint note for size {checkpoint.size}: {exc}") from exc


# -- leaf_link against chain_fields and decode_leaf -----------------------------------------

_VALID = [entry(n, pseudonym=p).leaf_bytes(None) for n, p in enumerate([None, *PSEUDONYMS])]
_LINKED = [entry(n, pseudonym=PSEUDONYMS[0]).leaf_bytes(n - 1) for n in range(1, 4)]


@st.composite
def _leaf_bytes(draw: st.DrawFn) -> bytes:
    """Valid leaves with a few bytes overwritten where the checks look (tag, version, kind,
    flags, pseudonym, previous), and random bytes of any length."""
    if draw(st.booleans()):
        return draw(st.binary(min_size=0, max_size=LEAF_SIZE + 2))
    data = bytearray(draw(st.sampled_from(_VALID + _LINKED)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.sampled_from([0, 3, 4, 5, 6, 7, 16, 31, 32, 39, 40, 47, 48, 79]))
        data[at] = draw(st.sampled_from([0, 1, 7, 8, 0x80, 0xFF, *b"CSRY"]))
    if draw(st.booleans()):  # no patient, with or without a chain link
        data[16:32] = bytes(16)
    if draw(st.booleans()):
        data[32:40] = struct.pack(">Q", draw(st.sampled_from([0, 5, NO_INDEX, NO_INDEX - 1])))
    return bytes(data)


def _link(data: bytes) -> tuple[bytes | None, int] | None:
    """leaf_link in chain_fields' terms: None for a refused leaf, NO_INDEX for no link."""
    try:
        pseudonym, previous = leaf_link(data)
    except MalformedError:
        return None
    return pseudonym, NO_INDEX if previous is None else previous


@settings(max_examples=1500)
@given(_leaf_bytes())
def test_leaf_link_accepts_what_chain_fields_and_decode_leaf_accepted(data: bytes) -> None:
    try:
        leaf = reference_decode_leaf(data)
    except MalformedError as exc:
        reason = str(exc)
    else:
        previous = NO_INDEX if leaf.previous is None else leaf.previous
        assert reference_chain_fields(data) == _link(data) == (leaf.pseudonym, previous)
        return
    assert reference_chain_fields(data) is None
    with pytest.raises(MalformedError) as caught:
        leaf_link(data)
    assert str(caught.value) == reason


def test_leaf_link_refuses_each_kind_of_bad_leaf() -> None:
    good = _VALID[1]
    for bad in (
        good[:-1],
        good + b"\x00",
        b"XSRY" + good[4:],
        good[:4] + b"\x02" + good[5:],
        good[:5] + b"\x00" + good[6:],
        good[:5] + bytes([max(EntryKind) + 1]) + good[6:],
        good[:6] + b"\x00\x08" + good[8:],
        _VALID[0][:32] + struct.pack(">Q", 0) + _VALID[0][40:],
    ):
        assert reference_chain_fields(bad) is None
        assert _link(bad) is None


# -- the replay against the reference -------------------------------------------------------


def _log(
    batches: list[list[int]],
) -> tuple[list[LeafRow], list[StoredCheckpoint], TreeState]:
    """A log of ``batches`` (each a list of patient numbers, 0: no patient), checkpointed
    after each batch."""
    state = TreeState.of(CompactRange())
    rows: list[LeafRow] = []
    checkpoints = [sign_state(SIGN, state)]
    last: dict[bytes, int] = {}
    n = 0
    for patients in batches:
        batch = []
        for p in patients:
            batch.append(entry(n, pseudonym=PSEUDONYMS[p - 1] if p else None))
            n += 1
        plan = plan_batch(state, batch, recorded={}, last_index=last)
        for row in plan.leaves:
            rows.append((row.index, row.leaf, row.leaf_hash, row.pseudonym))
            if row.pseudonym:
                last[row.pseudonym] = row.index
        state = plan.state
        checkpoints.append(sign_state(SIGN, state))
    return rows, checkpoints, state


_OTHER = entry(99, pseudonym=PSEUDONYMS[1]).leaf_bytes(None)


@st.composite
def _edited_log(
    draw: st.DrawFn,
) -> tuple[list[LeafRow], list[StoredCheckpoint], TreeState | None]:
    batches = draw(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4), max_size=5))
    rows, checkpoints, state = _log(batches)
    stored: TreeState | None = state
    for _ in range(draw(st.integers(0, 2))):
        what = draw(st.sampled_from(["row", "checkpoint", "state", "drop"]))
        if what == "row" and rows:
            at = draw(st.integers(0, len(rows) - 1))
            index, leaf, hashed, column = rows[at]
            changes = ["index", "leaf", "leaf+hash", "hash", "column", "relink"]
            change = draw(st.sampled_from(changes))
            if change == "index":
                index = draw(st.integers(0, len(rows) + 1))
            elif change in ("leaf", "leaf+hash"):
                leaf = draw(st.sampled_from([_OTHER, b"short", *_LINKED, *_VALID]))
                if change == "leaf+hash":
                    hashed = leaf_hash(leaf)
            elif change == "hash":
                hashed = leaf_hash(b"x")
            elif change == "relink":  # the same patient, another previous entry: a valid leaf
                previous = draw(st.sampled_from([None, *range(len(rows))]))
                leaf = entry(at, pseudonym=column).leaf_bytes(previous if column else None)
                hashed = leaf_hash(leaf)
            else:
                column = draw(st.sampled_from([None, *PSEUDONYMS[:3]]))
            rows[at] = (index, leaf, hashed, column)
        elif what == "checkpoint" and checkpoints:
            at = draw(st.integers(0, len(checkpoints) - 1))
            c = checkpoints[at]
            other = draw(st.sampled_from(checkpoints))
            checkpoints[at] = draw(
                st.sampled_from(
                    [
                        StoredCheckpoint(c.size, other.root, c.note),
                        StoredCheckpoint(c.size, c.root, other.note),
                        StoredCheckpoint(c.size + 100, c.root, c.note),
                    ]
                )
            )
        elif what == "state":
            stored = draw(st.sampled_from([None, TreeState.of(CompactRange())]))
        elif rows:
            del rows[draw(st.integers(0, len(rows) - 1)) :]
    return rows, checkpoints, stored


def _run(
    make: type[Replay | _ReferenceReplay],
    checkpoints: list[StoredCheckpoint],
    rows: list[LeafRow],
    stored: TreeState | None,
    *,
    loop: bool,
) -> object:
    """The outcome, or the refusal as (type, text, expected, computed)."""
    try:
        replay = make(checkpoints)
        if loop and isinstance(replay, Replay):
            replay.feed_rows(iter(rows))
        else:
            for row in rows:
                replay.feed(*row)
        outcome = replay.finish(stored)
    except (VerificationError, MalformedError) as exc:
        expected = getattr(exc, "expected", None)
        computed = getattr(exc, "computed", None)
        return (type(exc).__name__, str(exc), expected, computed)
    return outcome


@settings(max_examples=400, deadline=None)
@given(_edited_log())
def test_feed_rows_ends_or_refuses_as_the_reference_does(
    log: tuple[list[LeafRow], list[StoredCheckpoint], TreeState | None],
) -> None:
    rows, checkpoints, stored = log
    reference = _run(_ReferenceReplay, checkpoints, rows, stored, loop=False)
    assert _run(Replay, checkpoints, rows, stored, loop=True) == reference
    assert _run(Replay, checkpoints, rows, stored, loop=False) == reference


def test_an_honest_log_of_many_batches_replays_to_its_state() -> None:
    rows, checkpoints, state = _log([[1, 0, 2], [3], [1, 1, 1, 0], [2] * 9])
    replay = Replay(checkpoints)
    replay.feed_rows(rows[:5])
    replay.feed_rows(rows[5:])
    assert replay.finish(state) == Outcome(state, rebuilt=False, unsigned=False)


class _AcceptingFeed(Replay):
    """A replay whose single-row check accepts everything and adds nothing (a stand-in for a
    ``feed`` that stopped raising): the loop must not add the rows it handed to it."""

    handed: tuple[int, ...] = ()

    def feed(self, index: int, leaf: bytes, stored_hash: bytes, pseudonym: bytes | None) -> None:
        self.handed = (*self.handed, index)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda r: (r[0] + 1, r[1], r[2], r[3]), id="index"),
        pytest.param(lambda r: (r[0], r[1], bytes(32), r[3]), id="stored-hash"),
        pytest.param(lambda r: (r[0], b"short", leaf_hash(b"short"), r[3]), id="malformed-leaf"),
    ],
)
def test_feed_rows_never_adds_a_row_it_handed_to_feed(edit: Callable[[LeafRow], LeafRow]) -> None:
    """Each refused row goes to ``feed`` and the loop moves on, whatever ``feed`` does."""
    rows, checkpoints, _ = _log([[0]])
    replay = _AcceptingFeed(checkpoints[:1])
    replay.feed_rows([edit(rows[0])])
    assert len(replay.handed) == 1
    assert replay.finish(None).state.size == 0
