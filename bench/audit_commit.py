"""The writer's CPU per audited read on SQLite: the ledger entry and its audit-index row.

    python -m bench.audit_commit [--entries 4096] [--repeat 3] [--batches 1,16,64]
                                 [--prefill 20000] [--read patient|observation]
                                 [--stage] [--merge-at 4096] [--merge-slice 4096]
                                 [--split 16] [--profile]

Entries are what the recorder makes for an enforced read (:mod:`bench.audit_hot`'s read: a
practitioner with two purposes of use and a role, one patient's resource released), one of
1,000 patients each, sealed, with their index row (``with rows``) or without it (``rows
off``: ``NewEntry.row`` None, the ledger entry alone). They are appended in batches of 1, 16
and 64 by the store's own transaction function (``BEGIN IMMEDIATE``, ``_append``,
``COMMIT``) called synchronously on the store's worker thread, on a file the store opened
(WAL, ``synchronous=FULL``) and prefilled with ``--prefill`` entries (with rows) so its
B-trees have a realistic depth. CPU is ``time.thread_time`` of that thread per entry, the
best of ``--repeat`` runs of ``--entries`` entries each; the fsync's wait is not CPU.

An append writes its index rows into the indexed tables, as the store does by default. With
``--stage`` (``SqliteLogStore.stage_index``) it stages them instead, and the store merges them
into the indexed tables once ``merge_at`` are staged (``--merge-at``, default the store's), in
slices of ``merge_slice`` rows a transaction (``--merge-slice``). The bench then does the same
after each append transaction, and each run starts with nothing staged and ends by merging
what it staged, so every run's figure includes the merge of all its rows (a merge of fewer
rows than ``merge_at`` costs more per row: the figure errs high). The full slices' CPU and wall
clock (the write lock's hold an append may wait for) are printed after the table.

The breakdown (batches of ``--split``, rows off and with rows) times each SQL statement
``_append`` runs, summed by statement, the checkpoint signature, the ``COMMIT`` and the
merges (each a transaction: staged rows moved, terms filed, committed); "Python"
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
import statistics
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
from middleware.storage import audit_index_staged, ledger_sqlite
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
#: Staged rows that make a merge (``SqliteLogStore.merge_at``; ``--merge-at``).
MERGE_AT = SqliteLogStore.merge_at
#: Staged rows a merge transaction moves (``SqliteLogStore.merge_slice``; ``--merge-slice``).
MERGE_SLICE = SqliteLogStore.merge_slice
#: Whether appends stage their index rows (``SqliteLogStore.stage_index``; ``--stage``).
STAGE = SqliteLogStore.stage_index
#: Every merge slice's (thread CPU, wall) nanoseconds (the write lock's hold an append waits).
SLICES: list[tuple[int, int]] = []


class _Staging:
    """The staged row count, as ``SqliteLogStore.append`` keeps it, and the merge's CPU."""

    def __init__(self, c: sqlite3.Connection) -> None:
        self.c = c
        self.staged = 0
        self.merge_ns = 0

    def appended(self, batch: Sequence[NewEntry]) -> None:
        if not STAGE:  # the rows went into the indexed tables: nothing to merge
            return
        self.staged += sum(e.row is not None for e in batch)
        if self.staged >= MERGE_AT:
            self.merge()

    def merge(self) -> None:
        """One merge, a transaction a slice, as ``SqliteLogStore._merge`` runs it."""
        while True:
            start, wall = time.thread_time_ns(), time.perf_counter_ns()
            self.c.execute("BEGIN IMMEDIATE")
            moved = audit_index_staged.merge_slice(self.c, MERGE_SLICE).moved
            self.c.execute("COMMIT")
            spent = time.thread_time_ns() - start
            self.merge_ns += spent
            if moved == MERGE_SLICE:  # a full slice (the last one of a merge may be short)
                SLICES.append((spent, time.perf_counter_ns() - wall))
            if moved < MERGE_SLICE:
                break
        self.staged = 0


def _transaction(
    c: sqlite3.Connection | _Timed,
    batch: Sequence[NewEntry],
    sign: CheckpointSigner,
    staging: _Staging,
) -> None:
    c.execute("BEGIN IMMEDIATE")
    _append(c, batch, sign)
    c.execute("COMMIT")
    staging.appended(batch)


def _append(
    c: sqlite3.Connection | _Timed, batch: Sequence[NewEntry], sign: CheckpointSigner
) -> None:
    ledger_sqlite._append(c, batch, sign, TAILS, stage=STAGE)  # type: ignore[arg-type]


def _empty_staging(c: sqlite3.Connection) -> _Staging:
    staging = _Staging(c)
    staging.merge()  # what an earlier run (or the prefill) left: not this run's
    return _Staging(c)


def measure(c: sqlite3.Connection, batch: list[NewEntry], size: int) -> float:
    """Thread CPU microseconds per entry appending ``batch`` in batches of ``size``, the
    merges of its rows included (the last one of what is staged at the end)."""
    sign = checkpoint_signer(KEY, ORIGIN)
    staging = _empty_staging(c)
    start = time.thread_time_ns()
    for part in _batches(batch, size):
        _transaction(c, part, sign, staging)
    staging.merge()
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

    staging = _empty_staging(c)
    start = time.thread_time_ns()
    for part in _batches(batch, size):
        _transaction(timed, part, sign, staging)
    staging.merge()
    total = time.thread_time_ns() - start
    spent["(merges)"] = staging.merge_ns
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
    global TAILS, MERGE_AT, MERGE_SLICE, STAGE  # noqa: PLW0603  (the store's, once it exists)
    MERGE_AT, MERGE_SLICE, STAGE = args.merge_at, args.merge_slice, args.stage
    store = await SqliteLogStore.open(tmp / "bench.db")
    store.merge_at, store.merge_slice = args.merge_at, args.merge_slice
    store.stage_index = args.stage
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
        await store._merge_state.settle()  # a background merge the prefill started
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
        _print_slices()
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
            await db.run(lambda c: profile(c, batch, args.split))
    finally:
        await store.close()


def _print_slices() -> None:
    """Median, 90th percentile and longest full merge slice, CPU and wall (the longest is
    usually the one whose ``COMMIT`` ran a WAL auto-checkpoint, as any transaction may)."""
    if not SLICES:
        return
    print(f"\nfull merge slices of {MERGE_SLICE} rows ({len(SLICES)}), ms: median / p90 / max")
    for name, at in (("CPU", 0), ("wall", 1)):
        ms = sorted(v[at] / 1e6 for v in SLICES)
        p90 = ms[min(len(ms) - 1, len(ms) * 9 // 10)]
        print(f"{name}: {statistics.median(ms):.1f} / {p90:.1f} / {ms[-1]:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--prefill", type=int, default=20_000)
    parser.add_argument("--read", choices=("patient", "observation"), default="patient")
    parser.add_argument(
        "--stage", action="store_true", help="stage index rows and merge them (off by default)"
    )
    parser.add_argument("--merge-at", type=int, default=SqliteLogStore.merge_at)
    parser.add_argument("--merge-slice", type=int, default=SqliteLogStore.merge_slice)
    parser.add_argument("--split", type=int, default=16, help="breakdown batch size, 0: none")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
