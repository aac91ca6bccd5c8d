"""Several processes appending to one SQLite ledger: do they fight over the write lock?

    python -m bench.shared_writes [--processes 1,2] [--concurrency 16] [--duration 5]

What ``consentry serve --workers N`` does to the store, without HTTP: each process opens the
SQLite log store on one file and runs the gateway's group-commit writer (``max_batch`` 256, no
added wait) with ``--concurrency`` tasks appending one entry after another, like that many
requests each waiting for its audit entry. Reported per process count: entries/s over all
processes, the append latency (p50, p99, max), commits and entries per commit, and CPU
(``time.process_time`` of every process, its SQLite thread included) per entry.

The script imports ``middleware`` from ``PYTHONPATH`` first, so the same file measures another
checkout: ``cd /tmp/base && PYTHONPATH=/tmp/base python /path/to/bench/shared_writes.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

SEED: Final = bytes(range(32))


async def _worker(path: Path, worker: int, concurrency: int, duration: float) -> dict[str, Any]:
    from middleware.ledger.entry import NewEntry  # noqa: PLC0415
    from middleware.ledger.leaf import EntryFlag, EntryKind  # noqa: PLC0415
    from middleware.ledger.signing import SigningKey  # noqa: PLC0415
    from middleware.ledger.writer import LedgerWriter  # noqa: PLC0415
    from middleware.storage.ledger_sqlite import SqliteLogStore  # noqa: PLC0415

    store = await SqliteLogStore.open(path, busy_timeout=30)
    writer = LedgerWriter(store, SigningKey.from_seed("bench/ledger", SEED), max_batch=256)
    await writer.start()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    latencies: list[float] = []
    pseudonym = bytes([worker + 1]) * 16
    cpu0 = time.process_time()
    end = time.monotonic() + duration

    async def requests(task: int) -> None:
        n = 0
        while time.monotonic() < end:
            n += 1
            new = NewEntry.create(
                EntryKind.ACCESS_DECISION,
                b"evidence",
                recorded_us=n,
                pseudonym=pseudonym,
                flags=EntryFlag.PERMIT,
                idempotency_key=f"w{worker}-t{task}-{n}",
            )
            started = time.perf_counter()
            await writer.append(new)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(requests(t) for t in range(concurrency)))
    cpu = time.process_time() - cpu0
    batches = writer.batches
    await writer.stop()
    await store.close()
    return {"entries": len(latencies), "latencies": latencies, "cpu": cpu, "batches": batches}


def _run(processes: int, concurrency: int, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="consentry-shared-writes-") as tmp:
        path = Path(tmp) / "ledger.db"
        argv = [sys.executable, __file__, "--worker", str(path), str(concurrency), str(duration)]
        children = []
        for worker in range(processes):
            child = subprocess.Popen(
                [*argv, str(worker)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit("a worker did not start")
            children.append(child)
        started = time.monotonic()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = [json.loads(child.communicate()[0]) for child in children]
        wall = time.monotonic() - started
    latencies = sorted(x for r in reports for x in r["latencies"])
    entries = len(latencies)
    batches = sum(r["batches"] for r in reports)
    return {
        "processes": processes,
        "entries_per_s": round(entries / duration),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
        "commits": batches,
        "entries_per_commit": round(entries / batches, 1) if batches else None,
        "cpu_us_per_entry": round(sum(r["cpu"] for r in reports) / entries * 1e6, 1),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        path, concurrency, duration, worker = sys.argv[2:6]
        report = asyncio.run(_worker(Path(path), int(worker), int(concurrency), float(duration)))
        print(json.dumps(report), flush=True)
        return
    parser = argparse.ArgumentParser(prog="python -m bench.shared_writes", description=__doc__)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--concurrency", type=int, default=16, help="appending tasks each")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    args = parser.parse_args()
    for processes in (int(n) for n in args.processes.split(",")):
        print(json.dumps(_run(processes, args.concurrency, args.duration)), flush=True)


if __name__ == "__main__":
    main()
