"""Several gateway replicas (processes) appending to one PostgreSQL ledger: how far it carries.

    python -m bench.pg_replicas [--processes 1,2,4] [--appenders 16,64] [--duration 4]
                                [--rows | --no-rows] [--dsn DSN]
    python -m bench.pg_replicas --bytes-per-entry 20000

Each process opens :class:`~middleware.storage.ledger_postgres.PostgresLogStore` (a pool of one
connection) on one shared schema (fresh, dropped afterwards) and runs the gateway's
group-commit writer (``max_batch`` 256, no added wait) with ``--appenders`` tasks each
appending one entry after another, like that many requests each waiting for its audit entry.
Entries are what the recorder seals for an enforced read (:func:`bench.audit_commit.entries`:
sealed evidence, one of 1,000 patients, with its audit-index row unless ``--no-rows``), made
before the clock starts. Each process warms up (one second, unmeasured) and then all start
together.

Reported per (processes, appenders): appends/s over all processes, append latency p50/p99,
mean entries per batch, **round trips per batch** (every statement asyncpg sends on the
replica's one connection, ``BEGIN`` and ``COMMIT`` included, counted by a query logger, divided
by batches), **client CPU per append** (``time.process_time`` of the replicas) and **server
CPU per append** (utime + stime from ``/proc/<pid>/stat`` of the PostgreSQL backends serving
the replicas, found by ``application_name``; the WAL writer and checkpointer are not
counted), and ``lock_and_read_share``: time in the lock-and-read statement over time in
``store.append``. That statement waits for the state row lock, then does the append's reads,
so the share includes the reads and one round trip: with one replica nothing contends for the
lock and the share is the reads alone; over that baseline it is waiting.

``--bytes-per-entry N`` instead appends ``N`` such entries in batches of 64 to a fresh schema
and prints ``pg_total_relation_size`` (heap, indexes, TOAST) of each table over ``N``.

The script imports ``middleware`` from ``PYTHONPATH`` first, so one file measures another
checkout: ``PYTHONPATH=/tmp/prev python bench/pg_replicas.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]

DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://127.0.0.1:5432/test")
APP = "consentry-bench-replica"
_TICK = os.sysconf("SC_CLK_TCK")
_ROOT = str(Path(__file__).resolve().parent.parent)


async def _worker(
    dsn: str, schema: str, worker: int, appenders: int, duration: float, rows: bool
) -> dict[str, Any]:
    sys.path.append(_ROOT)  # after PYTHONPATH: another checkout's middleware comes first
    from bench.audit_commit import entries  # noqa: PLC0415
    from middleware.ledger.signing import SigningKey  # noqa: PLC0415
    from middleware.ledger.writer import LedgerWriter  # noqa: PLC0415
    from middleware.storage.ledger_postgres import PostgresLogStore  # noqa: PLC0415

    # One connection: the query logger below is on it, and its backend is the one whose CPU
    # is read (the writer uses one connection at a time, so this costs it nothing).
    store = await PostgresLogStore.open(
        f"{dsn}?application_name={APP}", schema=schema, min_size=1, max_size=1
    )
    measuring = False
    statements = 0
    lock_and_read_s = 0.0
    by_statement: dict[str, float] = {}

    def logged(record: Any) -> None:
        nonlocal statements, lock_and_read_s
        statements += 1
        label = " ".join(record.query.split()[:4])[:48]
        if measuring:
            by_statement[label] = by_statement.get(label, 0.0) + record.elapsed
        if "FOR UPDATE" in record.query or "lock_append" in record.query:
            lock_and_read_s += record.elapsed

    pool = store._pool  # the bench counts what the store sends
    async with pool.acquire() as conn:  # the pool's only connection
        conn.add_query_logger(logged)
    appended = 0
    spent = 0.0
    real_append = store.append

    async def timed_append(batch: Any, *, sign: Any) -> Any:
        nonlocal appended, spent
        started = time.perf_counter()
        try:
            return await real_append(batch, sign=sign)
        finally:
            spent += time.perf_counter() - started
            appended += 1

    store.append = timed_append  # type: ignore[method-assign]
    key = SigningKey.from_seed("bench.consentry.example/replicas", bytes(range(32)))
    writer = LedgerWriter(store, key, max_batch=256)
    await writer.start()
    made = entries(worker * 10**7, 20_000, rows=rows, read="patient")  # reused in a loop
    cursor = 0
    latencies: list[float] = []
    stop = False

    async def appender() -> None:
        nonlocal cursor
        while not stop:
            entry = made[cursor % len(made)]
            cursor += 1
            started = time.perf_counter()
            await writer.append(entry)
            if measuring:
                latencies.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(appender()) for _ in range(appenders)]
    await asyncio.sleep(1.0)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    statements0, appended0, spent0, lock0 = statements, appended, spent, lock_and_read_s
    cpu0 = time.process_time()
    measuring = True
    await asyncio.sleep(duration)
    measuring = False
    cpu = time.process_time() - cpu0
    batches = appended - appended0
    report = {
        "latencies": latencies,
        "cpu": cpu,
        "batches": batches,
        "statements": statements - statements0,
        "append_s": spent - spent0,
        "lock_and_read_s": lock_and_read_s - lock0,
        "by_statement": by_statement,
    }
    print(json.dumps(report), flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the parent reads the backends' CPU first
    stop = True
    await asyncio.gather(*tasks)
    await writer.stop()
    await store.close()
    return report


def _backend_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


async def _backends(dsn: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", APP)
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


async def _schema(dsn: str, schema: str, drop: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        if not drop:
            await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()


def run(dsn: str, processes: int, appenders: int, duration: float, rows: bool) -> dict[str, Any]:
    schema = f"consentry_bench_replicas_{os.getpid()}"
    asyncio.run(_schema(dsn, schema, drop=False))
    argv = [sys.executable, __file__, "--worker", dsn, schema]
    children = []
    try:
        for worker in range(processes):
            child = subprocess.Popen(
                [*argv, str(worker), str(appenders), str(duration), str(int(rows))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            children.append(child)
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit("a replica did not start")
        pids = asyncio.run(_backends(dsn))
        server0 = _backend_cpu(pids)
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            assert child.stdout is not None
            reports.append(json.loads(child.stdout.readline()))
        server = _backend_cpu(pids) - server0
        for child in children:
            child.communicate("stop\n")
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        asyncio.run(_schema(dsn, schema, drop=True))
    latencies = sorted(x for r in reports for x in r["latencies"])
    n = len(latencies)
    batches = sum(r["batches"] for r in reports)
    return {
        "processes": processes,
        "appenders_each": appenders,
        "rows": rows,
        "appends_per_s": round(n / duration),
        "p50_ms": round(latencies[n // 2] * 1000, 2),
        "p99_ms": round(latencies[int(n * 0.99)] * 1000, 2),
        "mean_batch": round(n / max(batches, 1), 1),
        "round_trips_per_batch": round(sum(r["statements"] for r in reports) / max(batches, 1), 2),
        "client_cpu_us_per_append": round(sum(r["cpu"] for r in reports) / n * 1e6, 1),
        "server_cpu_us_per_append": round(server / n * 1e6, 1),
        "lock_and_read_share": round(
            sum(r["lock_and_read_s"] for r in reports)
            / max(sum(r["append_s"] for r in reports), 1e-9),
            3,
        ),
        "loadavg_1m": os.getloadavg()[0],
        "ms_per_batch_by_statement": {
            k: round(sum(r["by_statement"].get(k, 0.0) for r in reports) * 1000 / batches, 3)
            for k in sorted({k for r in reports for k in r["by_statement"]})
        },
    }


#: The log's tables, with their indexes and TOAST (``pg_total_relation_size``).
_TABLES = (
    "consentry_ledger_leaves",
    "consentry_ledger_evidence",
    "consentry_ledger_checkpoints",
    "consentry_audit_index",
)


async def bytes_per_entry(dsn: str, count: int, rows: bool) -> dict[str, Any]:
    """Append ``count`` recorder-made entries (batches of 64, a checkpoint each) to a fresh
    schema, VACUUM ANALYZE, and divide each table's total size (heap, indexes, TOAST) by
    ``count``."""
    from bench.audit_commit import entries  # noqa: PLC0415
    from middleware.ledger.signing import SigningKey  # noqa: PLC0415
    from middleware.ledger.writer import checkpoint_signer  # noqa: PLC0415
    from middleware.storage.ledger_postgres import PostgresLogStore  # noqa: PLC0415

    schema = f"consentry_bench_size_{os.getpid()}"
    await _schema(dsn, schema, drop=False)
    store = await PostgresLogStore.open(dsn, schema=schema)
    try:
        sign = checkpoint_signer(SigningKey.from_seed("bench/size", bytes(32)))
        for start in range(0, count, 64):
            await store.append(
                entries(start, min(64, count - start), rows=rows, read="patient"), sign=sign
            )
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        try:
            for table in _TABLES:
                await conn.execute(f"VACUUM ANALYZE {table}")
            sizes = {
                t: await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", t)
                for t in _TABLES
            }
        finally:
            await conn.close()
    finally:
        await store.close()
        await _schema(dsn, schema, drop=True)
    per = {t.removeprefix("consentry_"): round(b / count, 1) for t, b in sizes.items()}
    return {
        "entries": count,
        "rows": rows,
        "bytes_per_entry": per,
        "total": round(sum(sizes.values()) / count, 1),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        dsn, schema, number, tasks, seconds, with_rows = sys.argv[2:8]
        asyncio.run(_worker(dsn, schema, int(number), int(tasks), float(seconds), with_rows == "1"))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.pg_replicas", description=__doc__)
    parser.add_argument("--processes", default="1,2,4", help="comma-separated replica counts")
    parser.add_argument("--appenders", default="16,64", help="appending tasks per replica")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--rows", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--dsn", default=DSN)
    parser.add_argument(
        "--bytes-per-entry",
        type=int,
        default=0,
        metavar="N",
        help="instead: append N entries and print PostgreSQL bytes per entry by table",
    )
    args = parser.parse_args()
    if args.bytes_per_entry:
        sys.path.append(_ROOT)
        print(json.dumps(asyncio.run(bytes_per_entry(args.dsn, args.bytes_per_entry, args.rows))))
        return
    for processes in (int(n) for n in args.processes.split(",")):
        for appenders in (int(n) for n in args.appenders.split(",")):
            result = run(args.dsn, processes, appenders, args.duration, args.rows)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
