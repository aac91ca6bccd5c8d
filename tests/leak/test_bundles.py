"""Batch and transaction Bundles: a batch answers each p1 entry as the request would be
answered alone (404/403) while p2's entries succeed; a transaction touching p1 is refused
whole, with nothing forwarded; Consent never reaches the upstream through an entry."""

from __future__ import annotations

from typing import Any

import pytest

from tests.leak.world import World, assert_nothing_of_p1, assert_withheld


def entry(method: str, url: str, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"request": {"method": method, "url": url}}
    if resource is not None:
        out["resource"] = resource
    return out


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def observation(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": patient},
    }


def statuses(answer: dict[str, Any]) -> list[str]:
    return [e["response"]["status"].split()[0] for e in answer["entry"]]


# --- batch -------------------------------------------------------------------------------------


async def test_batch_answers_p1_entries_alone_while_p2_entries_succeed(world: World) -> None:
    """A batch mixes p1 and p2 reads, creates and deletes: each p1 entry must fail as it would
    alone (404 read, 403 create, 404 delete), and p2's must still go through."""
    got = await world.http.post(
        "/fhir",
        json=bundle(
            "batch",
            entry("GET", "Patient/p1"),
            entry("GET", "Patient/p2"),
            entry("POST", "Observation", observation("Patient/p1")),
            entry("POST", "Observation", observation("Patient/p2")),
            entry("DELETE", "Observation/obs-p1"),
        ),
        headers=world.dr,
    )
    assert got.status_code == 200
    assert statuses(got.json()) == ["404", "200", "403", "201", "404"]
    assert_withheld(world, got)
    assert world.fhir.writes == [("POST", "Observation")]


async def test_batch_p1_read_entry_is_the_missing_record_entry(world: World) -> None:
    """Within one batch, p1's entry and a missing record's entry are compared side by side:
    any difference confirms p1."""
    got = await world.http.post(
        "/fhir",
        json=bundle("batch", entry("GET", "Observation/obs-p1"), entry("GET", "Observation/nope")),
        headers=world.dr,
    )
    assert got.status_code == 200
    denied, missing = got.json()["entry"]
    assert denied == missing
    assert missing["response"]["status"].startswith("404")


async def test_batch_conditional_read_entry_cannot_produce_a_304(world: World) -> None:
    """A batch entry reads p1's record with ``ifNoneMatch`` set to its ETag: a 304 entry from
    the upstream would confirm the record and its version."""
    read = entry("GET", "Observation/obs-p1")
    read["request"]["ifNoneMatch"] = 'W/"1"'
    missing = entry("GET", "Observation/nope")
    missing["request"]["ifNoneMatch"] = 'W/"1"'
    got = await world.http.post("/fhir", json=bundle("batch", read, missing), headers=world.dr)
    assert got.status_code == 200
    denied, absent = got.json()["entry"]
    assert denied == absent
    assert all("if-none-match" not in r.headers for r in world.sent)


async def test_batch_search_entry_for_p1_releases_nothing(world: World) -> None:
    """A search entry ``Observation?subject=Patient/p1`` (and a count) inside a batch: each is
    guarded, filtered and counted like the search on its own (the count is of what the
    practitioner may see: 0)."""
    got = await world.http.post(
        "/fhir",
        json=bundle(
            "batch",
            entry("GET", "Observation?subject=Patient/p1"),
            entry("GET", "Observation?subject=Patient/p1&_summary=count"),
            entry("GET", "Patient/p1/$everything"),
        ),
        headers=world.dr,
    )
    assert got.status_code == 200
    search, count = got.json()["entry"][:2]
    assert search["response"]["status"].startswith("200")
    assert count["response"]["status"].startswith("200")
    assert count["resource"]["total"] == 0
    assert "entry" not in count["resource"]
    assert all("_summary" not in sent.url.params for sent in world.sent)
    assert_withheld(world, got)


@pytest.mark.parametrize(
    "bad",
    [
        entry("GET", "Consent?patient=Patient/p1"),
        entry("GET", "Patient/p1/Consent"),
        entry("GET", "Consent/upstream-consent-p2"),
        entry("PUT", "Consent/c1", {"resourceType": "Consent", "id": "c1", "status": "inactive"}),
    ],
    ids=["search", "compartment", "read", "update"],
)
async def test_batch_consent_entry_never_reaches_the_upstream(
    world: World, bad: dict[str, Any]
) -> None:
    """Consent is the gateway's own: a batch entry naming it would read or overwrite the
    upstream's copy, behind the consent API's back."""
    got = await world.http.post("/fhir", json=bundle("batch", bad), headers=world.dr)
    assert got.status_code == 200
    assert statuses(got.json()) in (["403"], ["404"])
    assert world.sent == []


@pytest.mark.parametrize(
    "url",
    [
        "http://upstream.test:8103/fhir/Patient/p1",
        "Observation/../Patient/p1",
        "Patient/p1/",
        "Patient//p1",
        "Patient/p1;x=1",
        "Patient%2Fp1",
        "patient/p1",
    ],
    ids=[
        "upstream-url",
        "dot-dot",
        "trailing-slash",
        "empty-segment",
        "matrix",
        "encoded-slash",
        "case",
    ],
)
async def test_batch_entry_path_tricks_are_refused(world: World, url: str) -> None:
    """An entry's url is a path the gateway must classify as strictly as a request line: an
    absolute URL to the upstream, dot segments, encodings."""
    got = await world.http.post("/fhir", json=bundle("batch", entry("GET", url)), headers=world.dr)
    assert got.status_code == 200
    assert statuses(got.json())[0] in ("400", "404")
    assert_nothing_of_p1(got)
    assert world.sent == []


async def test_batch_nested_in_a_batch_is_refused(world: World) -> None:
    """A batch entry POSTing another batch to the base: the inner Bundle must not be
    forwarded unchecked."""
    inner = bundle("batch", entry("GET", "Patient/p1"))
    got = await world.http.post(
        "/fhir", json=bundle("batch", entry("POST", "", inner)), headers=world.dr
    )
    assert got.status_code == 200
    assert statuses(got.json())[0] == "400"
    assert world.sent == []


# --- transaction ---------------------------------------------------------------------------


async def test_transaction_with_one_p1_create_is_refused_whole(world: World) -> None:
    """Three p2 creates and one p1 create in one transaction: all or nothing, so nothing at
    all may be written."""
    got = await world.http.post(
        "/fhir",
        json=bundle(
            "transaction",
            entry("POST", "Observation", observation("Patient/p2")),
            entry("POST", "Observation", observation("Patient/p2")),
            entry("POST", "Observation", observation("Patient/p1")),
            entry("POST", "Observation", observation("Patient/p2")),
        ),
        headers=world.dr,
    )
    assert got.status_code == 403
    assert world.sent == []
    assert world.fhir.writes == []


async def test_transaction_touching_a_p1_record_is_refused_like_a_missing_one(
    world: World,
) -> None:
    """A transaction updating p1's obs-p1 is refused; the refusal must read exactly like the
    refusal of a transaction deleting a record that does not exist."""
    touching = await world.http.post(
        "/fhir",
        json=bundle(
            "transaction",
            entry("PUT", "Observation/obs-p1", {**observation("Patient/p2"), "id": "obs-p1"}),
        ),
        headers=world.dr,
    )
    missing = await world.http.post(
        "/fhir",
        json=bundle("transaction", entry("DELETE", "Observation/nope")),
        headers=world.dr,
    )
    assert touching.status_code == 403
    assert (touching.status_code, touching.content) == (missing.status_code, missing.content)
    assert world.writes_sent == []


async def test_transaction_read_of_p1_is_a_404_entry(world: World) -> None:
    """A transaction that writes for p2 and reads Patient/p1: the write may go, the read's
    answer entry must be the generic 404."""
    got = await world.http.post(
        "/fhir",
        json=bundle(
            "transaction",
            entry("POST", "Observation", observation("Patient/p2")),
            entry("GET", "Patient/p1"),
        ),
        headers=world.dr,
    )
    assert got.status_code == 200, got.text
    assert statuses(got.json()) == ["201", "404"]
    assert_withheld(world, got)


async def test_transaction_search_of_p1_releases_nothing(world: World) -> None:
    """A search entry inside a transaction: its searchset comes back nested in the
    transaction-response and must be filtered there."""
    got = await world.http.post(
        "/fhir",
        json=bundle("transaction", entry("GET", "Observation?subject=Patient/p1")),
        headers=world.dr,
    )
    assert got.status_code == 200, got.text
    assert_withheld(world, got)


@pytest.mark.parametrize(
    "bad",
    [
        entry("GET", "Consent?patient=Patient/p1"),
        entry("POST", "Consent", {"resourceType": "Consent", "status": "active"}),
    ],
    ids=["search", "create"],
)
async def test_transaction_with_a_consent_entry_is_refused_whole(
    world: World, bad: dict[str, Any]
) -> None:
    """A Consent entry rides along with a harmless p2 create: the transaction would be
    forwarded as one Bundle, Consent included."""
    got = await world.http.post(
        "/fhir",
        json=bundle("transaction", entry("POST", "Observation", observation("Patient/p2")), bad),
        headers=world.dr,
    )
    assert got.status_code == 403
    assert world.sent == []
