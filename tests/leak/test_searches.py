"""Searches (GET and ``POST _search``, type, compartment and system level): no p1 entry, no
count of hidden matches, no subsetting that dodges the judge; a patient-context caller is
pinned to its own compartment."""

from __future__ import annotations

import pytest

from tests.leak.world import FORM, World, assert_nothing_of_p1, assert_withheld, ids_in

# --- the practitioner --------------------------------------------------------------------------


async def test_search_by_subject_p1_releases_no_entry_and_a_zero_total(world: World) -> None:
    """``Observation?subject=Patient/p1``: the upstream finds p1's Observations and says how
    many; neither the entries nor the upstream's ``total`` may reach the practitioner. The
    whole result was judged, so the total the practitioner gets is what it may see: 0."""
    got = await world.http.get("/fhir/Observation?subject=Patient/p1", headers=world.dr)
    assert got.status_code == 200
    assert "entry" not in got.json()
    assert got.json()["total"] == 0
    assert_withheld(world, got)
    assert world.sent[0].url.params["subject"] == "Patient/p1"


async def test_post_search_by_subject_p1_releases_no_entry_and_a_zero_total(world: World) -> None:
    """The same search as a form-encoded ``POST Observation/_search``: the criteria are in the
    body, where a gateway reading only the query would not see them."""
    got = await world.http.post(
        "/fhir/Observation/_search",
        content=b"subject=Patient%2Fp1",
        headers={**world.dr, **FORM},
    )
    assert got.status_code == 200
    assert "entry" not in got.json()
    assert got.json()["total"] == 0
    assert_withheld(world, got)


async def test_include_brings_no_p1_resource(world: World) -> None:
    """p2's obs-p2 names p1's encounter: ``_include=Observation:encounter`` makes the upstream
    add p1's Encounter to p2's search result."""
    got = await world.http.get(
        "/fhir/Observation?subject=Patient/p2&_include=Observation:encounter", headers=world.dr
    )
    assert got.status_code == 200
    assert "Observation/obs-p2" in ids_in(got.json())
    assert "Encounter/enc-a" not in ids_in(got.json())
    assert_withheld(world, got)


async def test_revinclude_brings_no_p1_resource(world: World) -> None:
    """p1's obs-p1-enc was recorded during p2's encounter: ``_revinclude=Observation:encounter``
    on p2's encounters makes the upstream add it."""
    got = await world.http.get(
        "/fhir/Encounter?subject=Patient/p2&_revinclude=Observation:encounter", headers=world.dr
    )
    assert got.status_code == 200
    assert "Encounter/enc-p2" in ids_in(got.json())
    assert_withheld(world, got)


async def test_p1_result_contained_in_a_p2_match_is_withheld(world: World) -> None:
    """``DiagnosticReport?subject=Patient/p2`` matches p2's report, which carries p1's result
    as a contained resource."""
    got = await world.http.get("/fhir/DiagnosticReport?subject=Patient/p2", headers=world.dr)
    assert got.status_code == 200
    assert_withheld(world, got)


async def test_p1_entries_of_nested_bundles_are_removed(world: World) -> None:
    """A search of stored Bundles returns a collection with a p1 entry that looks like p2's,
    and a p2 document carrying a p1 Observation: nested entries must be judged too."""
    got = await world.http.get("/fhir/Bundle", headers=world.dr)
    assert got.status_code == 200
    assert ids_in(got.json()) == {"Bundle/bun-p2", "Observation/obs-p2"}
    assert_withheld(world, got)


@pytest.mark.parametrize(
    "query",
    [
        "subject=Patient/p1&_summary=count",
        "subject=Patient/p1&_count=0",
        "subject=Patient/p1&_count=0&_totalMethod=count",
        "subject=Patient/p1&_total=accurate",
        "subject=Patient/p1&_total=estimate",
        "subject=Patient/p1&_total=%20Accurate",
    ],
    ids=[
        "summary-count",
        "count-zero",
        "fhirpy-count",
        "total-accurate",
        "total-estimate",
        "total-padded",
    ],
)
async def test_counting_hidden_matches_counts_none(world: World, query: str) -> None:
    """``_summary=count`` and ``_total`` ask the upstream to count every match, p1's hidden
    ones included: the number alone is an oracle. The gateway never forwards the count; it
    runs the search itself, judges every match and counts what the practitioner may see: 0,
    the same answer as for a patient with no records at all."""
    got = await world.http.get(f"/fhir/Observation?{query}", headers=world.dr)
    nobody = await world.http.get(
        f"/fhir/Observation?{query.replace('Patient/p1', 'Patient/nobody')}", headers=world.dr
    )
    assert got.status_code == 200
    assert got.json()["total"] == 0
    assert "entry" not in got.json()
    assert_withheld(world, got)  # p1's records were fetched and judged, not skipped
    assert got.json()["total"] == nobody.json()["total"]
    assert "entry" not in nobody.json()
    for sent in world.sent_params():
        names = {name.strip().lower() for name, _ in sent}
        assert not names & {"_summary", "_total", "_totalmethod"}  # no count ever asked upstream
        assert ("_count", "0") not in sent


async def test_an_upper_case_summary_count_is_refused_unforwarded(world: World) -> None:
    """``_summary=COUNT``: ``_summary`` values are case-sensitive (search.html), so this is
    no count the gateway makes, and an upstream reading it loosely must not count: 400."""
    got = await world.http.get(
        "/fhir/Observation?subject=Patient/p1&_summary=COUNT", headers=world.dr
    )
    assert got.status_code == 400
    assert "total" not in got.json()
    assert world.sent == []


async def test_counting_in_a_post_search_body_counts_none(world: World) -> None:
    """``_summary=count`` hidden in the form body of ``POST _search``."""
    got = await world.http.post(
        "/fhir/Observation/_search",
        content=b"subject=Patient%2Fp1&_summary=count",
        headers={**world.dr, **FORM},
    )
    assert got.status_code == 200
    assert got.json()["total"] == 0
    assert_withheld(world, got)
    assert all("_summary" not in sent.url.params for sent in world.sent)


async def test_elements_id_cannot_dodge_the_compartment_check(world: World) -> None:
    """``_elements=id`` makes the upstream strip ``subject`` from each match: a resource that
    names no patient could pass as nobody's. The upstream must be asked for whole resources."""
    got = await world.http.get(
        "/fhir/Observation?subject=Patient/p1&_elements=id", headers=world.dr
    )
    assert got.status_code == 200
    assert "entry" not in got.json()
    assert_withheld(world, got)
    (sent,) = world.sent
    assert "_elements" not in sent.url.params
    assert sent.url.params["subject"] == "Patient/p1"


async def test_elements_subsets_p2_after_judging(world: World) -> None:
    """The other side of the same coin: p2's matches come back subsetted by the gateway
    (tagged SUBSETTED), judged whole first."""
    got = await world.http.get(
        "/fhir/Observation?subject=Patient/p2&_elements=status", headers=world.dr
    )
    entries = got.json()["entry"]
    assert {e["resource"]["id"] for e in entries} == {"obs-p2", "obs-p2b", "obs-moved"}
    assert all("subject" not in e["resource"] for e in entries)
    assert all(e["resource"]["meta"]["tag"][-1]["code"] == "SUBSETTED" for e in entries)


async def test_compartment_search_of_p1_releases_nothing(world: World) -> None:
    """``Patient/p1/Observation``: the compartment search names p1 in the path."""
    got = await world.http.get("/fhir/Patient/p1/Observation", headers=world.dr)
    assert got.status_code == 200
    assert "entry" not in got.json()
    assert_withheld(world, got)


async def test_audit_event_search_for_p1_releases_nothing(world: World) -> None:
    """The upstream's own AuditEvents name p1 as their entity: ``AuditEvent?patient=p1`` would
    read p1's compartment through them. AuditEvent is the gateway's own (its audit trail): the
    search never reaches the upstream, and a clinician who is no auditor is refused."""
    got = await world.http.get("/fhir/AuditEvent?patient=Patient/p1", headers=world.dr)
    assert got.status_code == 403
    assert_nothing_of_p1(got)
    assert world.sent == []


async def test_system_search_releases_no_p1_resource(world: World) -> None:
    """``GET [base]?_type=Patient,Observation`` searches every type at once."""
    got = await world.http.get("/fhir?_type=Patient,Observation", headers=world.dr)
    assert got.status_code == 200
    assert "Patient/p2" in ids_in(got.json())
    assert_withheld(world, got)


@pytest.mark.parametrize(
    "path",
    [
        "/fhir?_type=Consent",
        "/fhir/Patient?_id=p2&_revinclude=Consent:patient",
        "/fhir?_type=AuditEvent",
        "/fhir/Patient?_id=p2&_revinclude=AuditEvent:entity",
    ],
    ids=["system-type", "revinclude", "audit-system-type", "audit-revinclude"],
)
async def test_a_search_naming_consent_never_reaches_the_upstream(world: World, path: str) -> None:
    """Consent is the gateway's own type, never the upstream's: naming it in the query rather
    than the path reads the upstream's stale copies of patients' consents."""
    got = await world.http.get(path, headers=world.dr)
    assert "Consent" not in {i.split("/")[0] for i in ids_in(got.json())}
    assert world.sent == []


# --- patient p2 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "pinned"),
    [
        ("/fhir/Observation", ("patient", "Patient/p2")),
        ("/fhir/Observation?code=718-7", ("patient", "Patient/p2")),
        ("/fhir/Encounter", ("patient", "Patient/p2")),
        ("/fhir/Patient?name=Secret", ("_id", "p2")),
    ],
    ids=["observation", "observation-by-code", "encounter", "patient"],
)
async def test_patient_search_is_pinned_to_its_own_patient(
    world: World, path: str, pinned: tuple[str, str]
) -> None:
    """Patient p2 searches without naming a patient: unpinned, the upstream would return every
    patient's matches."""
    got = await world.http.get(path, headers=world.p2)
    assert got.status_code == 200
    assert_nothing_of_p1(got)
    (params,) = world.sent_params()
    assert pinned in params


@pytest.mark.parametrize(
    "query",
    [
        "subject=Patient/p1",
        "patient=p1",
        "subject:Patient=p1",
        "patient=Patient/p2,Patient/p1",
        "patient=Patient/p2&subject=Patient/p1",
        "subject=http://gateway.test/fhir/Patient/p1",
        "subject=Patient/p1/_history/1",
    ],
    ids=["subject", "bare-id", "typed", "or-list", "second-param", "absolute", "versioned"],
)
async def test_patient_search_naming_p1_is_refused(world: World, query: str) -> None:
    """Patient p2 names p1 in the criteria: an upstream reading only the first or last of two
    patient criteria, or ORing them, would return p1's Observations."""
    got = await world.http.get(f"/fhir/Observation?{query}", headers=world.p2)
    assert got.status_code == 403
    assert world.sent == []


async def test_patient_post_search_naming_p1_is_refused(world: World) -> None:
    """The same, the criteria in the form body of ``POST _search``."""
    got = await world.http.post(
        "/fhir/Observation/_search",
        content=b"subject=Patient%2Fp1",
        headers={**world.p2, **FORM},
    )
    assert got.status_code == 403
    assert world.sent == []


@pytest.mark.parametrize(
    "query",
    [
        "Patient?_has:Observation:subject:code=718-7",
        "Observation?subject.name=Secret",
        "Observation?subject:Patient.birthdate=1970-01-01",
        "Observation?_filter=subject%20eq%20Patient/p1",
        "Observation?_text=HIV",
        "Observation?encounter:missing=false",
    ],
    ids=["has", "chain", "typed-chain", "filter", "text", "missing"],
)
async def test_patient_inference_parameters_are_refused(world: World, query: str) -> None:
    """Reverse chains, chains, ``_filter``, ``_text`` and ``:missing`` match on values of
    resources never returned (p1's birth date, p1's Observations): the match alone leaks."""
    got = await world.http.get(f"/fhir/{query}", headers=world.p2)
    assert got.status_code == 403
    assert world.sent == []


async def test_patient_compartment_search_of_p1_is_refused(world: World) -> None:
    """Patient p2 searches ``Patient/p1/Observation``: another patient's compartment."""
    got = await world.http.get("/fhir/Patient/p1/Observation", headers=world.p2)
    assert got.status_code == 403
    assert world.sent == []


@pytest.mark.parametrize(
    "path", ["/fhir?_type=Observation", "/fhir"], ids=["with-type", "everything"]
)
async def test_patient_system_search_is_refused(world: World, path: str) -> None:
    """A system-level search cannot be pinned to one compartment: it would return p1's data."""
    got = await world.http.get(path, headers=world.p2)
    assert got.status_code == 403
    assert world.sent == []


async def test_patient_include_of_p1_resources_is_removed(world: World) -> None:
    """Patient p2's own obs-p2 names p1's encounter: p2's ``_include`` brings it along."""
    got = await world.http.get("/fhir/Observation?_include=Observation:encounter", headers=world.p2)
    assert got.status_code == 200
    assert "Encounter/enc-a" not in ids_in(got.json())
    assert_withheld(world, got)
