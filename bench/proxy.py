"""Proxy overhead: the same GETs sent straight to the upstream and through the gateway.

    python -m bench.proxy [--duration 5] [--connections 1,16,64] [--loadgen auto|wrk|python]

Starts the shared upstream FHIR server seeded with carebundle-10, the gateway in front of it
(``memory:`` store, access log off), then for ``GET /Patient/{id}`` and
``GET /Observation?subject=Patient/{id}`` at each concurrency loads the upstream directly and
then the gateway, each point after an unmeasured warm-up second. Load comes from wrk (installed
with apt-get when missing and running as root) or else :mod:`bench.loadgen`.

Reported per point: requests/s and p50/p99 latency both ways, gateway/direct throughput, the
p50 the gateway adds, and the gateway's CPU time per request: utime+stime of the gateway
process only (``/proc/<pid>/stat``), over the requests completed. It leaves out the upstream
and the load generator, which share the same machine. Prints a Markdown table and writes
``bench/results/proxy.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import loadgen
from bench.loadgen import LoadResult
from tests.support import GatewayServer, UpstreamServer, carebundle_dir

RESULTS = Path(__file__).parent / "results" / "proxy.json"
CPU_NOTE = (
    "gateway CPU per request = utime+stime delta of the gateway process only "
    "(/proc/<pid>/stat) / requests completed; upstream and load generator excluded"
)

#: Runs load: url, connections, seconds, request headers.
Loader = Callable[[str, int, float, Mapping[str, str]], LoadResult]


# --- load generators ------------------------------------------------------------------------


def find_wrk() -> str | None:
    """wrk's path; installs it with apt-get first when missing and running as root."""
    if shutil.which("wrk") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk")


def wrk_loader(wrk: str) -> Loader:
    """Load from wrk, every request carrying the given headers (``wrk -H``)."""

    def run(url: str, connections: int, duration: float, headers: Mapping[str, str]) -> LoadResult:
        threads = min(connections, 2)
        seconds = max(1, round(duration))  # wrk takes whole seconds
        argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        output = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
        return parse_wrk(output)

    return run


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> LoadResult:
    """The numbers of one ``wrk --latency`` report."""

    def latency(percent: str) -> float:
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        if found is None:
            raise ValueError(f"no {percent}% latency in wrk output:\n{output}")
        return float(found[1]) * _UNITS_MS[found[2]]

    totals = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if totals is None:
        raise ValueError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", output)
    errors = int(non_2xx[1]) if non_2xx else 0
    errors += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    seconds = float(totals[2]) * _UNITS_MS[totals[3]] / 1000
    return LoadResult(int(totals[1]), errors, seconds, latency("50"), latency("99"))


# --- measuring ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (fields 14 and 15 of ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    load: Loader,
    url: str,
    connections: int,
    duration: float,
    headers: Mapping[str, str],
    pid: int | None = None,
) -> tuple[LoadResult, float | None]:
    """One point: a warm-up second, then the measured run; with ``pid``, also the CPU
    seconds that process used during the measured run."""
    load(url, connections, 1.0, headers)
    before = cpu_seconds(pid) if pid else 0.0
    result = load(url, connections, duration, headers)
    return result, (cpu_seconds(pid) - before if pid else None)


def row(
    name: str, connections: int, direct: LoadResult, via: LoadResult, cpu: float | None
) -> dict[str, Any]:
    return {
        "request": name,
        "connections": connections,
        "direct_rps": round(direct.rps, 1),
        "gateway_rps": round(via.rps, 1),
        "throughput_ratio": round(via.rps / direct.rps, 3) if direct.rps else None,
        "direct_p50_ms": round(direct.p50_ms, 3),
        "gateway_p50_ms": round(via.p50_ms, 3),
        "added_p50_ms": round(via.p50_ms - direct.p50_ms, 3),
        "direct_p99_ms": round(direct.p99_ms, 3),
        "gateway_p99_ms": round(via.p99_ms, 3),
        "gateway_cpu_us_per_request": (
            round(cpu / via.requests * 1e6, 1) if cpu is not None and via.requests else None
        ),
        "errors": direct.errors + via.errors,
    }


_COLUMNS = [
    ("request", "request"),
    ("connections", "conns"),
    ("direct_rps", "direct req/s"),
    ("gateway_rps", "gateway req/s"),
    ("throughput_ratio", "gw/direct"),
    ("direct_p50_ms", "direct p50 ms"),
    ("gateway_p50_ms", "gateway p50 ms"),
    ("added_p50_ms", "added p50 ms"),
    ("direct_p99_ms", "direct p99 ms"),
    ("gateway_p99_ms", "gateway p99 ms"),
    ("gateway_cpu_us_per_request", "gateway CPU µs/req"),
    ("errors", "errors"),
]


def markdown(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]] = _COLUMNS) -> str:
    """``rows`` as a Markdown table of ``columns`` (row key, column title)."""
    lines = [
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(str(r[key]) for key, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--connections", default="1,16,64", help="comma-separated concurrencies")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    concurrencies = [int(n) for n in args.connections.split(",")]

    wrk = find_wrk() if args.loadgen != "python" else None
    if args.loadgen == "wrk" and wrk is None:
        parser.error("wrk is not installed")
    load: Loader = wrk_loader(wrk) if wrk else loadgen.run
    generator = "wrk" if wrk else "python (bench/loadgen.py, aiohttp)"

    rows: list[dict[str, Any]] = []
    with (
        UpstreamServer(seed_dir=carebundle_dir()) as upstream,
        GatewayServer(
            upstream.base_url,
            consent_jurisdiction="opt-out",
            env={"CONSENTRY_ACCESS_LOG": "0"},
        ) as gateway,
    ):
        # Every request is enforced: this one runs as a trusted EHR backend (system/*.rs,
        # opt-out, no consent on file), so it measures the enforced path's fixed costs
        # (token, compartment, consent lookup, audit) without a consent decision to take;
        # bench.enforced measures a practitioner under a consent.
        headers = {"authorization": gateway.system_bearer()["authorization"]}
        bundle = httpx.get(f"{upstream.base_url}/Patient?_count=1").json()
        patient_id = bundle["entry"][0]["resource"]["id"]
        requests = {
            "GET /Patient/{id}": f"Patient/{patient_id}",
            "GET /Observation?subject=Patient/{id}": f"Observation?subject=Patient/{patient_id}",
        }
        for name, path in requests.items():
            for base in (upstream.base_url, gateway.base_url):
                answer = httpx.get(f"{base}/{path}", headers=headers)
                if answer.status_code != 200:
                    raise SystemExit(f"{base}/{path} answered {answer.status_code}")
            for connections in concurrencies:
                direct, _ = measure(
                    load, f"{upstream.base_url}/{path}", connections, args.duration, headers
                )
                via, cpu = measure(
                    load,
                    f"{gateway.base_url}/{path}",
                    connections,
                    args.duration,
                    headers,
                    gateway.pid,
                )
                rows.append(row(name, connections, direct, via, cpu))
                print(f"  {name} c={connections}: done", flush=True)

    report = {
        "benchmark": "proxy",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": args.duration,
        "load_generator": generator,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "gateway": {"store": "memory:", "access_log": False},
        "notes": [CPU_NOTE, "upstream, gateway and load generator share this machine's CPUs"],
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nload: {generator}, {args.duration:g} s per point, {os.cpu_count()} CPUs\n")
    print(markdown(rows))
    print(f"\n{CPU_NOTE}.\nJSON: {args.output}")


if __name__ == "__main__":
    main()
