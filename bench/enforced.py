"""Enforced proxy overhead: consent, SMART tokens and a durable audit ledger on every answer.

    python -m bench.enforced [--duration 5] [--connections 1,16,64] [--workers 1,2]
                             [--loadgen auto|wrk|python]

Starts the shared upstream FHIR server and loads carebundle-10 into it, then the gateway in its
embedded default: the SQLite store (WAL, ``synchronous=FULL``: every BALP AuditEvent is
committed before its answer is released), enforcement on, the development token issuer on a
key file this benchmark shares (access log off, as in :mod:`bench.proxy`). The gateway's public
base is fixed by ``public_url`` so that tokens can name it as their audience before it starts.

Consent regime: the default opt-in jurisdiction; the benchmark patient (the first carebundle
patient with at least 20 Observations) records, with its own patient token through the consent
API (``POST {base}/Consent``), an active R5 Consent whose base decision is deny and whose one
provision permits ``Practitioner/bench``. Every measured request carries a practitioner token
(``user/*.rs``, ``fhirUser`` ``Practitioner/bench``), so the consent engine decides each one.
Before timing, the benchmark checks that the gateway releases the Patient and a searchset of 20
Observations, and refuses a practitioner the consent does not name.

For ``GET /Patient/{id}`` and ``GET /Observation?subject=Patient/{id}&_count=20`` at each
concurrency it loads the upstream directly, then the gateway (the same bearer header both ways),
each after an unmeasured warm-up second. Reported per point: requests/s, p50/p99 both ways,
gateway/direct throughput, the p50 and p99 the gateway adds, the gateway process's CPU per
request (``/proc/<pid>/stat``, see :mod:`bench.proxy`) and the ledger entries appended per
request (signed tree size of ``/ledger/checkpoint`` before and after, once settled). Prints a
Markdown table and the goals, writes ``bench/results/enforced.json``.

``--workers`` lists the gateway's worker counts to measure (``consentry serve --workers N``,
started as that command starts it, on one store file): each count is a gateway of its own on
a fresh store, measured at every point; its CPU is the supervisor's and all its workers'.
The upstream is measured directly right before each gateway point, so each ratio compares
runs under the same load of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from bench import loadgen
from bench.loadgen import LoadResult
from bench.proxy import Loader, cpu_seconds, find_wrk, markdown, wrk_loader
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.support import GatewayServer, PeerError, UpstreamServer, load_carebundle

RESULTS: Final = Path(__file__).parent / "results" / "enforced.json"
PUBLIC_BASE: Final = "http://consentry.bench/fhir"
DEV_ISSUER: Final = "http://consentry.bench/dev-issuer"
PRACTITIONER: Final = "Practitioner/bench"
SEARCH_COUNT: Final = 20
CPU_NOTE: Final = (
    "gateway CPU per request = utime+stime delta of the gateway's processes (/proc/<pid>/stat "
    "of the serve process and, with several workers, of each worker; SQLite threads "
    "included) / requests completed; upstream and load generator excluded"
)
LEDGER_NOTE: Final = (
    "ledger/req = growth of the signed tree size (/ledger/checkpoint, read once settled) over "
    "the measured run / requests completed; requests in flight when the load stops count too"
)
GOALS: Final = {
    "read_cpu_us": 300.0,
    "read_c16_throughput_ratio": 0.15,
    "c16_added_p50_ms": 5.0,
    "c16_added_p99_ms": 20.0,
}

# --- the gateway's ledger -------------------------------------------------------------------


def ledger_size(client: httpx.Client, root_url: str) -> int:
    """The signed tree size of the gateway's latest checkpoint (line 2 of the C2SP note)."""
    answer = client.get(f"{root_url}/ledger/checkpoint")
    if answer.status_code == 404:
        return 0
    answer.raise_for_status()
    return int(answer.text.split("\n")[1])


def settled_ledger_size(client: httpx.Client, root_url: str, quiet: float = 0.2) -> int:
    """The ledger size once it has stopped growing for ``quiet`` seconds (in-flight requests
    of the last load run have been audited)."""
    size = ledger_size(client, root_url)
    while True:
        time.sleep(quiet)
        now = ledger_size(client, root_url)
        if now == size:
            return size
        size = now


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` and of its live descendants (a supervisor's workers)."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += cpu_seconds(current)
            tasks = Path(f"/proc/{current}/task").iterdir()
            for task in tasks:
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
    return total


# --- set-up ---------------------------------------------------------------------------------


def write_config(workdir: Path) -> Path:
    config = workdir / "consentry.toml"
    config.write_text(
        f"""
public_url = "{PUBLIC_BASE}"
ledger_key_file = "{workdir / "ledger.key"}"
access_log = false

[auth]
dev_issuer_enabled = true
dev_issuer_url = "{DEV_ISSUER}"
dev_issuer_key_file = "{workdir / "dev-issuer.jwk"}"
audiences = ["{PUBLIC_BASE}"]
""",
        encoding="utf-8",
    )
    return config


def pick_patient(created: Mapping[str, list[str]]) -> tuple[str, int]:
    """The first patient with at least :data:`SEARCH_COUNT` Observations, and their count."""
    for patient, references in created.items():
        observations = sum(ref.startswith("Observation/") for ref in references)
        if observations >= SEARCH_COUNT:
            return patient, observations
    raise PeerError(f"no carebundle patient has {SEARCH_COUNT} Observations")


def record_consent(client: httpx.Client, base: str, patient: str, bearer: str) -> str:
    """The patient's active consent: deny by default, permit :data:`PRACTITIONER`."""
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": f"Patient/{patient}"},
        "decision": "deny",
        "provision": [{"actor": [{"reference": {"reference": PRACTITIONER}}]}],
    }
    answer = client.post(
        f"{base}/Consent",
        json=consent,
        headers={"authorization": bearer, "content-type": "application/fhir+json"},
    )
    if answer.status_code != 201:
        raise SystemExit(f"recording the consent answered {answer.status_code}: {answer.text}")
    return str(answer.json()["id"])


def check_answers(
    client: httpx.Client, base: str, paths: Mapping[str, str], bearer: str, stranger: str
) -> None:
    """Refuse to time anything but released answers: the Patient, and a searchset of
    :data:`SEARCH_COUNT` Observations; a practitioner the consent does not name is refused."""
    headers = {"authorization": bearer, "accept": "application/fhir+json"}
    for name, path in paths.items():
        answer = client.get(f"{base}/{path}", headers=headers)
        if answer.status_code != 200:
            raise SystemExit(f"{name}: the gateway answered {answer.status_code}: {answer.text}")
        body = answer.json()
        if body["resourceType"] == "Bundle":
            released = [e["resource"]["resourceType"] for e in body.get("entry", [])]
            if released != ["Observation"] * SEARCH_COUNT:
                raise SystemExit(f"{name}: released {len(released)} entries, not {SEARCH_COUNT}")
        elif body["resourceType"] != "Patient":
            raise SystemExit(f"{name}: released a {body['resourceType']}")
    refused = client.get(
        f"{base}/{paths['read']}", headers={"authorization": stranger, "accept": "application/json"}
    )
    if refused.status_code < 400:
        raise SystemExit(f"a practitioner without consent was answered {refused.status_code}")


NAMES: Final = {
    "read": "GET /Patient/{id}",
    "search": f"GET /Observation?subject=Patient/{{id}}&_count={SEARCH_COUNT}",
}


@dataclass(frozen=True)
class Scene:
    """What the timed requests need: their paths, the practitioner's headers, the consent."""

    paths: Mapping[str, str]
    headers: Mapping[str, str]
    consent_id: str


def set_up(client: httpx.Client, base: str, issuer: UnsafeDevelopmentIssuer, patient: str) -> Scene:
    """Record the patient's consent with its own token, then check what will be timed."""

    def bearer(sub: str, scopes: str, **claims: Any) -> str:
        return f"Bearer {issuer.issue(sub, scopes=scopes, audience=PUBLIC_BASE, **claims)}"

    own = bearer(f"user-{patient}", "launch/patient patient/Consent.cruds", patient=patient)
    consent_id = record_consent(client, base, patient, own)
    practitioner = bearer("bench", "user/*.rs", fhir_user=PRACTITIONER)
    stranger = bearer("other", "user/*.rs", fhir_user="Practitioner/other")
    paths = {
        "read": f"Patient/{patient}",
        "search": f"Observation?subject=Patient/{patient}&_count={SEARCH_COUNT}",
    }
    check_answers(client, base, paths, practitioner, stranger)
    headers = {"Authorization": practitioner, "Accept": "application/fhir+json"}
    return Scene(paths, headers, consent_id)


def revision() -> str | None:
    """``git describe --always --dirty`` of the checkout measured (None outside git)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


# --- measuring ------------------------------------------------------------------------------


def measure_direct(
    load: Loader, url: str, connections: int, duration: float, headers: Mapping[str, str]
) -> LoadResult:
    load(url, connections, 1.0, headers)
    return load(url, connections, duration, headers)


def measure_gateway(
    load: Loader,
    url: str,
    connections: int,
    duration: float,
    headers: Mapping[str, str],
    gateway: GatewayServer,
    client: httpx.Client,
) -> tuple[LoadResult, float, int]:
    """One gateway point: warm-up, then the measured run with the gateway's CPU seconds and
    the ledger entries it appended."""
    load(url, connections, 1.0, headers)
    entries_before = settled_ledger_size(client, gateway.root_url)
    cpu_before = tree_cpu_seconds(gateway.pid)
    result = load(url, connections, duration, headers)
    cpu = tree_cpu_seconds(gateway.pid) - cpu_before
    entries = settled_ledger_size(client, gateway.root_url) - entries_before
    return result, cpu, entries


def row(
    name: str,
    workers: int,
    connections: int,
    direct: LoadResult,
    via: LoadResult,
    cpu: float,
    entries: int,
) -> dict[str, Any]:
    def per_request(value: float, scale: float, digits: int) -> float | None:
        return round(value / via.requests * scale, digits) if via.requests else None

    return {
        "request": name,
        "workers": workers,
        "connections": connections,
        "direct_rps": round(direct.rps, 1),
        "gateway_rps": round(via.rps, 1),
        "throughput_ratio": round(via.rps / direct.rps, 3) if direct.rps else None,
        "direct_p50_ms": round(direct.p50_ms, 3),
        "gateway_p50_ms": round(via.p50_ms, 3),
        "added_p50_ms": round(via.p50_ms - direct.p50_ms, 3),
        "direct_p99_ms": round(direct.p99_ms, 3),
        "gateway_p99_ms": round(via.p99_ms, 3),
        "added_p99_ms": round(via.p99_ms - direct.p99_ms, 3),
        "gateway_cpu_us_per_request": per_request(cpu, 1e6, 1),
        "ledger_entries_per_request": per_request(entries, 1.0, 3),
        "gateway_requests": via.requests,
        "errors": direct.errors + via.errors,
    }


_COLUMNS: Final = [
    ("request", "request"),
    ("workers", "workers"),
    ("connections", "conns"),
    ("direct_rps", "direct req/s"),
    ("gateway_rps", "gateway req/s"),
    ("throughput_ratio", "gw/direct"),
    ("direct_p50_ms", "direct p50 ms"),
    ("gateway_p50_ms", "gateway p50 ms"),
    ("added_p50_ms", "added p50 ms"),
    ("direct_p99_ms", "direct p99 ms"),
    ("gateway_p99_ms", "gateway p99 ms"),
    ("added_p99_ms", "added p99 ms"),
    ("gateway_cpu_us_per_request", "gateway CPU µs/req"),
    ("ledger_entries_per_request", "ledger/req"),
    ("errors", "errors"),
]


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal with the measured values it is judged on and whether all of them meet it
    (``met`` is None when no point measured it, e.g. without ``16`` in ``--connections``)."""
    reads = [r for r in rows if r["request"].startswith("GET /Patient")]

    def at(r: dict[str, Any]) -> str:
        return f"w{r['workers']} c{r['connections']}"

    at_c16 = [r for r in rows if r["connections"] == 16]
    read_c16 = [r for r in reads if r["connections"] == 16]

    def judged(
        text: str, values: list[tuple[str, Any]], ok: Callable[[Any], bool]
    ) -> dict[str, Any]:
        met = all(v is not None and ok(v) for _, v in values) if values else None
        return {"goal": text, "values": dict(values), "met": met}

    return [
        judged(
            f"gateway CPU per read <= {GOALS['read_cpu_us']:g} µs",
            [(at(r), r["gateway_cpu_us_per_request"]) for r in reads],
            lambda v: v <= GOALS["read_cpu_us"],
        ),
        judged(
            f"read throughput at c16 >= {GOALS['read_c16_throughput_ratio']:.0%} of direct",
            [(at(r), r["throughput_ratio"]) for r in read_c16],
            lambda v: v >= GOALS["read_c16_throughput_ratio"],
        ),
        judged(
            f"added p50 at c16 <= {GOALS['c16_added_p50_ms']:g} ms",
            [(f"{r['request']} w{r['workers']}", r["added_p50_ms"]) for r in at_c16],
            lambda v: v <= GOALS["c16_added_p50_ms"],
        ),
        judged(
            f"added p99 at c16 <= {GOALS['c16_added_p99_ms']:g} ms",
            [(f"{r['request']} w{r['workers']}", r["added_p99_ms"]) for r in at_c16],
            lambda v: v <= GOALS["c16_added_p99_ms"],
        ),
    ]


@dataclass
class Measured:
    """The rows of one gateway (one worker count) and the consent it enforced."""

    rows: list[dict[str, Any]]
    consent_id: str


def measure_workers(
    load: Loader,
    upstream: UpstreamServer,
    client: httpx.Client,
    issuer: UnsafeDevelopmentIssuer,
    config: Path,
    patient: str,
    workers: int,
    concurrencies: list[int],
    duration: float,
) -> Measured:
    """Every point against a gateway of ``workers`` processes on a fresh store file, each
    right after the same point measured directly."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="consentry-bench-store-") as store_dir:
        store = f"sqlite:{Path(store_dir) / 'consentry.db'}"
        args = ["--config", str(config), "--store", store, "--workers", str(workers)]
        with GatewayServer(upstream.base_url, args=args) as gateway:
            scene = set_up(client, gateway.base_url, issuer, patient)
            for key, path in scene.paths.items():
                for connections in concurrencies:
                    direct = measure_direct(
                        load, f"{upstream.base_url}/{path}", connections, duration, scene.headers
                    )
                    via, cpu, entries = measure_gateway(
                        load,
                        f"{gateway.base_url}/{path}",
                        connections,
                        duration,
                        scene.headers,
                        gateway,
                        client,
                    )
                    rows.append(row(NAMES[key], workers, connections, direct, via, cpu, entries))
                    print(f"  {NAMES[key]} workers={workers} c={connections}: done", flush=True)
    return Measured(rows, scene.consent_id)


# --- the command ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.enforced", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    parser.add_argument("--connections", default="1,16,64", help="comma-separated concurrencies")
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated gateway worker counts (serve --workers)"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    concurrencies = [int(n) for n in args.connections.split(",")]
    worker_counts = [int(n) for n in args.workers.split(",")]

    wrk = find_wrk() if args.loadgen != "python" else None
    if args.loadgen == "wrk" and wrk is None:
        parser.error("wrk is not installed")
    load: Loader = wrk_loader(wrk) if wrk else loadgen.run
    generator = "wrk" if wrk else "python (bench/loadgen.py, aiohttp)"

    rows: list[dict[str, Any]] = []
    consent_ids: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="consentry-bench-") as tmp,
        httpx.Client(timeout=30.0) as client,
        UpstreamServer() as upstream,
    ):
        workdir = Path(tmp)
        issuer = UnsafeDevelopmentIssuer.from_key_file(
            workdir / "dev-issuer.jwk", DEV_ISSUER, enabled=True
        )
        config = write_config(workdir)
        patient, observations = pick_patient(load_carebundle(upstream.base_url, client))
        for workers in worker_counts:
            measured = measure_workers(
                load,
                upstream,
                client,
                issuer,
                config,
                patient,
                workers,
                concurrencies,
                args.duration,
            )
            rows += measured.rows
            consent_ids.append(measured.consent_id)

    judged = goals(rows)
    report = {
        "benchmark": "enforced",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": revision(),
        "duration_s": args.duration,
        "load_generator": generator,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "gateway": {
            "store": "sqlite (embedded default: WAL, synchronous=FULL)",
            "enforcement": True,
            "audit": "IHE BALP AuditEvents committed to the ledger before release",
            "access_log": False,
            "jurisdiction": "opt-in",
        },
        "caller": {"scopes": "user/*.rs", "fhirUser": PRACTITIONER},
        "consent": {
            "ids": consent_ids,
            "shape": "R5, active, decision deny, one provision permitting the practitioner",
        },
        "patient_observations": observations,
        "notes": [
            CPU_NOTE,
            LEDGER_NOTE,
            "upstream, gateway and load generator share this machine's CPUs",
        ],
        "goals": judged,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nload: {generator}, {args.duration:g} s per point, {os.cpu_count()} CPUs\n")
    print(markdown(rows, _COLUMNS))
    print("\nGoals:")
    for goal in judged:
        values = ", ".join(f"{k}: {v}" for k, v in goal["values"].items())
        verdict = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        print(f"  [{verdict}] {goal['goal']} ({values})")
    print(f"\n{CPU_NOTE}.\n{LEDGER_NOTE}.\nJSON: {args.output}")


if __name__ == "__main__":
    main()
