"""The audit outbox shared by processes: whose intents a reconcile may settle (leases), which
rows a replay may append (MAC, kinds, dead letters), and intents or rows that would keep a
replica unready for ever."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from middleware.audit.outbox import Lease
from middleware.audit.recorder import AuditRecorder
from middleware.audit.recorder_outbox import row_mac as _row_mac
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.storage.audit_outbox import SqliteOutbox
from tests.unit.audit.test_recorder import (
    CREATE,
    GATEWAY,
    KEYS,
    WHEN,
    Pseudonyms,
    events,
    exchange,
)

PROBE = '{"method":"POST","type":"Observation","tag":"x"}'
KEY = bytes(range(32))


class KeyedLedger:
    """The LogStore contract: a known idempotency key returns its first index."""

    def __init__(self) -> None:
        self.entries: list[NewEntry] = []
        self.keys: dict[str, int] = {}

    async def append(self, entry: NewEntry) -> int:
        if entry.idempotency_key in self.keys:
            return self.keys[entry.idempotency_key]
        self.entries.append(entry)
        if entry.idempotency_key:
            self.keys[entry.idempotency_key] = len(self.entries) - 1
        return len(self.entries) - 1


class Clock:
    def __init__(self) -> None:
        self.now = WHEN.timestamp()

    def __call__(self) -> float:
        return self.now


def variants() -> dict[str, object]:
    return {
        n: exchange(CREATE, status=s)
        for n, s in (("applied", 201), ("absent", 504), ("unknown", 502))
    }


def outcomes(ledger: KeyedLedger) -> list[tuple[EntryKind, bool, bool]]:
    """(kind, PERMIT, evidence says 504) of each entry."""
    return [
        (
            EntryKind(e.kind),
            bool(e.flags & EntryFlag.PERMIT),
            any(event.get("outcomeDesc") == "HTTP 504" for event in events(e)),
        )
        for e in ledger.entries
    ]


def http_status(entry: NewEntry) -> str | None:
    """The ``outcomeDesc`` of the entry's last rendered event (``HTTP <status>`` on failure)."""
    desc = events(entry)[-1].get("outcomeDesc")
    return None if desc is None else str(desc)


async def never_asked(_probe: str) -> str | None:
    raise AssertionError("a write in flight must not be probed")


async def absent(_probe: str) -> str | None:
    return "absent"


async def undecided(_probe: str) -> str | None:
    return None


async def test_another_processs_readiness_never_settles_a_write_in_flight(tmp_path: Path) -> None:
    """Two gateways share one outbox file (the default path beside a shared SQLite store).
    A forwards a create; B's /readyz reconcile runs before the upstream applied it, so the
    probe would find no tag and B would record "absent" (504, no PERMIT) under the keys A's
    real 201 outcome uses: the ledger would say a write the client saw succeed never
    happened. B must leave A's intent alone while A holds it."""
    path = str(tmp_path / "consentry.db.outbox")
    ledger, pseudonyms = KeyedLedger(), Pseudonyms()
    a = AuditRecorder(
        ledger,
        pseudonyms,
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(path),
    )
    b = AuditRecorder(
        ledger,
        pseudonyms,
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(path),
    )
    intent = await a.intend(variants(), PROBE)  # type: ignore[arg-type]

    assert await b.reconcile(absent) == 0  # not B's to decide, nor waiting for B
    await a.record(exchange(CREATE, status=201), "outcome", intent=intent)

    assert outcomes(ledger) == [(EntryKind.ACCESS_OUTCOME, True, False)]
    await a.aclose()
    await b.aclose()


async def test_an_intent_is_reconciled_by_another_process_once_its_owners_lease_lapsed(
    tmp_path: Path,
) -> None:
    """A gateway that stops answering (hung, partitioned, its host gone) must not block
    reconciliation for ever: once its lease lapsed, the other process sharing the file
    decides its intent, and replays the rows A MACed (the same ledger key)."""
    path = str(tmp_path / "outbox")
    clock, ledger, pseudonyms = Clock(), KeyedLedger(), Pseudonyms()

    def recorder() -> AuditRecorder:
        return AuditRecorder(
            ledger,
            pseudonyms,
            gateway=GATEWAY,
            keys=KEYS,
            wall_clock=clock,
            outbox=SqliteOutbox(path),
            live_for=60.0,
            row_key=KEY,
        )

    a, b = recorder(), recorder()
    await a.intend(variants(), PROBE)  # type: ignore[arg-type]
    clock.now += 59
    assert await b.reconcile(never_asked) == 0
    assert ledger.entries == []
    clock.now += 2  # A's lease (60 s from its intent) has lapsed; A never renewed it
    assert await b.reconcile(absent) == 0
    assert outcomes(ledger) == [(EntryKind.ACCESS_OUTCOME, False, True)]
    await a.aclose()
    await b.aclose()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(dead.stdout)


async def test_an_intent_of_a_process_that_no_longer_runs_is_reconciled_at_once(
    tmp_path: Path,
) -> None:
    """A gateway killed (kill -9) and restarted on the same host: its successor need not wait
    for the dead process's lease to lapse, the process is gone."""
    path = str(tmp_path / "outbox")
    pid = _dead_pid()
    ledger = KeyedLedger()
    a = AuditRecorder(
        ledger,
        Pseudonyms(),
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(path),
        row_key=KEY,
    )
    await a.intend(variants(), PROBE)  # type: ignore[arg-type]
    a_outbox = a.outbox
    assert isinstance(a_outbox, SqliteOutbox)
    (intent,) = await a_outbox.open_intents()
    assert intent.lease is not None
    # The file as the dead process left it: its lease names it (and runs for an hour more).
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "UPDATE lease SET pid = ?, started = '1', expires_us = expires_us + 3600000000", (pid,)
        )
    db.close()
    b = AuditRecorder(
        ledger,
        Pseudonyms(),
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(path),
        row_key=KEY,
    )
    assert await b.reconcile(absent) == 0
    assert outcomes(ledger) == [(EntryKind.ACCESS_OUTCOME, False, True)]
    await a.aclose()
    await b.aclose()


def _plant(path: str, kind: int, evidence: bytes) -> None:
    """What an attacker with write access to the outbox file adds: a pending row, no MAC."""
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "INSERT INTO outbox (request_id, kind, recorded_us, salt, evidence, pseudonym,"
            " patient, consent, flags, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("rid-x", kind, 1, b"\0" * 16, evidence, b"\1" * 16, None, None, 1, "outcome:x:0"),
        )
    db.close()


@pytest.mark.parametrize("kind", [EntryKind.CONSENT, EntryKind.ACCESS_OUTCOME], ids=str)
async def test_a_row_planted_in_the_outbox_file_is_dead_lettered_never_replayed(
    tmp_path: Path, kind: EntryKind
) -> None:
    """Write access to the outbox file must not mean signed ledger entries: a planted CONSENT
    row would be replayed and then enforced by every replica's registry. Rows without a
    valid MAC (under a key only the ledger key's holder derives) are moved to the dead
    letters and logged, and the outbox is empty again (the replica ready)."""
    path = str(tmp_path / "outbox")
    ledger = KeyedLedger()
    recorder = AuditRecorder(
        ledger,
        Pseudonyms(),
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(path),
    )
    await recorder.replay()  # creates the file
    _plant(path, int(kind), b'{"resourceType":"Bundle"}')
    assert await recorder.replay() == 0
    assert ledger.entries == []
    outbox = recorder.outbox
    assert isinstance(outbox, SqliteOutbox)
    assert (await outbox.dead_letters(), recorder.dead_lettered) == (1, 1)
    await recorder.aclose()


async def test_a_row_changed_in_the_file_or_of_another_kind_is_dead_lettered(
    tmp_path: Path,
) -> None:
    """The MAC covers what becomes the entry: a genuine row whose evidence or flags were
    edited fails it; a row of a kind the outbox never holds is refused even with a valid MAC."""
    path = str(tmp_path / "outbox")
    ledger = KeyedLedger()
    recorder = AuditRecorder(
        ledger,
        Pseudonyms(),
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(path),
    )
    outbox = recorder.outbox
    assert isinstance(outbox, SqliteOutbox)
    intent = await recorder.intend(variants(), PROBE)  # type: ignore[arg-type]
    assert intent is not None
    await outbox.resolve(intent, "applied")
    (genuine,) = await outbox.pending()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE outbox SET flags = 0 WHERE id = ?", (genuine.id,))
    db.close()
    consent = replace(genuine, kind=int(EntryKind.CONSENT), id=0, idempotency_key="outcome:y:0")
    await outbox.put([replace(consent, mac=_row_mac(recorder._row_key, consent))])
    assert await recorder.replay() == 0
    assert ledger.entries == []
    assert await outbox.dead_letters() == 2
    await recorder.aclose()


async def test_an_intent_the_upstream_never_decides_is_recorded_unknown(tmp_path: Path) -> None:
    """An upstream that cannot answer the probe (no _tag search, a 403) or a probe that does
    not decode left the intent open for ever, and /readyz 503 for ever. After max_attempts
    undecided reconciles the outcome is recorded as unknown (502)."""
    ledger = KeyedLedger()
    recorder = AuditRecorder(
        ledger,
        Pseudonyms(),
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(str(tmp_path / "o")),
    )
    await recorder.intend(variants(), PROBE)  # type: ignore[arg-type]
    await recorder.intend(variants(), "not json")  # type: ignore[arg-type]
    recorder._live.clear()  # both requests were cancelled before their outcome

    async def poison_or_undecided(probe: str) -> str | None:
        if probe == "not json":
            raise ValueError("probe does not decode")
        return None

    waiting = [await recorder.reconcile(poison_or_undecided) for _ in range(25)]
    assert waiting[0] == 2
    assert waiting[-1] == 0
    assert [http_status(e) == "HTTP 502" for e in ledger.entries] == [True, True]
    assert recorder.given_up == 2
    await recorder.aclose()


async def test_an_intent_older_than_the_age_limit_is_recorded_unknown(tmp_path: Path) -> None:
    """The age limit: an intent undecided give_up_after seconds after it was written is
    resolved unknown at the next undecided reconcile."""
    clock, ledger = Clock(), KeyedLedger()
    recorder = AuditRecorder(
        ledger,
        Pseudonyms(),
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=clock,
        outbox=SqliteOutbox(str(tmp_path / "o")),
        give_up_after=600.0,
    )
    await recorder.intend(variants(), PROBE)  # type: ignore[arg-type]
    recorder._live.clear()
    assert await recorder.reconcile(undecided) == 1
    clock.now += 600
    assert await recorder.reconcile(undecided) == 0
    assert [http_status(e) == "HTTP 502" for e in ledger.entries] == [True]
    await recorder.aclose()


async def test_a_row_that_is_no_entry_is_moved_aside_not_retried_for_ever(tmp_path: Path) -> None:
    """A poison row (an unknown kind, a malformed field) made every replay stop at it and
    report -1: the replica stayed unready for ever. It is dead-lettered and the rest goes on."""
    path = str(tmp_path / "o")
    ledger = KeyedLedger()
    recorder = AuditRecorder(
        ledger,
        Pseudonyms(),
        gateway=GATEWAY,
        keys=KEYS,
        wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(path),
    )
    await recorder.replay()
    _plant(path, 99, b"{}")
    assert await recorder.replay() == 0
    assert ledger.entries == []
    await recorder.aclose()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc")
def test_the_lease_names_this_process() -> None:
    """Sanity of what other processes compare against (pid, start time)."""
    recorder = AuditRecorder(KeyedLedger(), Pseudonyms(), gateway=GATEWAY, keys=KEYS)
    lease = recorder._lease()
    assert isinstance(lease, Lease)
    assert lease.started != ""
