"""The audit share of an enforced read: CPU per read of what the audit adds to the hot path.

    python -m bench.audit_hot [--reads 20000] [--repeat 5]

One enforced read of one patient's record (a practitioner token with two purposes of use and a
role, a consent decision that relied on two consents, one resource released), and one search
that released 20 Observations of that patient. For each, in one process, with no I/O:

* ``old``: what the recorder did before audit facts: the BALP AuthZconsent and RESTful
  AuditEvents built, encoded as a canonical JSON Bundle, the entry made
  (:meth:`NewEntry.create`: salt, SHA-256 commitment, leaf checks);
* ``new``: what it does now: the facts planned (:func:`middleware.audit.plan.plan`), encoded
  (MessagePack), sealed under the per-entry key of the patient's (cached) key, the index row
  (:func:`~middleware.audit.facts.row_of`) and the entry made;
* ``new, record()``: the whole :meth:`AuditRecorder.record` call on a ledger that returns at
  once (pseudonym and patient key cached, as for any patient seen recently): planning, sealing,
  hashing, the concurrent hand-over to the ledger, the asyncio task around it;
* ``record() + writer, c16``: the same through the group-commit writer
  (:class:`~middleware.ledger.writer.LedgerWriter`) over a store that answers at once, 16
  requests at a time: the per-request future, the queue and the writer task's wake-ups added
  (the batch's commit itself is not: :mod:`bench.audit_commit`).

CPU is ``time.thread_time`` over ``--reads`` iterations, the best of ``--repeat`` runs (other
processes on the machine only slow a run down). The group commit's own work (leaf encoding,
Merkle hashing, the SQLite transaction) is shared by a batch and not counted here: see
``bench/ledger.py`` and :mod:`bench.audit_commit`. The goal: the audit share <= 60 us of CPU per
read, the commit included: this bench prints what it leaves for the writer, not a verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from middleware.audit.alerts import consent_decision_event
from middleware.audit.balp import exchange_events
from middleware.audit.evidence import PatientKeys, seal_facts
from middleware.audit.facts import encode_facts, row_of
from middleware.audit.parts import AgentInfo
from middleware.audit.plan import Exchange, plan
from middleware.audit.recorder import AuditRecorder
from middleware.auth.identity import Identity
from middleware.auth.scopes import Scope
from middleware.consent.decide import Decision, TraceStep
from middleware.fhir.jsoncodec import encode_canonical
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind, micros, new_pseudonym, new_salt
from middleware.ledger.signing import SigningKey, new_box_key
from middleware.ledger.writer import LedgerWriter

GOAL_US: Final = 60.0
GATEWAY: Final = AgentInfo(base_url="https://consentry.bench/fhir", name="consentry")
ACT: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
USER: Final = Identity(
    subject="bench",
    issuer="https://consentry.bench/dev-issuer",
    expires_at=4e9,
    scopes=(Scope("user", "*", frozenset("rs")),),
    client_id="bench-app",
    fhir_user="Practitioner/bench",
    purpose_of_use=((ACT, "TREAT"), (ACT, "ETREAT")),
    roles=frozenset({"doctor"}),
    token_id="7f3c2a",
)
DECISION: Final = Decision(
    "permit",
    trace=(
        TraceStep("c-base", 3, "Consent.provision", "base decision"),
        TraceStep("c-bench", 17, "Consent.provision.provision[0]", "deepest matching provision"),
    ),
)
PATIENT: Final = "Patient/pat-0001"
READ: Final = Exchange(
    request=FhirRequest(
        Interaction.READ, "GET", Level.INSTANCE, "Patient/pat-0001", b"", "Patient", "pat-0001"
    ),
    identity=USER,
    status=200,
    request_id="0f4c1e9a-2b7d-4c1e-9a2b-7d4c1e9a2b7d",
    raw_request=b"GET /fhir/Patient/pat-0001",
    client_address="10.0.0.7",
    decisions={PATIENT: DECISION},
    released=frozenset({PATIENT}),
    resource_refs=(PATIENT,),
)
SEARCH: Final = Exchange(
    request=FhirRequest(
        Interaction.SEARCH_TYPE,
        "GET",
        Level.TYPE,
        "Observation",
        b"subject=Patient/pat-0001&_count=20",
        "Observation",
    ),
    identity=USER,
    status=200,
    request_id="1a5d2f0b-3c8e-4d2f-0b3c-8e5d2f0b3c8e",
    raw_request=b"GET /fhir/Observation?subject=Patient/pat-0001&_count=20",
    client_address="10.0.0.7",
    decisions={PATIENT: DECISION},
    released=frozenset({PATIENT}),
    resource_refs=tuple(f"Observation/obs-{n:04d}" for n in range(20)),
)


def old_path(x: Exchange) -> list[NewEntry]:
    """The recorder before audit facts (one patient): AuditEvents, canonical Bundle, entry."""
    recorded = datetime.fromtimestamp(time.time(), UTC)
    patient = next(iter(x.decisions))
    authz = consent_decision_event(
        DECISION,
        identity=x.identity,
        patient=patient,
        recorded=recorded,
        request_id=x.request_id,
        gateway=GATEWAY,
        client_address=x.client_address,
    )
    (rest,) = exchange_events(
        x.request,
        identity=x.identity,
        patients=[patient],
        outcome_status=x.status,
        recorded=recorded,
        request_id=x.request_id,
        raw_request=x.raw_request,
        gateway=GATEWAY,
        client_address=x.client_address,
        resource_refs=x.resource_refs,
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": authz}, {"resource": rest}],
    }
    evidence = encode_canonical(bundle)
    return [
        NewEntry.create(
            EntryKind.DISCLOSURE,
            evidence,
            recorded_us=micros(recorded),
            pseudonym=PSEUDONYM,
            consent=17,
            flags=EntryFlag.PERMIT,
        )
    ]


PSEUDONYM: Final = new_pseudonym()
PATIENT_KEY: Final = new_box_key()


def new_path(x: Exchange) -> list[NewEntry]:
    """What the recorder does now, without the asyncio hand-over (one patient)."""
    recorded_us = micros(datetime.fromtimestamp(time.time(), UTC))
    out = []
    for p in plan(x, "exchange", recorded_us, GATEWAY):
        salt = new_salt()
        out.append(
            NewEntry(
                kind=p.kind,
                recorded_us=recorded_us,
                salt=salt,
                evidence=seal_facts(PATIENT_KEY, salt, encode_facts(p.facts)),
                pseudonym=PSEUDONYM,
                consent=p.consent,
                flags=p.flags,
                row=row_of(p.facts, kind=p.kind, flags=p.flags, pseudonym=PSEUDONYM),
            )
        )
    return out


class _Ledger:
    async def append(self, entry: NewEntry) -> int:
        return 0


def record_us(x: Exchange, reads: int, repeat: int) -> float:
    """Best-of-``repeat`` CPU microseconds per ``AuditRecorder.record`` call, awaited in one
    running task as a request handler awaits it, on a ledger that returns at once."""

    async def pseudonym_of(_patient: str) -> bytes:
        return PSEUDONYM

    table: dict[bytes, bytes] = {}

    async def audit_key(pseudonym: bytes, candidate: bytes) -> bytes:
        return table.setdefault(pseudonym, candidate)

    rec = AuditRecorder(
        _Ledger(), pseudonym_of, gateway=GATEWAY, keys=PatientKeys(audit_key, new_box_key())
    )

    async def run() -> float:
        await rec.record(x, "exchange")  # warm caches (pseudonym, key)
        best = float("inf")
        for _ in range(repeat):
            start = time.thread_time_ns()
            for _ in range(reads):
                await rec.record(x, "exchange")
            best = min(best, (time.thread_time_ns() - start) / reads / 1000)
        return best

    return asyncio.run(run())


class _InstantStore:
    """A log store (:class:`~middleware.storage.ledger_base.LogStore`'s ``append`` only) that
    commits at once, yielding once as a store's worker thread does."""

    def __init__(self) -> None:
        self.size = 0

    async def append(self, batch: list[NewEntry], *, sign: object) -> list[AppendResult]:
        first, self.size = self.size, self.size + len(batch)
        await asyncio.sleep(0)
        return [AppendResult(first + n, self.size) for n in range(len(batch))]


def writer_us(x: Exchange, reads: int, repeat: int, concurrency: int = 16) -> float:
    """Best-of-``repeat`` CPU microseconds per ``record`` call through a :class:`LedgerWriter`
    over :class:`_InstantStore`, ``concurrency`` calls in flight."""

    async def pseudonym_of(_patient: str) -> bytes:
        return PSEUDONYM

    table: dict[bytes, bytes] = {}

    async def audit_key(pseudonym: bytes, candidate: bytes) -> bytes:
        return table.setdefault(pseudonym, candidate)

    async def run() -> float:
        store = _InstantStore()
        writer = LedgerWriter(store, SigningKey.generate("bench"))  # type: ignore[arg-type]
        await writer.start()
        rec = AuditRecorder(
            writer, pseudonym_of, gateway=GATEWAY, keys=PatientKeys(audit_key, new_box_key())
        )
        await rec.record(x, "exchange")  # warm caches (pseudonym, key)

        async def requests(count: int) -> None:
            for _ in range(count):
                await rec.record(x, "exchange")

        best = float("inf")
        share = reads // concurrency
        for _ in range(repeat):
            start = time.thread_time_ns()
            await asyncio.gather(*(requests(share) for _ in range(concurrency)))
            best = min(best, (time.thread_time_ns() - start) / (share * concurrency) / 1000)
        await writer.stop()
        return best

    return asyncio.run(run())


def cpu_us(step: Callable[[Exchange], object], x: Exchange, reads: int, repeat: int) -> float:
    """Best-of-``repeat`` CPU microseconds per call of ``step(x)``."""
    step(x)  # warm caches (pseudonym, key, code paths)
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time_ns()
        for _ in range(reads):
            step(x)
        best = min(best, (time.thread_time_ns() - start) / reads / 1000)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = {
        name: (len(old_path(x)[0].evidence), len(new_path(x)[0].evidence))
        for name, x in (("read", READ), ("search 20", SEARCH))
    }
    print(
        "| exchange | old us/read | new us/read | new, record() us/read"
        " | record() + writer, c16 | evidence old -> new |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for name, x in (("read", READ), ("search 20", SEARCH)):
        old = cpu_us(old_path, x, args.reads, args.repeat)
        new = cpu_us(new_path, x, args.reads, args.repeat)
        full = record_us(x, args.reads, args.repeat)
        handed = writer_us(x, args.reads, args.repeat)
        worst = max(worst, handed)
        before, after = sizes[name]
        print(
            f"| {name} | {old:.1f} | {new:.1f} | {full:.1f} | {handed:.1f}"
            f" | {before} B -> {after} B |"
        )
    # The goal counts the commit too, which this bench does not run: no verdict here, only
    # what is left of the budget for the writer (bench.audit_commit measures it).
    print(
        f"\ngoal: audit share <= {GOAL_US:.0f} us CPU per read, commit included; before the"
        f" commit {worst:.1f} us, leaving {GOAL_US - worst:.1f} us for the writer's commit"
        " per entry (python -m bench.audit_commit)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
