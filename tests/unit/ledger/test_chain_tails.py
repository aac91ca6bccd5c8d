"""A store's memory of its chains (``ChainTails``): what it answers is what the log says.

The model: writers sharing one log, each with its own memory, append batches that commit or
roll back, as SQLite stores in several processes do (``_append`` reads the state, asks its
memory, reads the rest from the log, plans, remembers the plan, then commits or not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.entry import NewEntry, TreeState
from middleware.ledger.leaf import decode_leaf
from middleware.ledger.merkle import CompactRange
from middleware.ledger.sequencer import BatchPlan, ChainTails, distinct_pseudonyms, plan_batch
from tests.contract.helpers import PSEUDONYMS, entry

EMPTY = TreeState.of(CompactRange())


@dataclass
class Log:
    """The committed log: its state and each leaf's pseudonym and ``previous``."""

    state: TreeState = EMPTY
    leaves: list[tuple[bytes | None, int | None]] = field(default_factory=list)
    reads: int = 0

    def last(self, pseudonym: bytes) -> int | None:
        """``SELECT max(idx) ... WHERE pseudonym = ?``."""
        self.reads += 1
        found = [i for i, (p, _) in enumerate(self.leaves) if p == pseudonym]
        return found[-1] if found else None

    def plan(self, tails: ChainTails, batch: list[NewEntry]) -> BatchPlan:
        """``_append``'s steps up to the commit."""
        last, missing = tails.valid_for(self.state).known(distinct_pseudonyms(batch))
        read = {p: self.last(p) for p in missing}
        tails.learn(read)
        last.update((p, i) for p, i in read.items() if i is not None)
        plan = plan_batch(self.state, batch, recorded={}, last_index=last)
        tails.planned(plan)
        return plan

    def commit(self, plan: BatchPlan) -> None:
        for planned in plan.leaves:
            leaf = decode_leaf(planned.leaf)
            self.leaves.append((leaf.pseudonym, leaf.previous))
        self.state = plan.state


def truth(leaves: list[tuple[bytes | None, int | None]]) -> list[int | None]:
    """Each leaf's correct ``previous``: the latest earlier leaf of its pseudonym."""
    last: dict[bytes, int] = {}
    out: list[int | None] = []
    for index, (pseudonym, _) in enumerate(leaves):
        out.append(None if pseudonym is None else last.get(pseudonym))
        if pseudonym is not None:
            last[pseudonym] = index
    return out


_STEP = st.tuples(
    st.integers(0, 2),  # which writer
    st.lists(st.sampled_from([None, *PSEUDONYMS]), min_size=1, max_size=5),
    st.booleans(),  # commits (else the transaction rolls back)
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(_STEP, max_size=30), size=st.integers(1, 4))
def test_writers_sharing_a_log_chain_every_leaf_to_its_pseudonyms_last(
    steps: list[tuple[int, list[bytes | None], bool]], size: int
) -> None:
    """Property: whatever the interleaving, rollbacks and memory size (evictions), every
    committed leaf's ``previous`` is its pseudonym's latest earlier leaf."""
    log = Log()
    writers = [ChainTails(max_size=size) for _ in range(3)]
    n = 0
    for writer, pseudonyms, commits in steps:
        batch = [entry(n + k, pseudonym=p) for k, p in enumerate(pseudonyms)]
        n += len(batch)
        plan = log.plan(writers[writer], batch)
        if commits:
            log.commit(plan)
    assert [previous for _, previous in log.leaves] == truth(log.leaves)


def test_a_writer_alone_reads_each_pseudonym_once() -> None:
    log, tails = Log(), ChainTails()
    a, b = PSEUDONYMS[:2]
    for n in range(5):
        log.commit(log.plan(tails, [entry(2 * n, pseudonym=a), entry(2 * n + 1, pseudonym=b)]))
    assert log.reads == 2
    assert [previous for _, previous in log.leaves] == truth(log.leaves)


def test_another_writers_append_empties_the_memory() -> None:
    log, mine, theirs = Log(), ChainTails(), ChainTails()
    a = PSEUDONYMS[0]
    log.commit(log.plan(mine, [entry(0, pseudonym=a)]))
    log.commit(log.plan(theirs, [entry(1, pseudonym=a)]))
    reads = log.reads
    log.commit(log.plan(mine, [entry(2, pseudonym=a)]))
    assert log.reads == reads + 1, "read again from the log"
    assert [previous for _, previous in log.leaves] == [None, 0, 1]


def test_a_rolled_back_plan_of_the_same_size_is_not_trusted() -> None:
    """Rolled back, then another writer commits as many leaves: same size, other root."""
    log, mine, theirs = Log(), ChainTails(), ChainTails()
    a, b = PSEUDONYMS[:2]
    log.commit(log.plan(mine, [entry(0, pseudonym=a)]))
    log.plan(mine, [entry(1, pseudonym=a)])  # rolled back: a's last would be 1
    log.commit(log.plan(theirs, [entry(2, pseudonym=b)]))
    log.commit(log.plan(mine, [entry(3, pseudonym=a)]))
    assert [previous for _, previous in log.leaves] == [None, None, 0]


def test_a_memory_of_no_size_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        ChainTails(max_size=0)
