"""No write applied upstream without its complete audit, and no write stored twice by a retry.

The attack (a store outage during writes): the ledger stops committing after a write was
forwarded. The gateway answered 503 although the upstream had stored the write; the client,
told it failed, retried the POST and the upstream stored it twice; the ledger held the
decision and never the outcome. Now the outcome waits in the audit outbox, the client gets the
upstream's real answer, ``/readyz`` is unavailable until the outbox has been replayed into the
ledger, and a create sent with ``Idempotency-Key`` is stored once however often it is retried.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.audit.evidence import EvidenceReader
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.leaf import EntryFlag, EntryKind, decode_leaf
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.pipeline.idempotency import IDEMPOTENCY_REQUEST_TAG, IDEMPOTENCY_TAG
from middleware.settings import Settings
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import AUDIENCE, DEV_ISSUER, auth_settings
from tests.app.outage import OutageStore

FHIR = {"content-type": "application/fhir+json"}
CAPABILITY = {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance"}
OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "x"},
    "subject": {"reference": "Patient/p1"},
}


@pytest.fixture
def store() -> OutageStore:
    return OutageStore()


async def kinds(store: MemoryLogStore, start: int) -> list[tuple[EntryKind, bool]]:
    leaves = [decode_leaf(raw) for raw in await store.leaves(start, await store.size())]
    return [(leaf.kind, bool(leaf.flags & EntryFlag.PERMIT)) for leaf in leaves]


async def test_an_outcome_the_ledger_refuses_after_the_forward_is_kept_and_replayed(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    store: OutageStore,
    signer: SigningKey,
) -> None:
    """The store goes down while the upstream stores the write: the client gets the real 201
    and Location (was: 503, and the ledger never learnt the write happened); ``/readyz`` says
    the audit is incomplete until the store is back, then the ledger holds decision and
    outcome."""
    router.get("/metadata").respond(200, json=CAPABILITY)

    def stored(_request: httpx.Request) -> httpx.Response:
        store.down = True  # the outage begins while the upstream applies the write
        return httpx.Response(
            201,
            json={**OBSERVATION, "id": "o9", "meta": {"versionId": "1"}},
            headers={**FHIR, "location": "http://upstream.test:8103/fhir/Observation/o9"},
        )

    router.post("/Observation").mock(side_effect=stored)
    async with make_client() as client:
        before = await store.size()
        answer = await client.post("/fhir/Observation", json=OBSERVATION, headers=FHIR)
        assert answer.status_code == 201
        assert answer.headers["location"] == "http://gateway.test/fhir/Observation/o9"
        assert await kinds(store, before) == [(EntryKind.ACCESS_DECISION, True)]

        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["audit_outbox"] == "unavailable"

        store.down = False
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["audit_outbox"] == "ok"
    assert await kinds(store, before) == [
        (EntryKind.ACCESS_DECISION, True),
        (EntryKind.ACCESS_OUTCOME, True),
    ]
    decision, outcome = (decode_leaf(raw) for raw in await store.leaves(before, before + 2))
    assert outcome.pseudonym == decision.pseudonym is not None
    # The replayed outcome's sealed facts render the create the upstream answered, indexed.
    reader = EvidenceReader(store, derive_box_key(signer, "evidence"))
    events = await reader.events(before + 1)
    assert events is not None
    (created,) = events
    assert created["subtype"][0]["code"] == "create"
    assert created["outcome"] == "0"
    row = await store.audit_row(before + 1)
    assert row is not None
    assert (row.subtype, row.outcome, row.kind) == ("create", "0", EntryKind.ACCESS_OUTCOME)


async def test_a_replayed_outcome_whose_first_commit_did_land_is_not_recorded_twice(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, store: OutageStore
) -> None:
    """The outcome's commit happens but its answer is lost: the entry goes to the outbox all
    the same, and its replay finds it by its idempotency key: one outcome, not two."""
    router.get("/metadata").respond(200, json=CAPABILITY)

    def stored(_request: httpx.Request) -> httpx.Response:
        store.lose_answer = True
        return httpx.Response(201, json={**OBSERVATION, "id": "o9"}, headers=FHIR)

    router.post("/Observation").mock(side_effect=stored)
    async with make_client() as client:
        before = await store.size()
        answer = await client.post("/fhir/Observation", json=OBSERVATION, headers=FHIR)
        assert answer.status_code == 201
        assert (await client.get("/readyz")).status_code == 200
    assert await kinds(store, before) == [
        (EntryKind.ACCESS_DECISION, True),
        (EntryKind.ACCESS_OUTCOME, True),
    ]


async def test_outcomes_kept_by_a_stopped_gateway_are_replayed_at_the_next_start(
    make_app: Callable[..., Gateway],
    router: respx.Router,
    store: OutageStore,
    tmp_path: Path,
    dev_key_file: Path,
    system_bearer: dict[str, str],
) -> None:
    """The outbox is a file: a gateway that dies with outcomes in it (the store still down;
    the process gone without shutting down) hands them to the next one, whose start-up puts
    them on the ledger."""
    router.post("/Observation").mock(
        side_effect=lambda _r: _down_then(store, httpx.Response(201, json=OBSERVATION))
    )
    settings = {
        "audit_outbox": str(tmp_path / "outbox.db"),
        "auth": auth_settings(dev_key_file),
        "consent_jurisdiction": "opt-out",
    }
    first = make_app(**settings)
    before = await store.size()
    async with _client(first, system_bearer) as client:
        answer = await client.post("/fhir/Observation", json=OBSERVATION, headers=FHIR)
    assert answer.status_code == 201
    enforcement = first.proxy.enforcement
    assert enforcement is not None
    assert enforcement.recorder.outbox is not None
    enforcement.recorder.outbox.close()  # the file as a dead process leaves it; no shutdown
    assert await kinds(store, before) == [(EntryKind.ACCESS_DECISION, True)]

    store.down = False
    second = make_app(**settings)
    await second._open_stores()  # what the lifespan start-up runs
    assert await kinds(store, before) == [
        (EntryKind.ACCESS_DECISION, True),
        (EntryKind.ACCESS_OUTCOME, True),
    ]
    await second.aclose()


async def test_without_a_durable_outbox_the_write_is_still_refused(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    store: OutageStore,
    tmp_path: Path,
) -> None:
    """Fail closed: when neither the ledger nor the outbox can keep the outcome, the answer
    is 503 as before (nothing claims an audit that is not durable anywhere)."""
    router.post("/Observation").mock(
        side_effect=lambda _r: _down_then(store, httpx.Response(201, json=OBSERVATION))
    )
    async with make_client(audit_outbox=str(tmp_path / "missing" / "outbox.db")) as client:
        answer = await client.post("/fhir/Observation", json=OBSERVATION, headers=FHIR)
    assert answer.status_code == 503


def _down_then(store: OutageStore, response: httpx.Response) -> httpx.Response:
    store.down = True
    return response


def _client(app: Gateway, headers: dict[str, str]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test", headers=headers)


# -- idempotent creates -------------------------------------------------------------------------


class TaggedUpstream:
    """The upstream's side of a conditional create (FHIR R4 http.html#ccreate) on ``_tag``,
    as a server that implements ``If-None-Exist`` answers it: a match is answered 200 with
    the stored resource, no match stores a new one (201)."""

    def __init__(self, *, minimal: bool = False) -> None:
        self.stored: list[dict[str, Any]] = []
        self.minimal = minimal  # a match answered 200 without the resource (return=minimal)

    def tagged(self, system: str, code: str) -> list[dict[str, Any]]:
        return [
            old for old in self.stored if {"system": system, "code": code} in old["meta"]["tag"]
        ]

    def search(self, request: httpx.Request) -> httpx.Response:
        """``GET [type]?_tag=system|code``: the searchset of the records with that tag."""
        system, _, code = request.url.params["_tag"].partition("|")
        entries = [{"resource": r, "search": {"mode": "match"}} for r in self.tagged(system, code)]
        searchset = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        return httpx.Response(200, json=searchset, headers=FHIR)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        resource = json.loads(request.content)
        condition = request.headers.get("if-none-exist")
        if condition is not None:
            name, _, value = condition.partition("=")
            assert name == "_tag"
            system, _, code = value.partition("|")
            for old in self.tagged(system, code):
                if self.minimal:
                    return httpx.Response(200, headers={"etag": 'W/"1"'})
                return httpx.Response(200, json=old, headers=FHIR)
        new = {**resource, "id": f"o{len(self.stored) + 1}"}
        new["meta"] = {**new.get("meta", {}), "versionId": "1"}
        self.stored.append(new)
        return httpx.Response(201, json=new, headers=FHIR)


async def test_a_retried_create_with_an_idempotency_key_is_stored_once(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, store: OutageStore
) -> None:
    """The client's first POST was stored upstream but the answer never reached it (it was a
    503 before, and a timeout can always happen): its retry under the same Idempotency-Key is
    answered with the stored record (200) and the upstream holds one, not two. The tag is
    sent as a conditional create, so the upstream decides, atomically and across gateway
    replicas and restarts."""
    upstream = TaggedUpstream()
    route = router.post("/Observation").mock(side_effect=upstream)
    key = {**FHIR, "idempotency-key": '"8e0b4c1f-retry-me"'}
    async with make_client() as client:
        first = await client.post("/fhir/Observation", json=OBSERVATION, headers=key)
        retry = await client.post("/fhir/Observation", json=OBSERVATION, headers=key)
        other = await client.post(
            "/fhir/Observation", json=OBSERVATION, headers={**FHIR, "idempotency-key": "k2"}
        )
    assert (first.status_code, retry.status_code, other.status_code) == (201, 200, 201)
    assert len(upstream.stored) == 2
    assert retry.json()["id"] == first.json()["id"] == "o1"
    sent = route.calls[0].request
    key_tag, request_tag = json.loads(sent.content)["meta"]["tag"]
    assert (key_tag["system"], request_tag["system"]) == (IDEMPOTENCY_TAG, IDEMPOTENCY_REQUEST_TAG)
    assert sent.headers["if-none-exist"] == f"_tag={IDEMPOTENCY_TAG}|{key_tag['code']}"


async def test_another_callers_idempotency_key_never_matches(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    dev_key_file: Path,
) -> None:
    """One caller cannot make another's create answer with its own record by reusing (or
    guessing) the other's key: the tag is the caller's and the key's digest."""
    upstream = TaggedUpstream()
    router.post("/Observation").mock(side_effect=upstream)
    issuer = UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True)
    other = issuer.issue("another-backend", scopes="system/*.cruds", audience=AUDIENCE)
    key = {**FHIR, "idempotency-key": "same-key"}
    async with make_client() as client:
        mine = await client.post("/fhir/Observation", json=OBSERVATION, headers=key)
        theirs = await client.post(
            "/fhir/Observation",
            json=OBSERVATION,
            headers={**key, "authorization": f"Bearer {other}"},
        )
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert len(upstream.stored) == 2


async def test_an_idempotency_key_reused_with_another_request_is_422(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, minimal: bool
) -> None:
    """The attack (or the accident): a client reuses an Idempotency-Key for another request,
    say the same key for a result of patient B after one of patient A. The conditional create
    on the key's tag matched A's record and the gateway answered 200 with it: B's result was
    never stored and the client was told it was. Now the record's request tag (an HMAC of the
    key and the body sent) must match this request: another body is 422 (the draft's answer to
    key reuse with a different payload), nothing else is stored, and A's record is not
    released. The upstream's 200 may come without the resource (``return=minimal``): the
    gateway then finds the record by its tag."""
    upstream = TaggedUpstream(minimal=minimal)
    router.post("/Observation").mock(side_effect=upstream)
    router.get("/Observation").mock(side_effect=upstream.search)
    key = {**FHIR, "idempotency-key": "reused-key"}
    other = {**OBSERVATION, "subject": {"reference": "Patient/p2"}}
    async with make_client() as client:
        first = await client.post("/fhir/Observation", json=OBSERVATION, headers=key)
        reused = await client.post("/fhir/Observation", json=other, headers=key)
        retry = await client.post("/fhir/Observation", json=OBSERVATION, headers=key)
    assert (first.status_code, reused.status_code, retry.status_code) == (201, 422, 200)
    assert "Patient/p1" not in reused.text
    assert reused.json()["resourceType"] == "OperationOutcome"
    assert len(upstream.stored) == 1


async def test_a_matched_record_with_a_foreign_request_tag_is_422_not_500(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router
) -> None:
    """A record written straight to the upstream (not through the gateway) under the key's
    tag, with a request tag that is no ASCII string: compared as bytes, it is another request
    (422), never a crash of the comparison (500)."""
    foreign = {
        **OBSERVATION,
        "id": "o7",
        "meta": {"versionId": "1", "tag": [{"system": IDEMPOTENCY_REQUEST_TAG, "code": "\u00e9"}]},
    }
    router.post("/Observation").respond(200, json=foreign, headers=FHIR)
    async with make_client() as client:
        answer = await client.post(
            "/fhir/Observation", json=OBSERVATION, headers={**FHIR, "idempotency-key": "k"}
        )
    assert answer.status_code == 422


@pytest.fixture(params=[False, True], ids=["answered-with-the-record", "answered-minimal"])
def minimal(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_the_idempotency_tag_is_keyed_by_the_gateways_secret(
    make_settings: Callable[..., Settings],
    router: respx.Router,
    dev_key_file: Path,
    system_bearer: dict[str, str],
) -> None:
    """The attack: the tag code was SHA-256 of public values (the victim's issuer, subject,
    client id and a predictable key), so an attacker computed it and planted a record carrying
    it; the victim's create then answered 200 with the attacker's record and stored nothing.
    Now the code is an HMAC under a key derived from the ledger key: the same caller and key
    give the same code on every gateway holding that key (retries across replicas), another
    key gives an unrelated one, so without the gateway's key the code cannot be computed."""
    route = router.post("/Observation").respond(201, json={**OBSERVATION, "id": "o1"})
    settings = make_settings(consent_jurisdiction="opt-out", auth=auth_settings(dev_key_file))
    codes = []
    for signer in (SigningKey.from_seed("k", b"\x01" * 32),) * 2 + (
        SigningKey.from_seed("k", b"\x02" * 32),
    ):
        app = create_app(
            settings,
            upstream=httpx.MockTransport(router.async_handler),
            store=MemoryLogStore(),
            signer=signer,
        )
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway.test", headers=system_bearer
        ) as client:
            answer = await client.post(
                "/fhir/Observation",
                json=OBSERVATION,
                headers={**FHIR, "idempotency-key": "predictable-1"},
            )
        assert answer.status_code == 201
        sent = json.loads(route.calls.last.request.content)
        (code,) = [t["code"] for t in sent["meta"]["tag"] if t["system"] == IDEMPOTENCY_TAG]
        codes.append(code)
    assert codes[0] == codes[1] != codes[2]


def _planted(resource: dict[str, Any], system: str) -> dict[str, Any]:
    return {**resource, "meta": {"tag": [{"system": system, "code": "0" * 32}]}}


@pytest.mark.parametrize("system", [IDEMPOTENCY_TAG, IDEMPOTENCY_REQUEST_TAG])
@pytest.mark.parametrize("method", ["POST", "PUT"], ids=["create", "update"])
async def test_a_transaction_may_not_plant_the_gateways_idempotency_tag(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, method: str, system: str
) -> None:
    """The attack: single writes refused the gateway's tag, but a transaction's entries went
    upstream as they came; an attacker who knows (or computed) a victim's tag code plants a
    record carrying it in a transaction, and the victim's create under that key is answered
    with the attacker's record. The whole transaction is now refused, as any other refused
    entry refuses it, and nothing is forwarded."""
    router.get("/Observation/o1").respond(
        200, json={**OBSERVATION, "id": "o1", "meta": {"versionId": "1"}}, headers=FHIR
    )
    forwarded = router.post("").respond(200, json={"resourceType": "Bundle"})
    resource = _planted({**OBSERVATION, **({"id": "o1"} if method == "PUT" else {})}, system)
    url = "Observation/o1" if method == "PUT" else "Observation"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": resource, "request": {"method": method, "url": url}}],
    }
    async with make_client() as client:
        answer = await client.post("/fhir", json=bundle, headers=FHIR)
    assert answer.status_code == 403
    assert not forwarded.called


async def test_a_batch_entry_may_not_plant_the_gateways_idempotency_tag(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router
) -> None:
    """The same attack through a batch: the planted entry is answered 400 and not forwarded;
    the batch's other entries go through."""
    created = router.post("/Observation").respond(201, json={**OBSERVATION, "id": "o2"})
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": _planted(OBSERVATION, IDEMPOTENCY_TAG),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": OBSERVATION, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    async with make_client() as client:
        answer = await client.post("/fhir", json=bundle, headers=FHIR)
    assert answer.status_code == 200
    statuses = [entry["response"]["status"] for entry in answer.json()["entry"]]
    assert statuses == ["400", "201"]
    assert created.call_count == 1
    sent = json.loads(created.calls.last.request.content)
    assert "0" * 32 not in json.dumps(sent)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/fhir/Observation", OBSERVATION),
        ("PUT", "/fhir/Observation/o1", {**OBSERVATION, "id": "o1"}),
    ],
    ids=["create", "update"],
)
@pytest.mark.parametrize("system", [IDEMPOTENCY_TAG, IDEMPOTENCY_REQUEST_TAG])
async def test_a_client_may_not_write_the_gateways_idempotency_tag(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    method: str,
    path: str,
    body: dict[str, Any],
    system: str,
) -> None:
    """A tag the client writes itself could squat another caller's key (its retry would be
    answered with the squatter's record): refused, and nothing is sent upstream."""
    router.get("/Observation/o1").respond(
        200, json={**OBSERVATION, "id": "o1", "meta": {"versionId": "1"}}, headers=FHIR
    )
    written = router.route(method=method, path__regex=r"/Observation.*").respond(201)
    forged = _planted(body, system)
    async with make_client() as client:
        answer = await client.request(method, path, json=forged, headers=FHIR)
    assert answer.status_code == 400
    assert not written.called


@pytest.mark.parametrize(
    "key", ["", '""', "x" * 201, "caf\u00e9"], ids=["empty", "quoted-empty", "long", "non-ascii"]
)
async def test_a_malformed_idempotency_key_is_400(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, key: str
) -> None:
    written = router.post("/Observation").respond(201)
    async with make_client() as client:
        answer = await client.post(
            "/fhir/Observation",
            json=OBSERVATION,
            headers=[
                (b"content-type", b"application/fhir+json"),
                (b"idempotency-key", key.encode()),
            ],
        )
    assert answer.status_code == 400
    assert not written.called


async def test_a_write_in_flight_is_not_reconciled_by_a_readiness_check(
    make_client: Callable[..., httpx.AsyncClient], router: respx.Router, store: OutageStore
) -> None:
    """Reconciliation asks the upstream whether an interrupted write happened; asked about a
    write still in flight it would hear "not yet" and record the write as never applied.
    A ``/readyz`` during a write leaves that write's intent alone (and is ready): the one
    outcome on the ledger is the upstream's real answer."""
    router.get("/metadata").respond(200, json=CAPABILITY)
    searched = router.get("/Observation").respond(
        200, json={"resourceType": "Bundle", "type": "searchset", "entry": []}
    )
    release = asyncio.Event()
    holding = asyncio.Event()

    async def slow(_request: httpx.Request) -> httpx.Response:
        holding.set()
        await release.wait()
        return httpx.Response(201, json={**OBSERVATION, "id": "o9"}, headers=FHIR)

    router.post("/Observation").mock(side_effect=slow)
    async with make_client() as client:
        before = await store.size()
        write = asyncio.create_task(
            client.post("/fhir/Observation", json=OBSERVATION, headers=FHIR)
        )
        await holding.wait()
        ready = await client.get("/readyz")
        release.set()
        answer = await write
        after = await client.get("/readyz")
    assert (ready.status_code, answer.status_code, after.status_code) == (200, 201, 200)
    assert not searched.called
    assert await kinds(store, before) == [
        (EntryKind.ACCESS_DECISION, True),
        (EntryKind.ACCESS_OUTCOME, True),
    ]


@pytest.mark.parametrize(
    ("tags", "status"),
    [([], 200), (["kept"], 200), (["other"], 400), (["kept", "other"], 400)],
    ids=["left-out", "kept", "changed", "added"],
)
async def test_an_update_may_keep_or_leave_out_the_tag_never_add_one(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    tags: list[str],
    status: int,
) -> None:
    """Every create is tagged, so nearly every record written through the gateway carries
    the tag; a client's PUT rarely carries ``meta`` at all, and must not be refused for it.
    Adding or changing the tag stays refused (it would squat a key)."""
    current = {
        **OBSERVATION,
        "id": "o1",
        "meta": {"versionId": "1", "tag": [{"system": IDEMPOTENCY_TAG, "code": "kept"}]},
    }
    router.get("/Observation/o1").respond(200, json=current, headers=FHIR)
    put = router.put("/Observation/o1").respond(200, json=current, headers=FHIR)
    body: dict[str, Any] = {**OBSERVATION, "id": "o1", "status": "amended"}
    if tags:
        body["meta"] = {"tag": [{"system": IDEMPOTENCY_TAG, "code": code} for code in tags]}
    async with make_client() as client:
        answer = await client.put("/fhir/Observation/o1", json=body, headers=FHIR)
    assert answer.status_code == status
    assert put.called == (status == 200)


async def test_a_consent_row_planted_in_the_outbox_file_never_reaches_the_ledger(
    make_app: Callable[..., Gateway],
    router: respx.Router,
    store: OutageStore,
    tmp_path: Path,
    dev_key_file: Path,
) -> None:
    """Write access to the outbox file (mode 0600, but beside the store, on a volume) was
    enough to put a CONSENT entry on the signed ledger: start-up replayed any row of any
    kind, and every replica's registry then enforced it. A row without the MAC only a
    gateway holding the ledger key makes is dead-lettered (counted in /metrics) and the
    gateway is ready."""
    router.get("/metadata").respond(200, json=CAPABILITY)
    path = tmp_path / "outbox.db"
    settings = {"audit_outbox": str(path), "auth": auth_settings(dev_key_file)}
    first = make_app(**settings)
    await first._open_stores()  # creates the outbox file
    assert first.proxy.enforcement is not None
    assert first.proxy.enforcement.recorder.outbox is not None
    first.proxy.enforcement.recorder.outbox.close()
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "INSERT INTO outbox (request_id, kind, recorded_us, salt, evidence, pseudonym,"
            " patient, consent, flags, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("x", int(EntryKind.CONSENT), 1, b"\0" * 16, b"{}", b"\1" * 16, None, None, 0, "k"),
        )
    db.close()
    before = await store.size()

    second = make_app(**settings)
    await second._open_stores()
    local = httpx.ASGITransport(app=second, client=("127.0.0.1", 50000))  # /metrics: loopback
    async with httpx.AsyncClient(transport=local, base_url="http://gateway.test") as client:
        ready = await client.get("/readyz")
        text = (await client.get("/metrics")).text
    assert await kinds(store, before) == []
    assert ready.json()["checks"]["audit_outbox"] == "ok"
    assert "consentry_audit_outbox_dead_letters 1" in text
