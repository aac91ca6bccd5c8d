"""A gateway process in miniature, for the multi-process tests: open the store, start a
writer, wait for ``go`` on stdin, append concurrently, print what was acknowledged as JSON.

    python -m tests.contract.append_worker sqlite PATH WORKER COUNT
    python -m tests.contract.append_worker postgres DSN#SCHEMA WORKER COUNT

Each worker appends ``COUNT`` entries of its own (keys ``w<WORKER>-<n>``) and the same
:data:`SHARED` entries as every other worker (keys ``shared-<n>``), over the pseudonyms every
worker uses, all at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from middleware.ledger.writer import LedgerWriter
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import KEY, PSEUDONYMS, entry

SHARED = 10


async def open_store(backend: str, target: str) -> LogStore:
    if backend == "sqlite":
        return await SqliteLogStore.open(Path(target), busy_timeout=30)
    dsn, _, schema = target.partition("#")
    return await PostgresLogStore.open(dsn, schema=schema, max_size=2)


async def main(backend: str, target: str, worker: int, count: int) -> None:
    store = await open_store(backend, target)
    writer = LedgerWriter(store, KEY, max_batch=8, max_wait=0.001)
    await writer.start()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    own = [
        entry(worker * 100_000 + n, pseudonym=PSEUDONYMS[n % len(PSEUDONYMS)], key=f"w{worker}-{n}")
        for n in range(count)
    ]
    shared = [entry(n, pseudonym=PSEUDONYMS[0], key=f"shared-{n}") for n in range(SHARED)]
    indexes = await asyncio.gather(*(writer.append(e) for e in own + shared))
    await writer.stop()
    await store.close()
    report = {"own": indexes[:count], "shared": indexes[count:], "batches": writer.batches}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
