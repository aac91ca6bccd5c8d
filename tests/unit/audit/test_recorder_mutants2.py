"""The audit recorder (audit/recorder.py), pinned where a second mutation run found its tests
blind: the defaults the operator documentation promises, which keys an outcome kept in the
outbox is sealed under (and what is logged when they cannot be had), old JSON evidence
replayed as it is, the replay a commit kicks after a replay left rows, and how a process on
this host is told running or gone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from middleware.audit.evidence import PatientKeys, is_sealed
from middleware.audit.facts import decode_facts
from middleware.audit.outbox import Lease, OpenIntent, OutboxRow
from middleware.audit.plan import plan
from middleware.audit.recorder import AuditRecorder
from middleware.audit.recorder_intents import running as _running
from middleware.audit.recorder_intents import started as _started
from middleware.audit.recorder_outbox import row_mac as _row_mac
from middleware.ledger.leaf import EntryKind, micros, new_pseudonym, new_salt
from middleware.ledger.signing import new_box_key
from middleware.storage.audit_outbox import SqliteOutbox
from tests.unit.audit.test_recorder import (
    CREATE,
    GATEWAY,
    RID,
    WHEN,
    FailingLedger,
    FakeLedger,
    Pseudonyms,
    exchange,
    opened,
    recorder,
)
from tests.unit.audit.test_recorder_mutants import (
    TWO,
    KeepingOutbox,
    Refusing,
    ScriptedOutbox,
    _intent,
    _unavailable_logs,
)

NOW_US = micros(WHEN)

# --- defaults: the values docs/audit.md and docs/security.md state to operators
# (docs/audit.md: "keeps the pseudonyms it has used in memory (the last 100,000 patients) for
# 60 seconds"; docs/security.md: an undecided intent is recorded unknown once "it is an hour
# old"), and the lease and attempts docs/testing.md names: 120 s in flight, 20 attempts.


class Clock:
    """Monotonic seconds, set by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("age", "fetches"),
    [(59.999, 1), (60.0, 2)],
    ids=["59.999s-cached", "60s-fetched-again"],
)
async def test_a_pseudonym_is_cached_60_seconds_by_default(age: float, fetches: int) -> None:
    clock, store = Clock(), Pseudonyms()
    rec = AuditRecorder(FakeLedger(), store, gateway=GATEWAY, clock=clock)
    await rec._pseudonyms(RID, ["Patient/p1"])
    clock.now = age
    await rec._pseudonyms(RID, ["Patient/p1"])
    assert store.calls["Patient/p1"] == fetches


async def test_the_last_100000_pseudonyms_are_cached_by_default() -> None:
    store = Pseudonyms()
    rec = AuditRecorder(FakeLedger(), store, gateway=GATEWAY, clock=Clock())
    patients = [f"Patient/p{n}" for n in range(100_001)]
    await rec._pseudonyms(RID, patients[:100_000])
    await rec._pseudonyms(RID, patients[1:])  # cached but the last: one fetch, p0 evicted
    assert store.calls["Patient/p0"] == 1
    await rec._pseudonyms(RID, patients[1:])
    assert (sum(store.calls.values()), store.calls["Patient/p1"]) == (100_001, 1)
    await rec._pseudonyms(RID, ["Patient/p0"])  # the oldest: gone
    assert store.calls["Patient/p0"] == 2


class LeaseOutbox(ScriptedOutbox):
    """Keeps the leases renewed."""

    def __init__(self) -> None:
        super().__init__()
        self.leases: list[Lease] = []

    async def renew(self, lease: Lease) -> None:
        self.leases.append(lease)


async def test_the_lease_runs_120_seconds_by_default() -> None:
    outbox = LeaseOutbox()
    rec, _ = recorder(FakeLedger(), outbox=outbox)  # wall clock: WHEN
    assert await rec.reconcile(_never) == 0
    assert [lease.expires_us for lease in outbox.leases] == [NOW_US + 120_000_000]


async def _never(probe: str) -> str | None:
    return None


@pytest.mark.parametrize(
    ("intent", "given_up"),
    [
        # this undecided reconcile is the 19th, then the 20th
        (_intent(attempts=18), False),
        (_intent(attempts=19), True),
        # an hour, from created_us
        (_intent(created_us=NOW_US - 3_599_999_999), False),
        (_intent(created_us=NOW_US - 3_600_000_000), True),
    ],
    ids=["attempt-19", "attempt-20", "age-59m59.99s", "age-1h"],
)
def test_an_intent_is_given_up_after_20_attempts_or_an_hour_by_default(
    intent: OpenIntent, given_up: bool
) -> None:
    rec = AuditRecorder(FakeLedger(), Pseudonyms(), gateway=GATEWAY, wall_clock=WHEN.timestamp)
    assert rec._give_up(intent) is given_up


# --- an outcome kept in the outbox: sealed when the key is at hand


async def test_an_outcome_without_a_patient_is_kept_sealed_under_the_no_patient_key() -> None:
    outbox = KeepingOutbox()
    rec, _ = recorder(FailingLedger(ConnectionError()), outbox=outbox)
    write = exchange(CREATE, status=201)  # names no patient
    assert await rec.record(write, "outcome", intent="abc") == []
    (row,) = outbox.rows
    assert (row.pseudonym, row.patient) == (None, None)
    assert is_sealed(row.evidence)
    (planned,) = plan(write, "outcome", NOW_US, GATEWAY)
    assert opened(None, row.salt, row.evidence) == planned.facts


async def test_an_outcome_whose_keys_cannot_be_had_is_kept_unsealed_and_logged() -> None:
    """The key store refuses: the rows keep their pseudonyms and unsealed facts (sealed on
    replay); both attempts (the rows, then the entries) log the request id."""
    outbox = KeepingOutbox()
    keys = PatientKeys(Refusing(OSError()), new_box_key())
    rec, pseudonyms = recorder(FakeLedger(), outbox=outbox, keys=keys)
    write = exchange(CREATE, status=201, decisions=TWO)
    with capture_logs() as logs:
        assert await rec.record(write, "outcome") == []
    assert _unavailable_logs(logs) == [(RID, "OSError"), (RID, "OSError")]
    assert [r.pseudonym for r in outbox.rows] == [
        pseudonyms.known["Patient/p1"],
        pseudonyms.known["Patient/p2"],
    ]
    planned = plan(write, "outcome", NOW_US, GATEWAY)
    assert [decode_facts(r.evidence) for r in outbox.rows] == [p.facts for p in planned]


# --- replay


async def test_a_row_with_old_json_evidence_is_appended_as_it_is_without_an_index_row(
    tmp_path: Path,
) -> None:
    """Rows written before evidence was sealed facts hold a JSON Bundle: replayed unchanged."""
    row_key = new_box_key()
    outbox = SqliteOutbox(str(tmp_path / "outbox"))
    ledger = FakeLedger()
    rec, _ = recorder(ledger, outbox=outbox, row_key=row_key)
    bundle = b'{"resourceType":"Bundle","type":"collection","entry":[]}'
    row = OutboxRow(
        request_id=RID,
        kind=int(EntryKind.ACCESS_OUTCOME),
        recorded_us=NOW_US,
        salt=new_salt(),
        evidence=bundle,
        pseudonym=new_pseudonym(),
        patient=None,
        consent=None,
        flags=0,
        idempotency_key="outcome:old:0",
    )
    await outbox.put([replace(row, mac=_row_mac(row_key, row))])
    assert await rec.replay() == 0
    (entry,) = ledger.entries
    assert (entry.evidence, entry.row, entry.pseudonym) == (bundle, None, row.pseudonym)
    assert rec.dead_lettered == 0
    await rec.aclose()


async def test_rows_left_by_a_replay_are_replayed_after_the_next_commit() -> None:
    outbox = ScriptedOutbox()
    outbox.waiting = 1
    rec, _ = recorder(FakeLedger(), outbox=outbox)
    assert await rec.replay() == 1
    await rec.record(exchange(), "exchange")
    await asyncio.sleep(0)
    assert outbox.calls.count(("pending", None)) == 2  # the kicked background replay
    await rec.aclose()


# --- evidence keys held by the process alone


async def test_private_keys_are_one_per_patient() -> None:
    rec = AuditRecorder(FakeLedger(), Pseudonyms(), gateway=GATEWAY)
    first, second = new_pseudonym(), new_pseudonym()
    assert await rec.keys.key(first) != await rec.keys.key(second)


# --- processes on this host


def test_a_start_time_is_read_past_a_process_name_with_parentheses() -> None:
    """/proc/<pid>/stat puts the name in parentheses and the name may hold ')' itself
    (proc(5)): the fields are read after the last one."""
    comm = Path("/proc/self/comm")
    before, name = _started(os.getpid()), comm.read_text()
    try:
        comm.write_text("a) b) c d")
        renamed = _started(os.getpid())
    finally:
        comm.write_text(name.rstrip("\n"))
    assert before.isdigit()
    assert renamed == before


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield process
    process.kill()
    process.wait()


def test_a_running_process_is_probed_without_a_signal(child: subprocess.Popen[bytes]) -> None:
    """Signal 0 checks the pid only (kill(2)); any other would reach the process."""
    assert _running(child.pid, "")
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(timeout=0.2)  # still running


def test_a_process_gone_is_not_running(child: subprocess.Popen[bytes]) -> None:
    child.kill()
    child.wait()  # reaped: the pid names no process
    assert not _running(child.pid, "")


def test_a_process_of_another_user_is_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """kill(2) answers EPERM for a process that exists but is not ours to signal."""

    def refused(pid: int, signal: int) -> None:
        raise PermissionError(pid)

    monkeypatch.setattr(os, "kill", refused)
    assert _running(12345, "")
