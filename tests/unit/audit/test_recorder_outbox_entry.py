"""A write's outcome appended straight away is made from the facts its rows were sealed from,
not by opening them again (recorder_outbox ``_entry(made_of=...)``): the entries are the ones
the replay's path (open, then index) makes from the same rows."""

from __future__ import annotations

import pytest

from middleware.audit.plan import plan
from middleware.ledger.leaf import micros_at
from tests.unit.audit.test_recorder import (
    CREATE,
    GATEWAY,
    PERMIT,
    WHEN,
    FakeLedger,
    exchange,
    recorder,
)


@pytest.mark.parametrize(
    "decisions",
    [
        {},
        {"Patient/p1": PERMIT},
        {"Patient/p1": PERMIT, "Patient/p2": None},
    ],
    ids=["no-patient", "one-patient", "two-patients"],
)
@pytest.mark.parametrize("status", [201, 500], ids=["applied", "failed"])
async def test_an_entry_from_its_facts_is_the_entry_opened_from_its_row(
    decisions: dict[str, object], status: int
) -> None:
    rec, _ = recorder(FakeLedger())
    x = exchange(CREATE, decisions=decisions, status=status, resource_refs=("Observation/o1",))
    plans = plan(x, "outcome", micros_at(WHEN.timestamp()), GATEWAY)
    for p in plans:
        if p.facts.patient:
            await rec._pseudonyms(x.request_id, [p.facts.patient])
    rows = await rec._rows(plans, x.request_id, "batch-1")
    for row, p in zip(rows, plans, strict=True):
        assert row.patient is None  # every pseudonym and key at hand: sealed rows
        opened = await rec._entry(row, row.pseudonym)
        made = await rec._entry(row, row.pseudonym, p.facts)
        assert made == opened
        assert made.row == opened.row  # the index row (not compared by NewEntry's __eq__)
