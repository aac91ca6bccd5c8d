"""Labels on data on the real upstream: resources the upstream stores with ``meta.security``
read through the gateway (consent.labels).

A patient of this module's own (not a carebundle one: the pass-through tests compare every
carebundle record with the upstream) has two Observations made straight on the upstream: one
labelled for treatment (v3 PurposeOfUse ``TREAT``), one labelled 42 CFR Part 2. Under the
session gateway's opt-out jurisdiction: the treatment one reaches a caller asking for
emergency treatment and is the generic 404 (and absent from a search) for one asking for
marketing; the Part 2 one is the generic 404 until the patient's consent names
``42CFRPart2`` for the practitioner, then reaches them as the upstream holds it plus the
refrain label and the notice. Everything made here is deleted at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import pytest

from middleware.consent.labels import ACT_CODE, ACT_REASON, DEFAULT_PART2_NOTICE, DISPLAY_URL
from tests.integration.enforcing import FHIR_JSON, GENERIC_NOT_FOUND
from tests.integration.sides import Sides
from tests.support import GatewayServer

pytestmark = pytest.mark.integration

DR: Final = "Practitioner/labels-dr"
PART2: Final = {"system": ACT_CODE, "code": "42CFRPart2"}


def _create(sides: Sides, resource: dict[str, Any]) -> str:
    rtype = resource["resourceType"]
    answer = sides.direct.post(f"{sides.upstream_base}/{rtype}", json=resource, headers=FHIR_JSON)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


@pytest.fixture(scope="module")
def made(sides: Sides) -> Iterator[dict[str, str]]:
    patient = _create(sides, {"resourceType": "Patient", "name": [{"family": "Labelled"}]})

    def observation(text: str, security: list[dict[str, str]]) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": text},
            "subject": {"reference": f"Patient/{patient}"},
            "meta": {"security": security},
        }

    ids = {
        "patient": patient,
        "treat": _create(
            sides, observation("for treatment", [{"system": ACT_REASON, "code": "TREAT"}])
        ),
        "part2": _create(sides, observation("part 2 program note", [PART2])),
    }
    yield ids
    for rtype, key in (("Observation", "treat"), ("Observation", "part2"), ("Patient", "patient")):
        sides.direct.delete(f"{sides.upstream_base}/{rtype}/{ids[key]}")


def _dr(gateway: GatewayServer, *purposes: str) -> dict[str, str]:
    return gateway.bearer("labels-dr", "user/*.rs", fhir_user=DR, purpose_of_use=list(purposes))


def test_the_upstream_keeps_the_labels(sides: Sides, made: dict[str, str]) -> None:
    """The premise: Medplum stores and returns ``meta.security`` as written."""
    direct = sides.direct.get(f"{sides.upstream_base}/Observation/{made['part2']}").json()
    assert PART2 in [{"system": c["system"], "code": c["code"]} for c in direct["meta"]["security"]]


def test_a_treatment_label_reaches_only_callers_asking_for_treatment(
    sides: Sides, gateway: GatewayServer, made: dict[str, str]
) -> None:
    url = f"{sides.gateway_base}/Observation/{made['treat']}"
    emergency = sides.gateway.get(url, headers=_dr(gateway, "ETREAT"))
    assert emergency.status_code == 200, emergency.text
    assert emergency.json()["code"]["text"] == "for treatment"
    marketing = sides.gateway.get(url, headers=_dr(gateway, "HMARKT"))
    assert marketing.status_code == 404
    assert marketing.json() == GENERIC_NOT_FOUND
    search = sides.gateway.get(
        f"{sides.gateway_base}/Observation",
        params={"subject": f"Patient/{made['patient']}"},
        headers=_dr(gateway, "HMARKT"),
    )
    assert search.status_code == 200
    found = [e["resource"]["id"] for e in search.json().get("entry", [])]
    assert made["treat"] not in found


def test_part2_data_needs_the_patients_consent_naming_it(
    sides: Sides, gateway: GatewayServer, made: dict[str, str]
) -> None:
    url = f"{sides.gateway_base}/Observation/{made['part2']}"
    before = sides.gateway.get(url, headers=_dr(gateway, "TREAT"))
    assert before.status_code == 404
    assert before.json() == GENERIC_NOT_FOUND
    patient = made["patient"]
    own = gateway.bearer(f"user-{patient}", "launch/patient patient/Consent.cruds", patient=patient)
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": f"Patient/{patient}"},
        "decision": "deny",
        "provision": [{"actor": [{"reference": {"reference": DR}}], "securityLabel": [PART2]}],
    }
    created = sides.gateway.post(
        f"{sides.gateway_base}/Consent", json=consent, headers={**own, **FHIR_JSON}
    )
    assert created.status_code == 201, created.text
    after = sides.gateway.get(url, headers=_dr(gateway, "TREAT"))
    assert after.status_code == 200, after.text
    released = after.json()
    direct = sides.direct.get(f"{sides.upstream_base}/Observation/{made['part2']}").json()
    refrain = released["meta"]["security"][-1]
    assert (refrain["system"], refrain["code"]) == (ACT_CODE, "NORDSCLCD")
    assert released["meta"]["extension"] == [
        {"url": DISPLAY_URL, "valueAnnotation": {"text": DEFAULT_PART2_NOTICE}}
    ]
    # Apart from the two additions, the resource is the upstream's.
    released["meta"]["security"].pop()
    del released["meta"]["extension"]
    assert released == direct
