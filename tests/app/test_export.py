"""Bulk Data ``$export`` of patient data: kick-off, status, manifest, files, cancel, limits,
and that nothing of a patient whose consent refuses the exporting caller reaches any file."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import GATEWAY
from tests.app.consenting import (
    DEV_ISSUER,
    Tokens,
    auth_settings,
    ledger_entries,
    observation,
    r5_consent,
)

DR = "Practitioner/dr"
ASYNC = {"prefer": "respond-async"}
FHIR = {"content-type": "application/fhir+json"}
STATUS_URL = re.compile(re.escape(GATEWAY) + r"/\$export-status/[0-9a-f]{32}")


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": f"Name-{pid}"}]}


def obs(pid: str) -> dict[str, Any]:
    return {**observation(f"Patient/{pid}"), "id": f"o-{pid}"}


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


def doctor(tokens: Tokens, scopes: str = "user/*.rs") -> dict[str, str]:
    return tokens.bearer("dr", scopes, fhir_user=DR)


def backend(tokens: Tokens, sub: str = "ehr-backend") -> dict[str, str]:
    return tokens.bearer(sub, "system/*.rs")


@pytest.fixture
def upstream(router: respx.Router) -> respx.Router:
    """Three patients and one Observation each; p2 will refuse Practitioner/dr."""
    people = ("p1", "p2", "p3")
    router.get("/Patient").respond(200, json=searchset(*(patient(p) for p in people)), headers=FHIR)
    router.get("/Observation").respond(200, json=searchset(*(obs(p) for p in people)), headers=FHIR)
    return router


@pytest.fixture
async def gateway(
    make_app: Callable[..., Gateway], dev_key_file: Path, upstream: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out")
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client
    await app.aclose()


async def deny_dr(client: httpx.AsyncClient, tokens: Tokens, pid: str) -> None:
    """``pid`` refuses Practitioner/dr (R5: an exception to a permitting base)."""
    provision = {"actor": [{"reference": {"reference": DR}}]}
    body = r5_consent(f"Patient/{pid}", "permit", provision=[provision])
    answer = await client.post("/fhir/Consent", json=body, headers=tokens.patient(pid))
    assert answer.status_code == 201, answer.text


async def finished(client: httpx.AsyncClient, status_url: str, headers: dict[str, str]) -> Any:
    """The status URL polled until the job is no longer running: its last answer."""
    for _ in range(500):
        answer = await client.get(status_url, headers=headers)
        if answer.status_code != 202:
            return answer
        assert answer.headers["x-progress"]
        await asyncio.sleep(0.005)
    raise AssertionError("the export did not finish")


async def export(
    client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> tuple[str, httpx.Response]:
    kick = await client.get(path, headers={**headers, **ASYNC})
    assert kick.status_code == 202, kick.text
    location = kick.headers["content-location"]
    assert STATUS_URL.fullmatch(location), location
    return location, await finished(client, location, headers)


async def lines_of(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[Any]:
    assert url.startswith(f"{GATEWAY}/$export-file/")
    answer = await client.get(url, headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/fhir+ndjson"
    return [json.loads(line) for line in answer.text.splitlines()]


async def lines(client: httpx.AsyncClient, manifest: Any, headers: dict[str, str]) -> list[Any]:
    out = []
    for item in manifest["output"]:
        found = await lines_of(client, item["url"], headers)
        assert {r["resourceType"] for r in found} == {item["type"]}, "one type a file"
        assert len(found) == item["count"]
        out += found
    return out


# --- what is released -------------------------------------------------------------------------


async def test_export_releases_nothing_of_a_denying_patient(
    gateway: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore, signer: SigningKey
) -> None:
    """The attack: a clinician exports every patient's data in bulk to get around the per-read
    consent check. p2 refuses the clinician: none of p2's resources is in any file, the
    others' are; each patient the job judged is on the ledger before the file is served."""
    await deny_dr(gateway, tokens, "p2")
    headers = doctor(tokens)
    _, done = await export(gateway, "/fhir/Patient/$export?_type=Patient,Observation", headers)
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == f"{GATEWAY}/Patient/$export?_type=Patient,Observation"
    assert manifest["error"] == []
    assert manifest["transactionTime"].endswith("Z")
    assert [o["type"] for o in manifest["output"]] == ["Patient", "Observation"]
    before = len(await ledger_entries(store))
    released = await lines(gateway, manifest, headers)
    ids = sorted(f"{r['resourceType']}/{r['id']}" for r in released)
    assert ids == ["Observation/o-p1", "Observation/o-p3", "Patient/p1", "Patient/p3"]
    assert "p2" not in json.dumps(released)
    downloads = b"".join(e.text for e in (await ledger_entries(store, signer))[before:])
    assert b"Patient/p1" in downloads  # each download recorded with the patients it released
    assert b"Patient/p2" not in downloads
    texts = b"".join(e.text for e in await ledger_entries(store, signer))
    for pid in ("p1", "p2", "p3"):  # released (p1, p3) and withheld (p2) alike
        assert f"Patient/{pid}".encode() in texts


async def test_system_export_needs_a_system_token_and_judges_too(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    assert (
        await gateway.get("/fhir/$export?_type=Patient", headers={**doctor(tokens), **ASYNC})
    ).status_code == 403
    _, done = await export(gateway, "/fhir/$export?_type=Patient", backend(tokens))
    assert done.status_code == 200
    released = await lines(gateway, done.json(), backend(tokens))
    assert sorted(r["id"] for r in released) == ["p1", "p2", "p3"]


async def test_group_export_reads_only_its_members_compartments(
    gateway: httpx.AsyncClient, tokens: Tokens, upstream: respx.Router
) -> None:
    group = {
        "resourceType": "Group",
        "id": "g1",
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"reference": "Patient/p1"}},
            {"entity": {"reference": "Patient/p3"}},
        ],
    }
    upstream.get("/Group/g1").respond(200, json=group, headers=FHIR)
    searched = upstream.get("/Observation").respond(200, json=searchset(obs("p1")), headers=FHIR)
    _, done = await export(gateway, "/fhir/Group/g1/$export?_type=Observation", doctor(tokens))
    assert done.status_code == 200, done.text
    asked = sorted(call.request.url.params["patient"] for call in searched.calls)
    assert asked == ["Patient/p1", "Patient/p3"]


async def test_group_naming_a_denying_patient_is_not_found(
    gateway: httpx.AsyncClient, tokens: Tokens, upstream: respx.Router
) -> None:
    """The Group itself is judged first, as a read: one naming p2 (who refuses the caller)
    is the generic 404 and no job starts."""
    await deny_dr(gateway, tokens, "p2")
    group = {
        "resourceType": "Group",
        "id": "g2",
        "member": [{"entity": {"reference": "Patient/p2"}}],
    }
    upstream.get("/Group/g2").respond(200, json=group, headers=FHIR)
    kick = await gateway.get("/fhir/Group/g2/$export", headers={**doctor(tokens), **ASYNC})
    assert kick.status_code == 404


# --- who may ask, and how -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "extra", "status"),
    [
        ("/fhir/Patient/$export", {}, 400),  # no Prefer: respond-async
        ("/fhir/Patient/$export?_outputFormat=text/csv", ASYNC, 400),
        ("/fhir/Patient/$export?_typeFilter=Observation%3Fcode%3Dx", ASYNC, 400),
        ("/fhir/Patient/$export?_since=2024", ASYNC, 400),
        ("/fhir/Patient/$export?_type=Practitioner", ASYNC, 400),
        ("/fhir/Patient/$export?_type=Consent", ASYNC, 403),
        ("/fhir/Patient/p1/$export", ASYNC, 403),
        ("/fhir/Observation/$export", ASYNC, 403),
    ],
    ids=[
        "no-prefer",
        "csv",
        "type-filter",
        "since-date",
        "non-compartment",
        "gateway-owned",
        "patient-instance",
        "other-type",
    ],
)
async def test_kick_off_refusals(
    gateway: httpx.AsyncClient, tokens: Tokens, path: str, extra: dict[str, str], status: int
) -> None:
    answer = await gateway.get(path, headers={**doctor(tokens), **extra})
    assert answer.status_code == status, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"


async def test_patient_context_callers_are_refused(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """A patient's app may not export every patient; it reads its own record with
    $everything (decision documented in docs/operations.md)."""
    headers = {**tokens.patient("p1", "patient/*.rs"), **ASYNC}
    assert (await gateway.get("/fhir/Patient/$export", headers=headers)).status_code == 403


async def test_each_type_needs_read_and_search_scopes(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    headers = {**doctor(tokens, "user/Patient.rs"), **ASYNC}
    answer = await gateway.get("/fhir/Patient/$export?_type=Patient,Observation", headers=headers)
    assert answer.status_code == 403
    assert "Observation" in answer.text


async def test_a_job_is_served_only_to_its_principal(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    mine = backend(tokens)
    location, done = await export(gateway, "/fhir/$export?_type=Patient", mine)
    file_url = done.json()["output"][0]["url"]
    other = backend(tokens, "another-backend")
    assert (await gateway.get(location, headers=other)).status_code == 404
    assert (await gateway.get(file_url, headers=other)).status_code == 404
    assert (await gateway.delete(location, headers=other)).status_code == 404
    assert (await gateway.get(location, headers=mine)).status_code == 200
    unknown = location[:-32] + "0" * 32
    assert (await gateway.get(unknown, headers=mine)).status_code == 404
    assert (await gateway.get(f"{file_url[:-2]}/99", headers=mine)).status_code == 404
    assert (await gateway.get("/fhir/$export-status/not-a-job", headers=mine)).status_code == 404
    assert (await gateway.put(location, headers=mine)).status_code == 405
    assert (await gateway.get(location)).status_code == 401


async def test_delete_cancels_and_forgets_the_job(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    mine = backend(tokens)
    location, _ = await export(gateway, "/fhir/$export?_type=Patient", mine)
    assert (await gateway.delete(location, headers=mine)).status_code == 202
    assert (await gateway.get(location, headers=mine)).status_code == 404


# --- limits -------------------------------------------------------------------------------------


async def test_too_many_resources_fails_the_job_with_too_costly(
    make_app: Callable[..., Gateway], dev_key_file: Path, upstream: respx.Router, tokens: Tokens
) -> None:
    app = make_app(
        auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out", export_max_resources=2
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        _, done = await export(client, "/fhir/$export?_type=Patient", backend(tokens))
    await app.aclose()
    assert done.status_code == 422
    issue = done.json()["issue"][0]
    assert issue["code"] == "too-costly"
    assert "_since" in issue["diagnostics"]


async def test_running_jobs_are_limited(
    make_app: Callable[..., Gateway], dev_key_file: Path, router: respx.Router, tokens: Tokens
) -> None:
    release = asyncio.Event()

    async def slow(_request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=searchset(patient("p1")), headers=FHIR)

    router.get("/Patient").mock(side_effect=slow)
    app = make_app(
        auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out", export_max_running=1
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    headers = {**backend(tokens), **ASYNC}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        first = await client.get("/fhir/$export?_type=Patient", headers=headers)
        assert first.status_code == 202
        second = await client.get("/fhir/$export?_type=Patient", headers=headers)
        assert second.status_code == 429
        release.set()
        done = await finished(client, first.headers["content-location"], backend(tokens))
        assert done.status_code == 200
    await app.aclose()


# --- the board beside a SQLite store --------------------------------------------------------------


async def test_jobs_beside_a_sqlite_store_live_on_their_own_board(
    make_app: Callable[..., Gateway],
    dev_key_file: Path,
    upstream: respx.Router,
    tokens: Tokens,
    tmp_path: Path,
) -> None:
    """With a SQLite store the jobs and their files are on ``<store>.patient-exports`` (shared
    by the worker processes), not on the audit export's board; the job is served from there."""
    app = make_app(
        auth=auth_settings(dev_key_file),
        consent_jurisdiction="opt-out",
        store=f"sqlite:{tmp_path / 'gw.db'}",
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    mine = backend(tokens)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        _, done = await export(client, "/fhir/$export?_type=Patient,Observation", mine)
        assert done.status_code == 200, done.text
        released = await lines(client, done.json(), mine)
    await app.aclose()
    assert len(released) == 6
    assert (tmp_path / "gw.db.patient-exports").exists()
    assert not (tmp_path / "gw.db.exports").exists()


async def test_a_consent_given_after_the_files_were_made_holds_at_download(
    gateway: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore, signer: SigningKey
) -> None:
    """The attack: export while everyone permits, then fetch the files after a patient has
    refused the caller. The download is judged again with the consents of now: none of p2's
    lines leave, and the download's ledger entry names the patients it released."""
    headers = doctor(tokens)
    _, done = await export(gateway, "/fhir/Patient/$export?_type=Observation", headers)
    assert done.json()["output"][0]["count"] == 3  # p1, p2 and p3 when the file was made
    await deny_dr(gateway, tokens, "p2")
    before = len(await ledger_entries(store))
    released = await lines_of(gateway, done.json()["output"][0]["url"], headers)
    assert sorted(r["id"] for r in released) == ["o-p1", "o-p3"]
    download = b"".join(e.text for e in (await ledger_entries(store, signer))[before:])
    assert b"Patient/p1" in download
    assert b"Patient/p3" in download


async def test_a_download_is_judged_with_the_downloading_tokens_scopes(
    gateway: httpx.AsyncClient, tokens: Tokens
) -> None:
    """The same principal with a narrower token (Patient only) gets no Observation line."""
    _, done = await export(gateway, "/fhir/Patient/$export?_type=Observation", doctor(tokens))
    url = done.json()["output"][0]["url"]
    assert await lines_of(gateway, url, doctor(tokens, "user/Patient.rs")) == []
    assert len(await lines_of(gateway, url, doctor(tokens))) == 3
