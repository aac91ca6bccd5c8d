"""Ledger benchmarks: durable appends, full-log verification, proof sizes.

    python -m bench.ledger [--duration 3] [--appenders 1,16,64] [--leaves 200000]
                           [--backends sqlite,postgres]

Appends: ``N`` concurrent appenders each loop ``await writer.append(entry)`` through the
group-commit :class:`~middleware.ledger.writer.LedgerWriter` (the gateway's settings: batches
of up to 256, no wait), on SQLite (a fresh file in a temporary directory, WAL,
``synchronous=FULL``) and on PostgreSQL (a fresh schema; ``BENCH_POSTGRES_DSN`` or
``postgresql://127.0.0.1:5432/test``), for ``--duration`` seconds after an unmeasured half
second. An append counts once ``append`` has returned, i.e. its batch has committed. Reported:
appends/s and the p50/p99 latency of ``append``.

Verification: ``verify_log`` over a synthetic PHI-free log of ``--leaves`` leaves with a
checkpoint every 256 leaves (what group commit produces under load), in memory; the same
through an export directory (read + verify); and ``ledger verify --store`` on the SQLite log
the 64-appender run wrote (real batch sizes, so real checkpoint counts).

Proof size at 10**8 entries: the RFC 9162 path length (at most ceil(log2 n) = 27 hashes of
32 bytes), and actual proofs from a *derived* tree of 10**8 identical leaves, whose subtree
hashes depend only on their width and so cost O(log n) each: real, verifiable proofs at that
size without hashing 10**8 leaves. Prints a Markdown table, writes ``bench/results/ledger.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import gc
import json
import math
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.entry import NewEntry
from middleware.ledger.export import read_export, write_export
from middleware.ledger.leaf import EntryFlag, EntryKind, Leaf, encode_leaf, new_pseudonym
from middleware.ledger.merkle import inclusion_path, leaf_hash, node_hash, verify_inclusion
from middleware.ledger.receipt import TlogProof, format_receipt
from middleware.ledger.signing import SigningKey, verify_checkpoint
from middleware.ledger.snapshot import LogSnapshot
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.trust import TrustedKey, TrustPolicy
from middleware.ledger.verify import verify_log, verify_snapshot
from middleware.ledger.writer import LedgerWriter
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_dump import dump_log
from middleware.storage.ledger_postgres import PostgresLogStore
from middleware.storage.ledger_sqlite import SqliteLogStore

RESULTS = Path(__file__).parent / "results" / "ledger.json"
ORIGIN = "bench.consentry.example/ledger"
KEY = SigningKey.from_seed(ORIGIN, bytes([42]) * 32)
POLICY = TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey()),))
DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://127.0.0.1:5432/test")


# --- appends ---------------------------------------------------------------------------------


async def measure_appends(store: LogStore, appenders: int, duration: float) -> dict[str, Any]:
    writer = LedgerWriter(store, KEY, origin=ORIGIN)
    await writer.start()
    pseudonyms = [new_pseudonym() for _ in range(64)]
    latencies: list[float] = []
    measuring = False
    stop = False

    async def appender(worker: int) -> None:
        n = 0
        while not stop:
            entry = NewEntry.create(
                EntryKind.ACCESS_OUTCOME,
                b'{"resourceType":"AuditEvent","n":%d}' % n,
                recorded_us=n,
                pseudonym=pseudonyms[(worker + n) % len(pseudonyms)],
                flags=EntryFlag.PERMIT,
            )
            started = time.perf_counter()
            await writer.append(entry)
            if measuring:
                latencies.append(time.perf_counter() - started)
            n += 1

    tasks = [asyncio.create_task(appender(w)) for w in range(appenders)]
    await asyncio.sleep(0.5)
    measuring, batches, began = True, writer.batches, time.perf_counter()
    await asyncio.sleep(duration)
    measuring, stop = False, True
    elapsed = time.perf_counter() - began
    batches = writer.batches - batches
    await asyncio.gather(*tasks)
    await writer.stop()
    latencies.sort()
    return {
        "appenders": appenders,
        "appends_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "mean_batch": round(len(latencies) / max(batches, 1), 1),
    }


async def bench_backend(name: str, counts: list[int], duration: float, tmp: Path) -> list[Any]:
    rows = []
    for appenders in counts:
        if name == "sqlite":
            store: LogStore = await SqliteLogStore.open(tmp / f"appenders-{appenders}.db")
        else:
            store = await PostgresLogStore.open(DSN, schema=f"consentry_bench_{appenders}")
        try:
            row = await measure_appends(store, appenders, duration)
        finally:
            await store.close()
            if name == "postgres":
                await _drop_schema(f"consentry_bench_{appenders}")
        rows.append({"backend": name, **row})
        print(f"  {name} {appenders:>3} appenders: {row}", flush=True)
    return rows


async def _drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


# --- verification ----------------------------------------------------------------------------


def synthetic_log(size: int, batch: int = 256) -> tuple[list[bytes], list[str]]:
    """``size`` valid leaves over 1,000 patient chains, a signed checkpoint every ``batch``."""
    pseudonyms = [new_pseudonym() for _ in range(1000)]
    last: dict[bytes, int] = {}
    leaves = []
    for i in range(size):
        pseudonym = pseudonyms[i % len(pseudonyms)]
        commitment = leaf_hash(i.to_bytes(8, "big"))
        leaf = Leaf(EntryKind.ACCESS_DECISION, i, pseudonym, commitment, last.get(pseudonym))
        leaves.append(encode_leaf(leaf))
        last[pseudonym] = i
    tree = MerkleLevels.of_leaves(leaves)
    sizes = [*range(0, size, batch), size]
    notes = [KEY.sign_checkpoint(Checkpoint(ORIGIN, n, tree.root(n))) for n in sizes]
    return leaves, notes


def bench_verification(size: int, tmp: Path, sqlite_log: Path | None) -> list[dict[str, Any]]:
    rows = []
    if sqlite_log is not None:  # first, before the synthetic log fills the heap
        gc.collect()
        started = time.perf_counter()
        snapshot = asyncio.run(dump_log(f"sqlite:{sqlite_log}"))
        report = verify_snapshot(snapshot, POLICY)
        elapsed = time.perf_counter() - started
        assert report.ok, report.findings[:3]
        label = "SQLite store of the 64-appender run (dump + verify, evidence too)"
        rows.append(_verify_row(label, report.size, report.checkpoints, elapsed))
        del snapshot

    leaves, notes = synthetic_log(size)
    gc.collect()
    started = time.perf_counter()
    report = verify_log(leaves, notes, POLICY)
    elapsed = time.perf_counter() - started
    assert report.ok, report.findings[:3]
    rows.append(_verify_row("in memory (verify_log)", report.size, len(notes), elapsed))

    export = tmp / "export"
    write_export(LogSnapshot(leaves, notes), export)
    del leaves, report
    gc.collect()
    started = time.perf_counter()
    exported = read_export(export)
    report = verify_snapshot(exported.snapshot, POLICY, proofs=exported.proofs)
    elapsed = time.perf_counter() - started
    assert report.ok, report.findings[:3]
    rows.append(_verify_row("export dir (read + verify + proofs)", size, len(notes), elapsed))
    for row in rows:
        print(f"  verify {row}", flush=True)
    return rows


def _verify_row(source: str, leaves: int, checkpoints: int, elapsed: float) -> dict[str, Any]:
    return {
        "source": source,
        "leaves": leaves,
        "checkpoints": checkpoints,
        "seconds": round(elapsed, 3),
        "leaves_per_s": round(leaves / elapsed),
    }


# --- proof size ------------------------------------------------------------------------------


def bench_proof_size(size: int = 10**8) -> dict[str, Any]:
    """Inclusion proofs in a tree of ``size`` identical leaves (see the module docstring)."""
    leaf = encode_leaf(Leaf(EntryKind.ACCESS_DECISION, 0, None, bytes(32)))
    hashed = leaf_hash(leaf)

    @functools.cache
    def width_hash(width: int) -> bytes:  # MTH of `width` identical leaves
        if width == 1:
            return hashed
        split = 1 << ((width - 1).bit_length() - 1)
        return node_hash(width_hash(split), width_hash(width - split))

    def subtree(lo: int, hi: int) -> bytes:
        return width_hash(hi - lo)

    root = width_hash(size)
    note = KEY.sign_checkpoint(Checkpoint(ORIGIN, size, root))
    checkpoint = verify_checkpoint(note, [KEY.verifier()], origin=ORIGIN)
    longest: dict[str, Any] = {}
    for index in (0, size // 2, 2**26, size - 2, size - 1):
        path = inclusion_path(subtree, index, size)
        verify_inclusion(hashed, index, size, path, checkpoint.root_hash)
        if len(path) >= len(longest.get("hashes", [])):
            longest = {"index": index, "hashes": path}
    path = longest["hashes"]
    body = {
        "index": longest["index"],
        "size": size,
        "leaf_hash": _b64(hashed),
        "hashes": [_b64(h) for h in path],
    }
    receipt = format_receipt(TlogProof(longest["index"], tuple(path), note, leaf))
    result = {
        "tree_size": size,
        "formula_max_hashes": math.ceil(math.log2(size)),
        "formula_max_bytes": math.ceil(math.log2(size)) * 32,
        "actual_hashes": len(path),
        "actual_raw_bytes": 32 * len(path),
        "actual_json_hashes_bytes": len(json.dumps(body["hashes"], separators=(",", ":"))),
        "actual_json_proof_bytes_without_checkpoint": len(json.dumps(body, separators=(",", ":"))),
        "signed_checkpoint_bytes": len(note.encode()),
        "tlog_proof_receipt_bytes": len(receipt.encode()),
        "how": "derived tree of 10**8 identical leaves; proofs verified with verify_inclusion",
    }
    print(f"  proof size {result}", flush=True)
    return result


# --- report ----------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| backend | appenders | appends/s | p50 ms | p99 ms | mean batch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["appends"]:
        lines.append(
            f"| {r['backend']} | {r['appenders']} | {r['appends_per_s']:,} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['mean_batch']} |"
        )
    lines += ["", "| verification | leaves | checkpoints | seconds | leaves/s |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for r in results["verification"]:
        lines.append(
            f"| {r['source']} | {r['leaves']:,} | {r['checkpoints']:,} | {r['seconds']} "
            f"| {r['leaves_per_s']:,} |"
        )
    p = results["proof_size"]
    lines += [
        "",
        f"Inclusion proof at {p['tree_size']:,} entries: {p['actual_hashes']} hashes = "
        f"{p['actual_raw_bytes']} bytes raw (formula: at most {p['formula_max_hashes']} = "
        f"{p['formula_max_bytes']} bytes); {p['actual_json_proof_bytes_without_checkpoint']} "
        f"bytes as JSON without the checkpoint; {p['tlog_proof_receipt_bytes']} bytes as a "
        f"C2SP tlog-proof receipt with its {p['signed_checkpoint_bytes']}-byte signed checkpoint.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--appenders", default="1,16,64")
    parser.add_argument("--leaves", type=int, default=200_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    counts = [int(n) for n in args.appenders.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    results: dict[str, Any] = {
        "benchmark": "ledger",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "duration_s": args.duration,
        "appends": [],
    }
    with tempfile.TemporaryDirectory(prefix="consentry-bench-") as tmp:
        for name in backends:
            results["appends"] += _run(bench_backend(name, counts, args.duration, Path(tmp)))
        written = Path(tmp) / f"appenders-{max(counts)}.db"
        sqlite_log = written if "sqlite" in backends and written.exists() else None
        results["verification"] = bench_verification(args.leaves, Path(tmp), sqlite_log)
    results["proof_size"] = bench_proof_size()
    results["notes"] = [
        "appends: LedgerWriter defaults (max_batch 256, max_wait 0); latency of append()",
        "verification: every leaf hash, root, chain and checkpoint signature recomputed",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(markdown(results))


def _run(coro: Any) -> Any:
    try:
        import uvloop  # noqa: PLC0415 - the gateway's loop when available

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


if __name__ == "__main__":
    main()
