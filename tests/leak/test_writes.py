"""Writes by the practitioner p1 denies: nothing is written into, out of or over p1's records,
a refused write never reaches the upstream, and a conditional write whose criteria match a
p1 record neither writes nor tells it apart from several matches."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.leak.upstream import SECRET
from tests.leak.world import World, assert_nothing_of_p1, assert_same_not_found

JSON_PATCH = {"content-type": "application/json-patch+json"}


def observation(rid: str | None, patient: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": patient},
        **extra,
    }
    if rid is not None:
        body["id"] = rid
    return body


def assert_nothing_written(world: World) -> None:
    assert world.writes_sent == []
    assert world.fhir.writes == []


# --- the control -----------------------------------------------------------------------------


async def test_control_the_practitioner_writes_for_p2(world: World) -> None:
    """Not an attack: p2 permits (no consent, opt-out), so the create reaches the upstream; its
    Location names the gateway, never the upstream."""
    got = await world.http.post(
        "/fhir/Observation", json=observation(None, "Patient/p2"), headers=world.dr
    )
    assert got.status_code == 201, got.text
    assert got.headers["location"].startswith("http://gateway.test/fhir/Observation/")
    assert world.fhir.writes == [("POST", "Observation")]


# --- creates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        observation(None, "Patient/p1"),
        observation(None, "Patient/p2", performer=[{"reference": "Patient/p1"}]),
        observation(
            None,
            "Patient/p2",
            contained=[observation("c", "Patient/p1")],
            hasMember=[{"reference": "#c"}],
        ),
        observation(None, "http://gateway.test/fhir/Patient/p1"),
    ],
    ids=["subject", "performer", "contained", "absolute-reference"],
)
async def test_create_into_p1_is_refused_and_not_forwarded(
    world: World, body: dict[str, Any]
) -> None:
    """The practitioner writes data into p1's record (as subject, as performer, inside a
    contained resource of a p2 Observation): p1's consent denies it."""
    got = await world.http.post("/fhir/Observation", json=body, headers=world.dr)
    assert got.status_code == 403
    assert_nothing_of_p1(got)
    assert_nothing_written(world)


async def test_create_with_a_duplicate_subject_key_forwards_nothing_naming_p1(
    world: World,
) -> None:
    """A body with two ``subject`` keys: the gateway's parser keeps the last (p2) and permits;
    an upstream parser keeping the first (p1) would store the data in p1's record."""
    body = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
        b'"subject":{"reference":"Patient/p1"},"subject":{"reference":"Patient/p2"}}'
    )
    got = await world.http.post(
        "/fhir/Observation",
        content=body,
        headers={**world.dr, "content-type": "application/fhir+json"},
    )
    assert all(b"Patient/p1" not in r.content for r in world.sent), got.status_code


async def test_patient_p2_cannot_create_into_p1(world: World) -> None:
    """Patient p2 with write scopes files an Observation under p1: outside its own compartment
    whatever p1's consent says."""
    writer = world.tokens.patient("p2", "patient/*.cruds")
    got = await world.http.post(
        "/fhir/Observation", json=observation(None, "Patient/p1"), headers=writer
    )
    assert got.status_code == 403
    assert_nothing_written(world)


# --- updates, patches, deletes of p1's records ----------------------------------------------------


async def test_update_over_a_p1_record_is_404_and_not_forwarded(world: World) -> None:
    """The practitioner overwrites p1's obs-p1 with harmless p2 content: the write would touch
    a record it may not see (and its answer would confirm it)."""
    got = await world.http.put(
        "/fhir/Observation/obs-p1", json=observation("obs-p1", "Patient/p2"), headers=world.dr
    )
    assert got.status_code == 404
    assert_nothing_of_p1(got)
    assert_nothing_written(world)


async def test_patch_of_a_p1_record_is_404_and_not_forwarded(world: World) -> None:
    """A JSON Patch on p1's obs-p1 that only changes its status."""
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    got = await world.http.patch(
        "/fhir/Observation/obs-p1", content=json.dumps(patch), headers={**world.dr, **JSON_PATCH}
    )
    absent = await world.http.patch(
        "/fhir/Observation/nope", content=json.dumps(patch), headers={**world.dr, **JSON_PATCH}
    )
    assert_same_not_found(world, got, absent)
    assert_nothing_written(world)


async def test_delete_of_a_p1_record_is_the_404_of_a_missing_one(world: World) -> None:
    """The practitioner deletes p1's obs-p1: it must neither happen nor be told apart from
    deleting a record that does not exist."""
    got = await world.http.delete("/fhir/Observation/obs-p1", headers=world.dr)
    absent = await world.http.delete("/fhir/Observation/nope", headers=world.dr)
    assert_same_not_found(world, got, absent)
    assert_nothing_written(world)


# --- moving records into p1's compartment ------------------------------------------------------------


async def test_update_moving_a_p2_record_into_p1_is_refused(world: World) -> None:
    """The practitioner rewrites p2's obs-p2 with ``subject: Patient/p1``: allowed on p2's
    side, it would put data into p1's record against p1's consent."""
    got = await world.http.put(
        "/fhir/Observation/obs-p2", json=observation("obs-p2", "Patient/p1"), headers=world.dr
    )
    assert got.status_code == 403
    assert_nothing_written(world)


async def test_update_as_create_into_p1_is_refused(world: World) -> None:
    """PUT to an id that does not exist creates it (FHIR update-as-create): the new record must
    be checked like a create."""
    got = await world.http.put(
        "/fhir/Observation/brand-new", json=observation("brand-new", "Patient/p1"), headers=world.dr
    )
    assert got.status_code == 403
    assert_nothing_written(world)


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "replace", "path": "/subject/reference", "value": "Patient/p1"}],
        [{"op": "add", "path": "/performer", "value": [{"reference": "Patient/p1"}]}],
        [
            {"op": "test", "path": "/status", "value": "final"},
            {"op": "replace", "path": "/subject", "value": {"reference": "Patient/p1"}},
        ],
        [
            {"op": "add", "path": "/focus", "value": [{"reference": "Patient/p1"}]},
            {"op": "move", "from": "/focus/0", "path": "/subject"},
        ],
    ],
    ids=["replace-subject", "add-performer", "test-then-replace", "move-from-focus"],
)
async def test_json_patch_moving_a_p2_record_into_p1_is_refused(
    world: World, patch: list[dict[str, Any]]
) -> None:
    """A JSON Patch on p2's obs-p2 whose result names p1: only the state *after* the patch
    tells where the record ends up."""
    got = await world.http.patch(
        "/fhir/Observation/obs-p2", content=json.dumps(patch), headers={**world.dr, **JSON_PATCH}
    )
    assert got.status_code == 403
    assert_nothing_written(world)


# --- conditional writes whose criteria match p1 ----------------------------------------------------


async def test_conditional_update_matching_p1_is_412_and_writes_nothing(world: World) -> None:
    """``PUT Observation?identifier=urn:ids|obs-p1``: the condition resolves to p1's record,
    which the upstream would overwrite."""
    got = await world.http.put(
        "/fhir/Observation?identifier=urn:ids|obs-p1",
        json=observation(None, "Patient/p2"),
        headers=world.dr,
    )
    assert got.status_code == 412
    assert_nothing_of_p1(got)
    assert_nothing_written(world)


async def test_conditional_update_matching_p1_is_the_412_of_several_matches(
    world: World,
) -> None:
    """A 412 for "one hidden match" that differs from the 412 for "several matches" tells the
    practitioner a p1 record has that identifier."""
    hidden = await world.http.put(
        "/fhir/Observation?identifier=urn:ids|obs-p1",
        json=observation(None, "Patient/p2"),
        headers=world.dr,
    )
    several = await world.http.put(
        "/fhir/Observation?code=718-7", json=observation(None, "Patient/p2"), headers=world.dr
    )
    assert (hidden.status_code, hidden.content) == (several.status_code, several.content)
    assert_nothing_written(world)


async def test_conditional_update_cannot_dodge_the_check_with_elements(world: World) -> None:
    """The condition carries ``_elements=id`` so that the match the gateway looks at has no
    ``subject``: a match nobody can be named for must not pass as writable."""
    got = await world.http.put(
        "/fhir/Observation?identifier=urn:ids|obs-p1&_elements=id",
        json=observation(None, "Patient/p2"),
        headers=world.dr,
    )
    assert got.status_code in (400, 412)
    assert_nothing_written(world)


async def test_conditional_delete_matching_p1_is_412_and_deletes_nothing(world: World) -> None:
    """``DELETE Observation?identifier=urn:ids|obs-p1`` would delete p1's record."""
    got = await world.http.delete("/fhir/Observation?identifier=urn:ids|obs-p1", headers=world.dr)
    assert got.status_code == 412
    assert_nothing_written(world)


async def test_conditional_patch_matching_p1_is_412_and_patches_nothing(world: World) -> None:
    """``PATCH Observation?identifier=urn:ids|obs-p1`` would patch p1's record."""
    patch = [{"op": "replace", "path": "/status", "value": "amended"}]
    got = await world.http.patch(
        "/fhir/Observation?identifier=urn:ids|obs-p1",
        content=json.dumps(patch),
        headers={**world.dr, **JSON_PATCH},
    )
    assert got.status_code == 412
    assert_nothing_written(world)


async def test_conditional_create_matching_p1_releases_nothing(world: World) -> None:
    """``If-None-Exist: identifier=urn:ids|obs-p1``: FHIR answers an existing match with 200
    and the match itself, which would hand over p1's record."""
    got = await world.http.post(
        "/fhir/Observation",
        json=observation(None, "Patient/p2"),
        headers={**world.dr, "if-none-exist": "identifier=urn:ids|obs-p1"},
    )
    assert got.status_code == 412
    assert_nothing_of_p1(got)
    assert_nothing_written(world)


async def test_conditional_update_cannot_hide_p1s_match_from_the_check(world: World) -> None:
    """``PUT Observation?identifier=urn:ids|obs-p1&_offset=1``: the gateway's own search for
    the condition skips the one match and sees none, so it lets the upstream resolve the
    condition, which finds p1's record and overwrites it."""
    got = await world.http.put(
        "/fhir/Observation?identifier=urn:ids|obs-p1&_offset=1",
        json=observation(None, "Patient/p2"),
        headers=world.dr,
    )
    assert ("PUT", "Observation/obs-p1") not in world.fhir.writes, got.status_code
    current = world.fhir.current("Observation/obs-p1")
    assert current is not None
    assert current["subject"] == {"reference": "Patient/p1"}


async def test_an_upstream_refusal_does_not_tell_what_it_found_elsewhere(world: World) -> None:
    """A create refused by the upstream for a uniqueness clash ("identifier already used by
    Patient/p1 ...") would tell the practitioner that p1 exists and holds that identifier: the
    caller gets the structured part of the outcome (code, element) and none of its text."""
    serve = world.fhir.handle

    def clash(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(
                422,
                json={
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "duplicate",
                            "diagnostics": f"identifier already used by Patient/p1 {SECRET}",
                            "details": {"text": f"see Patient/p1 {SECRET}"},
                            "expression": ["Observation.identifier[0]"],
                        }
                    ],
                },
            )
        return serve(request)

    world.router.routes.clear()
    world.router.route().mock(side_effect=clash)
    got = await world.http.post(
        "/fhir/Observation", json=observation(None, "Patient/p2"), headers=world.dr
    )
    assert got.status_code == 422
    assert got.json()["issue"] == [
        {"severity": "error", "code": "duplicate", "expression": ["Observation.identifier[0]"]}
    ]
    assert_nothing_of_p1(got)
