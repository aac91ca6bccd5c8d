"""Replicas behind a load balancer: how soon a consent change holds everywhere, and throughput.

    python -m bench.replicas [--trials 200] [--duration 5] [--connections 16]
                             [--counts 1,3] [--loadgen auto|wrk|python] [--profile]

Starts the shared upstream FHIR server (carebundle-10 loaded into it directly), a fresh
PostgreSQL database, three ``consentry serve --workers 1`` replicas on it sharing one settings
file, ledger key and token issuer (opt-out jurisdiction), and Debian's HAProxy in front (round
robin, ``/readyz`` health checks): :mod:`tests.support.replicas`, as the integration test
``tests/integration/test_replicas.py`` runs them.

**Visibility.** Each trial changes one patient's consent through replica A (trial ``i``: replica
``i mod 3``), alternately a deny-everyone Consent (``POST Consent``) and its revocation
(``POST Consent/{id}/$revoke``), then, as soon as the change's answer has arrived, asks the
other two replicas at once (``GET Patient/{id}`` as a practitioner) and repeats each request
until it answers as the change says (404 after a deny, 200 after a revocation). Visibility of
a trial = time from the change's answer to the later of the two enforcing answers; reported
p50/p99/max, with the number of trials in which a first request answered the old way (the
invariant says none). Every replica has read the patient before the first trial, and each
trial's requests keep all three warm. For comparison each trial then sends the same two
reads again with nothing changed (``unchanged_p50_ms``/``unchanged_p99_ms``): what the two
requests cost on their own; visibility minus that is what noticing the change costs.

**Throughput.** ``GET Patient/{id}`` (permitted, a practitioner token) through HAProxy for
``--duration`` seconds at ``--connections``, with one replica behind it, then three
(``--counts``; e.g. ``3,1,3,1`` alternates to show the machine's drift), each after an
unmeasured warm-up second. Reported: requests/s, p50/p99, and CPU per request
of the replicas (utime+stime from ``/proc/<pid>/stat``, summed over the replicas behind the
balancer) and of HAProxy; upstream, PostgreSQL and the load generator excluded.
``--profile`` also prints replica 0's event-loop CPU per request by stage in each throughput
run (:mod:`bench.cpu_sampler` in replica 0 only, as :mod:`bench.edge_profile` uses it; per
request = over the run's requests divided by the replicas behind the balancer).
Writes ``bench/results/replicas.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from bench import loadgen
from bench.proxy import Loader, cpu_seconds, find_wrk, wrk_loader
from bench.stacks import load as load_stacks
from bench.stacks import stage_table, stages
from tests.support import UpstreamServer, load_carebundle
from tests.support.peers import repo_root
from tests.support.replicas import HAProxy, ReplicaSet, fresh_database

RESULTS: Final = Path(__file__).parent / "results" / "replicas.json"
DR: Final = "Practitioner/bench-replicas"
GOAL_VISIBLE_P99_MS: Final = 50.0


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _until(client: httpx.AsyncClient, url: str, want: int) -> tuple[float, bool]:
    """GET ``url`` until it answers ``want``: the monotonic time of that answer and whether
    the first answer already was it."""
    first = True
    while True:
        answer = await client.get(url)
        if answer.status_code == want:
            return time.perf_counter(), first
        first = False


async def _visibility(replicas: ReplicaSet, patient: str, trials: int) -> dict[str, Any]:
    bases = [g.base_url for g in replicas.gateways]
    doctor = replicas.bearer("bench-replicas", "user/*.rs", fhir_user=DR)
    owner = {
        **replicas.bearer(
            f"user-{patient}", "launch/patient patient/Consent.cruds", patient=patient
        ),
        "content-type": "application/fhir+json",
    }
    deny = {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": f"Patient/{patient}"},
        "decision": "deny",
    }
    read = f"Patient/{patient}"
    times: list[float] = []
    plain: list[float] = []
    stale = 0
    limits = httpx.Limits(max_keepalive_connections=8)
    async with (
        httpx.AsyncClient(headers=owner, timeout=30.0, limits=limits) as changer,
        httpx.AsyncClient(headers=doctor, timeout=30.0, limits=limits) as reader,
    ):
        for base in bases:  # every replica warm, reading the patient as the doctor
            assert (await reader.get(f"{base}/{read}")).status_code == 200
        consent: tuple[str, str] | None = None
        for trial in range(trials):
            a = trial % len(bases)
            if consent is None:
                made = await changer.post(f"{bases[a]}/Consent", json=deny)
                assert made.status_code == 201, made.text
                consent, want = (made.json()["id"], made.headers["etag"]), 404
            else:
                url = f"{bases[a]}/Consent/{consent[0]}/$revoke"
                made = await changer.post(url, headers={"if-match": consent[1]})
                assert made.status_code == 200, made.text
                consent, want = None, 200
            changed = time.perf_counter()
            others = [f"{b}/{read}" for n, b in enumerate(bases) if n != a]
            seen = await asyncio.gather(*(_until(reader, url, want) for url in others))
            times.append((max(at for at, _ in seen) - changed) * 1000)
            stale += sum(not first for _, first in seen)
            # The same two reads with nothing changed: what any request costs here.
            started = time.perf_counter()
            again = await asyncio.gather(*(_until(reader, url, want) for url in others))
            plain.append((max(at for at, _ in again) - started) * 1000)
    return {
        "trials": trials,
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(_percentile(times, 0.99), 2),
        "max_ms": round(max(times), 2),
        "first_requests_answering_the_old_way": stale,
        "unchanged_p50_ms": round(statistics.median(plain), 2),
        "unchanged_p99_ms": round(_percentile(plain, 0.99), 2),
    }


def _throughput(
    replicas: ReplicaSet,
    count: int,
    load: Loader,
    path: str,
    duration: float,
    connections: int,
    sampler: Path | None = None,
) -> dict[str, Any]:
    gateways = replicas.gateways[:count]
    doctor = replicas.bearer("bench-replicas", "user/*.rs", fhir_user=DR)
    workdir = Path(tempfile.mkdtemp(prefix="bench-replicas-lb-"))
    with HAProxy(gateways, workdir) as lb:
        url = f"{lb.base_url}/{path}"
        load(url, connections, 1.0, doctor)  # warm-up, unmeasured
        if sampler is not None:
            Path(f"{sampler}.on").touch()
            time.sleep(0.2)  # the sampler looks at its switch 20 times a second
        before = sum(cpu_seconds(g.pid) for g in gateways), cpu_seconds(lb.pid)
        result = load(url, connections, duration, doctor)
        after = sum(cpu_seconds(g.pid) for g in gateways), cpu_seconds(lb.pid)
    done = max(result.requests, 1)
    if sampler is not None:
        _print_profile(sampler, count, done / count)
    return {
        "replicas": count,
        "connections": connections,
        "requests": result.requests,
        "errors": result.errors,
        "rps": round(result.rps, 1),
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "replica_cpu_us_per_request": round((after[0] - before[0]) * 1e6 / done, 1),
        "haproxy_cpu_us_per_request": round((after[1] - before[1]) * 1e6 / done, 1),
    }


def _print_profile(sampler: Path, count: int, requests: float) -> None:
    """Replica 0's sampled loop-thread CPU by stage, per request it served (round robin:
    ``requests`` is the run's requests over the replicas)."""
    Path(f"{sampler}.on").unlink()
    done, raw = Path(f"{sampler}.done"), Path(f"{sampler}.raw")
    while not done.exists():
        time.sleep(0.05)
    profile = load_stacks(raw, "all")
    print(f"\nreplica 0 of {count}, sampled:")
    print(stage_table(stages(profile), profile.samples, 1.0 / requests))
    done.unlink()
    raw.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--counts", default="1,3", help="replicas behind HAProxy per throughput run, in order"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--profile", action="store_true", help="sample replica 0's CPU by stage (bench.stacks)"
    )
    args = parser.parse_args()
    wrk = find_wrk() if args.loadgen != "python" else None
    if args.loadgen == "wrk" and wrk is None:
        parser.error("wrk is not installed")
    load: Loader = wrk_loader(wrk) if wrk else loadgen.run
    workdir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    opt_out = ['consent_jurisdiction = "opt-out"', "access_log = false"]
    sampler = workdir / "sampler" if args.profile else None
    boot = repo_root() / "bench" / "sampler_boot"

    def env(n: int) -> dict[str, str]:
        """Replica 0 runs bench/cpu_sampler.py (started by sitecustomize), switched by file."""
        if sampler is None or n != 0:
            return {}
        return {"PYTHONPATH": f"{repo_root()}{os.pathsep}{boot}", "EDGE_SAMPLER": str(sampler)}

    with UpstreamServer() as upstream:
        with httpx.Client(timeout=60.0) as client:
            patients = list(load_carebundle(upstream.base_url, client))
        with (
            fresh_database() as dsn,
            ReplicaSet(upstream.base_url, dsn, workdir, 3, settings=opt_out, env=env) as replicas,
        ):
            visible = asyncio.run(_visibility(replicas, patients[0], args.trials))
            path = f"Patient/{patients[1]}"
            runs = [
                _throughput(replicas, int(n), load, path, args.duration, args.connections, sampler)
                for n in args.counts.split(",")
            ]
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load": "wrk" if wrk else "python (bench/loadgen.py)",
        "visibility": visible,
        "goal_visible_p99_ms": GOAL_VISIBLE_P99_MS,
        "throughput": runs,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    met = visible["p99_ms"] <= GOAL_VISIBLE_P99_MS
    print(f"\nconsent change visible on every replica: p99 {visible['p99_ms']} ms "
          f"(goal <= {GOAL_VISIBLE_P99_MS:g} ms: {'met' if met else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
