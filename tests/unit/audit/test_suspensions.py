"""45 CFR 164.528(a)(2) suspensions: recorded by ``consentry audit suspend`` as admin ledger
entries, read back from the ledger, honoured by ``consentry audit accounting``."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest

from middleware.audit.accounting import Suspension, years_before
from middleware.audit.cli_common import now_us
from middleware.audit.suspensions import (
    SuspensionLog,
    lift_evidence,
    parse_suspensions,
    still_needed,
    suspension_evidence,
)
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_memory import MemoryLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import KEY, ORIGIN
from tests.unit.audit.test_cli import COUNT, Setup, setup  # noqa: F401  (the fixture)
from tests.unit.audit.test_retention import OLD, filled, retention  # noqa: F401
from tests.unit.audit.test_retention import ORIGIN as RORIGIN

DAY = 86_400_000_000
T = 1_800_000_000_000_000
AGENCY = "Organization/police"


def _suspend(end_us: int, *, oral: bool = False, agency: str = AGENCY) -> bytes:
    return suspension_evidence(agency=agency, end_us=end_us, oral=oral, reason="r", operator="o")


# --- parse_suspensions: (index, recorded_us, evidence) -> Suspension ---------------------------
PARSED = [
    ([(3, T, _suspend(T + DAY))], [Suspension(T, T + DAY, AGENCY, "r", 3)]),
    ([(3, T, _suspend(T + DAY, oral=True))], [Suspension(T, T + DAY, AGENCY, "r", 3, oral=True)]),
    (  # lifted half a day in
        [
            (3, T, _suspend(T + DAY)),
            (4, T + DAY // 2, lift_evidence(suspension=3, reason="x", operator="o")),
        ],
        [Suspension(T, T + DAY // 2, AGENCY, "r", 3)],
    ),
    ([(4, T, lift_evidence(suspension=3, reason="x", operator="o"))], []),  # lifts nothing
    ([(3, T, b'{"type":"consentry/audit-shred","reason":"x","operator":"o"}')], []),
    ([(3, T, b"\xff not json")], []),
    (
        [
            (
                3,
                T,
                b'{"type":"consentry/audit-suspension","agency":"","end_us":1,"oral":false,"reason":"r"}',
            )
        ],
        [],
    ),
    (
        [
            (
                3,
                T,
                b'{"type":"consentry/audit-suspension","agency":"A","end_us":"1","oral":false,"reason":"r"}',
            )
        ],
        [],
    ),
]


@pytest.mark.parametrize(
    ("entries", "expected"),
    PARSED,
    ids=[
        "written",
        "oral",
        "lifted",
        "lift-of-nothing",
        "shred-entry",
        "not-json",
        "no-agency",
        "end-not-int",
    ],
)
def test_parse_suspensions(
    entries: list[tuple[int, int, bytes]], expected: list[Suspension]
) -> None:
    assert parse_suspensions(entries) == expected


async def test_the_log_reads_admin_entries_only_and_only_new_ones() -> None:
    store = MemoryLogStore()
    sign = checkpoint_signer(KEY, ORIGIN)
    log = SuspensionLog()
    other = NewEntry.create(EntryKind.ADMIN, b'{"type":"consentry/audit-retention"}', recorded_us=T)
    await store.append([other], sign=sign)
    assert await log.current(store) == []
    first = NewEntry.create(EntryKind.ADMIN, _suspend(T + DAY), recorded_us=T)
    (done,) = await store.append([first], sign=sign)
    assert await log.current(store) == [Suspension(T, T + DAY, AGENCY, "r", done.index)]
    lift = lift_evidence(suspension=done.index, reason="x", operator="o")
    await store.append([NewEntry.create(EntryKind.ADMIN, lift, recorded_us=T + 5)], sign=sign)
    assert await log.current(store) == [Suspension(T, T + 5, AGENCY, "r", done.index)]


# --- end to end: consentry audit suspend, then consentry audit accounting ----------------------


def _listed(run: Setup) -> list[tuple[int, str]]:
    status, text = run.run(
        "audit",
        "accounting",
        "--store",
        run.store,
        "--patient",
        "Patient/a",
        "--detail",
        "--key-file",
        str(run.key),
    )
    assert status == 0
    return sorted(
        (int(r["ledger_index"]), r["recipient"]) for r in csv.DictReader(io.StringIO(text))
    )


def test_a_suspension_hides_the_agency_s_disclosures_until_lifted(setup: Setup) -> None:  # noqa: F811
    before = _listed(setup)
    agency = before[0][1]
    hidden = [i for i, who in before if who == agency]  # Practitioner/pr-3: n % 4 == 3
    assert hidden
    assert len(hidden) < len(before)
    status, text = setup.run(
        "audit",
        "suspend",
        "--store",
        setup.store,
        "--key-file",
        str(setup.key),
        "--agency",
        agency,
        "--until",
        "2099-12-31",
        "--reason",
        "investigation",
        "--operator",
        "officer",
    )
    assert status == 0, text
    entry = json.loads(text)["admin_entry"]
    assert entry == COUNT
    assert [i for i, _ in _listed(setup)] == sorted({i for i, _ in before} - set(hidden))
    status, text = setup.run(
        "audit",
        "suspend",
        "--store",
        setup.store,
        "--key-file",
        str(setup.key),
        "--lift",
        str(entry),
        "--reason",
        "investigation over",
    )
    assert status == 0, text
    assert _listed(setup) == before


# --- retention keeps a suspension the agency's time has not run out for -------------------------
YEAR = 365 * DAY
NEEDED = [
    ([(3, T, _suspend(T + YEAR))], {3}),
    ([(3, T - 2 * YEAR, _suspend(T - YEAR))], set()),  # over: may go
    (
        [(3, T, _suspend(T + YEAR)), (4, T, lift_evidence(suspension=3, reason="x", operator="o"))],
        {3, 4},
    ),
    ([(4, T, lift_evidence(suspension=3, reason="x", operator="o"))], set()),
    ([(3, T, b'{"type":"consentry/audit-shred"}')], set()),
]


@pytest.mark.parametrize(
    ("entries", "kept"), NEEDED, ids=["ahead", "over", "lifted", "lift-of-nothing", "other"]
)
def test_still_needed(entries: list[tuple[int, int, bytes]], kept: set[int]) -> None:
    assert still_needed(entries, as_of_us=T) == kept


def test_retention_keeps_the_evidence_of_a_suspension_still_in_force(
    filled: Path,  # noqa: F811
) -> None:
    now = now_us()

    async def suspend() -> None:
        store = await SqliteLogStore.open(filled / "audit.db")
        sign = checkpoint_signer(SigningKey.from_seed(RORIGIN, bytes(range(32))), RORIGIN)
        try:
            for end in (now + YEAR, now - YEAR):  # ten years long, and one over
                entry = NewEntry.create(
                    EntryKind.ADMIN, _suspend(end), recorded_us=years_before(now, 2)
                )
                await store.append([entry], sign=sign)
        finally:
            await store.close()

    asyncio.run(suspend())
    config = filled / "consentry.toml"
    config.write_text('upstream = "http://127.0.0.1:1/fhir"\naudit_retention_by_kind = "admin=1"\n')
    status, report = retention(filled, "--config", str(config))
    assert status == 0
    assert report["entries"] == {
        "access-decision": 0, "access-outcome": 0, "disclosure": OLD, "admin": 1
    }  # fmt: skip
