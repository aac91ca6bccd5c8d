"""A consent denying an organization, enforced on the real upstream with carebundle-10 loaded.

The leak this pins: a patient's Consent denying ``Organization/<A>`` had no effect, because
the gateway never knew a caller's organization; the practitioner of A read everything (200).
Here the upstream holds two organizations, a practitioner of each and the PractitionerRole
linking each to its organization (test data made below, straight on the upstream, as an
EHR's directory would hold it; the tokens name no organization). The last carebundle patient
makes, with its own token, a consent denying organization A. A's practitioner (as
``Practitioner/<id>``, and acting in its role as ``PractitionerRole/<id>``) then gets the
generic 404 for every record of the patient and finds nothing of it through the routes the
enforcement module walks (searches by patient, ``POST _search``, ``_revinclude``, instance
history, batch), and so does the practitioner of a department of A (``Organization.partOf``);
B's practitioner still reads every record, as the upstream holds it. Nothing
else changes for anyone: the patient's other callers, and every other patient.
"""

from __future__ import annotations

from typing import Any, Final

import httpx
import pytest

from tests.integration.enforcing import (
    FHIR_JSON,
    GENERIC_NOT_FOUND,
    Caller,
    Universe,
    deny_by_own_consent,
    refs,
)
from tests.integration.sides import Sides
from tests.support import GatewayServer

pytestmark = pytest.mark.integration

USER_SCOPES: Final = "user/*.rs"
SEARCHED: Final = (
    ("Observation", "subject"),
    ("Encounter", "patient"),
    ("DiagnosticReport", "subject"),
)


def create_directly(sides: Sides, resource: dict[str, Any]) -> str:
    """``Type/id`` of ``resource`` created straight on the upstream."""
    rtype = resource["resourceType"]
    answer = sides.direct.post(f"{sides.upstream_base}/{rtype}", json=resource, headers=FHIR_JSON)
    assert answer.status_code == 201, answer.text
    return f"{rtype}/{answer.json()['id']}"


@pytest.fixture(scope="module")
def directory(sides: Sides) -> dict[str, str]:
    """Two organizations, a practitioner of each, each one's PractitionerRole."""
    made: dict[str, str] = {}
    for side in ("a", "b"):
        org = create_directly(sides, {"resourceType": "Organization", "name": f"Clinic {side}"})
        practitioner = create_directly(
            sides, {"resourceType": "Practitioner", "name": [{"family": f"Doctor {side}"}]}
        )
        role = create_directly(
            sides,
            {
                "resourceType": "PractitionerRole",
                "active": True,
                "practitioner": {"reference": practitioner},
                "organization": {"reference": org},
            },
        )
        made |= {f"org_{side}": org, f"dr_{side}": practitioner, f"role_{side}": role}
    # a department of A (Organization.partOf) and a practitioner of the department only
    department = create_directly(
        sides,
        {
            "resourceType": "Organization",
            "name": "Clinic a, cardiology",
            "partOf": {"reference": made["org_a"]},
        },
    )
    practitioner = create_directly(
        sides, {"resourceType": "Practitioner", "name": [{"family": "Doctor dept"}]}
    )
    create_directly(
        sides,
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": practitioner},
            "organization": {"reference": department},
        },
    )
    return made | {"dr_dept": practitioner}


@pytest.fixture(scope="module")
def patient(
    gateway: GatewayServer,
    http: httpx.Client,
    carebundle: dict[str, list[str]],
    directory: dict[str, str],
) -> str:
    """The last carebundle patient, whose own consent denies organization A."""
    patient = list(carebundle)[-1]
    deny_by_own_consent(gateway, http, patient, directory["org_a"])
    return patient


def user_caller(gateway: GatewayServer, http: httpx.Client, fhir_user: str) -> Caller:
    sub = fhir_user.replace("/", "-")
    return Caller(http, gateway.base_url, gateway.bearer(sub, USER_SCOPES, fhir_user=fhir_user))


@pytest.fixture(scope="module")
def member(gateway: GatewayServer, http: httpx.Client, directory: dict[str, str]) -> Caller:
    return user_caller(gateway, http, directory["dr_a"])


@pytest.fixture(scope="module")
def outsider(gateway: GatewayServer, http: httpx.Client, directory: dict[str, str]) -> Caller:
    return user_caller(gateway, http, directory["dr_b"])


@pytest.fixture(scope="module")
def universe(sides: Sides, carebundle: dict[str, list[str]]) -> Universe:
    return Universe.read(sides.direct, sides.upstream_base)


def _hidden(universe: Universe, carebundle: dict[str, list[str]], patient: str) -> list[str]:
    created = {ref for ref in carebundle[patient] if not ref.startswith("Practitioner/")}
    return sorted(universe.of(patient) | created)


def test_the_organizations_practitioner_reads_the_generic_404(
    member: Caller, universe: Universe, carebundle: dict[str, list[str]], patient: str
) -> None:
    missing = member.get("Patient/no-such-patient")
    assert (missing.status_code, missing.json()) == (404, GENERIC_NOT_FOUND)
    hidden = _hidden(universe, carebundle, patient)
    assert {ref.split("/")[0] for ref in hidden} >= {"Patient", *(t for t, _ in SEARCHED)}
    for ref in hidden:
        answer = member.get(ref)
        assert (answer.status_code, answer.content) == (404, missing.content), ref
    for ref in (f"Patient/{patient}", sorted(universe.of(patient, "Observation"))[0]):
        history = member.get(f"{ref}/_history")
        assert (history.status_code, history.content) == (404, missing.content), ref


def test_acting_in_its_role_changes_nothing(
    gateway: GatewayServer,
    http: httpx.Client,
    directory: dict[str, str],
    universe: Universe,
    patient: str,
) -> None:
    """A token whose ``fhirUser`` is A's PractitionerRole: the role's organization is A."""
    in_role = user_caller(gateway, http, directory["role_a"])
    assert in_role.get(f"Patient/{patient}").status_code == 404
    observation = sorted(universe.of(patient, "Observation"))[0]
    assert in_role.get(observation).status_code == 404
    other_role = user_caller(gateway, http, directory["role_b"])
    assert other_role.get(f"Patient/{patient}").status_code == 200


def test_the_staff_of_a_department_of_the_organization_is_denied_too(
    gateway: GatewayServer, http: httpx.Client, directory: dict[str, str], patient: str
) -> None:
    """The department's Organization.partOf names A: a consent denying A reaches it."""
    in_department = user_caller(gateway, http, directory["dr_dept"])
    assert in_department.get(f"Patient/{patient}").status_code == 404


@pytest.mark.parametrize(("rtype", "param"), SEARCHED, ids=[t for t, _ in SEARCHED])
def test_searches_find_nothing_of_the_patient_for_the_organization(
    member: Caller,
    outsider: Caller,
    universe: Universe,
    carebundle: dict[str, list[str]],
    patient: str,
    rtype: str,
    param: str,
) -> None:
    query = f"{rtype}?{param}=Patient/{patient}&_count=10"
    assert universe.of(patient, rtype)
    assert member.found(query) == []
    assert refs(outsider.found(query)) == universe.of(patient, rtype)
    # another patient is not affected for the member
    someone = next(p for p in carebundle if p != patient)
    query = f"{rtype}?{param}=Patient/{someone}&_count=10"
    assert refs(member.found(query)) == universe.of(someone, rtype)


def test_post_search_revinclude_and_batch_release_nothing_of_the_patient(
    member: Caller, universe: Universe, carebundle: dict[str, list[str]], patient: str
) -> None:
    someone = next(p for p in carebundle if p != patient)
    hidden = member.post("Observation/_search", data={"subject": f"Patient/{patient}"})
    assert hidden.status_code == 200, hidden.text
    assert "entry" not in hidden.json()
    assert hidden.json().get("total", 0) == 0  # never the upstream's; the caller's own when exact
    query = (
        f"Patient?_id={patient},{someone}"
        "&_revinclude=Encounter:patient&_revinclude=Observation:subject"
    )
    found = refs(member.found(query))
    assert found.isdisjoint(universe.of(patient))
    assert f"Patient/{someone}" in found
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{patient}"}},
            {"request": {"method": "GET", "url": f"Observation?subject=Patient/{patient}"}},
        ],
    }
    answer = member.post("", json=batch)
    assert answer.status_code == 200, answer.text
    read, search = answer.json()["entry"]
    assert read == {"response": {"status": "404", "outcome": GENERIC_NOT_FOUND}}
    assert "entry" not in search["resource"]


def test_a_practitioner_of_another_organization_reads_every_record(
    outsider: Caller,
    sides: Sides,
    universe: Universe,
    carebundle: dict[str, list[str]],
    patient: str,
) -> None:
    readable = _hidden(universe, carebundle, patient)
    for ref in readable:
        via = outsider.get(ref)
        direct = sides.direct.get(f"{sides.upstream_base}/{ref}")
        assert via.status_code == 200, ref
        assert via.content == direct.content, ref
