"""describe(consent): plain sentences for many Consent shapes, R4 and R5.

Expected sentences are written from the FHIR Consent rules (R4 provision.type, R5 decision
and its flips), not from our output: a rule's effect, its party, its records, its purpose and
its period each show in words."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.web.describe import describe

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
IRCP = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
    ]
}


def r5(
    decision: str = "permit", provisions: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "decision": decision,
        **extra,
    }
    if provisions is not None:
        consent["provision"] = provisions
    return consent


def r4(
    provision: dict[str, Any] | None, policy_rule: str | None = None, **extra: Any
) -> dict[str, Any]:
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        **extra,
    }
    if provision is not None:
        consent["provision"] = provision
    if policy_rule:
        consent["policyRule"] = {"coding": [{"system": ACT_CODE, "code": policy_rule}]}
    return consent


def actor(reference: str) -> dict[str, Any]:
    return {"reference": {"reference": reference}}


def r4_actor(reference: str) -> dict[str, Any]:
    return {"role": IRCP, "reference": {"reference": reference}}


BASE_PERMIT = "Unless a rule below says otherwise, your records may be shared."
BASE_DENY = "Unless a rule below says otherwise, your records may not be shared."
ONLY = "This consent only covers the rule below. It does not change anything else."

CASES = [
    # --- R5: base decision alone ---
    pytest.param(r5("permit"), [BASE_PERMIT], id="r5-permit-all"),
    pytest.param(r5("deny"), [BASE_DENY], id="r5-deny-all"),
    # --- R5: provisions flip the decision ---
    pytest.param(
        r5("permit", [{"actor": [actor("Practitioner/dr")]}]),
        [BASE_PERMIT, "Practitioner dr may not see all your records."],
        id="r5-deny-one-practitioner",
    ),
    pytest.param(
        r5(
            "deny",
            [
                {
                    "actor": [actor("Organization/clinic")],
                    "purpose": [{"system": REASON, "code": "TREAT"}],
                }
            ],
        ),
        [BASE_DENY, "Organization clinic may see all your records for treatment."],
        id="r5-permit-org-for-treatment",
    ),
    pytest.param(
        r5("permit", [{"securityLabel": [{"system": ACT_CODE, "code": "PSY"}]}]),
        [BASE_PERMIT, "Nobody may see your records marked as psychiatry notes."],
        id="r5-deny-label-to-everyone",
    ),
    pytest.param(
        r5(
            "deny",
            [
                {
                    "actor": [actor("CareTeam/ct1"), actor("Practitioner/dr")],
                    "resourceType": [
                        {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}
                    ],
                    "period": {"start": "2026-01-01", "end": "2027-06-30"},
                }
            ],
        ),
        [
            BASE_DENY,
            "Care team ct1 or practitioner dr may see your test results and measurements from 2026-01-01 until 2027-06-30.",
        ],
        id="r5-team-or-practitioner-kind-period",
    ),
    pytest.param(
        r5(
            "permit",
            [
                {
                    "actor": [actor("Practitioner/dr")],
                    "provision": [{"purpose": [{"system": REASON, "code": "ETREAT"}]}],
                }
            ],
        ),
        [
            BASE_PERMIT,
            "Practitioner dr may not see all your records.",
            "As an exception to that: Anyone may see all your records for emergency treatment.",
        ],
        id="r5-nested-exception",
    ),
    pytest.param(
        r5("permit", period={"end": "2027-06-30"}),
        ["This consent is in effect until 2027-06-30.", BASE_PERMIT],
        id="r5-consent-period",
    ),
    pytest.param(
        r5(
            "deny",
            [
                {
                    "action": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                    "code": "disclose",
                                }
                            ]
                        }
                    ],
                    "actor": [{"role": IRCP}],
                }
            ],
        ),
        [BASE_DENY, "Anyone with the role IRCP may share all your records."],
        id="r5-action-and-role",
    ),
    pytest.param(
        r5(
            "permit",
            [
                {
                    "securityLabel": [
                        {"system": CONF, "code": "R"},
                        {"system": ACT_CODE, "code": "HIV"},
                    ]
                }
            ],
        ),
        [
            BASE_PERMIT,
            "Nobody may see your records marked as HIV information or restricted information.",
        ],
        id="r5-two-labels",
    ),
    pytest.param(
        r5("permit", [{"purpose": [{"system": REASON, "code": "XYZ"}]}]),
        [BASE_PERMIT, "Nobody may see all your records for code XYZ."],
        id="r5-unknown-purpose-shown-as-code",
    ),
    pytest.param(
        r5("permit", status="inactive"),
        ["This consent is no longer in effect (its status is inactive).", BASE_PERMIT],
        id="r5-inactive",
    ),
    # --- R4 ---
    pytest.param(
        r4({"type": "deny", "actor": [r4_actor("Practitioner/dr")]}),
        [ONLY, "Practitioner dr may not see all your records."],
        id="r4-deny-one-no-base",
    ),
    pytest.param(
        r4(
            {
                "type": "permit",
                "provision": [{"type": "deny", "actor": [r4_actor("Organization/o1")]}],
            },
            "OPTIN",
        ),
        [
            BASE_PERMIT,
            "Anyone may see all your records.",
            "As an exception to that: Organization o1 may not see all your records.",
        ],
        id="r4-optin-with-exception",
    ),
    pytest.param(
        r4(None, "OPTOUT"),
        [BASE_DENY],
        id="r4-optout-no-provision",
    ),
    pytest.param(
        r4(
            {
                "type": "permit",
                "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Immunization"}],
                "period": {"end": "2030-12-31"},
            }
        ),
        [ONLY, "Anyone may see your vaccines until 2030-12-31."],
        id="r4-kind-until",
    ),
    pytest.param(
        r4(
            {
                "type": "deny",
                "data": [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}],
            }
        ),
        [ONLY, "Nobody may see the record Observation/o1."],
        id="r4-one-record",
    ),
    pytest.param(
        r4({"type": "deny", "dataPeriod": {"start": "2020-01-01", "end": "2020-12-31"}}),
        [
            ONLY,
            "Nobody may see all your records (only records dated from 2020-01-01 until 2020-12-31).",
        ],
        id="r4-data-period",
    ),
    # --- not a consent the engine reads ---
    pytest.param({"resourceType": "Consent"}, ["We could not read this consent."], id="unreadable"),
    pytest.param(
        {"resourceType": "Patient", "id": "p1"},
        ["We could not read this consent."],
        id="not-a-consent",
    ),
]


@pytest.mark.parametrize(("consent", "sentences"), CASES)
def test_describe(consent: dict[str, Any], sentences: list[str]) -> None:
    assert describe(consent) == sentences


def test_describe_does_not_change_its_input() -> None:
    consent = r5("permit", [{"actor": [actor("Practitioner/dr")]}])
    consent.pop("id")
    before = repr(consent)
    assert describe(consent)[1] == "Practitioner dr may not see all your records."
    assert repr(consent) == before
