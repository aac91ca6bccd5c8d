"""``Observation/$stats`` is released only under an unconditional grant: which consents
narrow what of a patient's Observations a caller gets (:func:`middleware.pipeline.stats.
narrowed`). A consent that decides by what an Observation says (codes, labels, dates, data,
profiles) makes statistics an oracle on what the patient has."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from middleware.consent.model import (
    DENY,
    PERMIT,
    CodingSet,
    DataRef,
    Effect,
    Period,
    Policy,
    Provision,
)
from middleware.pipeline.stats import narrowed

NOW = datetime(2026, 6, 1, tzinfo=UTC)
LOINC_718 = ("http://loinc.org", "718-7")
PSY = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY")
TYPES = "http://hl7.org/fhir/resource-types"


def policy(*children: Provision, root: Effect = PERMIT, status: str = "active") -> Policy:
    tree = Provision("Consent.provision", root, children=children)
    return Policy("c1", "Patient/p1", status, "R5", None, tree)


def deny(**conditions: object) -> Provision:
    return Provision("Consent.provision.provision[0]", DENY, **conditions)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("consent", "narrows"),
    [
        # no condition on the Observation
        (policy(), False),
        (policy(deny(classes=frozenset({(TYPES, "Observation")}))), False),
        (policy(deny(classes=frozenset({(TYPES, "MedicationRequest")}))), False),
        (policy(deny(period=Period(None, None))), False),
        # decided by what the Observation says
        (policy(deny(codes=CodingSet.of([LOINC_718]))), True),
        (policy(deny(security_labels=frozenset({PSY}))), True),
        (policy(deny(data_period=Period(datetime(2020, 1, 1, tzinfo=UTC), None))), True),
        (policy(deny(data=(DataRef("Observation/o1"),))), True),
        (
            policy(
                deny(classes=frozenset({("urn:ietf:rfc:3986", "http://x/StructureDefinition/p")}))
            ),
            True,
        ),
        # a deny under a permit that is decided by content is conditional too
        (
            policy(
                Provision(
                    "Consent.provision.provision[0]",
                    PERMIT,
                    codes=CodingSet.of([LOINC_718]),
                    children=(deny(),),
                ),
                root=DENY,
            ),
            True,
        ),
        # a conditional permit only widens
        (policy(Provision("p", PERMIT, codes=CodingSet.of([LOINC_718])), root=DENY), False),
        # consents not in force do not count
        (policy(deny(codes=CodingSet.of([LOINC_718])), status="inactive"), False),
    ],
    ids=[
        "none",
        "observation-class",
        "other-type-class",
        "access-period",
        "codes",
        "labels",
        "data-period",
        "data",
        "profile-class",
        "under-conditional-permit",
        "conditional-permit",
        "inactive",
    ],
)
def test_narrowed(consent: Policy, narrows: bool) -> None:
    assert narrowed([consent], NOW) is narrows
