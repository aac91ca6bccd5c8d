"""The audit recorder (audit/recorder.py), pinned where mutation testing found its tests blind:
the bounds its settings accept, what a failure logs (the request id and the error's type, so
an operator can find the request; never more), when an undecided intent is given up and whose
intent counts as abandoned, and a recorder without an outbox."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from middleware.audit.evidence import PatientKeys
from middleware.audit.facts import decode_facts, encode_facts
from middleware.audit.outbox import Lease, OpenIntent, OutboxRow
from middleware.audit.plan import plan
from middleware.audit.recorder import AuditRecorder
from middleware.audit.recorder_intents import running as _running
from middleware.audit.recorder_intents import started as _started
from middleware.audit.recorder_outbox import row_mac as _row_mac
from middleware.consent.decide import Decision, TraceStep
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind, micros
from middleware.ledger.signing import new_box_key
from middleware.storage.audit_outbox import SqliteOutbox
from tests.unit.audit.test_recorder import (
    CREATE,
    GATEWAY,
    KEYS,
    RID,
    USER,
    WHEN,
    FailingLedger,
    FakeLedger,
    Pseudonyms,
    exchange,
    opened,
    recorder,
)

NOW_US = micros(WHEN)


def _unavailable_logs(logs: list[MutableMapping[str, Any]]) -> list[tuple[Any, Any]]:
    return [
        (entry.get("request_id"), entry.get("error_type"))
        for entry in logs
        if entry["event"] == "audit trail unavailable"
    ]


# --- settings


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_cached_pseudonyms": 0}, "max_cached_pseudonyms must be positive"),
        ({"pseudonym_ttl": 0.0}, "pseudonym_ttl must be positive"),
        ({"max_attempts": 0}, "max_attempts and give_up_after must be positive"),
        ({"give_up_after": 0.0}, "max_attempts and give_up_after must be positive"),
    ],
    ids=["cache-0", "ttl-0", "attempts-0", "give-up-0"],
)
def test_a_setting_out_of_bounds_is_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        AuditRecorder(FakeLedger(), Pseudonyms(), gateway=GATEWAY, **settings)


def test_the_smallest_settings_are_accepted() -> None:
    """One cached pseudonym, one attempt, and fractions of a second are all valid."""
    AuditRecorder(
        FakeLedger(),
        Pseudonyms(),
        gateway=GATEWAY,
        max_cached_pseudonyms=1,
        pseudonym_ttl=0.5,
        max_attempts=1,
        give_up_after=0.5,
    )


# --- failures: ServiceUnavailable, logged with the request id and the error's type only


class Refusing:
    """A store that refuses every call with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __call__(self, *args: Any) -> bytes:
        raise self.error


async def test_a_pseudonym_store_failure_logs_the_request_and_the_error_type() -> None:
    rec = AuditRecorder(FakeLedger(), Refusing(OSError("disk")), gateway=GATEWAY, keys=KEYS)
    with (
        capture_logs() as logs,
        pytest.raises(ServiceUnavailable, match=r"^audit trail unavailable$"),
    ):
        await rec.record(exchange(decisions={"Patient/p1": None}), "exchange")
    assert _unavailable_logs(logs) == [(RID, "OSError")]


async def test_a_malformed_pseudonym_logs_a_value_error() -> None:
    async def short(patient: str) -> bytes:
        return b"\x01" * 3

    rec = AuditRecorder(FakeLedger(), short, gateway=GATEWAY, keys=KEYS)
    with capture_logs() as logs, pytest.raises(ServiceUnavailable) as refused:
        await rec.record(exchange(decisions={"Patient/p1": None}), "exchange")
    assert _unavailable_logs(logs) == [(RID, "ValueError")]
    assert str(refused.value.__cause__) == "the pseudonym store returned a malformed pseudonym"


async def test_a_key_store_failure_is_unavailable_and_logged() -> None:
    keys = PatientKeys(Refusing(TimeoutError()), new_box_key())
    rec = AuditRecorder(FakeLedger(), Pseudonyms(), gateway=GATEWAY, keys=keys)
    with capture_logs() as logs, pytest.raises(ServiceUnavailable):
        await rec.record(exchange(decisions={"Patient/p1": None}), "exchange")
    assert _unavailable_logs(logs) == [(RID, "TimeoutError")]


@pytest.mark.parametrize("patients", [1, 2], ids=["one-append", "appends-gathered"])
async def test_an_append_failure_logs_the_request_and_the_error_type(patients: int) -> None:
    ledger = FailingLedger(ConnectionError("down"), fail_at=patients - 1)
    rec, _ = recorder(ledger)
    decisions = {f"Patient/p{i}": None for i in range(patients)}
    with capture_logs() as logs, pytest.raises(ServiceUnavailable):
        await rec.record(exchange(decisions=decisions), "exchange")
    assert _unavailable_logs(logs) == [(RID, "ConnectionError")]


async def test_a_break_glass_append_failure_logs_the_request() -> None:
    rec, _ = recorder(FailingLedger(ConnectionError("down")))
    with capture_logs() as logs, pytest.raises(ServiceUnavailable):
        await rec.record_break_glass(
            "started", identity=USER, patients=["p1"], request_id="bg-1", client_address=None
        )
    assert _unavailable_logs(logs) == [("bg-1", "ConnectionError")]


async def test_break_glass_entries_are_appended_one_per_patient() -> None:
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    indexes = await rec.record_break_glass(
        "stopped", identity=USER, patients=["p1", "p2"], request_id="bg-1", client_address=None
    )
    assert indexes == [0, 1]
    assert [e.row.request_id for e in ledger.entries if e.row] == ["bg-1", "bg-1"]
    assert all(isinstance(e, NewEntry) and e.pseudonym for e in ledger.entries)


# --- without an outbox


async def test_without_an_outbox_nothing_waits_and_nothing_is_intended() -> None:
    rec, _ = recorder(FakeLedger())

    async def decide(probe: str) -> str | None:
        raise AssertionError("no intent to decide")

    assert await rec.replay() == 0
    assert await rec.reconcile(decide) == 0
    assert await rec.intend({"ok": exchange()}, "{}") is None


# --- giving up, and whose intent is abandoned


def _intent(attempts: int = 0, created_us: int = 0, lease: Lease | None = None) -> OpenIntent:
    return OpenIntent("i1", "{}", "other", lease, created_us, attempts)


@pytest.mark.parametrize(
    ("intent", "given_up"),
    [
        # max_attempts 3: this undecided reconcile is the third
        (_intent(attempts=1), False),
        (_intent(attempts=2), True),
        (_intent(attempts=3), True),
        # give_up_after 10 s: the age counts in seconds from created_us
        (_intent(created_us=NOW_US - 9_999_999), False),
        (_intent(created_us=NOW_US - 10_000_000), True),
        # created_us 0: the age is unknown, only the attempts count
        (_intent(created_us=0), False),
        (_intent(created_us=1), True),
    ],
    ids=["attempt-2", "attempt-3", "attempt-4", "age-9.99s", "age-10s", "age-unknown", "age-known"],
)
def test_an_undecided_intent_is_given_up_after_max_attempts_or_give_up_after(
    intent: OpenIntent, given_up: bool
) -> None:
    rec, _ = recorder(FakeLedger(), max_attempts=3, give_up_after=10.0)
    assert rec._give_up(intent) is given_up


HOST = socket.gethostname()
NO_PID = 2**31 - 16  # no process has it (a mutant signalling it signals nobody)
ME = -1  # stands for this process, looked up when the test runs: a mutant that signals the
# pid (os.kill(pid, 1)) must hit the process running the test, never the one collecting it


def _me(lease: Lease) -> Lease:
    if lease.pid != ME:
        return lease
    pid = os.getpid()
    return replace(lease, pid=pid, started=_started(pid) if lease.started == "me" else "0")


@pytest.mark.parametrize(
    ("lease", "gone"),
    [
        (None, True),
        (Lease("other", "elsewhere", NO_PID, "", NOW_US), True),  # lapsed exactly now
        (
            Lease("other", "elsewhere", NO_PID, "", NOW_US + 1),
            False,
        ),  # another host: trust the lease
        (Lease("other", HOST, ME, "me", NOW_US + 1), False),  # running here
        (Lease("other", HOST, ME, "0", NOW_US + 1), True),  # the pid reused by another process
    ],
    ids=["no-lease", "lapsed", "other-host-live", "running-here", "pid-reused"],
)
def test_an_intent_is_abandoned_without_a_live_lease_or_a_running_owner(
    lease: Lease | None, gone: bool
) -> None:
    rec, _ = recorder(FakeLedger())
    assert rec._owner_gone(_intent(lease=None if lease is None else _me(lease))) is gone


def test_a_process_is_named_by_its_pid_and_start_time() -> None:
    pid = os.getpid()
    started = _started(pid)
    assert started.isdigit()
    assert _running(pid, started)
    assert not _running(pid, str(int(started) + 1))
    # start time unknown: test_recorder_mutants2 probes a child process (a mutant that
    # signals the pid would hang up the test run itself here)
    assert _started(-1) == ""


# --- the outbox row's MAC and what replay refuses


def _hmac_of(key: bytes, parts: list[bytes]) -> bytes:
    """HMAC-SHA256 of the length-prefixed parts, written here from keyed_digest's documented
    layout (the count, then each part's 8-byte big-endian length and bytes)."""
    mac = hmac.new(key, len(parts).to_bytes(8, "big"), hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "big") + part)
    return mac.digest()


ROW_KEY = bytes(range(32))
ROW = OutboxRow(
    request_id="rid-9",
    kind=int(EntryKind.ACCESS_OUTCOME),
    recorded_us=NOW_US,
    salt=b"\x07" * 32,
    evidence=b"facts",
    pseudonym=None,
    patient="Patient/p1",
    consent=12,
    flags=1,
    idempotency_key="outcome:b:0",
)


def test_the_row_mac_covers_every_field_that_becomes_the_entry() -> None:
    expected = _hmac_of(
        ROW_KEY,
        [
            b"consentry/outbox-row/v1",
            b"rid-9",
            str(int(EntryKind.ACCESS_OUTCOME)).encode(),
            str(NOW_US).encode(),
            b"\x07" * 32,
            b"facts",
            b"",  # no pseudonym
            b"=Patient/p1",
            b"=12",
            b"1",
            b"outcome:b:0",
        ],
    )
    assert _row_mac(ROW_KEY, ROW) == expected
    # None and an empty value differ; bytes are taken as they are
    assert _row_mac(ROW_KEY, replace(ROW, patient="")) != expected
    with_pseudonym = replace(ROW, pseudonym=b"\x01" * 16, patient=None, consent=None)
    assert _row_mac(ROW_KEY, with_pseudonym) == _hmac_of(
        ROW_KEY,
        [
            b"consentry/outbox-row/v1",
            b"rid-9",
            str(int(EntryKind.ACCESS_OUTCOME)).encode(),
            str(NOW_US).encode(),
            b"\x07" * 32,
            b"facts",
            b"=" + b"\x01" * 16,
            b"",
            b"",
            b"1",
            b"outcome:b:0",
        ],
    )


async def test_replay_dead_letters_each_refused_row_and_goes_on(tmp_path: Path) -> None:
    """A row with a bad MAC ("mac"), of a kind the outbox never holds ("kind"), or whose
    evidence does not decode ("malformed") is moved aside, counted and logged with its
    request id and reason; the rows after it are still replayed."""
    ledger = FakeLedger()
    outbox = SqliteOutbox(str(tmp_path / "outbox"))
    rec, _ = recorder(ledger, outbox=outbox, row_key=ROW_KEY)
    (good,) = plan(exchange(CREATE, status=201), "outcome", NOW_US, GATEWAY)
    base = replace(ROW, evidence=encode_facts(good.facts), patient=None, consent=None)

    def row(n: int, **changes: Any) -> OutboxRow:
        r = replace(base, request_id=f"rid-{n}", idempotency_key=f"outcome:b:{n}", **changes)
        return replace(r, mac=_row_mac(ROW_KEY, r))

    await outbox.put(
        [
            replace(row(1), flags=0),  # changed after its MAC
            row(2, kind=int(EntryKind.CONSENT)),
            row(3, evidence=b"\x01not facts"),
            row(4),
        ]
    )
    with capture_logs() as logs:
        assert await rec.replay() == 0
    dead = [
        (e["request_id"], e["reason"], e["log_level"])
        for e in logs
        if e["event"] == "audit outbox row dead-lettered"
    ]
    assert dead == [
        ("rid-1", "mac", "error"),
        ("rid-2", "kind", "error"),
        ("rid-3", "malformed", "error"),
    ]
    assert (rec.dead_lettered, await outbox.dead_letters()) == (3, 3)
    assert [e.idempotency_key for e in ledger.entries] == ["outcome:b:4"]
    await rec.aclose()


# --- reconcile and replay: what they report and log when they cannot work


class ScriptedOutbox:
    """An outbox whose ``failing`` methods raise OSError; the others answer from
    ``intents`` (open) and ``waiting`` (the count), and record what was asked."""

    def __init__(
        self, failing: frozenset[str] = frozenset(), intents: tuple[OpenIntent, ...] = ()
    ) -> None:
        self.failing = failing
        self.intents_open = list(intents)
        self.waiting = 0
        self.calls: list[tuple[str, Any]] = []

    def _call(self, name: str, arg: Any = None) -> None:
        self.calls.append((name, arg))
        if name in self.failing:
            raise OSError(name)

    async def renew(self, lease: Lease) -> None:
        self._call("renew")

    async def open_intents(self) -> list[OpenIntent]:
        self._call("open_intents")
        return self.intents_open

    async def attempted(self, intent: str) -> None:
        self._call("attempted", intent)

    async def resolve(self, intent: str, variant: str) -> None:
        self._call("resolve", (intent, variant))

    async def pending(self, limit: int = 1000) -> list[OutboxRow]:
        self._call("pending")
        return []

    async def count(self) -> int:
        self._call("count")
        return self.waiting

    def close(self) -> None:
        pass


def _with(outbox: ScriptedOutbox, **kwargs: Any) -> AuditRecorder:
    rec, _ = recorder(FakeLedger(), outbox=outbox, **kwargs)
    return rec


def _logged(logs: list[MutableMapping[str, Any]], event: str) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "event"} for e in logs if e["event"] == event]


async def test_a_replay_that_cannot_read_the_outbox_reports_minus_one_and_logs_why() -> None:
    rec = _with(ScriptedOutbox(frozenset({"pending"})))
    with capture_logs() as logs:
        assert await rec.replay() == -1
    assert _logged(logs, "audit outbox replay stopped") == [
        {"error_type": "OSError", "log_level": "warning"}
    ]
    assert rec._deferred is True  # rows may wait: the next commit kicks a replay


@pytest.mark.parametrize(
    ("failing", "waiting", "expected"),
    [
        (frozenset({"renew"}), 2, -1),  # intents unknown, rows known: still unknown
        (frozenset({"count"}), 0, -1),
        (frozenset(), 2, 2),
    ],
    ids=["intents-unreadable", "rows-unreadable", "readable"],
)
async def test_reconcile_reports_minus_one_when_either_half_is_unknown(
    failing: frozenset[str], waiting: int, expected: int
) -> None:
    outbox = ScriptedOutbox(failing)
    outbox.waiting = waiting
    rec = _with(outbox)

    async def decide(probe: str) -> str | None:
        return "applied"

    with capture_logs() as logs:
        assert await rec.reconcile(decide) == expected
    if "renew" in failing:
        assert _logged(logs, "audit intents not reconciled") == [
            {"error_type": "OSError", "log_level": "warning"}
        ]


async def test_an_intent_decide_cannot_tell_is_attempted_then_given_up() -> None:
    probes: list[str] = []

    async def decide(probe: str) -> str | None:
        probes.append(probe)
        raise ValueError(probe)

    first = OpenIntent("i1", "probe-1", "other", None, 0, 0)
    outbox = ScriptedOutbox(intents=(first,))
    rec = _with(outbox, max_attempts=2)
    with capture_logs() as logs:
        assert await rec.reconcile(decide) == 1  # one intent undecided, no rows
    assert probes == ["probe-1"]
    assert ("attempted", "i1") in outbox.calls
    assert _logged(logs, "audit intent not decided") == [
        {"error_type": "ValueError", "log_level": "warning"}
    ]
    outbox.intents_open = [replace(first, attempts=1)]
    outbox.calls.clear()
    with capture_logs() as logs:
        assert await rec.reconcile(decide) == 0
    assert ("resolve", ("i1", "unknown")) in outbox.calls
    assert rec.given_up == 1
    assert _logged(logs, "audit intent given up: outcome recorded as unknown") == [
        {"attempts": 2, "log_level": "warning"}
    ]


async def test_reconcile_skips_writes_in_flight_and_goes_on_to_the_next_intent() -> None:
    live = Lease("other", "elsewhere", NO_PID, "", NOW_US + 10**9)
    intents = (
        OpenIntent("mine-in-flight", "p0", None, None, 0, 0),
        OpenIntent("theirs-in-flight", "p1", "other", live, 0, 0),
        OpenIntent("mine-expired", "p2", None, None, 0, 0),
        OpenIntent("abandoned", "p3", "other", None, 0, 0),
    )
    outbox = ScriptedOutbox(intents=intents)
    now = 1000.0
    rec = _with(outbox, clock=lambda: now, live_for=120.0)
    rec._live["mine-in-flight"] = now - 119.0
    rec._live["mine-expired"] = now - 120.0  # exactly live_for ago: no longer in flight

    async def decide(probe: str) -> str | None:
        return "applied"

    await rec.reconcile(decide)
    resolved = [arg for name, arg in outbox.calls if name == "resolve"]
    assert resolved == [("mine-expired", "applied"), ("abandoned", "applied")]


# --- a write's outcome kept in the outbox: its rows, and what is logged


class KeepingOutbox(ScriptedOutbox):
    """Keeps what is put; ``settle`` and ``put`` fail when listed in ``failing``."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        super().__init__(failing)
        self.rows: list[OutboxRow] = []

    async def put(self, rows: list[OutboxRow], *, settles: str | None = None) -> None:
        self._call("put", settles)
        self.rows.extend(rows)

    async def settle(self, intent: str) -> None:
        self._call("settle", intent)


CONSENTED = Decision("permit", (), (TraceStep("c1", 4, "provision", "r"),))
TWO = {"Patient/p1": CONSENTED, "Patient/p2": None}


async def test_an_outcome_the_ledger_refuses_is_kept_sealed_under_the_intents_keys() -> None:
    outbox = KeepingOutbox()
    rec, pseudonyms = recorder(FailingLedger(ConnectionError()), outbox=outbox)
    write = exchange(CREATE, status=201, decisions=TWO)
    with capture_logs() as logs:
        assert await rec.record(write, "outcome", intent="abc") == []
    assert ("put", "abc") in outbox.calls
    assert [r.idempotency_key for r in outbox.rows] == ["outcome:abc:0", "outcome:abc:1"]
    assert [(r.pseudonym, r.patient, r.consent) for r in outbox.rows] == [
        (pseudonyms.known["Patient/p1"], None, 4),
        (pseudonyms.known["Patient/p2"], None, None),
    ]
    for row, planned in zip(outbox.rows, plan(write, "outcome", NOW_US, GATEWAY), strict=True):
        assert opened(row.pseudonym, row.salt, row.evidence) == planned.facts  # sealed
    assert _logged(logs, "write outcome kept in the audit outbox") == [
        {"request_id": RID, "entries": 2, "log_level": "warning"}
    ]
    assert _unavailable_logs(logs) == [(RID, "ConnectionError")]
    assert rec._deferred is True


async def test_an_outcome_without_pseudonyms_keeps_the_patient_and_unsealed_facts() -> None:
    outbox = KeepingOutbox()
    ledger = FakeLedger()
    rec = AuditRecorder(
        ledger, Refusing(OSError()), gateway=GATEWAY, keys=KEYS, outbox=outbox,  # type: ignore[arg-type]
        wall_clock=WHEN.timestamp,
    )  # fmt: skip
    write = exchange(CREATE, status=201, decisions=TWO)
    with capture_logs() as logs:
        assert await rec.record(write, "outcome") == []
    assert _unavailable_logs(logs) == [(RID, "OSError")]
    assert ledger.entries == []  # nothing to append without the pseudonyms
    assert [(r.pseudonym, r.patient) for r in outbox.rows] == [
        (None, "Patient/p1"),
        (None, "Patient/p2"),
    ]
    planned = plan(write, "outcome", NOW_US, GATEWAY)
    assert [decode_facts(r.evidence) for r in outbox.rows] == [p.facts for p in planned]
    # without an intent: a fresh batch, the same for the rows of one call
    batches = {r.idempotency_key.rsplit(":", 1)[0] for r in outbox.rows}
    (batch,) = batches
    assert batch.startswith("outcome:")
    assert len(batch) == len("outcome:") + 32  # a uuid4 hex


async def test_an_outcome_the_outbox_cannot_keep_is_unavailable_and_logged() -> None:
    rec, _ = recorder(FailingLedger(ConnectionError()), outbox=KeepingOutbox(frozenset({"put"})))
    with capture_logs() as logs, pytest.raises(ServiceUnavailable):
        await rec.record(exchange(CREATE, status=201), "outcome", intent="abc")
    assert _unavailable_logs(logs)[-1] == (RID, "OSError")


async def test_an_intent_not_settled_after_its_outcome_is_only_logged() -> None:
    outbox = KeepingOutbox(frozenset({"settle"}))
    ledger = FakeLedger()
    rec, _ = recorder(ledger, outbox=outbox)
    with capture_logs() as logs:
        assert await rec.record(exchange(CREATE, status=201), "outcome", intent="abc") == [0]
    assert ledger.entries[0].idempotency_key == "outcome:abc:0"
    assert _logged(logs, "audit intent not settled") == [
        {"request_id": RID, "error_type": "OSError", "log_level": "warning"}
    ]


# --- intents in flight, background replays, closing


class HoldingOutbox(KeepingOutbox):
    """Also holds intents, and can make ``pending`` wait until ``release`` is set."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        super().__init__(failing)
        self.release: asyncio.Event | None = None
        self.closed = False

    async def hold(self, intent: str, probe: str, held: Any, **kwargs: Any) -> None:
        self._call("hold", intent)

    async def pending(self, limit: int = 1000) -> list[OutboxRow]:
        self._call("pending")
        if self.release is not None:
            await self.release.wait()
        return []

    def close(self) -> None:
        self.closed = True


def _holding(**kwargs: Any) -> tuple[AuditRecorder, HoldingOutbox, FakeLedger]:
    outbox, ledger = HoldingOutbox(**kwargs), FakeLedger()
    rec, _ = recorder(ledger, outbox=outbox)
    return rec, outbox, ledger


async def test_an_intent_is_in_flight_until_its_outcome_is_recorded() -> None:
    rec, outbox, ledger = _holding()
    write = exchange(CREATE, status=201)
    intent = await rec.intend({"applied": write}, "probe")
    assert intent is not None
    assert ("hold", intent) in outbox.calls
    assert intent in rec._live
    await rec.record(write, "outcome", intent=intent)
    assert intent not in rec._live
    assert ledger.entries[0].idempotency_key == f"outcome:{intent}:0"


async def test_an_intent_the_outbox_cannot_hold_is_unavailable_and_not_in_flight() -> None:
    rec, _, _ = _holding(failing=frozenset({"hold"}))
    with capture_logs() as logs, pytest.raises(ServiceUnavailable):
        await rec.intend({"applied": exchange(CREATE, status=201)}, "probe")
    assert rec._live == {}
    assert _unavailable_logs(logs) == [(RID, "OSError")]


async def test_an_intent_without_pseudonyms_is_unavailable_and_logged() -> None:
    rec = AuditRecorder(
        FakeLedger(), Refusing(OSError()), gateway=GATEWAY, keys=KEYS,
        outbox=HoldingOutbox(),  # type: ignore[arg-type]
    )  # fmt: skip
    with capture_logs() as logs, pytest.raises(ServiceUnavailable):
        await rec.intend({"applied": exchange(CREATE, status=201, decisions=TWO)}, "probe")
    assert _unavailable_logs(logs) == [(RID, "OSError")]


async def test_an_exchange_entry_takes_no_idempotency_key_even_with_an_outbox() -> None:
    """Only a write's outcome is deduplicated: a read recorded twice is two entries."""
    rec, outbox, ledger = _holding()
    await rec.record(exchange(), "exchange")
    await rec.record(exchange(), "exchange")
    assert [e.idempotency_key for e in ledger.entries] == [None, None]
    assert outbox.rows == []


async def test_a_commit_kicks_one_background_replay_only_when_rows_may_wait() -> None:
    rec, outbox, _ = _holding()
    await rec.record(exchange(), "exchange")
    await asyncio.sleep(0)
    assert ("pending", None) not in outbox.calls  # nothing deferred: no replay
    outbox.release = asyncio.Event()
    rec._deferred = True
    await rec.record(exchange(), "exchange")
    await rec.record(exchange(), "exchange")  # the first replay still runs: no second one
    await asyncio.sleep(0)
    assert outbox.calls.count(("pending", None)) == 1
    await rec.aclose()  # cancels the replay waiting on the outbox, without raising
    assert rec._replaying is None
    assert outbox.closed


class Outage:
    """A pseudonym store that refuses while ``down``."""

    def __init__(self) -> None:
        self.down = True
        self.inner = Pseudonyms()

    async def __call__(self, patient: str) -> bytes:
        if self.down:
            raise OSError("down")
        return await self.inner(patient)


async def test_an_outcome_kept_without_its_pseudonyms_is_replayed_under_them(
    tmp_path: Path,
) -> None:
    store, ledger = Outage(), FakeLedger()
    rec = AuditRecorder(
        ledger, store, gateway=GATEWAY, keys=KEYS, wall_clock=WHEN.timestamp,
        outbox=SqliteOutbox(str(tmp_path / "outbox")),
    )  # fmt: skip
    write = exchange(CREATE, status=201, decisions=TWO)
    assert await rec.record(write, "outcome") == []
    with capture_logs() as logs:
        assert await rec.replay() == 2  # the store still refuses: both rows wait
    assert _unavailable_logs(logs) == [(RID, "OSError")]
    assert ledger.entries == []
    store.down = False
    assert await rec.replay() == 0
    known = store.inner.known
    assert [e.pseudonym for e in ledger.entries] == [known["Patient/p1"], known["Patient/p2"]]
    planned = plan(write, "outcome", NOW_US, GATEWAY)
    assert [opened(e.pseudonym, e.salt, e.evidence) for e in ledger.entries] == [
        p.facts for p in planned
    ]
    assert [e.consent for e in ledger.entries] == [4, None]
    assert [e.row.pseudonym if e.row else None for e in ledger.entries] == [
        known["Patient/p1"],
        known["Patient/p2"],
    ]
    await rec.aclose()


async def test_a_break_glass_entry_keeps_the_client_address() -> None:
    ledger = FakeLedger()
    rec, _ = recorder(ledger)
    await rec.record_break_glass(
        "started", identity=USER, patients=["p1"], request_id="bg-1", client_address="192.0.2.9"
    )
    (entry,) = ledger.entries
    assert opened(entry.pseudonym, entry.salt, entry.evidence).client_address == "192.0.2.9"


async def test_a_break_glass_entry_without_a_pseudonym_logs_its_request() -> None:
    rec = AuditRecorder(FakeLedger(), Refusing(OSError()), gateway=GATEWAY, keys=KEYS)
    with capture_logs() as logs, pytest.raises(ServiceUnavailable):
        await rec.record_break_glass(
            "started", identity=USER, patients=["p1"], request_id="bg-1", client_address=None
        )
    assert _unavailable_logs(logs) == [("bg-1", "OSError")]
