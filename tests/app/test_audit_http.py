"""The gateway's own AuditEvent API (IHE ITI-81) over real parts: traffic through the proxy is
recorded on a memory ledger, then searched, read and exported through the gateway, which never
forwards an AuditEvent request. Each expected answer is computed from the traffic the test
sent, not from the gateway's own output."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from middleware.app import Gateway
from tests.app.conftest import WallClock, raw_asgi_request
from tests.app.consenting import ACT_REASON, Tokens, auth_settings
from tests.app.outage import OutageStore

AUDITOR_ROLE = "ledger-auditor"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
Headers = dict[str, str]


@pytest.fixture
def store() -> OutageStore:
    return OutageStore()


@pytest.fixture
async def client(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    for pid in ("p1", "p2"):
        router.get(f"/Patient/{pid}").respond(200, json={"resourceType": "Patient", "id": pid})
    app = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out", audit_max_count=5)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


def auditor(tokens: Tokens, sub: str = "officer") -> Headers:
    return tokens.bearer(
        sub, "user/AuditEvent.rs", fhir_user=f"Practitioner/{sub}", roles=[AUDITOR_ROLE]
    )


def clinician(tokens: Tokens, sub: str, purpose: str = "TREAT") -> Headers:
    return tokens.bearer(
        sub, "user/Patient.rs", fhir_user=f"Practitioner/{sub}", purpose_of_use=[purpose]
    )


async def traffic(client: httpx.AsyncClient, tokens: Tokens) -> None:
    """The exchanges every test searches: dr-a reads p1 twice for treatment, dr-b reads p2 for
    payment, and dr-b is refused a create (no write scope)."""
    a, b = clinician(tokens, "dr-a"), clinician(tokens, "dr-b", "HPAYMT")
    assert (await client.get("/fhir/Patient/p1", headers=a)).status_code == 200
    assert (await client.get("/fhir/Patient/p1", headers=a)).status_code == 200
    assert (await client.get("/fhir/Patient/p2", headers=b)).status_code == 200
    body = {"resourceType": "Patient", "id": "p9"}
    assert (await client.post("/fhir/Patient", json=body, headers=b)).status_code == 403


def events(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle.get("entry", [])]


def restful(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RESTful events (not the AuthZconsent ones) among ``found``."""
    return [e for e in found if e["type"]["code"] == "rest"]


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def patients(event: dict[str, Any]) -> set[str]:
    return {
        e["what"]["reference"]
        for e in event.get("entity", [])
        if e.get("role", {}).get("code") == "1" and "reference" in e.get("what", {})
    }


def who(event: dict[str, Any]) -> set[str]:
    return {a["who"].get("reference", "") for a in event["agent"] if "who" in a}


async def search(client: httpx.AsyncClient, headers: Headers, **params: str) -> httpx.Response:
    return await client.get("/fhir/AuditEvent", params=params, headers=headers)


# --- each search parameter ------------------------------------------------------------------

# (params, what every restful event found must satisfy, how many reads of the traffic match)
PARAMS: list[tuple[str, dict[str, str], Callable[[dict[str, Any]], bool], int]] = [
    ("patient", {"patient": "Patient/p1"}, lambda e: patients(e) == {"Patient/p1"}, 2),
    ("patient bare id", {"patient": "p2"}, lambda e: patients(e) == {"Patient/p2"}, 1),
    ("agent", {"agent": "Practitioner/dr-a"}, lambda e: "Practitioner/dr-a" in who(e), 2),
    ("entity", {"entity": "Patient/p2"}, lambda e: patients(e) == {"Patient/p2"}, 1),
    ("subtype", {"subtype": "read", "type": "rest"}, lambda e: subtype(e) == "read", 3),
    ("action", {"action": "C"}, lambda e: e["action"] == "C", 0),
    ("outcome failure", {"outcome": "4"}, lambda e: e["outcome"] == "4", 0),
    ("purpose", {"purpose": "HPAYMT"}, lambda e: "Practitioner/dr-b" in who(e), 1),
    (
        "purpose with system",
        {"purpose": f"{ACT_REASON}|TREAT"},
        lambda e: "Practitioner/dr-a" in who(e),
        2,
    ),
    ("date from 2000", {"date": "ge2000-01-01"}, lambda e: True, 3),
    ("date before 2000", {"date": "lt2000"}, lambda e: False, 0),
]


@pytest.mark.parametrize(
    ("params", "holds", "reads"), [p[1:] for p in PARAMS], ids=[p[0] for p in PARAMS]
)
async def test_each_parameter_selects_what_it_names(
    client: httpx.AsyncClient,
    tokens: Tokens,
    params: dict[str, str],
    holds: Callable[[dict[str, Any]], bool],
    reads: int,
) -> None:
    await traffic(client, tokens)
    found: list[dict[str, Any]] = []
    got = await search(client, auditor(tokens), **params, _count="5")
    while True:
        assert got.status_code == 200, got.text
        Bundle.model_validate(got.json())  # a valid R4 Bundle of valid AuditEvents
        found += restful(events(got.json()))
        nxt = [link["url"] for link in got.json()["link"] if link["relation"] == "next"]
        if not nxt:
            break
        got = await client.get(nxt[0], headers=auditor(tokens))
    traffic_events = [e for e in found if not subtype(e).startswith("search")]
    assert all(holds(e) for e in traffic_events)
    assert sum(subtype(e) == "read" for e in traffic_events) == reads
    if params.get("action") == "C" or params.get("outcome") == "4":
        creates = [e for e in traffic_events if subtype(e) == "create"]
        assert len(creates) == 1  # the refused create, and only it
        assert creates[0]["outcome"] == "4"


async def test_sort_descending_reverses_the_order(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await traffic(client, tokens)
    up = events((await search(client, auditor(tokens), type="rest", subtype="read")).json())
    down = events(
        (await search(client, auditor(tokens), type="rest", subtype="read", _sort="-date")).json()
    )

    def entries(found: list[dict[str, Any]]) -> list[str]:
        return list(dict.fromkeys(e["id"].split("-")[0] for e in found))

    assert entries(down) == entries(up)[::-1]
    assert len(entries(up)) == 3


# --- paging ---------------------------------------------------------------------------------


async def test_pages_cover_the_search_once_each(
    client: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    """Paging ends although each page request is itself audited: a search is a snapshot as of
    its first page (the entries of its own pages, recorded later, are not in it)."""
    await traffic(client, tokens)
    officer = auditor(tokens)
    whole = events((await search(client, officer, date="ge2000", _count="5")).json())
    ids: list[str] = []
    got = await search(client, officer, date="ge2000", _count="1", type="rest")
    pages = 0
    while True:
        pages += 1
        ids += [e["id"] for e in events(got.json())]
        nxt = [link["url"] for link in got.json()["link"] if link["relation"] == "next"]
        if not nxt:
            break
        assert "_cursor=" in nxt[0]
        wall.now += 1  # time passes between pages
        got = await client.get(nxt[0], headers=officer)
        assert got.status_code == 200
    assert pages in (5, 6)  # whole's audit entry, 4 traffic entries; one row a page
    assert len(ids) == len(set(ids))
    assert {e["id"] for e in whole if e["type"]["code"] == "rest"} <= set(ids)


async def test_a_cursor_serves_only_its_caller_and_its_search(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await traffic(client, tokens)
    first = await search(client, auditor(tokens), _count="1")
    nxt = next(link["url"] for link in first.json()["link"] if link["relation"] == "next")
    other = await client.get(nxt, headers=auditor(tokens, "officer-2"))
    assert other.status_code == 400
    changed = await client.get(nxt.replace("_count=1", "_count=2"), headers=auditor(tokens))
    assert changed.status_code == 400
    assert (await client.get(nxt + "x", headers=auditor(tokens))).status_code == 400
    assert (await client.get(nxt, headers=auditor(tokens))).status_code == 200


async def test_count_is_bounded_by_the_setting(client: httpx.AsyncClient, tokens: Tokens) -> None:
    await traffic(client, tokens)
    got = await search(client, auditor(tokens), _count="1000")
    assert got.status_code == 200
    assert len({e["meta"]["tag"][-1]["code"] for e in events(got.json())}) <= 5


# --- who may search -------------------------------------------------------------------------

ACCESS: list[tuple[str, Callable[[Tokens], Headers], dict[str, str], int]] = [
    ("auditor over everything", auditor, {}, 200),
    ("auditor about one patient", auditor, {"patient": "p2"}, 200),
    ("patient own, implicit", lambda t: t.patient("p1", "patient/AuditEvent.rs"), {}, 200),
    (
        "patient own, named",
        lambda t: t.patient("p1", "patient/AuditEvent.rs"),
        {"patient": "Patient/p1"},
        200,
    ),
    (
        "patient asking about another",
        lambda t: t.patient("p1", "patient/AuditEvent.rs"),
        {"patient": "p2"},
        403,
    ),
    ("patient without the scope", lambda t: t.patient("p1", "patient/Patient.rs"), {}, 403),
    ("clinician", lambda t: clinician(t, "dr-a"), {}, 403),
    (
        "auditor role without the scope",
        lambda t: t.bearer("x", "user/Patient.rs", roles=[AUDITOR_ROLE]),
        {},
        403,
    ),
    (
        "scope without the role",
        lambda t: t.bearer("x", "user/AuditEvent.rs", fhir_user="Practitioner/x"),
        {},
        403,
    ),
    ("no token", lambda t: {}, {}, 401),
]


@pytest.mark.parametrize(
    ("caller", "params", "status"), [a[1:] for a in ACCESS], ids=[a[0] for a in ACCESS]
)
async def test_who_may_search(
    client: httpx.AsyncClient,
    tokens: Tokens,
    caller: Callable[[Tokens], Headers],
    params: dict[str, str],
    status: int,
) -> None:
    await traffic(client, tokens)
    got = await search(client, caller(tokens), **params)
    assert got.status_code == status
    if status != 200:
        assert got.json()["resourceType"] == "OperationOutcome"
        assert "entry" not in got.json()
        return
    found = restful(events(got.json()))
    seen = set().union(*(patients(e) for e in found if not subtype(e).startswith("search")))
    expected = {"auditor over everything": {"Patient/p1", "Patient/p2"}}
    expected["auditor about one patient"] = {"Patient/p2"}
    name = next(a[0] for a in ACCESS if a[1] is caller and a[2] == params)
    assert seen == expected.get(name, {"Patient/p1"})


async def test_a_patient_sees_who_looked_at_its_record(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    """ "Who looked at my record": p1's own search lists dr-a's two reads, nothing of p2's."""
    await traffic(client, tokens)
    got = await search(client, tokens.patient("p1", "patient/AuditEvent.rs"), subtype="read")
    reads = restful(events(got.json()))
    assert len(reads) == 2
    assert all(who(e) >= {"Practitioner/dr-a"} for e in reads)
    assert all(patients(e) == {"Patient/p1"} for e in reads)


# --- every search is itself audited ---------------------------------------------------------


async def test_the_search_itself_is_on_the_ledger(
    client: httpx.AsyncClient, tokens: Tokens, store: OutageStore
) -> None:
    await traffic(client, tokens)
    before = await store.size()
    got = await search(client, auditor(tokens), patient="p1")
    assert got.status_code == 200
    assert await store.size() == before + 1
    found = events((await search(client, auditor(tokens), subtype="search-type")).json())
    queries = [
        base64.b64decode(entity["query"])
        for event in found
        for entity in event.get("entity", [])
        if "query" in entity
    ]
    assert b"GET /fhir/AuditEvent?patient=p1" in queries
    query_event = next(e for e in found if "Patient/p1" in patients(e))
    assert "Practitioner/officer" in who(query_event)
    AuditEvent.model_validate(query_event)


async def test_refusals_and_bad_parameters_are_audited_too(
    client: httpx.AsyncClient, tokens: Tokens, store: OutageStore
) -> None:
    before = await store.size()
    assert (await search(client, clinician(tokens, "dr-a"))).status_code == 403
    assert (await search(client, auditor(tokens), nonsense="1")).status_code == 400
    assert await store.size() == before + 2
    assert (await search(client, {})).status_code == 401
    assert await store.size() == before + 2  # an unauthenticated caller costs nothing durable


async def test_no_answer_without_its_ledger_entry(
    client: httpx.AsyncClient, tokens: Tokens, store: OutageStore
) -> None:
    await traffic(client, tokens)
    store.down = True
    got = await search(client, auditor(tokens))
    assert got.status_code == 503
    assert got.json()["resourceType"] == "OperationOutcome"
    assert b"Patient/p1" not in got.content
    read = await client.get("/fhir/AuditEvent/0-0", headers=auditor(tokens))
    assert read.status_code == 503


# --- bad parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"address": "x"},
        {"date": "ne2024"},
        {"_sort": "name"},
        {"_count": "0"},
        {"patient": "p1,p2"},
        {"patient:missing": "true"},
        {"_cursor": "not-a-cursor"},
    ],
    ids=["unknown", "date-prefix", "sort", "count", "or-list", "modifier", "cursor"],
)
async def test_bad_parameters_are_400_operation_outcomes(
    client: httpx.AsyncClient, tokens: Tokens, params: dict[str, str]
) -> None:
    got = await search(client, auditor(tokens), **params)
    assert got.status_code == 400
    assert got.json()["resourceType"] == "OperationOutcome"


# --- read -----------------------------------------------------------------------------------


async def test_read_serves_the_event_the_search_served(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await traffic(client, tokens)
    found = events((await search(client, auditor(tokens), patient="p2")).json())
    event = found[-1]
    got = await client.get(f"/fhir/AuditEvent/{event['id']}", headers=auditor(tokens))
    assert got.status_code == 200
    assert got.json() == event
    index = event["id"].split("-")[0]
    assert event["meta"]["source"] == f"http://gateway.test/ledger/receipt/{index}"


@pytest.mark.parametrize(
    ("caller", "event_id"),
    [
        (lambda t: t.patient("p1", "patient/AuditEvent.r"), "own-p2"),
        (auditor, "999-0"),
        (auditor, "0-9"),
        (auditor, "00-0"),
        (auditor, "x"),
    ],
    ids=["another-patients", "no-entry", "no-such-event", "leading-zero", "malformed"],
)
async def test_read_answers_one_404_for_every_reason(
    client: httpx.AsyncClient,
    tokens: Tokens,
    caller: Callable[[Tokens], Headers],
    event_id: str,
) -> None:
    await traffic(client, tokens)
    if event_id == "own-p2":
        p2 = events((await search(client, auditor(tokens), patient="p2")).json())
        event_id = p2[0]["id"]
    got = await client.get(f"/fhir/AuditEvent/{event_id}", headers=caller(tokens))
    assert got.status_code == 404
    assert got.json()["issue"][0]["diagnostics"] == "no such AuditEvent"


# --- never forwarded ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Patient/p1/AuditEvent"),
        ("POST", "/fhir/AuditEvent"),
        ("PUT", "/fhir/AuditEvent/0-0"),
        ("DELETE", "/fhir/AuditEvent/0-0"),
    ],
    ids=["compartment", "create", "update", "delete"],
)
async def test_audit_event_requests_never_reach_the_upstream(
    client: httpx.AsyncClient, tokens: Tokens, router: respx.Router, method: str, path: str
) -> None:
    system = tokens.bearer("ehr", "system/*.cruds")
    got = await client.request(method, path, headers=system, json={"resourceType": "AuditEvent"})
    assert got.status_code in (403, 404, 405)
    assert all("AuditEvent" not in str(call.request.url) for call in router.calls)


async def test_event_level_criteria_hold_for_every_event_returned(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    """An entry renders its AuthZconsent decision event beside the RESTful one: a search for
    ``type=rest`` returns the RESTful events only, one without it both kinds."""
    await traffic(client, tokens)
    typed = events((await search(client, auditor(tokens), type="rest", patient="p1")).json())
    assert typed
    assert {e["type"]["code"] for e in typed} == {"rest"}
    every = events((await search(client, auditor(tokens), patient="p1")).json())
    assert {e["type"]["code"] for e in every} == {"rest", "110113"}


async def test_post_search_answers_as_get(client: httpx.AsyncClient, tokens: Tokens) -> None:
    """``POST AuditEvent/_search`` with a form body is the same search as the GET (FHIR R4
    http.html#search); a body of another type is refused."""
    await traffic(client, tokens)
    officer = auditor(tokens)
    form = {"patient": "p1", "subtype": "read"}
    bearer = {"authorization": officer["authorization"]}  # httpx sets the form's type
    posted = await client.post("/fhir/AuditEvent/_search", data=form, headers=bearer)
    got = await search(client, officer, **form)
    assert posted.status_code == 200
    assert [e["id"] for e in events(posted.json())] == [e["id"] for e in events(got.json())]
    assert len(events(got.json())) == 2
    wrong = await client.post("/fhir/AuditEvent/_search", json=form, headers=officer)
    assert wrong.status_code == 400


@pytest.mark.parametrize(
    ("params", "headers"),
    [({"_format": "xml"}, {}), ({}, {"accept": "application/fhir+xml"})],
    ids=["format", "accept"],
)
async def test_search_answers_fhir_json_only(
    client: httpx.AsyncClient, tokens: Tokens, params: dict[str, str], headers: Headers
) -> None:
    got = await search(client, {**auditor(tokens), **headers}, **params)
    assert got.status_code == 406


# A patient's search never reaches another patient's events, whatever else it asks for.
PATIENT_QUERIES: list[dict[str, str]] = [
    {},
    {"entity": "Patient/p2"},
    {"agent": "Practitioner/dr-b"},
    {"purpose": "HPAYMT"},
    {"type": "rest", "subtype": "read"},
    {"date": "ge2000", "_sort": "-date"},
    {"_count": "1"},
    {"patient": "p1", "entity": "Patient/p2"},
]


@pytest.mark.parametrize("params", PATIENT_QUERIES, ids=[str(p) for p in PATIENT_QUERIES])
async def test_a_patient_never_reaches_another_patients_events(
    client: httpx.AsyncClient, tokens: Tokens, params: dict[str, str]
) -> None:
    await traffic(client, tokens)
    p1 = tokens.patient("p1", "patient/AuditEvent.rs")
    got = await search(client, p1, **params)
    while True:
        assert got.status_code == 200
        released = json.dumps(got.json().get("entry", []))
        assert "Patient/p2" not in released
        assert "dr-b" not in released
        nxt = [link["url"] for link in got.json()["link"] if link["relation"] == "next"]
        if not nxt:
            break
        got = await client.get(nxt[0], headers=p1)


async def test_read_takes_format_json_and_nothing_else(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await traffic(client, tokens)
    officer = auditor(tokens)
    assert (
        await client.get("/fhir/AuditEvent/0-0?_format=json", headers=officer)
    ).status_code == 200
    assert (await client.get("/fhir/AuditEvent/0-0?patient=p1", headers=officer)).status_code == 400
    assert (
        await client.get("/fhir/AuditEvent/0-0?_format=xml", headers=officer)
    ).status_code == 406


@pytest.mark.parametrize(
    "raw",
    [
        b"/fhir/AuditEvent/<x>",
        b"/fhir/AuditEvent/\xc3\xa9",
        b"/fhir/AuditEvent/a b",
        b"/fhir/Patient/<x>/$accounting",
        b"/fhir/AuditEvent/$export-status/" + b"j" * 65,
        b"/fhir/AuditEvent/%2e%2e",
    ],
    ids=["angle", "non-ascii", "space", "accounting-angle", "long-job", "encoded-dots"],
)
async def test_unroutable_raw_paths_are_refused_before_anything(
    make_app: Callable[..., Gateway], key_file: Any, tokens: Tokens, store: OutageStore, raw: bytes
) -> None:
    """Paths no client library would send (unencoded, non-ASCII): a 4xx before the token is
    looked at, nothing recorded, never a 500."""
    app = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out")
    bearer = auditor(tokens)["authorization"].encode()
    status, body = await raw_asgi_request(app, "GET", raw, [(b"authorization", bearer)])
    assert status in (400, 404)
    assert b"OperationOutcome" in body
    assert await store.size() == 0
    await app.aclose()
