"""Soak: mixed traffic for minutes against two gateway replicas on one SQLite store, with
``kill -9`` of one replica and store outages; nothing acknowledged may go unaudited.

    python -m bench.soak [--minutes 30] [--clients 6] [--kill-every 180] [--outage-every 300]

Loopback only, bounded (by ``--minutes``, at most 60, and ``--max-requests``), stops by itself.
Starts the shared upstream FHIR server (Medplum) loaded with carebundle-10, then two gateway
processes (``consentry serve``) on one SQLite store (WAL, ``synchronous=FULL``), one settings
file and one ledger key: replica A, SIGKILLed every ``--kill-every`` seconds and started again
on the same port and store, and replica B, never killed (its RSS is the memory figure: it runs
the whole soak uninterrupted). Every patient records a consent (deny, permit
``Practitioner/soak``) before the traffic starts.

``--clients`` concurrent clients each send, at random to A or B, with a unique
``X-Request-Id`` each: practitioner reads of a Patient, Observation searches, Observation
creates and updates, the patient's own consent grants and revocations (``PUT`` with status
active/inactive through the consent API), ``$explain``, requests without a token, and
malformed JSON bodies with a valid token. Every ``--outage-every`` seconds another thread
holds the SQLite write lock (``BEGIN EXCLUSIVE``) for ``--outage-seconds``: the store cannot
commit (the gateway answers 503 or waits, never acknowledges without its entry).

At the end, with the traffic stopped and replica A running again: ``consentry ledger export
--with-evidence`` of the store, and each acknowledged (2xx) answer's request id looked up in the
evidence (AuditEvent ``entity[transaction]`` and the consent API's admin entries name it: a
create or update needs two entries, its decision and its outcome, anything else one);
``consentry ledger verify``; the latest consent in the ledger for every patient (the last
Consent evidence) against each replica's consent API read and ``$explain`` (divergent: a replica
whose read status or effect differs from the ledger's); the RSS of replica B in the first and
the last fifth of the soak (at most 5 minutes each, after a one-minute warm-up when the soak is
long enough). Prints the figures and writes ``bench/results/soak.json``.

Throughput depends on the machine (the figures were taken on 2 shared cores); the correctness
figures are the point: 500s, acknowledged answers without audit, divergent consents.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from middleware.audit.evidence import EvidenceReader
from middleware.auth.devissuer import UnsafeDevelopmentIssuer, load_or_create_key
from middleware.ledger.keyfile import read_ledger_key
from middleware.ledger.signing import derive_box_key
from middleware.storage.ledger_open import open_log_store
from tests.support import PeerError, UpstreamServer, load_carebundle
from tests.support.peers import free_port, stop_process

__all__ = ["main"]

HOST: Final = "127.0.0.1"
RESULTS: Final = Path(__file__).parent / "results" / "soak.json"
PUBLIC_BASE: Final = "http://consentry.soak/fhir"
DEV_ISSUER: Final = "http://consentry.soak/dev-issuer"
ORIGIN: Final = "consentry.soak/fhir/ledger"
PRACTITIONER: Final = "Practitioner/soak"
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
FHIR_JSON: Final = "application/fhir+json"
_RID: Final = re.compile(rb"soak-[0-9a-f]{8}-[0-9]+")
#: Ledger entries whose evidence must name an acknowledged request's id: a write is audited
#: only with its decision and its outcome; a read, a search, a consent change (its admin
#: entry; the consent entry holds the Consent itself) and ``$explain`` by one at least.
ENTRIES_PER_ACK: Final = {"create": 2, "update": 2}


# --- the gateway processes ------------------------------------------------------------------


def write_config(workdir: Path) -> Path:
    """One settings file for both replicas: the ledger key, the development issuer, the
    public base every token names as its audience."""
    config = workdir / "consentry.toml"
    config.write_text(
        f"""
public_url = "{PUBLIC_BASE}"
ledger_key_file = "{workdir / "ledger.key"}"
ledger_origin = "{ORIGIN}"
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


class Replica:
    """A ``consentry serve`` process on a fixed port, started again on the same store."""

    def __init__(self, name: str, upstream: str, store: Path, config: Path, workdir: Path):
        self.name, self.upstream, self.store, self.config = name, upstream, store, config
        self.workdir = workdir
        self.code = workdir / "code"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log = workdir / f"{name}.log"

    @property
    def root(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "CONSENTRY_LOG_LEVEL": "warning", "PYTHONPATH": str(self.code)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "middleware.cli", "serve"),
                    *("--upstream", self.upstream, "--host", HOST, "--port", str(self.port)),
                    *("--store", f"sqlite:{self.store}", "--config", str(self.config)),
                ],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PeerError(f"replica {self.name} exited {self.process.returncode}")
            try:
                if httpx.get(f"{self.root}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise PeerError(f"replica {self.name} did not become healthy in {timeout} s")

    def kill9(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def rss_kib(self) -> int | None:
        """VmRSS of the process (``/proc/<pid>/status``), None when it is not running."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None


_ROOT: Final = Path(__file__).resolve().parents[1]


def snapshot_code(workdir: Path) -> str:
    """Put the ``middleware`` package of the checkout's ``HEAD`` commit in ``<workdir>/code``
    (``git archive``; a plain copy of the working tree outside git): every start of a replica
    and every ``consentry`` command of the soak runs that copy, so edits to the checkout while
    the soak runs cannot change (or break) the gateway it measures. Returns what was copied."""
    code = workdir / "code"
    code.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", "HEAD", "middleware"],
        cwd=_ROOT,
        capture_output=True,
        check=False,
    )
    if archive.returncode == 0:
        subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True, check=False
        )
        return head.stdout.strip()
    shutil.copytree(
        _ROOT / "middleware", code / "middleware", ignore=shutil.ignore_patterns("__pycache__")
    )
    return "working tree"


# --- traffic --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw."""

    tried: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    acknowledged: dict[str, str] = field(default_factory=dict)  # request id -> kind
    transport_errors: int = 0
    server_errors: list[dict[str, Any]] = field(default_factory=list)

    def count(self, kind: str, status: str) -> None:
        self.statuses[status] += 1
        self.by_kind.setdefault(kind, Counter())[status] += 1


@dataclass
class Patient:
    id: str
    consent_id: str
    observations: list[str]
    token: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def consent(patient: str, status: str, cid: str | None = None) -> dict[str, Any]:
    """R5: deny by default, one provision permitting :data:`PRACTITIONER` for treatment."""
    body: dict[str, Any] = {
        "resourceType": "Consent",
        "status": status,
        "subject": {"reference": f"Patient/{patient}"},
        "decision": "deny",
        "provision": [
            {
                "actor": [{"reference": {"reference": PRACTITIONER}}],
            }
        ],
    }
    if cid is not None:
        body["id"] = cid
    return body


def observation(patient: str, text: str, oid: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if oid is not None:
        body["id"] = oid
    return body


def explain_ask(patient: str) -> dict[str, Any]:
    return {
        "principal": {"reference": PRACTITIONER},
        "purpose": [{"system": ACT_REASON, "code": "TREAT"}],
        "resource": observation(patient, "explain", "o1"),
    }


class Traffic:
    """The clients: each picks a replica and an action at random until the deadline."""

    def __init__(
        self,
        replicas: list[Replica],
        patients: list[Patient],
        practitioner: str,
        tally: Tally,
        deadline: float,
        max_requests: int,
        seed: int,
    ) -> None:
        self.replicas, self.patients, self.tally = replicas, patients, tally
        self.practitioner = practitioner
        self.deadline, self.max_requests = deadline, max_requests
        self.rng = random.Random(seed)
        self.run_id = os.urandom(4).hex()
        self.sequence = 0

    def _rid(self) -> str:
        self.sequence += 1
        return f"soak-{self.run_id}-{self.sequence}"

    async def client(self, http: httpx.AsyncClient, pause: float) -> None:
        actions = [
            (self.read, 30),
            (self.search, 20),
            (self.create, 12),
            (self.update, 8),
            (self.change_consent, 8),
            (self.explain, 6),
            (self.unauthenticated, 2),
            (self.malformed, 4),
        ]
        weights = [w for _, w in actions]
        while time.monotonic() < self.deadline and self.tally.tried < self.max_requests:
            action = self.rng.choices([a for a, _ in actions], weights)[0]
            replica = self.rng.choice(self.replicas)
            patient = self.rng.choice(self.patients)
            await action(http, replica, patient)
            if pause:
                await asyncio.sleep(pause)

    async def _send(
        self,
        http: httpx.AsyncClient,
        kind: str,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> httpx.Response | None:
        rid = self._rid()
        self.tally.tried += 1
        try:
            answer = await http.request(
                method, url, content=body, headers={**headers, "x-request-id": rid}
            )
        except httpx.TransportError:
            self.tally.transport_errors += 1
            self.tally.count(kind, "transport")
            return None
        status = answer.status_code
        self.tally.count(kind, str(status))
        if 200 <= status < 300:
            self.tally.acknowledged[rid] = kind
        elif status >= 500 and status not in (502, 503, 504):
            self.tally.server_errors.append(
                {"kind": kind, "status": status, "rid": rid, "body": answer.text[:300]}
            )
        return answer

    def _practitioner(self) -> dict[str, str]:
        return {"authorization": self.practitioner, "accept": FHIR_JSON}

    async def read(self, http: httpx.AsyncClient, r: Replica, p: Patient) -> None:
        await self._send(http, "read", "GET", f"{r.root}/fhir/Patient/{p.id}", self._practitioner())

    async def search(self, http: httpx.AsyncClient, r: Replica, p: Patient) -> None:
        url = f"{r.root}/fhir/Observation?subject=Patient/{p.id}&_count=10"
        await self._send(http, "search", "GET", url, self._practitioner())

    async def create(self, http: httpx.AsyncClient, r: Replica, p: Patient) -> None:
        body = json.dumps(observation(p.id, f"soak {self.sequence}")).encode()
        headers = {**self._practitioner(), "content-type": FHIR_JSON}
        answer = await self._send(
            http, "create", "POST", f"{r.root}/fhir/Observation", headers, body
        )
        if answer is not None and answer.status_code == 201:
            location = answer.headers.get("location", "")
            parts = location.split("/_history/")[0].rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == "Observation":
                p.observations.append(parts[-1])

    async def update(self, http: httpx.AsyncClient, r: Replica, p: Patient) -> None:
        if not p.observations:
            await self.create(http, r, p)
            return
        oid = self.rng.choice(p.observations[-50:])
        body = json.dumps(observation(p.id, f"soak update {self.sequence}", oid)).encode()
        headers = {**self._practitioner(), "content-type": FHIR_JSON}
        url = f"{r.root}/fhir/Observation/{oid}"
        await self._send(http, "update", "PUT", url, headers, body)

    async def change_consent(self, http: httpx.AsyncClient, r: Replica, p: Patient) -> None:
        status = self.rng.choice(["active", "inactive"])
        body = json.dumps(consent(p.id, status, p.consent_id)).encode()
        headers = {"authorization": p.token, "content-type": FHIR_JSON, "accept": FHIR_JSON}
        url = f"{r.root}/fhir/Consent/{p.consent_id}"
        await self._send(http, "consent", "PUT", url, headers, body)

    async def explain(self, http: httpx.AsyncClient, r: Replica, p: Patient) -> None:
        body = json.dumps(explain_ask(p.id)).encode()
        headers = {"authorization": p.token, "content-type": FHIR_JSON, "accept": FHIR_JSON}
        await self._send(http, "explain", "POST", f"{r.root}/fhir/Consent/$explain", headers, body)

    async def unauthenticated(self, http: httpx.AsyncClient, r: Replica, p: Patient) -> None:
        await self._send(http, "no-token", "GET", f"{r.root}/fhir/Patient/{p.id}", {})

    async def malformed(self, http: httpx.AsyncClient, r: Replica, p: Patient) -> None:
        bodies = [b'{"resourceType": "Observation", "status": ', b"[" * 5000, b"\xff\xfe", b"{}"]
        headers = {**self._practitioner(), "content-type": FHIR_JSON}
        body = self.rng.choice(bodies)
        await self._send(http, "malformed", "POST", f"{r.root}/fhir/Observation", headers, body)


# --- disturbances ---------------------------------------------------------------------------


def hold_write_lock(store: Path, seconds: float) -> bool:
    """Hold the SQLite write lock from this process for ``seconds`` (another process than the
    gateways): their commits wait or fail. True when the lock was obtained."""
    connection = sqlite3.connect(store, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


@dataclass
class Events:
    kills: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    outages: int = 0
    outages_missed: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)  # replica B (seconds, KiB)


def disturb(
    killed: Replica,
    watched: Replica,
    store: Path,
    args: argparse.Namespace,
    started: float,
    deadline: float,
    events: Events,
) -> None:
    """The soak's other thread: kill -9 and restart, store outages, RSS samples."""
    next_kill = started + args.kill_every
    next_outage = started + args.outage_every / 2
    next_sample = started
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_sample:
            rss = watched.rss_kib()
            if rss is not None:
                events.rss.append((round(now - started, 1), rss))
            next_sample += args.sample_every
        if now >= next_kill and now < deadline - 10:
            time.sleep(random.uniform(0, 2))
            killed.kill9()
            events.kills += 1
            begun = time.monotonic()
            killed.start()
            events.restart_seconds.append(round(time.monotonic() - begun, 2))
            next_kill += args.kill_every
        if now >= next_outage and now < deadline - args.outage_seconds - 5:
            if hold_write_lock(store, args.outage_seconds):
                events.outages += 1
            else:
                events.outages_missed += 1
            next_outage += args.outage_every
        time.sleep(0.5)


# --- set-up and checks ----------------------------------------------------------------------


def bearer(issuer: UnsafeDevelopmentIssuer, sub: str, scopes: str, **claims: Any) -> str:
    return f"Bearer {issuer.issue(sub, scopes=scopes, audience=PUBLIC_BASE, ttl=7200, **claims)}"


def set_up_patients(
    client: httpx.Client, replica: Replica, issuer: UnsafeDevelopmentIssuer, upstream: str
) -> list[Patient]:
    created = load_carebundle(upstream, client)
    patients = []
    for pid, refs in created.items():
        token = bearer(issuer, f"user-{pid}", "launch/patient patient/Consent.cruds", patient=pid)
        answer = client.post(
            f"{replica.root}/fhir/Consent",
            content=json.dumps(consent(pid, "active")).encode(),
            headers={"authorization": token, "content-type": FHIR_JSON},
        )
        if answer.status_code != 201:
            raise SystemExit(f"recording a consent answered {answer.status_code}: {answer.text}")
        observations = [r.split("/")[1] for r in refs if r.startswith("Observation/")][:20]
        patients.append(Patient(pid, str(answer.json()["id"]), observations, token))
    return patients


def consentry(workdir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(workdir / "code")}
    return subprocess.run(
        [sys.executable, "-m", "middleware.cli", *argv],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def ledger_export(
    workdir: Path, store: Path
) -> tuple[Counter[str], dict[str, dict[str, Any]], int]:
    """Export the ledger with its evidence: how many entries name each request id, the latest
    Consent evidence per consent id (ledger order), and the number of entries."""
    out = workdir / "export"
    done = consentry(
        workdir,
        "ledger",
        "export",
        "--store",
        f"sqlite:{store}",
        "--out",
        str(out),
        "--with-evidence",
    )
    if done.returncode != 0:
        raise SystemExit(f"ledger export failed: {done.stderr[-2000:]}")
    named: Counter[str] = Counter()
    consents: dict[str, dict[str, Any]] = {}
    entries = 0
    with (out / "evidence.jsonl").open("rb") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    request_ids = asyncio.run(audit_request_ids(workdir, store))
    for row in sorted(rows, key=lambda r: int(r["index"])):
        entries += 1
        data = base64.b64decode(row["data"])
        # Audit evidence is sealed facts: its request id is read by opening it (ledger key).
        found = request_ids.get(int(row["index"])) or {m.decode() for m in _RID.findall(data)}
        named.update(found)
        if b'"resourceType":"Consent"' in data:
            try:
                resource = json.loads(data)
            except ValueError:
                continue
            if isinstance(resource, dict) and resource.get("resourceType") == "Consent":
                consents[str(resource.get("id"))] = resource
    return named, consents, entries


async def audit_request_ids(workdir: Path, store: Path) -> dict[int, set[str]]:
    """The request id of each audit entry whose sealed facts open with the ledger key."""
    key = read_ledger_key(workdir / "ledger.key").data_secret
    log = await open_log_store(f"sqlite:{store}")
    try:
        reader = EvidenceReader(log, derive_box_key(key, "evidence"))
        out: dict[int, set[str]] = {}
        for index in range(await log.size()):
            facts = await reader.facts(index)
            if facts is not None and _RID.fullmatch(facts.request_id.encode()):
                out[index] = {facts.request_id}
        return out
    finally:
        await log.close()


def ledger_verify(workdir: Path, store: Path) -> dict[str, Any]:
    policy = consentry(
        workdir, "keys", "policy", "--key-file", str(workdir / "ledger.key"), "--origin", ORIGIN
    )
    if policy.returncode != 0:
        raise SystemExit(f"keys policy failed: {policy.stderr[-2000:]}")
    trust = workdir / "trust.toml"
    trust.write_text(policy.stdout, encoding="utf-8")
    done = consentry(
        workdir, "ledger", "verify", "--store", f"sqlite:{store}", "--trust", str(trust)
    )
    report: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {"ok": False}
    return {
        "ok": report.get("ok") is True and done.returncode == 0,
        "exit": done.returncode,
        "findings": report.get("findings", [])[:10],
    }


def divergence(
    client: httpx.Client,
    replicas: list[Replica],
    patients: list[Patient],
    ledger: dict[str, dict[str, Any]],
) -> tuple[int, list[dict[str, Any]]]:
    """Patients whose consent, as some replica reads it or enforces it, is not the ledger's
    latest: the consent API's status and ``$explain``'s effect (permit exactly when the
    ledger's latest version is active)."""
    divergent = 0
    rows = []
    for p in patients:
        latest = ledger.get(p.consent_id)
        expected_status = latest.get("status") if latest else None
        expected_effect = "permit" if expected_status == "active" else "deny"
        seen: dict[str, Any] = {}
        for r in replicas:
            headers = {"authorization": p.token, "accept": FHIR_JSON}
            read = client.get(f"{r.root}/fhir/Consent/{p.consent_id}", headers=headers)
            ask = client.post(
                f"{r.root}/fhir/Consent/$explain",
                content=json.dumps(explain_ask(p.id)).encode(),
                headers={**headers, "content-type": FHIR_JSON},
            )
            status = read.json().get("status") if read.status_code == 200 else read.status_code
            effect = ask.json().get("effect") if ask.status_code == 200 else ask.status_code
            seen[r.name] = {"status": status, "effect": effect}
        bad = any(
            v["status"] != expected_status or v["effect"] != expected_effect for v in seen.values()
        )
        divergent += bad
        rows.append(
            {"patient": p.id, "ledger": expected_status, "replicas": seen, "divergent": bad}
        )
    return divergent, rows


def rss_growth(samples: list[tuple[float, int]], soak_seconds: float) -> dict[str, Any]:
    """Mean RSS of the first and the last window (a fifth of the soak, at most 300 s, after a
    warm-up of a twentieth, at most 60 s) and the growth between them."""
    warm = min(60.0, soak_seconds / 20)
    window = min(300.0, soak_seconds / 5)
    first = [kib for t, kib in samples if warm <= t < warm + window]
    last = [kib for t, kib in samples if t >= soak_seconds - window]
    if not first or not last:
        return {"growth": None}
    a, b = sum(first) / len(first), sum(last) / len(last)
    return {
        "first_window_mib": round(a / 1024, 1),
        "last_window_mib": round(b / 1024, 1),
        "window_s": window,
        "warm_up_s": warm,
        "growth": round((b - a) / a, 4),
        "max_mib": round(max(k for _, k in samples) / 1024, 1),
        "samples": len(samples),
    }


# --- the command ----------------------------------------------------------------------------


async def _traffic(traffic: Traffic, clients: int, pause: float) -> None:
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
        await asyncio.gather(*(traffic.client(http, pause) for _ in range(clients)))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument(
        "--pause", type=float, default=0.02, help="seconds between a client's requests"
    )
    parser.add_argument(
        "--kill-every", type=float, default=180.0, help="seconds between kills of replica A"
    )
    parser.add_argument(
        "--outage-every", type=float, default=300.0, help="seconds between store outages"
    )
    parser.add_argument(
        "--outage-seconds", type=float, default=20.0, help="longer than the store's 10 s busy wait"
    )
    parser.add_argument(
        "--sample-every", type=float, default=5.0, help="seconds between RSS samples"
    )
    parser.add_argument("--max-requests", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    minutes = min(max(args.minutes, 0.5), 60.0)
    soak_seconds = minutes * 60

    with (
        tempfile.TemporaryDirectory(prefix="consentry-soak-") as tmp,
        httpx.Client(timeout=60.0) as client,
        UpstreamServer() as upstream,
    ):
        workdir = Path(tmp)
        measured_revision = snapshot_code(workdir)
        load_or_create_key(workdir / "dev-issuer.jwk")
        issuer = UnsafeDevelopmentIssuer.from_key_file(
            workdir / "dev-issuer.jwk", DEV_ISSUER, enabled=True
        )
        config = write_config(workdir)
        store = workdir / "consentry.db"
        a = Replica("A", upstream.base_url, store, config, workdir)
        b = Replica("B", upstream.base_url, store, config, workdir)
        replicas = [a, b]
        try:
            a.start()
            b.start()
            patients = set_up_patients(client, a, issuer, upstream.base_url)
            practitioner = bearer(issuer, "soak", "user/*.cruds", fhir_user=PRACTITIONER)
            tally, events = Tally(), Events()
            started = time.monotonic()
            deadline = started + soak_seconds
            traffic = Traffic(
                replicas, patients, practitioner, tally, deadline, args.max_requests, args.seed
            )
            worker = threading.Thread(
                target=disturb, args=(a, b, store, args, started, deadline, events), daemon=True
            )
            worker.start()
            asyncio.run(_traffic(traffic, args.clients, args.pause))
            worker.join()
            elapsed = time.monotonic() - started
            if a.process is None or a.process.poll() is not None:
                a.start()
            # Let in-flight outbox rows settle: both replicas ready.
            for r in replicas:
                for _ in range(60):
                    if client.get(f"{r.root}/readyz").status_code == 200:
                        break
                    time.sleep(1)
            divergent, consent_rows = divergence(client, replicas, patients, {})
            for r in replicas:
                r.stop()
            named, ledger_consents, entries = ledger_export(workdir, store)
            verified = ledger_verify(workdir, store)
            # Divergence is judged against the ledger's latest Consent evidence: the replicas
            # were asked before they stopped; compare what they said with the ledger.
            divergent = 0
            for row, p in zip(consent_rows, patients, strict=True):
                latest = ledger_consents.get(p.consent_id)
                status = latest.get("status") if latest else None
                effect = "permit" if status == "active" else "deny"
                row["ledger"] = status
                row["divergent"] = any(
                    v["status"] != status or v["effect"] != effect for v in row["replicas"].values()
                )
                divergent += row["divergent"]
        finally:
            for r in replicas:
                r.stop()
        unaudited = sorted(
            rid
            for rid, kind in tally.acknowledged.items()
            if named[rid] < ENTRIES_PER_ACK.get(kind, 1)
        )
        unaudited_kinds = Counter(tally.acknowledged[rid] for rid in unaudited)
        rss = rss_growth(events.rss, soak_seconds)
        five_hundreds = tally.statuses.get("500", 0)
        report = {
            "benchmark": "soak",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "revision": measured_revision,
            "machine": {
                "cpus": os.cpu_count(),
                "note": "shared with other work; throughput depressed",
            },
            "minutes": round(elapsed / 60, 2),
            "clients": args.clients,
            "patients": len(patients),
            "requests_tried": tally.tried,
            "requests_per_second": round(tally.tried / elapsed, 1),
            "statuses": dict(sorted(tally.statuses.items())),
            "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(tally.by_kind.items())},
            "five_hundreds": five_hundreds,
            "other_5xx_unexpected": tally.server_errors[:20],
            "acknowledged": len(tally.acknowledged),
            "acknowledged_without_audit": len(unaudited),
            "unaudited_by_kind": dict(unaudited_kinds),
            "entries_naming_an_ack": {
                kind: dict(
                    sorted(
                        Counter(
                            named[r] for r, k in tally.acknowledged.items() if k == kind
                        ).items()
                    )
                )
                for kind in sorted(set(tally.acknowledged.values()))
            },
            "unaudited_examples": unaudited[:10],
            "request_ids_in_evidence": len(named),
            "ledger_entries": entries,
            "ledger_verify": verified,
            "kills": events.kills,
            "restart_seconds": events.restart_seconds,
            "store_outages": events.outages,
            "store_outages_missed": events.outages_missed,
            "outage_seconds": args.outage_seconds,
            "divergent_consents": divergent,
            "consents": consent_rows,
            "rss_replica_b": rss,
            "rss_samples": events.rss,
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    growth = rss.get("growth")
    table = [
        ("requests tried", "", tally.tried),
        ("500s", "0", five_hundreds),
        (
            "acknowledged answers without audit",
            "0",
            f"{len(unaudited)} of {len(tally.acknowledged)}",
        ),
        ("divergent consents across replicas", "0", f"{divergent} of {len(patients)}"),
        ("ledger verify", "ok", "ok" if verified["ok"] else f"FAILED {verified}"),
        (
            "RSS growth (replica B, first vs last window)",
            "< 10%",
            "n/a"
            if growth is None
            else f"{growth:.1%} ({rss['first_window_mib']} -> {rss['last_window_mib']} MiB)",
        ),
        ("kill -9 of replica A / store outages", "", f"{events.kills} / {events.outages}"),
    ]
    print(f"\nsoak: {elapsed / 60:.1f} min, {args.clients} clients, {os.cpu_count()} CPUs (shared)")
    print(f"statuses: {dict(sorted(tally.statuses.items()))}")
    print("| figure | goal | measured |\n| --- | --- | --- |")
    for name, goal, value in table:
        print(f"| {name} | {goal} | {value} |")
    print(f"JSON: {args.output}")
    ok = five_hundreds == 0 and not unaudited and divergent == 0 and verified["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
