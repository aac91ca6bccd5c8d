"""The enforced read's gateway CPU in process: total per request, and a per-stage profile.

    python -m bench.read_profile [--requests 200] [--runs 20] [--concurrency 1]
                                 [--access-log] [--profile N]

:mod:`bench.enforced` without the servers: the gateway built by
:func:`~middleware.app.create_app` in its embedded default (a SQLite store in a temporary
directory, WAL, ``synchronous=FULL``; enforcement on; the development issuer on), its lifespan
run, driven by direct ASGI calls; the upstream an ``httpx.MockTransport`` answering the
carebundle Patient and the searchset of 20 Observations of :mod:`bench.judging` (the bytes as
the upstream sends them). The patient records, with its own token through the consent API, the
consent :mod:`bench.enforced` records (deny, permit ``Practitioner/bench``); every timed request
carries the practitioner's token (``user/*.rs``).

For ``GET /Patient/{id}`` and ``GET /Observation?subject=Patient/{id}&_count=20`` it reports the
CPU per request (``time.process_time``: the event loop and the store's worker threads, so the
ledger's commit is included) over ``--requests`` sequential requests, best of ``--runs``; with
``--profile N``, a cProfile of N more requests of each (``thread_time`` of the event loop's
thread: the store's worker threads are not in it), printed as a table of stages (the
cumulative time of the functions that make each stage, per request; stages nest, so they do
not add up; cProfile's own overhead inflates them about 2-3 times, so read them as shares)
and the top functions by own time. The mock upstream and the ASGI driver are
counted too (they are small: see the ``upstream (mock)`` row); CPU here is a lower bound on the
served gateway's, which also parses HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import tempfile
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

from bench.judging import PATIENT_ID, searchset
from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.logging import configure_logging
from middleware.ops.tracing import Tracing
from middleware.proxy.upstream import UpstreamRequest
from middleware.settings import load_settings
from tests.support.peers import carebundle_dir

UPSTREAM: Final = "http://upstream.bench/fhir"
PUBLIC: Final = "http://consentry.bench/fhir"
ISSUER: Final = "http://consentry.bench/dev-issuer"
PRACTITIONER: Final = "Practitioner/bench"
PATHS: Final = {
    "read": f"/fhir/Patient/{PATIENT_ID}",
    "search": "/fhir/Observation",
}
QUERIES: Final = {"read": b"", "search": f"subject=Patient/{PATIENT_ID}&_count=20".encode()}

# Stage -> functions (file suffix, function name) whose cumulative time makes it.
STAGES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "whole request (ASGI call)": (("middleware/app.py", "__call__"),),
    "identify (token, rate limits)": (("proxy/admission.py", "identify"),),
    "read request body": (("proxy/body.py", "read_request_body"),),
    "classification": (("fhir/classify.py", "classify"),),
    "upstream call (fixed answer)": (("proxy/forwarder.py", "forward"),),
    "decode upstream JSON": (("proxy/forwarder.py", "decode_upstream"),),
    "consent lookup": (("consent/registry.py", "policies"),),
    "judge (compartments, decisions)": (("pipeline/judging.py", "judge"),),
    "response filter": (("pipeline/filter.py", "filter_answer"),),
    "audit record (plan, seal, hand-over)": (("audit/recorder.py", "record"),),
    "ledger writer, event loop side": (("ledger/writer.py", "_run"),),
    "encode + send": (("proxy/respond.py", "send_bytes"),),
    "access log (structlog)": (("structlog/_native.py", "meth"),),
}


def patient_bytes() -> bytes:
    """The first carebundle Patient, with the bench patient's id and a version."""
    for path in sorted(carebundle_dir().glob("*.json")):
        for entry in json.loads(path.read_bytes())["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Patient":
                resource["id"] = PATIENT_ID
                resource["meta"] = {"versionId": "1", "lastUpdated": "2026-12-06T10:00:00.000Z"}
                return json.dumps(resource, ensure_ascii=False).encode()
    raise SystemExit("no carebundle Patient")


class Answered:
    """An upstream answer of fixed bytes (:class:`~middleware.proxy.upstream.UpstreamResponse`)."""

    def __init__(self, body: bytes) -> None:
        self.status = 200
        self.headers = [("content-type", "application/fhir+json")]
        self._body = body

    async def read(self, limit: int) -> bytes:
        return self._body

    async def iter_bytes(self, limit: int) -> AsyncIterator[bytes]:
        yield self._body

    async def aclose(self) -> None:
        return None


class FixedUpstream:
    """The upstream (:class:`~middleware.proxy.upstream.Upstream`) without a client library:
    the Patient read and the Observation search answered with fixed bytes, so what is measured
    is the gateway's own work (the served gateway's client, native by default, adds its own)."""

    def __init__(self) -> None:
        self.patient, self.bundle = patient_bytes(), searchset(20)

    async def send(self, request: UpstreamRequest) -> Answered:
        return Answered(self.patient if "/Patient/" in request.url else self.bundle)

    async def aclose(self) -> None:
        return None


class Driver:
    """Direct ASGI calls to the gateway; each returns (status, body)."""

    def __init__(self, app: Gateway) -> None:
        self.app = app

    async def call(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "headers": [(b"host", b"consentry.bench"), *headers],
            "client": ("10.0.0.7", 50000),
            "server": ("consentry.bench", 80),
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status = 0
        chunks: list[bytes] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)

    async def start(self) -> None:
        """Run the app's lifespan startup; :meth:`stop` runs its shutdown."""
        self._stopping = asyncio.Event()
        started = asyncio.Event()
        messages = [{"type": "lifespan.startup"}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await self._stopping.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "lifespan.startup.failed":
                raise SystemExit(f"startup failed: {message}")
            started.set()

        self._lifespan = asyncio.ensure_future(self.app({"type": "lifespan"}, receive, send))
        await asyncio.wait_for(started.wait(), 30)

    async def stop(self) -> None:
        self._stopping.set()
        await self._lifespan


async def scene(
    workdir: Path, *, access_log: bool, tracing: Tracing | None = None
) -> tuple[Driver, list[tuple[bytes, bytes]]]:
    """The started gateway (``tracing``: its traces, off by default), the consent recorded, and
    the practitioner's headers."""
    auth = {
        "dev_issuer_enabled": True,
        "dev_issuer_url": ISSUER,
        "dev_issuer_key_file": str(workdir / "dev-issuer.jwk"),
        "audiences": [PUBLIC],
    }
    settings = load_settings(
        overrides={
            "upstream": UPSTREAM,
            "public_url": PUBLIC,
            "store": f"sqlite:{workdir / 'consentry.db'}",
            "ledger_key_file": str(workdir / "ledger.key"),
            "access_log": access_log,
            "auth": auth,
        }
    )
    app = create_app(settings, upstream=FixedUpstream(), tracing=tracing)
    driver = Driver(app)
    await driver.start()
    issuer = UnsafeDevelopmentIssuer.from_key_file(workdir / "dev-issuer.jwk", ISSUER, enabled=True)

    def bearer(sub: str, scopes: str, **claims: Any) -> bytes:
        return f"Bearer {issuer.issue(sub, scopes=scopes, audience=PUBLIC, **claims)}".encode()

    own = bearer(f"user-{PATIENT_ID}", "launch/patient patient/Consent.cruds", patient=PATIENT_ID)
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "decision": "deny",
        "provision": [{"actor": [{"reference": {"reference": PRACTITIONER}}]}],
    }
    status, body = await driver.call(
        "POST",
        "/fhir/Consent",
        b"",
        [(b"authorization", own), (b"content-type", b"application/fhir+json")],
        json.dumps(consent).encode(),
    )
    if status != 201:
        raise SystemExit(f"recording the consent answered {status}: {body!r}")
    headers = [
        (b"authorization", bearer("bench", "user/*.rs", fhir_user=PRACTITIONER)),
        (b"accept", b"application/fhir+json"),
    ]
    for name, path in PATHS.items():
        status, body = await driver.call("GET", path, QUERIES[name], headers, b"")
        if status != 200:
            raise SystemExit(f"{name}: {status} {body[:300]!r}")
        if name == "search" and len(json.loads(body).get("entry", [])) != 20:
            raise SystemExit("the search should release 20 entries")
    return driver, headers


async def timed(
    driver: Driver, headers: list[tuple[bytes, bytes]], name: str, n: int, concurrency: int = 1
) -> float:
    """CPU µs per request over ``n`` requests, ``concurrency`` at a time (process time: every
    thread; concurrent requests share the ledger's group commits, as under load)."""

    async def worker(count: int) -> None:
        for _ in range(count):
            status, _body = await driver.call("GET", PATHS[name], QUERIES[name], headers, b"")
            if status != 200:
                raise SystemExit(f"{name} answered {status}")

    share, extra = divmod(n, concurrency)
    start = time.process_time()
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))
    return (time.process_time() - start) / n * 1e6


def stage_table(stats: pstats.Stats, n: int) -> list[tuple[str, float]]:
    """Per stage, the cumulative µs per request of its functions (see :data:`STAGES`)."""
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for stage, functions in STAGES.items():
        total = 0.0
        for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in raw.items():
            if any(path.endswith(suffix) and func == name for suffix, name in functions):
                total += ct
        rows.append((stage, total / n * 1e6))
    return rows


async def profile(
    driver: Driver,
    headers: list[tuple[bytes, bytes]],
    name: str,
    n: int,
    top: int,
    concurrency: int,
) -> None:
    profiler = cProfile.Profile(time.thread_time)  # the event loop's thread only
    profiler.enable()
    await timed(driver, headers, name, n, concurrency)
    profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"\n### {name}: stages (cProfile, cumulative µs per request; they nest)\n")
    print("| stage | µs/request |\n|---|---|")
    for stage, us in stage_table(stats, n):
        print(f"| {stage} | {us:.0f} |")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(f"\n### {name}: top {top} by own time ({n} requests)\n")
    print(out.getvalue().split("\n", 6)[-1])


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="read-profile-") as tmp:
        driver, headers = await scene(Path(tmp), access_log=args.access_log)
        results: dict[str, float] = {}
        for name in PATHS:
            c = args.concurrency
            await timed(driver, headers, name, min(200, args.requests), c)  # warm
            results[name] = min(
                [await timed(driver, headers, name, args.requests, c) for _ in range(args.runs)]
            )
        print(f"| request | gateway CPU µs/request (in process, c{c}, best of runs) |\n|---|---|")
        for name, us in results.items():
            print(f"| {name} | {us:.0f} |")
        if args.profile:
            for name in PATHS:
                await profile(driver, headers, name, args.profile, args.top, args.concurrency)
        await driver.stop()


def main(argv: list[str] | None = None, runner: Callable[..., Any] = asyncio.run) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.read_profile", description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--access-log", action="store_true", help="the access log on (default)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests at a time")
    parser.add_argument("--profile", type=int, default=0, help="profile N requests of each")
    parser.add_argument("--top", type=int, default=30)
    # The gateway's own log pipeline (JSON lines, PHI scrubbed), as `consentry serve` sets it.
    configure_logging("info", open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    runner(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
