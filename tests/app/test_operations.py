"""What an operator sees: start-up that refuses an unusable store, liveness vs readiness, the
cause of an unreachable upstream, one log line per request (consent API included) with its
refusal reason, the metrics, and who may scrape them."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.signing import SigningKey
from middleware.logging import configure_logging
from middleware.settings import Settings
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import WallClock
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings, observation, r5_consent

BTG_SCOPE = "consentry/break-glass"
DR = "Practitioner/dr"
CLIENT = ("203.0.113.7", 50000)
TOKEN = "s3cret-metrics-token-0123456789"


@pytest.fixture
def log() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("info", stream)
    return stream


def lines(stream: io.StringIO, event: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in found if event is None or line["event"] == event]


def metric(text: str, name: str) -> float:
    """The value of one sample line (``name`` with its labels, exactly)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


class Lifespan:
    """The ASGI lifespan as a server drives it: :meth:`startup`, later :meth:`shutdown`."""

    def __init__(self, app: Gateway) -> None:
        self.app = app
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> MutableMapping[str, Any]:
        """The message the app answered the start-up with."""
        self._task = asyncio.create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, self._inbox.get, self._send)
        )
        await self._inbox.put({"type": "lifespan.startup"})
        return await self._outbox.get()

    async def shutdown(self) -> None:
        assert self._task is not None
        if not self._task.done():
            await self._inbox.put({"type": "lifespan.shutdown"})
        await self._task

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        await self._outbox.put(message)


# --- start-up, liveness, readiness -----------------------------------------------------------


async def test_an_unusable_store_stops_startup_naming_path_and_cause(
    make_settings: Callable[..., Settings],
    router: respx.Router,
    signer: SigningKey,
    tmp_path: Path,
    log: io.StringIO,
) -> None:
    """Was: the gateway started, /healthz said 200, every FHIR request was 503, and the log
    said "ledger unavailable at startup" with no path or cause."""
    missing = tmp_path / "no-such-dir" / "x.db"
    app = create_app(
        make_settings(store=f"sqlite:{missing}"),
        upstream=httpx.MockTransport(router.async_handler),
        signer=signer,
    )
    lifespan = Lifespan(app)
    message = await lifespan.startup()
    await lifespan.shutdown()
    assert message["type"] == "lifespan.startup.failed"
    assert str(missing) in message["message"]
    assert "unable to open database file" in message["message"]
    assert f"the directory {missing.parent} does not exist" in message["message"]
    (failed,) = lines(log, "startup failed")
    assert str(missing) in failed["error"]


async def test_a_usable_store_completes_startup_and_probes_the_upstream(
    make_settings: Callable[..., Settings],
    router: respx.Router,
    signer: SigningKey,
    tmp_path: Path,
    log: io.StringIO,
) -> None:
    router.get("/metadata").mock(side_effect=httpx.ConnectError("[Errno 111] Connection refused"))
    app = create_app(
        make_settings(store=f"sqlite:{tmp_path / 'x.db'}"),
        upstream=httpx.MockTransport(router.async_handler),
        signer=signer,
    )
    lifespan = Lifespan(app)
    message = await lifespan.startup()
    assert message["type"] == "lifespan.startup.complete"  # an unreachable upstream does not
    assert app._probe is not None  # stop the gateway...
    assert app.audit is not None
    assert app.audit.jobs.sweeping()  # expired exports deleted without export requests
    await app._probe
    await lifespan.shutdown()
    assert not app.audit.jobs.sweeping()
    (unreachable,) = lines(log, "upstream unreachable")  # ...but is logged with its cause
    assert unreachable["host"] == "upstream.test:8103"
    assert unreachable["error_type"] == "ConnectError"
    assert "Connection refused" in unreachable["error"]


async def test_healthz_is_liveness_and_readyz_reflects_the_store(
    make_app: Callable[..., Gateway],
    router: respx.Router,
    store: MemoryLogStore,
    log: io.StringIO,
) -> None:
    router.get("/metadata").respond(200, json={"resourceType": "CapabilityStatement"})
    transport = httpx.ASGITransport(app=make_app(), client=CLIENT)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        assert (await client.get("/readyz")).status_code == 200
        store.available = False  # the store goes away under a running gateway
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "store": "unavailable",
        "audit_outbox": "ok",
        "upstream": "ok",
    }
    (not_ready,) = lines(log, "store not ready")
    assert not_ready["store"] == "memory:"
    assert not_ready["error"] == "ledger store unavailable"


@pytest.mark.usefixtures("mock_upstream_only")
async def test_readyz_logs_why_the_upstream_is_not_ready(
    make_app: Callable[..., Gateway], router: respx.Router, log: io.StringIO
) -> None:
    router.get("/metadata").mock(side_effect=httpx.ConnectTimeout("timed out"))
    transport = httpx.ASGITransport(app=make_app(), client=CLIENT)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {
        "store": "ok",
        "audit_outbox": "ok",
        "upstream": "unavailable",
    }
    (not_ready,) = lines(log, "upstream not ready")
    assert not_ready["error_type"] == "ConnectTimeout"
    assert not_ready["host"] == "upstream.test:8103"


# --- the upstream's cause, the request log line ----------------------------------------------


@pytest.mark.usefixtures("mock_upstream_only")
async def test_an_unreachable_upstream_is_logged_with_its_cause_and_no_phi(
    make_client: Any, router: respx.Router, log: io.StringIO
) -> None:
    """Was: 502 with no cause in the log."""
    router.get(url__regex=r".*/Patient.*").mock(
        side_effect=httpx.ConnectError("[Errno 111] Connection refused")
    )
    async with make_client() as client:
        answer = await client.get(
            "/fhir/Patient?name=Smithson&_id=secret-4711", headers={"x-request-id": "rid-up"}
        )
    assert answer.status_code == 502
    (cause,) = lines(log, "upstream unavailable")
    assert cause["request_id"] == "rid-up"
    assert cause["host"] == "upstream.test:8103"
    assert cause["error_type"] == "ConnectError"
    assert "Connection refused" in cause["error"]
    (request,) = lines(log, "request")
    assert request["reason"] == "upstream-failed"
    for phi in ("Smithson", "secret-4711", "name="):
        assert phi not in log.getvalue(), phi


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
async def gateway(
    make_app: Any, dev_key_file: Path, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway whose metrics the test client may scrape, with break-the-glass on."""
    router.get("/Observation/o-p1").respond(
        200,
        json={**observation("Patient/p1"), "id": "o-p1"},
        headers={"content-type": "application/fhir+json"},
    )
    app: Gateway = make_app(
        auth=auth_settings(dev_key_file, break_glass_scope=BTG_SCOPE),
        consent_jurisdiction="opt-out",
        metrics_clients="203.0.113.0/24",
    )
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client
    await app.aclose()


def doctor(tokens: Tokens, *, glass: bool = False) -> dict[str, str]:
    scopes = "user/*.rs" + (f" {BTG_SCOPE}" if glass else "")
    return tokens.bearer("dr", scopes, fhir_user=DR)


async def deny_dr(client: httpx.AsyncClient, tokens: Tokens) -> None:
    provision: dict[str, Any] = {"actor": [{"reference": {"reference": DR}}]}
    body = r5_consent("Patient/p1", "permit", provision=[provision])
    answer = await client.post("/fhir/Consent", json=body, headers=tokens.patient("p1"))
    assert answer.status_code == 201, answer.text


async def test_a_consent_denial_is_logged_with_its_reason_code(
    gateway: httpx.AsyncClient, tokens: Tokens, log: io.StringIO
) -> None:
    """The client sees the same 404 as for a missing record; the operator's line says why."""
    await deny_dr(gateway, tokens)
    answer = await gateway.get(
        "/fhir/Observation/o-p1", headers={**doctor(tokens), "x-request-id": "rid-deny"}
    )
    assert answer.status_code == 404
    (line,) = lines(log, "request")
    assert line["request_id"] == "rid-deny"
    assert line["method"] == "GET"
    assert line["interaction"] == "read"
    assert line["status"] == 404
    assert line["reason"] == "consent-denied"
    assert isinstance(line["duration_ms"], float)
    assert "o-p1" not in log.getvalue()


async def test_a_missing_record_is_not_a_consent_denial(
    gateway: httpx.AsyncClient, tokens: Tokens, router: respx.Router, log: io.StringIO
) -> None:
    router.get("/Observation/gone").respond(404)
    answer = await gateway.get("/fhir/Observation/gone", headers=doctor(tokens))
    assert answer.status_code == 404
    (line,) = lines(log, "request")
    assert line["reason"] == "not-found"


async def test_the_consent_api_logs_one_line_per_request(
    gateway: httpx.AsyncClient, tokens: Tokens, log: io.StringIO
) -> None:
    """Was: the consent API's line had no request id, method or duration, and a refused
    request (401) had no line at all."""
    await deny_dr(gateway, tokens)
    refused = await gateway.get("/fhir/Consent/c-1", headers={"x-request-id": "rid-401"})
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == "rid-401"
    created, unauthenticated = lines(log, "consent api")
    assert created["method"] == "POST"
    assert created["interaction"] == "create"
    assert created["status"] == 201
    assert created["reason"] is None
    assert len(created["request_id"]) == 32
    assert isinstance(created["duration_ms"], float)
    assert unauthenticated["request_id"] == "rid-401"
    assert unauthenticated["method"] == "GET"
    assert unauthenticated["interaction"] == "read"
    assert unauthenticated["status"] == 401
    assert unauthenticated["reason"] == "unauthenticated"
    assert "c-1" not in log.getvalue()
    assert "scrubbed" not in created  # every field it logs is an allowed one


# --- metrics -----------------------------------------------------------------------------------


async def test_metrics_count_consent_api_decisions_refusals_ledger_and_break_glass(
    gateway: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    """Was: none of these in /metrics."""
    await deny_dr(gateway, tokens)
    await gateway.get("/fhir/Consent/c-1")  # 401
    assert (await gateway.get("/fhir/Observation/o-p1", headers=doctor(tokens))).status_code == 404
    glass = {**doctor(tokens, glass=True), "x-break-glass-reason": "unconscious patient"}
    assert (await gateway.get("/fhir/Observation/o-p1", headers=glass)).status_code == 200

    text = (await gateway.get("/metrics")).text
    assert metric(text, 'consentry_consent_requests_total{operation="create",status="201"}') == 1
    assert metric(text, 'consentry_consent_requests_total{operation="read",status="401"}') == 1
    assert metric(text, 'consentry_decisions_total{effect="deny"}') == 2  # overridden or not
    assert metric(text, 'consentry_refusals_total{reason="consent-denied"}') == 1
    assert metric(text, 'consentry_refusals_total{reason="unauthenticated"}') == 1
    assert metric(text, "consentry_break_glass_sessions_open") == 1
    # consent create, denied read, emergency start + read: each committed to the ledger
    appends = metric(text, "consentry_ledger_appends_total")
    assert appends >= 4
    assert metric(text, "consentry_ledger_batch_size_sum") == appends
    assert metric(text, "consentry_ledger_commit_duration_seconds_count") >= 1
    assert metric(text, "consentry_ledger_queue_depth") == 0

    wall.now += 61 * 60  # past the session's end
    text = (await gateway.get("/metrics")).text
    assert metric(text, "consentry_break_glass_sessions_open") == 0


@pytest.mark.parametrize(
    ("clients", "token", "peer", "authorization", "status"),
    [
        # the default: loopback only, whatever the bind address
        (None, None, "127.0.0.1", None, 200),
        (None, None, "::1", None, 200),
        (None, None, "203.0.113.7", None, 403),
        # allowed networks
        ("10.0.0.0/8", None, "10.1.2.3", None, 200),
        ("10.0.0.0/8", None, "127.0.0.1", None, 403),
        # a token lets any address in, and only the right token
        ("", TOKEN, "203.0.113.7", f"Bearer {TOKEN}", 200),
        ("", TOKEN, "203.0.113.7", None, 401),
        ("", TOKEN, "203.0.113.7", "Bearer wrong-token-0123456789", 401),
        ("", TOKEN, "127.0.0.1", None, 401),
        (None, TOKEN, "127.0.0.1", None, 200),
    ],
    ids=[
        "default-v4-loopback",
        "default-v6-loopback",
        "default-remote",
        "network-member",
        "network-other",
        "token-right",
        "token-missing",
        "token-wrong",
        "token-only-loopback",
        "token-or-loopback",
    ],
)
async def test_who_may_scrape_metrics(
    make_app: Callable[..., Gateway],
    clients: str | None,
    token: str | None,
    peer: str,
    authorization: str | None,
    status: int,
) -> None:
    overrides: dict[str, Any] = {}
    if clients is not None:
        overrides["metrics_clients"] = clients
    if token is not None:
        overrides["metrics_token"] = token
    transport = httpx.ASGITransport(app=make_app(**overrides), client=(peer, 50000))
    headers = {"authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        answer = await client.get("/metrics", headers=headers)
    assert answer.status_code == status
    if status == 200:
        assert "consentry_requests_in_flight" in answer.text
    else:
        assert "consentry_" not in answer.text
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")
