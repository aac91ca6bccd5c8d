"""Resources outside the Patient compartment kept only beside released records that name them
(:func:`middleware.pipeline.linked.keep_linked`)."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.pipeline.linked import keep_linked

BASE = "http://gateway.test/fhir"


def entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resource": resource}


def names(entries: list[Any]) -> list[str]:
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries]


def request(medication: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "mr",
        "subject": {"reference": "Patient/p2"},
        "medicationReference": {"reference": medication},
    }


MED = {
    "resourceType": "Medication",
    "id": "m1",
    "manufacturer": {"reference": "Organization/maker"},
}
MAKER = {"resourceType": "Organization", "id": "maker"}
CLINIC = {"resourceType": "Organization", "id": "clinic"}


@pytest.mark.parametrize(
    ("reference", "kept"),
    [
        ("Medication/m1", ["MedicationRequest/mr", "Medication/m1", "Organization/maker"]),
        (f"{BASE}/Medication/m1", ["MedicationRequest/mr", "Medication/m1", "Organization/maker"]),
        (
            "Medication/m1/_history/2",
            ["MedicationRequest/mr", "Medication/m1", "Organization/maker"],
        ),
        ("http://elsewhere.test/fhir/Medication/m1", ["MedicationRequest/mr"]),
        ("Medication/m2", ["MedicationRequest/mr"]),
    ],
    ids=["relative", "absolute-local", "versioned", "other-server", "other-id"],
)
def test_a_linked_resource_is_kept_when_a_kept_resource_references_it(
    reference: str, kept: list[str]
) -> None:
    """A Medication named by the patient's prescription is kept, and the manufacturer the
    Medication names; a clinic nothing kept names is dropped."""
    entries = [entry(request(reference)), entry(MED), entry(MAKER), entry(CLINIC)]
    assert names(keep_linked(entries, base_urls=(BASE,))) == kept


def test_nothing_is_kept_without_a_released_record() -> None:
    """Every record of the patient withheld: the Medication and clinic alone are dropped."""
    assert keep_linked([entry(MED), entry(MAKER), entry(CLINIC)], base_urls=(BASE,)) == []


def test_a_reference_from_a_dropped_resource_keeps_nothing() -> None:
    """The clinic is named only by a Medication nothing keeps."""
    med = MED | {"manufacturer": {"reference": "Organization/clinic"}}
    assert keep_linked([entry(med), entry(CLINIC)], base_urls=(BASE,)) == []


def test_entries_named_by_keep_are_anchors() -> None:
    kept = keep_linked(
        [entry(MED), entry(MAKER), entry(CLINIC)],
        base_urls=(BASE,),
        keep=lambda e: e["resource"]["id"] == "m1",
    )
    assert names(kept) == ["Medication/m1", "Organization/maker"]


def test_referring_keeps_what_names_a_kept_resource() -> None:
    """``_revinclude``: an affiliation naming the released match is kept; one naming an
    organization nothing keeps is not, and without ``referring`` neither is."""
    lab = {"resourceType": "Organization", "id": "lab"}
    kept_aff = {"resourceType": "OrganizationAffiliation", "id": "a1"} | {
        "organization": {"reference": "Organization/lab"}
    }
    other_aff = {"resourceType": "OrganizationAffiliation", "id": "a2"} | {
        "organization": {"reference": "Organization/other"}
    }
    entries = [entry(lab), entry(kept_aff), entry(other_aff)]

    def match(e: Any) -> bool:
        return bool(e["resource"]["id"] == "lab")

    linked = keep_linked(entries, base_urls=(BASE,), keep=match, referring=True)
    assert names(linked) == ["Organization/lab", "OrganizationAffiliation/a1"]
    assert names(keep_linked(entries, base_urls=(BASE,), keep=match)) == ["Organization/lab"]
