"""Audit index benchmark: how fast the index is rebuilt, and how fast a patient's accounting
reads it.

    python -m bench.audit_index [--rows 20000] [--patients N] [--batch 5000]
                                [--backends sqlite,postgres]

Builds ``--rows`` synthetic :class:`~middleware.audit.row.AuditRow` values (seeded; spread
uniformly over the last seven years; ``--patients`` patients, default one per 200 rows; 500
agents; reads touching one resource, searches up to ten; a few purposes of use), then:

- **reindex**: ``clear_index()`` and ``reindex()`` in chunks of ``--batch`` rows, as
  ``consentry audit reindex`` does, into a fresh SQLite file (WAL, ``synchronous=FULL``) and
  a fresh PostgreSQL schema (``BENCH_POSTGRES_DSN`` or ``postgresql://127.0.0.1:5432/test``).
  Only the ``reindex`` calls are timed (not building the rows). The log's leaves are appended
  first, untimed and without index rows (entries of the rows' time, kind, flags and
  pseudonym, dummy evidence): every store refuses a reindexed row whose leaf is missing or
  names another pseudonym, and SQLite finds a pseudonym's rows through the leaves' index.
- **accounting**: for 20 patients, every row of ``AuditQuery(patient=..., since_us=six years
  ago)`` read page by page (1,000 a page, keyset paging) as an accounting of disclosures
  does, and its ``audit_count``; median and worst. The same for the patient's pseudonym
  (``AuditQuery(pseudonym=..., include_shredded=True)``, how an accounting reads the chains
  a shred left). Plus the first page (100 rows) of a
  one-day date-range search, of a bare purpose code over a month and of an entity.

Prints a Markdown table and writes ``bench/results/audit_index.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from middleware.audit.row import AuditQuery, AuditRow
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore

_US = 1_000_000
_DAY = 86_400 * _US
_YEAR = 365 * _DAY
_V3 = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_PURPOSES = [f"{_V3}|TREAT", f"{_V3}|HPAYMT", f"{_V3}|HOPERAT", f"{_V3}|PUBHLTH", f"{_V3}|HRESCH"]
_TYPES = ["Observation", "Condition", "MedicationRequest", "Encounter", "Patient"]
_REST = "http://terminology.hl7.org/CodeSystem/audit-event-type|rest"
_ORIGIN = "bench.consentry.example/audit-index"
_SIGN = checkpoint_signer(SigningKey.from_seed(_ORIGIN, bytes([7]) * 32), _ORIGIN)


def rows(count: int, patients: int, now_us: int, seed: int = 7) -> Iterator[AuditRow]:
    """``count`` rows with indexes 0..count-1, times ascending over seven years."""
    rng = random.Random(seed)
    chains = pseudonyms(patients, seed)
    start = now_us - 7 * _YEAR
    step = 7 * _YEAR // max(count, 1)
    for index in range(count):
        p = rng.randrange(patients)
        kind = rng.choice((3, 3, 3, 5))
        types = tuple(rng.sample(_TYPES, rng.randint(1, 2)))
        many = rng.random() < 0.2
        entities = tuple(
            f"{rng.choice(types)}/{rng.randrange(10**6)}" for _ in range(10 if many else 1)
        )
        yield AuditRow(
            index=index,
            recorded_us=start + index * step,
            kind=kind,
            flags=1,
            patient=f"Patient/p{p}",
            pseudonym=chains[p],
            agent=f"Practitioner/{rng.randrange(500)}",
            roles=("doctor",),
            organization=f"Organization/{rng.randrange(20)}",
            client=f"client-{rng.randrange(10)}",
            purposes=(rng.choice(_PURPOSES),),
            action="R",
            event_type=_REST,
            subtype="search-type" if many else "read",
            outcome="0",
            resource_types=types,
            entities=entities,
            break_glass=rng.random() < 0.01,
            request_id=f"{index:032x}",
        )


def pseudonyms(patients: int, seed: int = 7) -> list[bytes]:
    """The patients' pseudonyms (seeded apart from :func:`rows`' other choices)."""
    rng = random.Random(seed + 1)
    return [rng.randbytes(16) for _ in range(patients)]


async def append_leaves(store: LogStore, args: argparse.Namespace, now_us: int) -> None:
    """Append the entries :func:`rows` index, without index rows (module docstring)."""
    batch: list[NewEntry] = []
    for row in rows(args.rows, args.patients, now_us):
        batch.append(
            NewEntry.create(
                EntryKind(row.kind),
                b"bench",
                recorded_us=row.recorded_us,
                pseudonym=row.pseudonym,
                flags=EntryFlag(row.flags),
            )
        )
        if len(batch) == args.batch:
            await store.append(batch, sign=_SIGN)
            batch = []
    await store.append(batch, sign=_SIGN)


async def reindex(store: LogStore, args: argparse.Namespace, now_us: int) -> dict[str, float]:
    """Rows per second of a full rebuild: ``clear_index``, every ``reindex`` chunk and the
    first search (which builds the secondary indexes a bulk rebuild defers), by wall clock
    and by this process's CPU time (on a shared machine the wall clock also counts other
    processes' turns). The leaves are appended first (untimed)."""
    await append_leaves(store, args, now_us)
    wall = cpu = 0.0

    async def timed_call(fn: Callable[[], Awaitable[object]]) -> None:
        nonlocal wall, cpu
        began, began_cpu = time.perf_counter(), time.process_time()
        await fn()
        wall += time.perf_counter() - began
        cpu += time.process_time() - began_cpu

    await timed_call(store.clear_index)
    chunk: list[AuditRow] = []
    for row in rows(args.rows, args.patients, now_us):
        chunk.append(row)
        if len(chunk) == args.batch:
            await timed_call(lambda c=chunk: store.reindex(c))  # type: ignore[misc]
            chunk = []
    await timed_call(lambda: store.reindex(chunk))
    await timed_call(lambda: store.audit_count(AuditQuery(until_us=0)))
    return {"reindex_rows_per_s": args.rows / wall, "reindex_rows_per_cpu_s": args.rows / cpu}


async def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = await fn()
    return time.perf_counter() - began, result


async def accounting(store: LogStore, patient: str, since_us: int) -> int:
    """Every row of the patient since ``since_us``, a page at a time; the number read."""
    query = AuditQuery(patient=patient, since_us=since_us, limit=1000)
    read = 0
    while page := await store.audit_rows(query):
        read += len(page)
        query = replace(query, after=(page[-1].recorded_us, page[-1].index))
    return read


async def chain(store: LogStore, pseudonym: bytes, since_us: int) -> int:
    """Every row of the pseudonym since ``since_us`` (shredded ones too), a page at a time."""
    query = AuditQuery(pseudonym=pseudonym, include_shredded=True, since_us=since_us, limit=1000)
    read = 0
    while page := await store.audit_rows(query):
        read += len(page)
        query = replace(query, after=(page[-1].recorded_us, page[-1].index))
    return read


async def queries(store: LogStore, args: argparse.Namespace, now_us: int) -> dict[str, Any]:
    rng = random.Random(11)
    since = now_us - 6 * _YEAR
    chains = pseudonyms(args.patients)
    walks, counts, sizes, chain_walks = [], [], [], []
    for _ in range(20):
        number = rng.randrange(args.patients)
        patient = f"Patient/p{number}"
        seconds, read = await timed(lambda p=patient: accounting(store, p, since))  # type: ignore[misc]
        walks.append(seconds)
        sizes.append(read)
        seconds, in_chain = await timed(
            lambda p=chains[number]: chain(store, p, since)  # type: ignore[misc]
        )
        chain_walks.append(seconds)
        assert in_chain == read, (in_chain, read)
        seconds, counted = await timed(
            lambda p=patient: store.audit_count(AuditQuery(patient=p, since_us=since))  # type: ignore[misc]
        )
        counts.append(seconds)
        assert counted == read, (counted, read)
    day = now_us - 400 * _DAY
    firsts = {
        "date range, 1 day, first 100": AuditQuery(since_us=day, until_us=day + _DAY),
        "bare purpose code, 30 days, first 100": AuditQuery(
            purpose="PUBHLTH", since_us=day, until_us=day + 30 * _DAY
        ),
        "entity, first 100": AuditQuery(entity="Observation/123456"),
    }
    first_pages = {}
    for name, query in firsts.items():
        seconds, _ = await timed(lambda q=query: store.audit_rows(q))  # type: ignore[misc]
        first_pages[name] = seconds * 1000
    return {
        "accounting_rows_median": statistics.median(sizes),
        "accounting_ms_median": statistics.median(walks) * 1000,
        "accounting_ms_max": max(walks) * 1000,
        "count_ms_median": statistics.median(counts) * 1000,
        "chain_ms_median": statistics.median(chain_walks) * 1000,
        "chain_ms_max": max(chain_walks) * 1000,
        "first_page_ms": first_pages,
    }


async def run(backend: str, args: argparse.Namespace, now_us: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store: LogStore
        schema = None
        if backend == "sqlite":
            store = await SqliteLogStore.open(Path(tmp) / "ledger.sqlite3")
        else:
            dsn = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://127.0.0.1:5432/test")
            schema = f"bench_audit_{secrets.token_hex(4)}"
            store = await PostgresLogStore.open(dsn, schema=schema)
        try:
            result: dict[str, Any] = {"backend": backend}
            result |= await reindex(store, args, now_us)
            result |= await queries(store, args, now_us)
        finally:
            if isinstance(store, PostgresLogStore) and schema is not None:
                async with store._pool.acquire() as conn:
                    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await store.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--patients", type=int, default=0, help="default: rows / 200")
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--backends", default="sqlite")
    args = parser.parse_args()
    args.patients = args.patients or max(1, args.rows // 200)
    now_us = time.time_ns() // 1000
    results = [asyncio.run(run(b, args, now_us)) for b in args.backends.split(",")]
    print(f"audit index, {args.rows:,} rows, {args.patients:,} patients ({platform.node()})\n")
    print(
        "| backend | reindex rows/s | accounting rows | accounting ms (median / max) "
        "| count ms | pseudonym ms (median / max) | first pages ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        firsts = ", ".join(f"{k}: {v:.1f}" for k, v in r["first_page_ms"].items())
        print(
            f"| {r['backend']} | {r['reindex_rows_per_s']:,.0f} "
            f"({r['reindex_rows_per_cpu_s']:,.0f} per CPU s) | {r['accounting_rows_median']:.0f} "
            f"| {r['accounting_ms_median']:.1f} / {r['accounting_ms_max']:.1f} "
            f"| {r['count_ms_median']:.1f} "
            f"| {r['chain_ms_median']:.1f} / {r['chain_ms_max']:.1f} | {firsts} |"
        )
    out = Path(__file__).parent / "results" / "audit_index.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"rows": args.rows, "patients": args.patients, "results": results}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
