"""Sizing a regional exchange from the costs measured here: shards, databases, replicas,
storage, proofs, and the append latency of the busiest shard at peak.

    python -m bench.scale_sim [--peak 20000] [--hospitals 100] [--zipf 1.0]
                              [--entries 1e11] [--years 10] [--seconds 6] [--seed 1]

Pure Python, no I/O. The inputs default to figures measured on this 2-core machine
(``MEASURED``, each naming the benchmark that gave it; see docs/performance.md and
docs/scale.md) and can be overridden on the command line.

The model (docs/scale.md, "The simulation"):

- Traffic: ``--peak`` FHIR requests/s over ``--hospitals`` tenants whose shares follow Zipf
  (exponent ``--zipf``: the busiest hospital has 1/H(n) of it, 19% for 100 at exponent 1),
  one ledger entry per request (the enforced benchmark's "ledger entries/req").
- One shard is one log (one PostgreSQL state row, the lock that sequences its appends).
  Its replicas each run the group-commit writer: when idle, a writer takes everything queued
  (at most 256) as a batch and waits for the row lock, first come first served across
  replicas; the lock is held ``fixed + per_entry * batch`` plus the round trips made while
  holding it; the batch's appends return at the end. Arrivals are Poisson. A discrete-event
  run of ``--seconds`` simulated seconds (after one unmeasured) gives the p50/p99 append
  latency and the mean batch. (With group commit and no added wait the lock is never idle
  while appends arrive: batches grow with the rate instead, so the headroom is the rate over
  the ceiling, not the lock's busy time.)
- A tenant is split into several shards (by patient pseudonym) until each is at most
  ``--ceiling-share`` of a shard's ceiling and its simulated p99 meets ``--p99-ms``, each
  shard written by ``--replicas-per-shard`` replicas (the tenant's traffic routed to them);
  shards = the sum over tenants. The share is of throughput, not of the lock's busy time: at
  half the ceiling the lock is already held all the time, in smaller batches (about 70 at
  the busiest hospital's rate), so other writers of that row (shreds, key writes) always
  wait for a batch.
- Database servers: total backend CPU (``server_us_per_append`` x appends/s) over
  ``--db-cores`` cores per server at ``--cpu-busy``; gateway replicas likewise with the
  per-request CPU. Storage: PostgreSQL bytes per entry (measured by table) and C2SP
  tlog-tiles bytes per entry. Proofs: RFC 9162 inclusion path lengths, one log against two
  levels (entry in its shard, shard checkpoint in the top-level log).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass

#: Measured here (2 cores shared, PostgreSQL 15 on the same machine); see docs/scale.md.
MEASURED = {
    # bench.pg_replicas, 1 replica with 64 and with 256 appenders (batches of 64: 17.2 ms,
    # of 256: 32.5 ms, load average 6): the wall time of a batch's statements (BEGIN,
    # lock-and-read, planning and signing, the write, COMMIT with its fsync), fitted as
    # fixed + per entry. BEGIN runs before the lock is taken, and Shard.hold adds round trips
    # on top of this: a small double count, on the safe side.
    "lock_fixed_ms": 12.1,
    "lock_us_per_entry": 80.0,
    # bench.pg_replicas, batches of 64: CPU per append of the PostgreSQL backend and of the
    # gateway process (51 and 21 us in batches of 256).
    "server_us_per_append": 67.0,
    "client_us_per_append": 31.0,
    # bench.proxy (in-memory stores, 16 connections) plus client_us_per_append: gateway CPU
    # of an enforced read and of a 20-resource search.
    "read_us": 359.0 + 31.0,
    "search_us": 1978.0 + 31.0,
    # bench.pg_replicas --bytes-per-entry 20000: leaves 269, evidence 555, checkpoints 7,
    # audit index 1,068 (heap, indexes, TOAST).
    "pg_bytes_per_entry": 1900.0,
    # middleware.ledger.leaf.LEAF_SIZE and a sealed read's evidence (bench.audit_commit).
    "leaf_bytes": 80.0,
    "evidence_bytes": 429.0,
    # bench.ledger: a signed checkpoint note.
    "checkpoint_bytes": 215.0,
}

MAX_BATCH = 256  # LedgerWriter's default
HASH = 32  # SHA-256, RFC 9162
TILE_WIDTH = 256  # C2SP tlog-tiles: hashes per full tile, entries per full entry bundle


@dataclass(frozen=True)
class Shard:
    """One log: ``rate`` appends/s spread over ``replicas`` writers."""

    rate: float
    replicas: int
    fixed_s: float
    per_entry_s: float
    rtt_s: float

    def hold(self, batch: int) -> float:
        # Under the lock: the lock-and-read answer's way back, the write, the COMMIT.
        return self.fixed_s + self.per_entry_s * batch + 2.5 * self.rtt_s

    def ceiling(self) -> float:
        """Appends/s with full batches back to back (the lock never idle)."""
        return MAX_BATCH / self.hold(MAX_BATCH)


def simulate(shard: Shard, seconds: float, seed: int) -> dict[str, float]:
    """Discrete-event run of one shard; latencies of appends arriving after the first second."""
    rng = random.Random(seed)
    end = 1.0 + seconds
    queues: list[deque[float]] = [deque() for _ in range(shard.replicas)]
    busy = [False] * shard.replicas  # a writer with a batch waiting for or holding the lock
    waiting: deque[tuple[int, list[float]]] = deque()  # batches waiting for the lock, FIFO
    events: list[tuple[float, int, int]] = []  # (time, kind, replica); 0 arrival, 1 release
    per_replica = shard.rate / shard.replicas
    for r in range(shard.replicas):
        heapq.heappush(events, (rng.expovariate(per_replica), 0, r))
    lock_free_at = 0.0
    holding: list[float] | None = None
    holder = -1
    batches = 0
    latencies: list[float] = []

    def start(now: float) -> None:
        nonlocal holding, holder, lock_free_at, batches
        if holding is None and waiting:
            holder, holding = waiting.popleft()
            lock_free_at = now + shard.hold(len(holding))
            batches += now >= 1.0
            heapq.heappush(events, (lock_free_at, 1, holder))

    def take(r: int, now: float) -> None:
        if not busy[r] and queues[r]:
            n = min(len(queues[r]), MAX_BATCH)
            waiting.append((r, [queues[r].popleft() for _ in range(n)]))
            busy[r] = True
            start(now)

    while events:
        now, kind, r = heapq.heappop(events)
        if now > end:
            break
        if kind == 0:
            queues[r].append(now)
            heapq.heappush(events, (now + rng.expovariate(per_replica), 0, r))
            take(r, now)
        else:
            assert holding is not None
            latencies.extend(now - t for t in holding if t >= 1.0)
            holding, busy[r] = None, False
            take(r, now)
            start(now)
    latencies.sort()
    n = len(latencies)
    return {
        "appends_per_s": round(n / seconds),
        "p50_ms": round(latencies[n // 2] * 1000, 2) if n else 0.0,
        "p99_ms": round(latencies[int(n * 0.99)] * 1000, 2) if n else 0.0,
        "mean_batch": round(n / max(batches, 1), 1),
        "of_ceiling": round(shard.rate / shard.ceiling(), 2),
    }


def split(rate: float, one: Shard, a: argparse.Namespace) -> int:
    """Shards for a tenant of ``rate`` appends/s: the fewest at most ``--ceiling-share`` of
    the ceiling each whose simulated p99 meets ``--p99-ms``."""
    k: int = max(1, math.ceil(rate / (one.ceiling() * float(a.ceiling_share))))
    while True:
        shard = Shard(rate / k, a.replicas_per_shard, one.fixed_s, one.per_entry_s, one.rtt_s)
        if simulate(shard, a.seconds, a.seed)["p99_ms"] <= a.p99_ms or k >= 64:
            return k
        k += 1


def zipf_shares(n: int, s: float) -> list[float]:
    weights = [1 / (k**s) for k in range(1, n + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def path(n: float) -> int:
    """Hashes in the longest RFC 9162 inclusion proof of a tree of ``n`` leaves."""
    return math.ceil(math.log2(n)) if n > 1 else 0


def tiles_per_entry() -> float:
    """Hash-tile bytes per entry (C2SP tlog-tiles): level 0 holds a hash per entry, each
    level above one per 256 below."""
    return float(HASH * sum(TILE_WIDTH**-k for k in range(8)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_sim", description=__doc__)
    parser.add_argument("--peak", type=float, default=20_000, help="FHIR requests/s at peak")
    parser.add_argument("--hospitals", type=int, default=100)
    parser.add_argument("--zipf", type=float, default=1.0, help="tenant share exponent")
    parser.add_argument("--entries", type=float, default=1e11, help="entries over --years")
    parser.add_argument("--years", type=float, default=10)
    parser.add_argument("--search-share", type=float, default=0.2)
    parser.add_argument("--replicas-per-shard", type=int, default=2, help="replicas writing "
                        "to one shard (its tenant's traffic routed to them)")  # fmt: skip
    parser.add_argument("--p99-ms", type=float, default=100.0, help="append p99 target")
    parser.add_argument("--rtt-ms", type=float, default=0.2, help="gateway-database round trip")
    parser.add_argument("--ceiling-share", type=float, default=0.6, help="most appends/s a "
                        "shard is planned for, as a share of its ceiling")  # fmt: skip
    parser.add_argument("--cpu-busy", type=float, default=0.6, help="target CPU busy share")
    parser.add_argument("--db-cores", type=int, default=16)
    parser.add_argument("--gateway-cores", type=int, default=4)
    parser.add_argument("--top-interval", type=float, default=10.0, help="s between shard "
                        "checkpoints logged in the top-level log")  # fmt: skip
    parser.add_argument("--hot-years", type=float, default=1.0, help="years kept in PostgreSQL")
    parser.add_argument("--seconds", type=float, default=6.0, help="simulated seconds")
    parser.add_argument("--seed", type=int, default=1)
    for name, value in MEASURED.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=value)
    a = parser.parse_args()

    shares = zipf_shares(a.hospitals, a.zipf)
    one = Shard(1.0, a.replicas_per_shard, a.lock_fixed_ms / 1e3, a.lock_us_per_entry / 1e6,
                a.rtt_ms / 1e3)  # fmt: skip
    ceiling = one.ceiling()
    per_tenant = [split(a.peak * s, one, a) for s in shares]
    shards = sum(per_tenant)
    busiest_rate = a.peak * shares[0] / per_tenant[0]
    busiest = Shard(busiest_rate, a.replicas_per_shard, one.fixed_s, one.per_entry_s, one.rtt_s)
    run = simulate(busiest, a.seconds, a.seed)
    alone = simulate(Shard(a.peak * shares[0], 1, one.fixed_s, one.per_entry_s, one.rtt_s),
                     a.seconds, a.seed)  # fmt: skip
    stress = Shard(ceiling * 0.9, a.replicas_per_shard, one.fixed_s, one.per_entry_s, one.rtt_s)
    near = simulate(stress, a.seconds, a.seed)

    db_cores = a.peak * a.server_us_per_append / 1e6
    per_request = (1 - a.search_share) * a.read_us + a.search_share * a.search_us
    gw_cores = a.peak * per_request / 1e6
    per_year = a.entries / a.years
    shard_year = per_year * shares[0] / per_tenant[0]
    top_per_year = shards * 365.25 * 86400 / a.top_interval
    tile_bytes = tiles_per_entry() + a.leaf_bytes
    near_line = f"p50 {near['p50_ms']} ms, p99 {near['p99_ms']} ms, batch {near['mean_batch']}"
    run_line = (
        f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, batch {run['mean_batch']}, "
        f"{run['of_ceiling']:.0%} of the ceiling"
    )
    pg_year = per_year * a.pg_bytes_per_entry / 1e12
    single = path(a.entries)
    shard_path = path(shard_year)
    top_entries = top_per_year * a.years
    top_path = path(top_entries)
    two_level = (shard_path + top_path) * HASH + a.checkpoint_bytes
    levels = math.ceil(math.log(shard_year, TILE_WIDTH))
    db_servers = math.ceil(db_cores / (a.db_cores * a.cpu_busy))
    replicas = math.ceil(gw_cores / (a.gateway_cores * a.cpu_busy))
    lines = [
        "inputs (measured here unless given):",
        *(f"  {name} = {getattr(a, name)}" for name in MEASURED),
        f"  peak {a.peak:,.0f} req/s, {a.hospitals} hospitals (Zipf {a.zipf}), "
        f"{a.entries:.0e} entries over {a.years:g} years, rtt {a.rtt_ms} ms",
        "",
        f"one shard's ceiling (full batches of {MAX_BATCH} back to back): {ceiling:,.0f} "
        f"appends/s; planned at {a.ceiling_share:.0%} of it: {ceiling * a.ceiling_share:,.0f}/s",
        f"  simulated at 90% of it ({stress.rate:,.0f}/s, {a.replicas_per_shard} replicas): "
        + near_line,
        f"busiest hospital: {shares[0]:.1%} of the peak = {a.peak * shares[0]:,.0f} "
        f"appends/s in {per_tenant[0]} shard(s)",
        f"  simulated ({busiest_rate:,.0f}/s a shard, {a.replicas_per_shard} replicas): "
        + run_line,
        f"  the same hospital in one shard written by one replica: p50 {alone['p50_ms']} ms, "
        f"p99 {alone['p99_ms']} ms, batch {alone['mean_batch']}",
        f"shards: {shards} (one per hospital, split by pseudonym until each is at most "
        f"{a.ceiling_share:.0%} of the ceiling with a simulated p99 <= {a.p99_ms:g} ms)",
        f"database CPU at peak: {db_cores:.1f} cores -> {db_servers} PostgreSQL server(s) of "
        f"{a.db_cores} cores at {a.cpu_busy:.0%}",
        f"gateway CPU at peak: {per_request:,.0f} us/request -> {gw_cores:.1f} cores -> "
        f"{replicas} replicas of {a.gateway_cores} cores at {a.cpu_busy:.0%}",
        "",
        f"entries per year: {per_year:.2e} (mean {per_year / 31_557_600:,.0f}/s)",
        f"  PostgreSQL: {a.pg_bytes_per_entry:,.0f} B/entry -> {pg_year:.1f} TB a year; "
        f"{a.hot_years:g} year(s) hot: {a.hot_years * pg_year:.1f} TB",
        f"  tlog-tiles: {tile_bytes:.1f} B/entry (hash tiles {tiles_per_entry():.1f} + leaf "
        f"{a.leaf_bytes:g}) -> {per_year * tile_bytes / 1e12:.2f} TB a year; "
        f"evidence {per_year * a.evidence_bytes / 1e12:.1f} TB a year beside it",
        f"  {a.years:g} years: all in PostgreSQL {a.years * pg_year:,.0f} TB; "
        f"tiles + evidence {a.entries * (tile_bytes + a.evidence_bytes) / 1e12:.0f} TB",
        "",
        f"proofs: one log of {a.entries:.0e}: {single} hashes = {single * HASH} B",
        f"  two levels: entry in its shard-year ({shard_year:.2e} entries, busiest) "
        f"{shard_path} hashes + shard checkpoint ({a.checkpoint_bytes:g} B) in the top-level "
        f"log ({top_entries:.2e} entries: every {a.top_interval:g} s x {shards} shards x "
        f"{a.years:g} years) {top_path} hashes = {two_level:,.0f} B",
        f"  from tiles: {levels} tile levels in a shard-year; an inclusion proof reads at "
        f"most {levels} tiles of <= {TILE_WIDTH * HASH:,} B",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
