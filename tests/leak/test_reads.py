"""Reads and vreads of p1's records by the practitioner p1 denies, and by patient p2: every
denied read is the very 404 a missing record gets, whatever the resource hides p1 in."""

from __future__ import annotations

from typing import Any

import pytest

from tests.leak.upstream import SECRET, UPSTREAM
from tests.leak.world import (
    World,
    assert_nothing_of_p1,
    assert_same_not_found,
    assert_withheld,
    ids_in,
)

# --- the control -----------------------------------------------------------------------------


async def test_control_the_practitioner_reads_p2(world: World) -> None:
    """Not an attack: p2 has no consent (opt-out), so the practitioner reads p2's records; the
    leak tests below would pass vacuously on a gateway that released nothing."""
    answer = await world.http.get("/fhir/Observation/obs-p2", headers=world.dr)
    assert answer.status_code == 200
    assert answer.json()["subject"] == {"reference": "Patient/p2"}
    assert answer.headers["etag"] == 'W/"1"'


# --- read and vread --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("denied", "missing"),
    [
        ("Patient/p1", "Patient/nope"),
        ("Observation/obs-p1", "Observation/nope"),
        ("Encounter/enc-a", "Encounter/nope"),
    ],
    ids=["patient", "observation", "encounter"],
)
async def test_read_of_a_p1_record_is_the_404_of_a_missing_one(
    world: World, denied: str, missing: str
) -> None:
    """The practitioner reads a p1 record: anything but the byte-identical 404 of a record that
    does not exist (status, body, headers) tells it the record exists."""
    got = await world.http.get(f"/fhir/{denied}", headers=world.dr)
    absent = await world.http.get(f"/fhir/{missing}", headers=world.dr)
    assert_same_not_found(world, got, absent)


@pytest.mark.parametrize(
    ("denied", "missing"),
    [
        ("Patient/p1/_history/1", "Patient/nope/_history/1"),
        ("Observation/obs-p1/_history/1", "Observation/nope/_history/1"),
    ],
    ids=["patient", "observation"],
)
async def test_vread_of_a_p1_version_is_the_404_of_a_missing_one(
    world: World, denied: str, missing: str
) -> None:
    """The practitioner asks for a version of a p1 record by number: the version's content,
    or a 404 that differs from a missing version's, would leak."""
    got = await world.http.get(f"/fhir/{denied}", headers=world.dr)
    absent = await world.http.get(f"/fhir/{missing}", headers=world.dr)
    assert_same_not_found(world, got, absent)


async def test_vread_of_the_version_a_record_had_under_p1(world: World) -> None:
    """obs-moved was filed under p1 (version 1) then moved to p2 (version 2): the practitioner
    may read the current version but vreading version 1 must not give p1's content."""
    current = await world.http.get("/fhir/Observation/obs-moved", headers=world.dr)
    assert current.status_code == 200
    old = await world.http.get("/fhir/Observation/obs-moved/_history/1", headers=world.dr)
    absent = await world.http.get("/fhir/Observation/obs-moved/_history/9", headers=world.dr)
    assert_same_not_found(world, old, absent)


async def test_head_of_a_p1_record_answers_like_a_missing_one(world: World) -> None:
    """HEAD is a read without a body: a status or headers that differ from a missing record's
    would confirm p1's record; it must not be forwarded either."""
    got = await world.http.head("/fhir/Patient/p1", headers=world.dr)
    absent = await world.http.head("/fhir/Patient/nope", headers=world.dr)
    assert got.status_code == absent.status_code
    assert got.status_code >= 400
    assert {k: v for k, v in got.headers.items() if k != "x-request-id"} == {
        k: v for k, v in absent.headers.items() if k != "x-request-id"
    }
    assert world.sent == []


async def test_if_none_match_cannot_turn_a_denied_read_into_a_304(world: World) -> None:
    """The practitioner sends If-None-Match with p1's current ETag: if forwarded, the upstream
    answers 304 Not Modified, which confirms the record and its version."""
    etag = {"if-none-match": 'W/"1"', "if-modified-since": "Fri, 01 Mar 2024 09:00:00 GMT"}
    got = await world.http.get("/fhir/Observation/obs-p1", headers={**world.dr, **etag})
    absent = await world.http.get("/fhir/Observation/nope", headers={**world.dr, **etag})
    assert_same_not_found(world, got, absent)
    assert all("if-none-match" not in r.headers for r in world.sent)
    assert all("if-modified-since" not in r.headers for r in world.sent)


async def test_elements_on_a_read_is_not_sent_upstream(world: World) -> None:
    """``Observation/obs-p1?_elements=id`` would make the upstream strip ``subject``: a resource
    without its patient reference cannot be judged, and must not slip through as one."""
    got = await world.http.get("/fhir/Observation/obs-p1?_elements=id", headers=world.dr)
    absent = await world.http.get("/fhir/Observation/nope?_elements=id", headers=world.dr)
    assert_same_not_found(world, got, absent)
    assert all("_elements" not in r.url.params for r in world.sent)


async def test_xml_goes_through_the_json_filter(world: World) -> None:
    """The practitioner asks for XML (Accept and ``_format``): the upstream is still asked for
    JSON (an XML answer the gateway could not judge never comes back), the record is judged,
    and the denied read is the same XML 404 as a missing one, with nothing of p1 in it."""
    xml = {**world.dr, "accept": "application/fhir+xml"}
    for url, headers in (
        ("/fhir/Observation/{}", xml),
        ("/fhir/Observation/{}?_format=xml", world.dr),
    ):
        got = await world.http.get(url.format("obs-p1"), headers=headers)
        absent = await world.http.get(url.format("nope"), headers=headers)
        assert got.headers["content-type"].startswith("application/fhir+xml")
        assert_same_not_found(world, got, absent)
        assert SECRET not in got.text
        assert "p1" not in got.text
    assert world.sent
    for sent in world.sent:
        assert "xml" not in sent.headers.get("accept", "")
        assert "_format" not in sent.url.params


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("/fhir/Observation/obs-p1?_format=xml&_format=json", {}),
        ("/fhir/Observation/obs-p1?_format=json&%5Fformat=xml", {}),
        ("/fhir/Observation/obs-p1?_format=ttl", {}),
        ("/fhir/Observation/obs-p1", {"accept": "text/turtle"}),
        ("/fhir/Observation/obs-p1", {"accept": "application/fhir+xml;q=0"}),
    ],
    ids=["xml-then-json", "json-then-encoded-xml", "turtle-format", "turtle", "xml-q0-only"],
)
async def test_refused_formats_send_nothing_upstream(
    world: World, url: str, extra: dict[str, str]
) -> None:
    """A format the gateway cannot answer in, or ``_format`` values that disagree (one was
    answered, the other sent on), is refused at the edge: nothing reaches the upstream and
    nothing of p1 comes back."""
    answer = await world.http.get(url, headers={**world.dr, **extra})
    assert answer.status_code in (400, 406)
    assert_nothing_of_p1(answer)
    assert world.sent == []


async def test_an_xml_body_in_utf16_sends_nothing_upstream(world: World) -> None:
    """A UTF-16 body hid its DTD from the byte check: its entities were expanded and the
    result forwarded. FHIR XML is UTF-8; anything else is refused before parsing."""
    body = """<?xml version="1.0" encoding="UTF-16"?>
<!DOCTYPE p [<!ENTITY s "p1-secret">]>
<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="&s;"/>
</code><subject><reference value="Patient/p1"/></subject></Observation>""".encode("utf-16")
    answer = await world.http.post(
        "/fhir/Observation",
        content=body,
        headers={**world.dr, "content-type": "application/fhir+xml"},
    )
    assert answer.status_code == 400
    assert "p1-secret" not in answer.text
    assert world.sent == []


# --- p1 hidden inside something else ------------------------------------------------------------


async def test_p1_result_contained_in_a_p2_report_withholds_the_report(world: World) -> None:
    """DiagnosticReport rep-p2 is p2's, but carries p1's result as a contained Observation:
    releasing the report releases p1's result with it."""
    got = await world.http.get("/fhir/DiagnosticReport/rep-p2", headers=world.dr)
    absent = await world.http.get("/fhir/DiagnosticReport/nope", headers=world.dr)
    assert_same_not_found(world, got, absent)


async def test_p1_entry_of_a_p2_looking_collection_bundle_is_removed(world: World) -> None:
    """A stored collection Bundle holds p2's Observation and a p1 Observation whose fullUrl
    looks like p2's: the p1 entry must go, the p2 one stays."""
    got = await world.http.get("/fhir/Bundle/bun-p2", headers=world.dr)
    assert got.status_code == 200
    assert ids_in(got.json()) == {"Bundle/bun-p2", "Observation/obs-p2"}
    assert_withheld(world, got)


async def test_p1_entry_of_a_p2_document_withholds_the_document(world: World) -> None:
    """A document Bundle (p2's Composition) carries a p1 Observation: a document is released
    whole or not at all, so it must be the missing record's 404."""
    got = await world.http.get("/fhir/Bundle/doc-p2", headers=world.dr)
    absent = await world.http.get("/fhir/Bundle/nope", headers=world.dr)
    assert_same_not_found(world, got, absent)


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": f"{UPSTREAM}/Patient/p1"},
        {"reference": "http://gateway.test/fhir/Patient/p1"},
        {"reference": "Patient/p1/_history/1"},
        {"reference": "Patient?identifier=urn:ids|mrn-p1"},
        {"type": "Patient", "identifier": {"system": "urn:ids", "value": "mrn-p1"}},
    ],
    ids=["upstream-url", "gateway-url", "versioned", "conditional", "identifier-only"],
)
async def test_p1_reference_spellings_are_recognised(world: World, subject: dict[str, Any]) -> None:
    """The upstream names p1 in a spelling other than ``Patient/p1``: a gateway that does not
    resolve it would take the record for nobody's and release it."""
    world.fhir.put({**(world.fhir.current("Observation/obs-p1") or {}), "subject": subject})
    got = await world.http.get("/fhir/Observation/obs-p1", headers=world.dr)
    absent = await world.http.get("/fhir/Observation/nope", headers=world.dr)
    assert_same_not_found(world, got, absent)


#: p1's data in types the R4 Patient CompartmentDefinition leaves out, each naming p1.
OUTSIDE_THE_COMPARTMENT: list[dict[str, Any]] = [
    {
        "resourceType": "Binary",
        "id": "out-p1",
        "contentType": "text/plain",
        "securityContext": {"reference": "Patient/p1"},
        "data": "U0VDUkVULVAxOiBsYWIgcmVwb3J0",  # base64("SECRET-P1: lab report")
    },
    {
        "resourceType": "Device",
        "id": "out-p1",
        "patient": {"reference": "Patient/p1"},
        "note": [{"text": f"{SECRET}: implanted insulin pump"}],
    },
    {
        "resourceType": "GuidanceResponse",
        "id": "out-p1",
        "moduleUri": "http://example.org/hiv-followup",
        "status": "success",
        "subject": {"reference": "Patient/p1"},
        "note": [{"text": f"{SECRET}: start antiretroviral therapy"}],
    },
]


@pytest.mark.parametrize(
    "resource", OUTSIDE_THE_COMPARTMENT, ids=[r["resourceType"] for r in OUTSIDE_THE_COMPARTMENT]
)
async def test_p1_data_in_a_type_outside_the_compartment_is_withheld(
    world: World, resource: dict[str, Any]
) -> None:
    """p1's lab report as a Binary, p1's implant as a Device, advice for p1 as a
    GuidanceResponse: each names p1 plainly, yet none is in the R4 Patient compartment, so a
    judge reading the compartment alone takes them for nobody's."""
    world.fhir.put(resource)
    rtype = resource["resourceType"]
    got = await world.http.get(f"/fhir/{rtype}/out-p1", headers=world.dr)
    absent = await world.http.get(f"/fhir/{rtype}/nope", headers=world.dr)
    assert_same_not_found(world, got, absent)


# --- patient p2 ------------------------------------------------------------------------------


async def test_patient_p2_reading_p1_is_the_missing_404_without_forwarding(world: World) -> None:
    """Patient p2 asks for Patient/p1: the gateway knows from the path alone that it is not
    p2's own record, and must not even ask the upstream."""
    got = await world.http.get("/fhir/Patient/p1", headers=world.p2)
    absent = await world.http.get("/fhir/Patient/nope", headers=world.p2)
    assert_same_not_found(world, got, absent)
    assert world.sent == []


async def test_patient_p2_reading_a_p1_observation_is_the_missing_404(world: World) -> None:
    """Patient p2 guesses the id of p1's Observation: outside p2's compartment, it must be the
    404 of a missing record."""
    got = await world.http.get("/fhir/Observation/obs-p1", headers=world.p2)
    absent = await world.http.get("/fhir/Observation/nope", headers=world.p2)
    assert_same_not_found(world, got, absent)
    own = await world.http.get("/fhir/Observation/obs-p2", headers=world.p2)
    assert own.status_code == 200
