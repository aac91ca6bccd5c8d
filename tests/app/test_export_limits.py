"""Bulk Data ``$export`` of patient data: the limits that bound one job (bytes, files, running
time, jobs per owner), who may see a job (the client too, and the scopes of its types), the
ledger at kick-off, during a job and at download, and the Group kick-off's audit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from middleware.app import Gateway
from middleware.audit.bulk_job import BATCH_LINES
from middleware.ledger.signing import SigningKey
from tests.app import test_export as base
from tests.app.consenting import Tokens, auth_settings, ledger_entries
from tests.app.outage import OutageStore
from tests.app.test_export import (
    ASYNC,
    DR,
    FHIR,
    backend,
    deny_dr,
    doctor,
    export,
    finished,
    lines,
    lines_of,
    obs,
    patient,
    searchset,
)

# The fixtures of the export's own tests (tokens, the three-patient upstream, a gateway).
tokens = base.tokens
upstream = base.upstream
gateway = base.gateway

UPSTREAM_PAGE_2 = "http://upstream.test:8103/fhir/Observation?page=2"


@pytest.fixture
def store() -> OutageStore:
    return OutageStore()


@asynccontextmanager
async def client_of(
    make_app: Callable[..., Gateway], dev_key_file: Path, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out", **settings)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client
    await app.aclose()


# --- bytes, files, time, jobs per owner ---------------------------------------------------------


async def test_a_job_past_its_byte_cap_fails_too_costly(
    make_app: Callable[..., Gateway], dev_key_file: Path, upstream: respx.Router, tokens: Tokens
) -> None:
    """The attack: few but huge resources fill the gateway's memory (without a board every
    line is in RAM and the cap was on lines only). Three Patients of about 66 bytes each
    pass 150 bytes: the job fails with too-costly, naming the byte limit."""
    async with client_of(make_app, dev_key_file, export_max_bytes=150) as client:
        _, done = await export(client, "/fhir/$export?_type=Patient", backend(tokens))
    assert done.status_code == 422, done.text
    issue = done.json()["issue"][0]
    assert issue["code"] == "too-costly"
    assert "150 bytes" in issue["diagnostics"]


@pytest.mark.parametrize("on_board", [False, True], ids=["memory", "sqlite-board"])
async def test_a_file_past_its_byte_size_is_followed_by_a_new_one(
    make_app: Callable[..., Gateway],
    dev_key_file: Path,
    upstream: respx.Router,
    tokens: Tokens,
    tmp_path: Path,
    on_board: bool,
) -> None:
    """A file is closed once it holds ``export_bytes_per_file`` bytes: 100 bytes hold two
    Patients (the second line passes it), the third starts a second Patient file."""
    extra = {"store": f"sqlite:{tmp_path / 'gw.db'}"} if on_board else {}
    who = backend(tokens)
    async with client_of(make_app, dev_key_file, export_bytes_per_file=100, **extra) as client:
        _, done = await export(client, "/fhir/$export?_type=Patient", who)
        assert done.status_code == 200, done.text
        output = done.json()["output"]
        released = await lines(client, done.json(), who)
    assert [(o["type"], o["count"]) for o in output] == [("Patient", 2), ("Patient", 1)]
    assert [r["id"] for r in released] == ["p1", "p2", "p3"]


async def test_one_owner_cannot_take_every_running_slot(
    make_app: Callable[..., Gateway], dev_key_file: Path, router: respx.Router, tokens: Tokens
) -> None:
    """The attack: one caller starts as many slow exports as the gateway runs and blocks
    everyone else. Its second job is 429; another owner still starts one."""
    release = asyncio.Event()

    async def slow(_request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=searchset(patient("p1")), headers=FHIR)

    router.get("/Patient").mock(side_effect=slow)
    async with client_of(make_app, dev_key_file, export_max_running=2) as client:
        first = await client.get(
            "/fhir/$export?_type=Patient", headers={**backend(tokens), **ASYNC}
        )
        assert first.status_code == 202
        again = await client.get(
            "/fhir/$export?_type=Patient", headers={**backend(tokens), **ASYNC}
        )
        assert again.status_code == 429
        assert again.headers["retry-after"]
        other = await client.get(
            "/fhir/$export?_type=Patient", headers={**backend(tokens, "other-backend"), **ASYNC}
        )
        assert other.status_code == 202
        release.set()
        for answer, who in ((first, backend(tokens)), (other, backend(tokens, "other-backend"))):
            assert (
                await finished(client, answer.headers["content-location"], who)
            ).status_code == 200


async def test_a_job_past_its_time_limit_fails_with_a_clear_error(
    make_app: Callable[..., Gateway], dev_key_file: Path, router: respx.Router, tokens: Tokens
) -> None:
    """The attack: a Group of many members times many types is an unbounded series of
    upstream searches. The job stops at ``export_max_seconds`` and says so."""
    stuck_until = asyncio.Event()

    async def stuck(_request: httpx.Request) -> httpx.Response:
        await stuck_until.wait()  # set only when the test ends
        return httpx.Response(503)

    router.get("/Patient").mock(side_effect=stuck)
    async with client_of(make_app, dev_key_file, export_max_seconds=0.05) as client:
        try:
            _, done = await export(client, "/fhir/$export?_type=Patient", backend(tokens))
            assert done.status_code == 422, done.text
            issue = done.json()["issue"][0]
            assert issue["code"] == "too-costly"
            assert "longer than 0.05 seconds" in issue["diagnostics"]
            # the slot is free again
            kick = await client.get(
                "/fhir/$export?_type=Patient", headers={**backend(tokens), **ASYNC}
            )
            assert kick.status_code == 202
        finally:
            # Over real HTTP (--upstream=native/aiohttp) the served upstream's handler must end
            # before the test does: a handler left waiting keeps its socket open past the test
            # (an unclosed transport, reported during a later one).
            stuck_until.set()
            await asyncio.sleep(0.1)


# --- the ledger ---------------------------------------------------------------------------------


async def test_a_kick_off_the_ledger_refuses_leaves_no_job_running(
    make_app: Callable[..., Gateway],
    dev_key_file: Path,
    router: respx.Router,
    tokens: Tokens,
    store: OutageStore,
) -> None:
    """A kick-off answered 503 (ledger down) gave the client no status URL but its job ran
    on, paging the upstream and holding the only slot. Now nothing starts: the next kick-off
    is 202, and the upstream was not asked for the refused one."""
    searched = router.get("/Patient").respond(200, json=searchset(patient("p1")), headers=FHIR)
    who = backend(tokens)
    async with client_of(make_app, dev_key_file, export_max_running=1) as client:
        store.down = True
        refused = await client.get("/fhir/$export?_type=Patient", headers={**who, **ASYNC})
        assert refused.status_code == 503
        assert "content-location" not in refused.headers
        await asyncio.sleep(0.05)
        assert searched.call_count == 0
        store.down = False
        _, done = await export(client, "/fhir/$export?_type=Patient", who)
        assert done.status_code == 200


async def test_a_ledger_outage_mid_job_reports_try_again_not_500(
    make_app: Callable[..., Gateway],
    dev_key_file: Path,
    router: respx.Router,
    tokens: Tokens,
    store: OutageStore,
) -> None:
    """The ledger refusing page 2 fails the job (its lines are never kept); the status says
    the ledger was unavailable, a 503 with Retry-After, not an internal error; the failure is
    logged with the job's id and the error's type only."""
    gate = asyncio.Event()

    async def pages(request: httpx.Request) -> httpx.Response:
        if "page=2" not in str(request.url):
            first = searchset(obs("p1"))
            first["link"] = [{"relation": "next", "url": UPSTREAM_PAGE_2}]
            return httpx.Response(200, json=first, headers=FHIR)
        await gate.wait()
        store.down = True
        return httpx.Response(200, json=searchset(obs("p3")), headers=FHIR)

    router.get("/Observation").mock(side_effect=pages)
    who = doctor(tokens)
    async with client_of(make_app, dev_key_file) as client:
        kick = await client.get("/fhir/Patient/$export?_type=Observation", headers={**who, **ASYNC})
        assert kick.status_code == 202
        location = kick.headers["content-location"]
        with capture_logs() as logs:
            gate.set()
            for _ in range(200):
                await asyncio.sleep(0.005)
                if any(e["event"] == "export job failed" for e in logs):
                    break
        store.down = False
        done = await finished(client, location, who)
    assert done.status_code == 503, done.text
    assert done.headers["retry-after"]
    assert "start the export again" in done.json()["issue"][0]["diagnostics"]
    failed = [e for e in logs if e["event"] == "export job failed"]
    assert failed == [
        {
            "event": "export job failed",
            "log_level": "error",
            "export_job": location.rsplit("/", 1)[1],
            "error_type": "ServiceUnavailable",
        }
    ]


async def test_a_ledger_outage_at_download_releases_nothing(
    gateway: httpx.AsyncClient, tokens: Tokens, store: OutageStore
) -> None:
    who = doctor(tokens)
    _, done = await export(gateway, "/fhir/Patient/$export?_type=Observation", who)
    url = done.json()["output"][0]["url"]
    store.down = True
    answer = await gateway.get(url, headers=who)
    assert answer.status_code == 503
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "o-p1" not in answer.text


async def test_a_download_is_judged_and_recorded_batch_by_batch(
    make_app: Callable[..., Gateway],
    dev_key_file: Path,
    router: respx.Router,
    tokens: Tokens,
    store: OutageStore,
    signer: SigningKey,
) -> None:
    """A file is never loaded whole: it is judged, recorded and sent a batch at a time (the
    first batch leaves before the second is judged). The ledger refusing the second batch
    leaves the response incomplete (the server closes the connection: never a short file that
    looks complete); the first batch's patients are on the ledger, the second's are not."""
    people = [patient(f"q{n}") for n in range(BATCH_LINES + 20)]
    router.get("/Patient").respond(200, json=searchset(*people), headers=FHIR)
    who = backend(tokens)
    app = make_app(auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        _, done = await export(client, "/fhir/$export?_type=Patient", who)
        url = httpx.URL(done.json()["output"][0]["url"])
        assert len(await lines_of(client, str(url), who)) == BATCH_LINES + 20
    before = len(await ledger_entries(store))
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)
        if message.get("body"):
            store.down = True  # the ledger fails once the first batch has left

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url.path,
        "raw_path": url.raw_path,
        "query_string": b"",
        "headers": [(b"host", b"gateway.test"), (b"authorization", who["authorization"].encode())],
        "client": ("203.0.113.7", 50000),
        "server": ("gateway.test", 80),
    }
    with capture_logs() as logs:
        await app(scope, receive, send)
    store.down = False
    recorded = b"".join(e.text for e in (await ledger_entries(store, signer))[before:])
    await app.aclose()
    assert sent[0]["status"] == 200
    assert "content-length" not in dict(sent[0]["headers"])
    bodies = [m for m in sent[1:] if m["type"] == "http.response.body"]
    assert len(bodies) == 1  # the first batch, never the end of the body
    assert bodies[0]["more_body"] is True
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "audit trail unavailable",
        "export download cut",
    ]
    assert bodies[0]["body"].count(b"\n") == BATCH_LINES
    assert b"Patient/q0" in recorded
    assert f"Patient/q{BATCH_LINES + 1}".encode() not in recorded


# --- who may see a job ------------------------------------------------------------------------


async def test_another_app_of_the_same_user_does_not_get_the_job(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """The attack: a second app the same clinician signed in to (another client_id) reads
    or cancels the first app's export. It gets the 404 of an unknown job."""
    mine = doctor(tokens)
    location, done = await export(gateway, "/fhir/Patient/$export?_type=Patient", mine)
    url = done.json()["output"][0]["url"]
    other = tokens.bearer("dr", "user/*.rs", fhir_user=DR, client_id="other-app")
    assert (await gateway.get(location, headers=other)).status_code == 404
    assert (await gateway.get(url, headers=other)).status_code == 404
    assert (await gateway.delete(location, headers=other)).status_code == 404
    assert (await gateway.get(location, headers=mine)).status_code == 200


@pytest.mark.parametrize(
    "scopes", ["user/Patient.r", "user/Consent.cruds"], ids=["read-only", "other-type"]
)
async def test_a_narrower_token_neither_sees_nor_cancels_the_job(
    gateway: httpx.AsyncClient, tokens: Tokens, scopes: str
) -> None:
    """The same owner with a token lacking read+search on the job's types gets 403 for
    status, manifest and DELETE, and the job is still there."""
    mine = doctor(tokens)
    location, _ = await export(gateway, "/fhir/Patient/$export?_type=Patient", mine)
    narrow = doctor(tokens, scopes)
    status = await gateway.get(location, headers=narrow)
    assert status.status_code == 403
    assert "output" not in status.text
    assert (await gateway.delete(location, headers=narrow)).status_code == 403
    assert (await gateway.get(location, headers=mine)).status_code == 200


async def test_an_invented_type_is_refused_at_kick_off(
    gateway: httpx.AsyncClient, tokens: Tokens, router: respx.Router
) -> None:
    """``_type=Foo`` with a system token was a 202 whose status then said 500."""
    asked = router.get("/Foo").respond(404, json={"resourceType": "OperationOutcome"})
    answer = await gateway.get("/fhir/$export?_type=Foo", headers={**backend(tokens), **ASYNC})
    assert answer.status_code == 400
    assert "content-location" not in answer.headers
    assert asked.call_count == 0


# --- the upstream and the Group ---------------------------------------------------------------


async def test_an_off_base_next_link_fails_the_job_and_is_not_followed(
    gateway: httpx.AsyncClient, tokens: Tokens, router: respx.Router
) -> None:
    """The attack: an upstream page whose next link points elsewhere makes the gateway carry
    its request (and the upstream's credentials) to another host."""
    page = searchset(patient("p1"))
    page["link"] = [{"relation": "next", "url": "http://evil.example/fhir/Patient?page=2"}]
    router.get("/Patient").respond(200, json=page, headers=FHIR)
    with respx.mock(assert_all_called=False) as elsewhere:
        evil = elsewhere.get("http://evil.example/fhir/Patient").respond(200, json={})
        _, done = await export(gateway, "/fhir/$export?_type=Patient", backend(tokens))
        assert evil.call_count == 0
    assert done.status_code == 500
    assert "evil" not in done.text


async def test_a_group_over_the_member_cap_is_422(
    make_app: Callable[..., Gateway], dev_key_file: Path, upstream: respx.Router, tokens: Tokens
) -> None:
    group = {
        "resourceType": "Group",
        "id": "g3",
        "member": [{"entity": {"reference": f"Patient/{p}"}} for p in ("p1", "p3")],
    }
    upstream.get("/Group/g3").respond(200, json=group, headers=FHIR)
    async with client_of(make_app, dev_key_file, export_max_group_members=1) as client:
        kick = await client.get("/fhir/Group/g3/$export", headers={**doctor(tokens), **ASYNC})
    assert kick.status_code == 422
    assert "more than 1 patients" in kick.json()["issue"][0]["diagnostics"]


async def test_a_groups_non_patient_members_are_skipped(
    gateway: httpx.AsyncClient, tokens: Tokens, upstream: respx.Router
) -> None:
    """Only ``Patient`` members' compartments are exported: a Practitioner member and a
    versioned reference search nothing."""
    members = [
        {"entity": {"reference": "Practitioner/x"}},
        {"entity": {"reference": "Patient/p3/_history/2"}},
        {"entity": {"reference": "Patient/p1"}},
    ]
    group = {"resourceType": "Group", "id": "g4", "member": members}
    upstream.get("/Group/g4").respond(200, json=group, headers=FHIR)
    searched = upstream.get("/Observation").respond(200, json=searchset(obs("p1")), headers=FHIR)
    _, done = await export(gateway, "/fhir/Group/g4/$export?_type=Observation", doctor(tokens))
    assert done.status_code == 200, done.text
    assert [c.request.url.params["patient"] for c in searched.calls] == ["Patient/p1"]


@pytest.mark.parametrize(
    "member",
    [
        {"entity": {"reference": "Group/g9"}},
        {"entity": {"reference": "http://elsewhere.example/fhir/Patient/p3"}},
        {"entity": "junk"},
        "junk",
        {"entity": {"reference": 5}},
    ],
    ids=["nested-group", "foreign-patient", "entity-junk", "member-junk", "reference-number"],
)
async def test_a_group_whose_members_cannot_be_told_is_not_found(
    gateway: httpx.AsyncClient, tokens: Tokens, upstream: respx.Router, member: Any
) -> None:
    """A member whose patients the Group's read cannot tell (a nested Group, a patient of
    another server, a malformed entry) fails the Group's judging closed: the generic 404,
    no job, nothing searched."""
    group = {
        "resourceType": "Group",
        "id": "g5",
        "member": [member, {"entity": {"reference": "Patient/p1"}}],
    }
    upstream.get("/Group/g5").respond(200, json=group, headers=FHIR)
    searched = upstream.get("/Observation").respond(200, json=searchset(obs("p1")), headers=FHIR)
    kick = await gateway.get("/fhir/Group/g5/$export", headers={**doctor(tokens), **ASYNC})
    assert kick.status_code == 404
    assert searched.call_count == 0


async def test_a_refused_group_kick_off_records_the_refusing_member(
    gateway: httpx.AsyncClient,
    tokens: Tokens,
    upstream: respx.Router,
    store: OutageStore,
    signer: SigningKey,
) -> None:
    """The Group was judged on a throwaway trail: p2's record did not show the clinician's
    attempt to export a Group naming p2. The kick-off's ledger entry names p2 now."""
    await deny_dr(gateway, tokens, "p2")
    group = {
        "resourceType": "Group",
        "id": "g2",
        "member": [{"entity": {"reference": "Patient/p2"}}],
    }
    upstream.get("/Group/g2").respond(200, json=group, headers=FHIR)
    before = len(await ledger_entries(store))
    kick = await gateway.get("/fhir/Group/g2/$export", headers={**doctor(tokens), **ASYNC})
    assert kick.status_code == 404
    recorded = b"".join(e.text for e in (await ledger_entries(store, signer))[before:])
    assert b"Patient/p2" in recorded
