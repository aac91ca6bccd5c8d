"""An organization's deny through every later route, on the real upstream with carebundle-10.

:mod:`tests.integration.test_member_actors` makes the directory (organizations A and B, a
practitioner of each, their PractitionerRoles) and the last carebundle patient's consent
denying organization A; its fixtures are reused here (each module makes its own directory).
A's practitioner gets nothing of that patient through the routes the gateway gained since:
counts (``_summary=count``, ``_count=0`` as fhirpy's ``count()`` sends it,
``_total=accurate``), FHIR XML answers (``Accept``, ``_format``), ``_include``, transaction
read entries, the gateway's own ``Patient/$export`` and ``Group/[id]/$export``, and
``Observation/$lastn`` and ``Patient/[id]/$everything`` (which this upstream does not serve:
whatever the gateway answers, none of the patient's records). B's practitioner still gets
them: its count is the upstream's own count for the patient, its export holds them. A
CareTeam with A's practitioner as participant, denied by another patient, denies that
practitioner that patient too. The tokens state no purpose: the carebundle's HTEST label is
ignored by default (``purpose_labels_ignored``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

import httpx
import pytest
from fhirpy import AsyncFHIRClient

from tests.integration import test_member_actors as actors
from tests.integration.enforcing import (
    GENERIC_NOT_FOUND,
    Caller,
    Universe,
    deny_by_own_consent,
)
from tests.integration.sides import Sides
from tests.support import GatewayServer

pytestmark = pytest.mark.integration

# the module-scoped fixtures of test_member_actors, made anew for this module
directory = actors.directory
patient = actors.patient
member = actors.member
outsider = actors.outsider
universe = actors.universe

FHIR_XML: Final = "application/fhir+xml"
EXPORTED: Final = ("Patient", "Observation", "Encounter")


def _upstream_total(sides: Sides, query: str) -> int:
    answer = sides.direct.get(f"{sides.upstream_base}/{query}&_total=accurate")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


def _total(caller: Caller, query: str) -> int:
    answer = caller.get(query)
    assert answer.status_code == 200, answer.text
    assert "entry" not in answer.json() or "_total" in query, answer.text
    return int(answer.json()["total"])


def _carries_nothing_of(text: str, universe: Universe, patient: str) -> None:
    """No id of any of the patient's records appears in ``text`` (the Patient's own id may:
    the request names it, and a search's ``self`` link repeats the request)."""
    assert "<Patient" not in text
    assert '"Patient"' not in text
    for ref in universe.of(patient) - {f"Patient/{patient}"}:
        assert ref.split("/")[1] not in text, ref


async def test_counts_are_zero_for_the_organization_and_exact_for_another(
    gateway: GatewayServer,
    member: Caller,
    outsider: Caller,
    sides: Sides,
    universe: Universe,
    patient: str,
) -> None:
    for rtype, param in (("Observation", "subject"), ("Encounter", "patient")):
        query = f"{rtype}?{param}=Patient/{patient}"
        upstream = _upstream_total(sides, query)
        assert upstream == len(universe.of(patient, rtype)) > 0
        for suffix in ("&_summary=count", "&_count=0", "&_total=accurate"):
            assert _total(member, query + suffix) == 0, suffix
            assert _total(outsider, query + suffix) == upstream, suffix
        for caller, expected in ((member, 0), (outsider, upstream)):
            client = AsyncFHIRClient(gateway.base_url, authorization=caller.authorization)
            found = client.resources(rtype).search(**{param: f"Patient/{patient}"})
            assert await found.count() == expected


def _xml(caller: Caller, path: str, *, accept: bool = True) -> httpx.Response:
    headers = {**caller.headers, "accept": FHIR_XML if accept else "application/fhir+json"}
    return caller.http.get(f"{caller.base}/{path}", headers=headers)


def test_xml_answers_release_nothing_of_the_patient(
    member: Caller, outsider: Caller, universe: Universe, patient: str
) -> None:
    observation = sorted(universe.of(patient, "Observation"))[0]
    search = f"Observation?subject=Patient/{patient}&_count=500"
    for ref in (f"Patient/{patient}", observation):
        for path, accept in ((ref, True), (f"{ref}?_format=xml", False)):
            denied = _xml(member, path, accept=accept)
            assert denied.status_code == 404, path
            assert "not-found" in denied.text
            _carries_nothing_of(denied.text, universe, patient)
            shown = _xml(outsider, path, accept=accept)
            assert shown.status_code == 200, path
            assert shown.headers["content-type"].startswith(FHIR_XML)
            assert ref.split("/")[1] in shown.text
    for path, accept in ((search, True), (f"{search}&_format=xml", False)):
        found = _xml(member, path, accept=accept)
        assert found.status_code == 200, found.text
        assert found.headers["content-type"].startswith(FHIR_XML)
        assert "<entry>" not in found.text
        _carries_nothing_of(found.text, universe, patient)
        assert observation.split("/")[1] in _xml(outsider, path, accept=accept).text


def test_include_releases_nothing_of_the_patient(
    sides: Sides, member: Caller, outsider: Caller, universe: Universe, patient: str
) -> None:
    observations = ",".join(
        ref.split("/")[1] for ref in sorted(universe.of(patient, "Observation"))
    )
    for query in (  # each one answered by the upstream directly too
        f"Observation?_id={observations}&_include=Observation:subject",
        f"Encounter?patient=Patient/{patient}&_include=Encounter:patient",
        f"Observation?subject=Patient/{patient}&_include=Observation:encounter"
        "&_include:iterate=Encounter:patient",
    ):
        direct = sides.direct.get(f"{sides.upstream_base}/{query}")
        assert direct.status_code == 200, (query, direct.text)
        assert member.found(query) == [], query
        released = {ref for _, ref in outsider.found(query)}
        assert f"Patient/{patient}" in released, query


def test_transaction_read_entries_release_nothing_of_the_patient(
    member: Caller, outsider: Caller, universe: Universe, patient: str
) -> None:
    observation = sorted(universe.of(patient, "Observation"))[0]
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{patient}"}},
            {"request": {"method": "GET", "url": observation}},
            {"request": {"method": "GET", "url": f"Observation?subject=Patient/{patient}"}},
        ],
    }
    answer = member.post("", json=transaction)
    if answer.status_code == 200:
        entries = answer.json()["entry"]
        for entry in entries[:2]:
            assert entry["response"]["status"].split()[0] == "404", entry
            assert entry["response"]["outcome"] == GENERIC_NOT_FOUND
            assert "resource" not in entry
        assert "entry" not in entries[2].get("resource", {})
    else:  # a transaction failing as a whole: an OperationOutcome, nothing of the patient
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.json()["resourceType"] == "OperationOutcome"
    _carries_nothing_of(answer.text, universe, patient)
    shown = outsider.post("", json=transaction)
    assert shown.status_code == 200, shown.text
    read, obs, search = shown.json()["entry"]
    assert read["resource"]["id"] == patient
    assert f"Observation/{obs['resource']['id']}" == observation
    found = {f"Observation/{entry['resource']['id']}" for entry in search["resource"]["entry"]}
    assert found == universe.of(patient, "Observation")


def _exported(caller: Caller, path: str) -> tuple[set[str], str]:
    """``Type/id`` of every resource of a finished export at ``path``, and all its text."""
    kick = caller.http.get(
        f"{caller.base}/{path}",
        params={"_type": ",".join(EXPORTED)},
        headers={**caller.headers, "prefer": "respond-async"},
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["content-location"]
    deadline = time.monotonic() + 120
    while True:
        status = caller.http.get(status_url, headers=dict(caller.headers))
        if status.status_code == 200:
            break
        assert status.status_code == 202, status.text
        assert time.monotonic() < deadline, "the export did not finish in time"
        time.sleep(0.2)
    exported: set[str] = set()
    text = ""
    for item in status.json()["output"]:
        answer = caller.http.get(item["url"], headers=dict(caller.headers))
        assert answer.status_code == 200, answer.text
        text += answer.text
        for line in answer.text.splitlines():
            resource: dict[str, Any] = json.loads(line)
            exported.add(f"{resource['resourceType']}/{resource['id']}")
    return exported, text


def test_patient_export_holds_nothing_of_the_patient_for_the_organization(
    member: Caller, outsider: Caller, universe: Universe, patient: str
) -> None:
    wanted = {ref for rtype in EXPORTED for ref in universe.of(patient, rtype)}
    exported, text = _exported(member, "Patient/$export")
    assert exported
    assert not exported & universe.of(patient)
    assert f"Patient/{patient}" not in text
    exported, _ = _exported(outsider, "Patient/$export")
    assert wanted <= exported


def test_group_export_holds_nothing_of_the_patient_for_the_organization(
    sides: Sides,
    member: Caller,
    outsider: Caller,
    universe: Universe,
    carebundle: dict[str, list[str]],
    patient: str,
) -> None:
    someone = next(p for p in carebundle if p != patient)
    group = actors.create_directly(
        sides,
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{p}"}} for p in (patient, someone)],
        },
    )
    # a Group naming a member whose consent refuses the caller is the generic 404
    kick = member.http.get(
        f"{member.base}/{group}/$export", headers={**member.headers, "prefer": "respond-async"}
    )
    assert (kick.status_code, kick.json()) == (404, GENERIC_NOT_FOUND)
    exported, _ = _exported(outsider, f"{group}/$export")
    assert f"Patient/{someone}" in exported
    assert {ref for rtype in EXPORTED for ref in universe.of(patient, rtype)} <= exported
    # a Group of another patient only: exported for the member, nothing of the patient in it
    alone = actors.create_directly(
        sides,
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{someone}"}}],
        },
    )
    exported, text = _exported(member, f"{alone}/$export")
    assert f"Patient/{someone}" in exported
    assert not exported & universe.of(patient)
    assert patient not in text


@pytest.mark.parametrize(
    "path",
    ["Observation/$lastn?patient=Patient/{pid}", "Patient/{pid}/$everything"],
    ids=["lastn", "everything"],
)
def test_operations_the_upstream_lacks_release_nothing_of_the_patient(
    member: Caller, universe: Universe, patient: str, path: str
) -> None:
    answer = member.get(path.format(pid=patient))
    # on this upstream: the generic 404 (the upstream's own 404, no body of its passing)
    if answer.status_code == 200:
        assert answer.json()["resourceType"] == "Bundle"
        assert "entry" not in answer.json(), answer.text
    else:
        assert (answer.status_code, answer.json()) == (404, GENERIC_NOT_FOUND)
    _carries_nothing_of(answer.text, universe, patient)


def test_a_care_team_denied_by_a_patient_denies_its_participant(
    gateway: GatewayServer,
    http: httpx.Client,
    sides: Sides,
    directory: dict[str, str],
    outsider: Caller,
    universe: Universe,
    carebundle: dict[str, list[str]],
    patient: str,
) -> None:
    """Another patient (who denies no organization) denies a CareTeam whose participant is
    A's practitioner: that practitioner reads the generic 404 and counts 0 for it."""
    other = list(carebundle)[-2]
    assert other != patient
    team = actors.create_directly(
        sides,
        {
            "resourceType": "CareTeam",
            "status": "active",
            "participant": [{"member": {"reference": directory["dr_a"]}}],
        },
    )
    deny_by_own_consent(gateway, http, other, team)
    in_team = actors.user_caller(gateway, http, directory["dr_a"])
    query = f"Observation?subject=Patient/{other}&_summary=count"
    assert (
        in_team.get(f"Patient/{other}").status_code,
        in_team.get(f"Patient/{other}").json(),
    ) == (
        404,
        GENERIC_NOT_FOUND,
    )
    assert _total(in_team, query) == 0
    assert outsider.get(f"Patient/{other}").status_code == 200
    assert _total(outsider, query) == len(universe.of(other, "Observation")) > 0
