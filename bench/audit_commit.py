"""The writer's CPU per audited read on SQLite: the ledger entry and its audit-index row.

    python -m bench.audit_commit [--entries 4096] [--repeat 3] [--batches 1,16,64]
                                 [--prefill 20000] [--read patient|observation]
                                 [--split 16] [--profile]

Entries are what the recorder makes for an enforced read (:mod:`bench.audit_hot`'s read: a
practitioner with two purposes of use and a role, one patient's resource released), one of
1,000 patients each, sealed, with their index row (``with rows``) or without it (``rows
off``: ``NewEntry.row`` None, the ledger entry alone). They are appended in batches of 1, 16
and 64 by the store's own transaction function (``BEGIN IMMEDIATE``, ``_append``,
``COMMIT``) called synchronously on the store's worker thread, on a file the store opened
(WAL, ``synchronous=FULL``) and prefilled with ``--prefill`` entries (with rows) so its
B-trees have a realistic depth. CPU is ``time.thread_time`` of that thread per entry, the
best of ``--repeat`` runs of ``--entries`` entries each; the fsync's wait is not CPU (the
kernel's work for it is).

The breakdown (batches of ``--split``, rows off and with rows) times each SQL statement
``_append`` runs, summed by statement, the checkpoint signature and the ``COMMIT``; "Python"
is the rest of ``_append`` (planning, leaf encoding and hashing, row values) and of the timing
itself, so the breakdown's total exceeds the table's figure by about 10 us an entry.
``--profile`` adds a cProfile of ``_append``'s Python, heaviest first. ``--read observation``
makes the reads of an Observation (a reference other than the patient's) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import functools
import pstats
import sqlite3
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.audit_hot import GATEWAY, READ
from middleware.audit.evidence import seal_facts
from middleware.audit.facts import encode_facts, row_of
from middleware.audit.plan import Exchange, plan
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import new_pseudonym, new_salt
from middleware.ledger.sequencer import ChainTails, CheckpointSigner
from middleware.ledger.signing import SigningKey, new_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage import ledger_sqlite
from middleware.storage.ledger_sqlite import SqliteLogStore

ORIGIN = "bench.consentry.example/audit-commit"
KEY = SigningKey.from_seed(ORIGIN, bytes([7]) * 32)
PATIENTS = 1000
_PATIENT_KEY = new_box_key()
_PSEUDONYMS = [new_pseudonym() for _ in range(PATIENTS)]


def _exchange(n: int, read: str) -> Exchange:
    """The benchmark's read number ``n``: ``READ`` of patient ``n % PATIENTS``."""
    patient = f"pat-{n % PATIENTS:04d}"
    reference = f"Patient/{patient}"
    if read == "patient":
        request = FhirRequest(
            Interaction.READ, "GET", Level.INSTANCE, reference, b"", "Patient", patient
        )
        released = reference
    else:
        released = f"Observation/obs-{n}"
        request = FhirRequest(
            Interaction.READ, "GET", Level.INSTANCE, released, b"", "Observation", f"obs-{n}"
        )
    assert READ.decisions
    (decision,) = READ.decisions.values()
    return dataclasses.replace(
        READ,
        request=request,
        request_id=f"req-{n}",
        raw_request=b"GET /fhir/" + released.encode(),
        decisions={reference: decision},
        released=frozenset({reference}),
        resource_refs=(released,),
    )


def entries(start: int, count: int, *, rows: bool, read: str) -> list[NewEntry]:
    """``count`` read entries from number ``start``, as the recorder seals them."""
    out = []
    for n in range(start, start + count):
        (p,) = plan(_exchange(n, read), "exchange", 1_700_000_000_000_000 + n, GATEWAY)
        pseudonym = _PSEUDONYMS[n % PATIENTS]
        salt = new_salt()
        out.append(
            NewEntry(
                kind=p.kind,
                recorded_us=p.facts.recorded_us,
                salt=salt,
                evidence=seal_facts(_PATIENT_KEY, salt, encode_facts(p.facts)),
                pseudonym=pseudonym,
                consent=p.consent,
                flags=p.flags,
                row=row_of(p.facts, kind=p.kind, flags=p.flags, pseudonym=pseudonym)
                if rows
                else None,
            )
        )
    return out


class _Timed:
    """A connection whose ``execute``/``executemany`` add their thread CPU time to ``spent``
    under the statement's first words (what ``_append`` and the index functions call)."""

    def __init__(self, c: sqlite3.Connection, spent: dict[str, int]) -> None:
        self._c = c
        self._spent = spent

    def _time(self, sql: str, call: Callable[[], Any]) -> Any:
        start = time.thread_time_ns()
        result = call()
        if isinstance(result, sqlite3.Cursor) and sql.lstrip().upper().startswith("SELECT"):
            result = _Rows(result.fetchall())  # the fetch is the statement's work
        self._spent[_label(sql)] += time.thread_time_ns() - start
        return result

    def execute(self, sql: str, args: Any = ()) -> Any:
        return self._time(sql, lambda: self._c.execute(sql, args))

    def executemany(self, sql: str, args: Any) -> Any:
        return self._time(sql, lambda: self._c.executemany(sql, args))


class _Rows(list[Any]):
    def fetchone(self) -> Any:
        return self[0] if self else None


def _label(sql: str) -> str:
    words = sql.split()
    if words[0] == "SELECT":
        return " ".join(words[:2] + words[words.index("FROM") + 1 : words.index("FROM") + 2])
    if words[0] == "INSERT":
        return " ".join(words[:3] if words[1] == "INTO" else words[:5])
    return " ".join(words[:2])


def _batches(batch: list[NewEntry], size: int) -> Iterator[list[NewEntry]]:
    for start in range(0, len(batch), size):
        yield batch[start : start + size]


#: The store's memory of its chains (``SqliteLogStore._tails``), as its appends use it.
TAILS = ChainTails()


def _transaction(
    c: sqlite3.Connection | _Timed, batch: Sequence[NewEntry], sign: CheckpointSigner
) -> None:
    c.execute("BEGIN IMMEDIATE")
    _append(c, batch, sign)
    c.execute("COMMIT")


def _append(
    c: sqlite3.Connection | _Timed, batch: Sequence[NewEntry], sign: CheckpointSigner
) -> None:
    ledger_sqlite._append(c, batch, sign, TAILS)  # type: ignore[arg-type]


def measure(c: sqlite3.Connection, batch: list[NewEntry], size: int) -> float:
    """Thread CPU microseconds per entry appending ``batch`` in batches of ``size``."""
    sign = checkpoint_signer(KEY, ORIGIN)
    start = time.thread_time_ns()
    for part in _batches(batch, size):
        _transaction(c, part, sign)
    return (time.thread_time_ns() - start) / len(batch) / 1000


def breakdown(c: sqlite3.Connection, batch: list[NewEntry], size: int) -> dict[str, float]:
    """Per-entry microseconds by SQL statement, signing, and Python (the rest)."""
    spent: dict[str, int] = defaultdict(int)
    timed = _Timed(c, spent)
    signer = checkpoint_signer(KEY, ORIGIN)

    def sign(size: int, root: bytes) -> str:
        start = time.thread_time_ns()
        note = signer(size, root)
        spent["(checkpoint signature)"] += time.thread_time_ns() - start
        return note

    start = time.thread_time_ns()
    for part in _batches(batch, size):
        _transaction(timed, part, sign)
    total = time.thread_time_ns() - start
    spent["(Python: planning, leaves, rows)"] = total - sum(spent.values())
    return {k: v / len(batch) / 1000 for k, v in spent.items()}


def profile(c: sqlite3.Connection, batch: list[NewEntry], size: int) -> None:
    sign = checkpoint_signer(KEY, ORIGIN)
    prof = cProfile.Profile()
    for part in _batches(batch, size):
        c.execute("BEGIN IMMEDIATE")
        prof.runcall(_append, c, part, sign)
        c.execute("COMMIT")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


async def run(args: argparse.Namespace, tmp: Path) -> None:
    global TAILS  # noqa: PLW0603  (the store's, once it exists)
    store = await SqliteLogStore.open(tmp / "bench.db")
    db = store._db
    TAILS = store._tails
    made = 0

    def take(count: int, *, rows: bool) -> list[NewEntry]:
        nonlocal made
        made += count
        return entries(made - count, count, rows=rows, read=args.read)

    try:
        sign = checkpoint_signer(KEY, ORIGIN)
        for part in _batches(take(args.prefill, rows=True), 256):
            await store.append(part, sign=sign)
        results: dict[tuple[int, bool], float] = {}
        for rows in (False, True):
            for size in args.batches:
                best = float("inf")
                for _ in range(args.repeat):
                    batch = take(args.entries, rows=rows)
                    best = min(
                        best, await db.run(functools.partial(measure, batch=batch, size=size))
                    )
                results[size, rows] = best
        print(f"writer CPU per entry, us ({args.read} read, thread_time, best of {args.repeat})")
        print("| batch | rows off | with rows | rows' share |")
        print("| ---: | ---: | ---: | ---: |")
        for size in args.batches:
            off, on = results[size, False], results[size, True]
            print(f"| {size} | {off:.1f} | {on:.1f} | {on - off:.1f} |")
        for rows in (False, True) if args.split > 0 else ():
            parts: dict[str, float] = {}
            for _ in range(args.repeat):
                batch = take(args.entries, rows=rows)
                got = await db.run(functools.partial(breakdown, batch=batch, size=args.split))
                parts = got if not parts or sum(got.values()) < sum(parts.values()) else parts
            print(
                f"\nbreakdown, batches of {args.split} {'with rows' if rows else 'rows off'},"
                " us per entry"
            )
            print("| part | us |")
            print("| --- | ---: |")
            for label, us in sorted(parts.items(), key=lambda kv: -kv[1]):
                print(f"| {label} | {us:.1f} |")
            print(f"| total | {sum(parts.values()):.1f} |")
        if args.profile:
            batch = take(args.entries, rows=True)
            await db.run(lambda c: profile(c, batch, args.split or 16))
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--prefill", type=int, default=20_000)
    parser.add_argument("--read", choices=("patient", "observation"), default="patient")
    parser.add_argument("--split", type=int, default=16, help="breakdown batch size, 0: none")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
