"""What a write answers when the caller may write but not read what it wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import respx

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.leaf import EntryFlag, EntryKind, decode_leaf
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import AUDIENCE, DEV_ISSUER

FHIR = {"content-type": "application/fhir+json"}
OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "x"},
    "subject": {"reference": "Patient/p1"},
}


async def test_a_create_only_caller_gets_the_outcome_without_the_body(
    make_client: Any, router: respx.Router, dev_key_file: Path
) -> None:
    """A device feeding results holds ``system/Observation.c`` only: its create succeeds
    (201, Location) but the representation the upstream returns is not released to it."""
    created = router.post("/Observation").respond(
        201,
        json={**OBSERVATION, "id": "o9", "meta": {"versionId": "1"}},
        headers={**FHIR, "location": "http://upstream.test:8103/fhir/Observation/o9/_history/1"},
    )
    issuer = UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True)
    token = issuer.issue("device", scopes="system/Observation.c", audience=AUDIENCE)
    async with make_client() as client:
        answer = await client.post(
            "/fhir/Observation",
            json=OBSERVATION,
            headers={
                **FHIR,
                "authorization": f"Bearer {token}",
                "prefer": "return=representation",
            },
        )
    assert created.called
    assert answer.status_code == 201
    assert answer.headers["location"] == "http://gateway.test/fhir/Observation/o9/_history/1"
    assert answer.content == b""


@pytest.mark.parametrize(
    ("upstream_status", "permitted"), [(201, True), (422, False)], ids=["stored", "rejected"]
)
async def test_a_write_is_a_decision_entry_then_an_outcome_entry(
    make_client: Any,
    router: respx.Router,
    store: MemoryLogStore,
    upstream_status: int,
    permitted: bool,
) -> None:
    """Defect this pins: a write's second ledger entry, written after the upstream answered,
    is of kind ``access-outcome``; broken into ``access-decision`` (or a disclosure) the whole
    suite still passed, and an auditor could no longer tell "allowed to try" from "stored".
    The decision (before forwarding) permits; the outcome permits only if the upstream
    stored it."""
    router.post("/Observation").respond(
        upstream_status,
        json={**OBSERVATION, "id": "o9"}
        if upstream_status < 400
        else {"resourceType": "OperationOutcome", "issue": []},
        headers=FHIR,
    )
    async with make_client() as client:
        before = await store.size()
        answer = await client.post("/fhir/Observation", json=OBSERVATION, headers=FHIR)
    assert answer.status_code == upstream_status
    leaves = [decode_leaf(raw) for raw in await store.leaves(before, await store.size())]
    assert [leaf.kind for leaf in leaves] == [EntryKind.ACCESS_DECISION, EntryKind.ACCESS_OUTCOME]
    assert [bool(leaf.flags & EntryFlag.PERMIT) for leaf in leaves] == [True, permitted]
    assert leaves[0].pseudonym == leaves[1].pseudonym is not None


async def test_a_json_patch_is_stored_as_the_resource_that_was_judged(
    make_client: Any, router: respx.Router
) -> None:
    """Attack/defect: the gateway applied a JSON Patch to judge its result, then forwarded the
    *patch*; an upstream whose JSON Patch reads an operation otherwise (``-`` at the end of
    an array, ``~1`` escapes, ``test``, a duplicate key) would store a resource nobody judged,
    for instance one naming another patient. Now the upstream receives the resource the
    gateway computed and judged, as an update pinned to the version it was computed from,
    and never a PATCH."""
    stored = {
        **OBSERVATION,
        "id": "o1",
        "meta": {"versionId": "3"},
        "category": [{"text": "a"}],
    }
    router.get("/Observation/o1").respond(200, json=stored, headers=FHIR)
    put = router.put("/Observation/o1").respond(200, json=stored, headers=FHIR)
    patched = router.patch("/Observation/o1").respond(200, json=stored, headers=FHIR)
    operations = [
        {"op": "test", "path": "/status", "value": "final"},
        {"op": "replace", "path": "/status", "value": "amended"},
        {"op": "add", "path": "/category/-", "value": {"text": "b"}},
        {"op": "add", "path": "/note", "value": [{"text": "x/y~z"}]},
    ]
    async with make_client() as client:
        answer = await client.patch(
            "/fhir/Observation/o1",
            content=json.dumps(operations),
            headers={"content-type": "application/json-patch+json"},
        )
    assert answer.status_code == 200
    assert not patched.called
    assert put.call_count == 1
    sent = put.calls.last.request
    assert sent.headers["if-match"] == 'W/"3"'
    assert sent.headers["content-type"] == "application/fhir+json"
    # Worked out by hand from RFC 6902 §4.1-4.6, not by the gateway's own patch code.
    assert json.loads(sent.content) == {
        **OBSERVATION,
        "id": "o1",
        "meta": {"versionId": "3"},
        "status": "amended",
        "category": [{"text": "a"}, {"text": "b"}],
        "note": [{"text": "x/y~z"}],
    }


async def test_a_patch_pinned_to_a_version_the_upstream_moved_past_is_412(
    make_client: Any, router: respx.Router
) -> None:
    """A client's ``If-Match`` must name the version the patch is applied to; otherwise the
    judged result would overwrite a change nobody judged."""
    stored = {**OBSERVATION, "id": "o1", "meta": {"versionId": "4"}}
    router.get("/Observation/o1").respond(200, json=stored, headers=FHIR)
    put = router.put("/Observation/o1").respond(200, json=stored, headers=FHIR)
    async with make_client() as client:
        answer = await client.patch(
            "/fhir/Observation/o1",
            content=json.dumps([{"op": "replace", "path": "/status", "value": "amended"}]),
            headers={"content-type": "application/json-patch+json", "if-match": 'W/"3"'},
        )
    assert answer.status_code == 412
    assert not put.called
