"""What sharing state through PostgreSQL costs a replica: revocation propagation, and the reads
made per request.

    python -m bench.revocation [--trials 200] [--reads 2000]

On a fresh schema of the test database (``TEST_POSTGRES_DSN`` or
``postgresql://127.0.0.1:5432/test``, dropped afterwards):

**Propagation.** A second process (this module with ``--listen``) holds a
:class:`~middleware.storage.revocations_postgres.PostgresRevocations` list, as a replica does.
This process records ``--trials`` revocations one after another (``record_revocation``: the
insert and its NOTIFY in one transaction) and the listener prints, for each, the moment its
set held it. Latency = that moment minus the moment just before the insert's transaction began
(``time.monotonic``, one clock for both processes on Linux). Reported p50/p99/max in ms.

**Per-request reads.** Each ``--reads`` times, timed one by one, on one warm pool:
``latest_consent`` (the ledger's consent position the consent registry reads before every
decision, ``PostgresLogStore``, on a log holding one consent entry), the session board's
check (``PostgresSessionBoard.active`` for one patient, break-the-glass callers only), the
revocation check from the table (what a replica does per request while its listener is down)
and from the pushed set (what it does otherwise). Reported p50/p99 in microseconds.

Writes ``bench/results/revocation.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.auth.identity import Identity
from middleware.auth.revocation import Revocation
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind, new_pseudonym
from middleware.ledger.sequencer import CheckpointSigner
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.breakglass_postgres import PostgresSessionBoard
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.postgres_pool import open_pool
from middleware.storage.revocations_postgres import SCHEMA, PostgresRevocations, record_revocation

DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://127.0.0.1:5432/test")
RESULTS = Path(__file__).parent / "results" / "revocation.json"
TOKEN = Identity(subject="dr", issuer="iss", expires_at=9e9, client_id="app", token_id="kept")


def _quantiles(values: list[float], scale: float) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * scale

    return {
        "p50": round(pick(0.5), 3),
        "p99": round(pick(0.99), 3),
        "max": round(ordered[-1] * scale, 3),
    }


async def _listen(schema: str) -> None:
    """The listening replica: print ``<jti> <monotonic>`` for each revocation its set gains."""

    async def named() -> str:
        return schema

    listed = PostgresRevocations(DSN, schema=named)
    await _live(listed)
    print("ready", flush=True)
    seen: set[str] = set()
    while True:
        changed = listed.changed
        await changed.wait()
        now = time.monotonic()
        for jti in listed._set.jtis - seen:  # the bench reads the held set
            print(f"{jti} {now}", flush=True)
            seen.add(jti)
        if "stop" in seen:
            break
    await listed.aclose()


async def _live(listed: PostgresRevocations) -> None:
    """Start ``listed`` and wait until its listener has loaded the set."""
    await listed.revoked(TOKEN, None)
    while not listed.live:  # noqa: ASYNC110  # a flag, not an event, in the list
        await asyncio.sleep(0.01)


async def _propagation(schema: str, trials: int) -> dict[str, Any]:
    pool = await open_pool(DSN, schema=schema, ddl=SCHEMA, what="bench")
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.revocation",
        "--listen",
        schema,
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    assert listener.stdout is not None
    try:
        assert (await listener.stdout.readline()).strip() == b"ready"
        latencies: list[float] = []
        for i in range(trials):
            started = time.monotonic()
            await record_revocation(pool, Revocation("jti", f"t-{i}"), reason="bench", at=1.0)
            jti, at = (await listener.stdout.readline()).decode().split()
            assert jti == f"t-{i}"
            latencies.append(float(at) - started)
        await record_revocation(pool, Revocation("jti", "stop"), reason="bench", at=1.0)
        await asyncio.wait_for(listener.wait(), 10)
    finally:
        if listener.returncode is None:
            listener.kill()
            await listener.wait()
        await pool.close()
    return {"trials": trials, **_quantiles(latencies, 1000)}


async def _timed(reads: int, call: Any) -> dict[str, float]:
    await call()
    times: list[float] = []
    for _ in range(reads):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return {k: v for k, v in _quantiles(times, 1e6).items() if k != "max"}


async def _reads(schema: str, reads: int) -> dict[str, Any]:
    async def named() -> str:
        return schema

    log = await PostgresLogStore.open(DSN, schema=schema, max_size=2)
    key = SigningKey.generate("bench.test/ledger")
    sign: CheckpointSigner = checkpoint_signer(key, "bench.test/ledger")
    consent = NewEntry.create(EntryKind.CONSENT, b"{}", pseudonym=new_pseudonym(), recorded_us=1)
    await log.append([consent], sign=sign)
    board = PostgresSessionBoard(DSN, bytes(32), schema=named)
    cold = PostgresRevocations(DSN, schema=named, heartbeat=3600)
    live = PostgresRevocations(DSN, schema=named)
    try:
        await _live(live)
        result = {
            "consent_position_us": await _timed(reads, log.latest_consent),
            "breakglass_check_us": await _timed(
                reads, lambda: board.active("iss\x00dr\x00", ["Patient/p1"], 1.0)
            ),
            "revocation_from_table_us": await _timed(reads, lambda: _table_check(cold)),
            "revocation_from_set_us": await _timed(reads, lambda: live.revoked(TOKEN, None)),
        }
    finally:
        await board.aclose()
        await cold.aclose()
        await live.aclose()
        await log.close()
    return result


async def _table_check(listed: PostgresRevocations) -> bool:
    listed.live = False  # as while its listener reconnects
    return await listed.revoked(TOKEN, None)


async def main(trials: int, reads: int) -> dict[str, Any]:
    schema = f"consentry_bench_{os.getpid()}"
    try:
        return {
            "propagation_ms": await _propagation(schema, trials),
            "reads": await _reads(schema, reads),
            "cpus": os.cpu_count(),
        }
    finally:
        conn = await asyncpg.connect(DSN)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen:
        asyncio.run(_listen(args.listen))
    else:
        figures = asyncio.run(main(args.trials, args.reads))
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
        print(json.dumps(figures, indent=2))
