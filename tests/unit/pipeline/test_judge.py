"""The per-resource verdict: scopes, compartment, consent, redaction (pipeline.judge, caller)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.consent.decide import Decision, Defaults
from middleware.consent.model import DENY, PERMIT
from middleware.consent.parse import parse_consent
from middleware.errors import Forbidden
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.pipeline.caller import (
    ACTION_ACCESS,
    Caller,
    caller_of,
    check_interaction,
)
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.judge import Judge, Trail, patients_in

NOW = datetime(2026, 12, 6, tzinfo=UTC)
BASES = ("http://upstream.test/fhir",)


def identity(scopes: str, **claims: Any) -> Identity:
    return Identity(
        subject="sub",
        issuer="https://issuer.test",
        expires_at=2e9,
        scopes=parse_scopes(scopes).scopes,
        **claims,
    )


def practitioner(scopes: str = "user/*.rs") -> Caller:
    return caller_of(identity(scopes, fhir_user="Practitioner/dr"))


def observation(oid: str, patient: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


def deny_dr(patient: str) -> Any:
    """p's consent: permit everyone but Practitioner/dr (R5: a nested provision is an
    exception to the base decision)."""
    return parse_consent(
        {
            "resourceType": "Consent",
            "id": f"c-{patient}",
            "status": "active",
            "subject": {"reference": f"Patient/{patient}"},
            "decision": "permit",
            "provision": [{"actor": [{"reference": {"reference": "Practitioner/dr"}}]}],
        },
        version="R5",
        ledger_index=7,
    )


def judge(caller: Caller, policies: dict[str, Any] | None = None, **kw: Any) -> Judge:
    return Judge(
        caller=caller,
        action=ACTION_ACCESS,
        policies=policies or {},
        defaults=Defaults(jurisdiction="opt-out"),
        now=NOW,
        base_urls=BASES,
        **kw,
    )


def test_a_denying_consent_withholds_only_that_patients_resources() -> None:
    j = judge(practitioner(), {"Patient/p1": (deny_dr("p1"),)})
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 2,
        "entry": [
            {"resource": observation("o1", "p1")},
            {"resource": observation("o2", "p2")},
        ],
    }
    released, stats = filter_answer(bundle, j.allowed)
    assert released is not None
    assert [e["resource"]["id"] for e in released["entry"]] == ["o2"]
    assert "total" not in released
    assert (stats.kept, stats.removed) == (1, 1)
    assert j.trail.released == {"Patient/p2"}
    decision = j.trail.decisions["Patient/p1"]
    assert decision is not None
    assert not decision.permitted


def test_a_hidden_patient_in_a_contained_resource_withholds_the_container() -> None:
    """Contained resources count: a p2 resource carrying p1 data is p1's too."""
    j = judge(practitioner(), {"Patient/p1": (deny_dr("p1"),)})
    container = observation(
        "o2",
        "p2",
        contained=[observation("inner", "p1")],
        hasMember=[{"reference": "#inner"}],
    )
    assert not j.allowed(container)


def test_unknown_patient_is_denied_unless_allowed_for_the_context() -> None:
    orphan = {"resourceType": "Observation", "id": "o9"}
    assert not judge(practitioner()).allowed(orphan)
    assert judge(practitioner(), allow_unknown=True).allowed(orphan)


def test_not_patient_data_is_judged_by_scopes_alone() -> None:
    practitioner_resource = {"resourceType": "Practitioner", "id": "x"}
    assert judge(practitioner()).allowed(practitioner_resource)
    only_observations = practitioner("user/Observation.rs")
    assert not judge(only_observations).allowed(practitioner_resource)


def test_granular_category_scopes_are_checked_per_resource() -> None:
    caller = practitioner("user/Observation.rs?category=laboratory")
    lab = observation("o1", "p2", category=[{"coding": [{"code": "laboratory"}]}])
    vitals = observation("o2", "p2", category=[{"coding": [{"code": "vital-signs"}]}])
    j = judge(caller)
    assert j.allowed(lab)
    assert not j.allowed(vitals)


def test_a_patient_caller_sees_its_own_compartment_and_nothing_else() -> None:
    caller = caller_of(identity("launch/patient patient/*.rs", patient="p2"))
    assert caller.patient == "Patient/p2"
    j = judge(caller)
    assert j.allowed(observation("o2", "p2"))
    assert not j.allowed(observation("o1", "p1"))
    assert j.trail.decisions["Patient/p2"] is None  # own record: no consent decision needed


def test_break_the_glass_override_releases_a_denied_patient_and_flags_the_trail() -> None:
    j = judge(practitioner(), {"Patient/p1": (deny_dr("p1"),)}, override=frozenset({"Patient/p1"}))
    assert j.allowed(observation("o1", "p1"))
    assert j.trail.break_glass


def test_patients_in_walks_bundles_and_contained() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": observation("o1", "p1")},
            {
                "resource": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": observation("o3", "p3")}],
                }
            },
            {"resource": observation("o2", "p2", contained=[observation("c", "p4")])},
        ],
    }
    assert patients_in(bundle, base_urls=BASES) == {
        "Patient/p1",
        "Patient/p2",
        "Patient/p3",
        "Patient/p4",
    }


def test_a_token_without_resource_scopes_is_refused() -> None:
    with pytest.raises(Forbidden):
        caller_of(identity("openid fhirUser"))


@pytest.mark.parametrize(
    ("scopes", "interaction", "allowed"),
    [
        ("user/Observation.rs", Interaction.READ, True),
        ("user/Observation.s", Interaction.READ, False),
        ("user/Observation.s", Interaction.SEARCH_TYPE, True),
        ("user/Observation.rs", Interaction.CREATE, False),
        ("user/Observation.c", Interaction.CREATE, True),
        ("user/Observation.u", Interaction.PATCH, True),
        ("user/Observation.cru", Interaction.DELETE, False),
        ("user/Patient.cruds", Interaction.READ, False),
    ],
)
def test_interaction_scopes(scopes: str, interaction: Interaction, allowed: bool) -> None:
    request = FhirRequest(
        interaction=interaction,
        method="GET",
        level=Level.TYPE,
        path="Observation",
        resource_type="Observation",
    )
    caller = practitioner(scopes)
    if allowed:
        check_interaction(caller, request)
    else:
        with pytest.raises(Forbidden):
            check_interaction(caller, request)


# --- the audit trail keeps the deny ---------------------------------------------------------

_PERMIT_A = Decision(PERMIT)
_PERMIT_B = Decision(PERMIT, trace=())
_DENY = Decision(DENY)


@pytest.mark.parametrize(
    ("sequence", "kept"),
    [
        ((_PERMIT_A, _DENY), _DENY),
        ((_DENY, _PERMIT_A), _DENY),
        ((_PERMIT_A, _PERMIT_B, _DENY, _PERMIT_A), _DENY),
        ((_DENY, None), _DENY),
        ((_PERMIT_A, None), _PERMIT_A),
    ],
    ids=[
        "deny-replaces-permit",
        "permit-never-replaces-deny",
        "deny-among-many",
        "none-never-replaces-deny",
        "none-never-replaces-permit",
    ],
)
def test_the_trail_keeps_a_deny_over_any_permit(
    sequence: tuple[Decision | None, ...], kept: Decision
) -> None:
    """Defect this pins: with the rule "a deny replaces an earlier permit" broken, an answer
    that released one of a patient's resources and withheld another was audited as a plain
    permit, hiding from the auditor that the consent withheld something."""
    trail = Trail()
    for decision in sequence:
        trail.decided("Patient/p1", decision)
    assert trail.decisions["Patient/p1"] is kept


def test_the_trail_keeps_the_first_permit() -> None:
    trail = Trail()
    trail.decided("Patient/p1", _PERMIT_A)
    trail.decided("Patient/p1", _PERMIT_B)
    trail.decided("Patient/p2", None)
    assert trail.decisions == {"Patient/p1": _PERMIT_A, "Patient/p2": None}
    assert trail.decisions["Patient/p1"] is _PERMIT_A
