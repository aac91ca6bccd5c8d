"""An appending gateway process to kill: appends forever, printing each acknowledged entry.

    python -m tests.crash.appender sqlite PATH ROUND
    python -m tests.crash.appender postgres DSN#SCHEMA ROUND

After ``ready``, eight concurrent appenders each loop: append an entry with key
``r<ROUND>-<n>`` and evidence ``evidence r<ROUND>-<n>``; once ``append`` has returned (the
batch committed), print ``<index> <key>`` and flush. A line on stdout is therefore a promise
the log must keep, however the process dies afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.ledger.writer import LedgerWriter
from tests.contract.append_worker import open_store
from tests.contract.helpers import KEY, PSEUDONYMS

APPENDERS = 8


def evidence_of(key: str) -> bytes:
    return f"evidence {key}".encode()


async def main(backend: str, target: str, round_: int) -> None:
    store = await open_store(backend, target)
    writer = LedgerWriter(store, KEY, max_batch=16, max_wait=0.001)
    await writer.start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    counter = itertools.count()

    async def appender() -> None:
        while True:
            n = next(counter)
            key = f"r{round_}-{n}"
            new = NewEntry.create(
                EntryKind.ACCESS_OUTCOME,
                evidence_of(key),
                recorded_us=n,
                pseudonym=PSEUDONYMS[n % len(PSEUDONYMS)],
                idempotency_key=key,
            )
            index = await writer.append(new)
            sys.stdout.write(f"{index} {key}\n")
            sys.stdout.flush()

    await asyncio.gather(*(appender() for _ in range(APPENDERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
