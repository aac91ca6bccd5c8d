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
from middleware.consent.summary import INLINE_LABEL_URL
from middleware.errors import Forbidden
from middleware.fhir.compartment import Kind
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.pipeline.caller import (
    ACTION_ACCESS,
    Caller,
    caller_of,
    check_interaction,
)
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.judge import Judge, Trail, compartment_of, needs_walk, patients_in

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


# --- edges mutation testing found unpinned (scripts/mutation.sh filter) ------------------------


def test_gateway_owned_and_typeless_resources_are_withheld_and_counted() -> None:
    """An upstream's copy of a Consent is never released through the proxy, even to a caller
    whose scopes and the opt-out default would release any other type; a resourceType that
    is not a string names nothing. Each withheld resource is counted and narrows the answer."""
    j = judge(practitioner())
    upstream_consent = {
        "resourceType": "Consent",
        "id": "c9",
        "status": "active",
        "subject": {"reference": "Patient/p2"},
    }
    assert not j.allowed(upstream_consent)
    assert not j.allowed({"resourceType": ["Observation"], "id": "x"})
    assert (j.trail.withheld, j.trail.narrowed) == (2, True)
    assert j.trail.released == set()


def test_an_absolute_reference_to_the_upstream_is_the_patient() -> None:
    """A resource naming its patient by the upstream's full URL is that patient's: released
    under their compartment (not as unknown) when the compartment is judged here."""
    j = judge(practitioner())
    absolute = observation("o2", "p2")
    absolute["subject"] = {"reference": f"{BASES[0]}/Patient/p2"}
    assert j.allowed(absolute)
    assert j.trail.released == {"Patient/p2"}


def _device(reference: str, *others: str) -> dict[str, Any]:
    """A Device (outside the CompartmentDefinition) referencing a patient and ``others``."""
    return {
        "resourceType": "Device",
        "id": "d1",
        "patient": {"reference": reference},
        "note": [{"authorReference": {"reference": other}} for other in others],
    }


# (id, base URLs, the Device's patient reference, the compartment found)
LOCAL_PATIENTS = [
    ("relative", ("http://upstream.test/fhir",), "Patient/p1", {"Patient/p1"}),
    (
        "absolute",
        ("http://upstream.test/fhir",),
        "http://upstream.test/fhir/Patient/p1",
        {"Patient/p1"},
    ),
    (
        "base-with-slash",
        ("http://upstream.test/fhir/",),
        "http://upstream.test/fhir/Patient/p1",
        {"Patient/p1"},
    ),
    (
        "base-ending-in-x",
        ("http://upstream.test/R4X",),
        "http://upstream.test/R4X/Patient/p1",
        {"Patient/p1"},
    ),
    (
        "second-base",
        ("http://other.test/fhir", "http://upstream.test/fhir"),
        "http://upstream.test/fhir/Patient/p1/_history/2",
        {"Patient/p1"},
    ),
    ("other-server", ("http://upstream.test/fhir",), "http://other.test/fhir/Patient/p1", set()),
]


@pytest.mark.parametrize(
    ("bases", "reference", "expected"),
    [c[1:] for c in LOCAL_PATIENTS],
    ids=[c[0] for c in LOCAL_PATIENTS],
)
def test_patient_references_of_types_outside_the_compartment_definition(
    bases: tuple[str, ...], reference: str, expected: set[str]
) -> None:
    # a reference to something else beside it names no patient (and is no error)
    refs = compartment_of(_device(reference, "Location/l1"), base_urls=bases)
    assert refs.references == expected


def _nested(depth: int, *, lists: bool) -> dict[str, Any]:
    """A Device whose only patient reference sits in the object ``depth`` levels below it,
    through objects, or through lists each holding one object (``depth`` even)."""
    node: dict[str, Any] = {"reference": "Patient/p1"}
    for _ in range(depth // 2 if lists else depth):
        node = {"x": [node]} if lists else {"x": node}
    return node | {"resourceType": "Device", "id": "d1"}


# (through lists, deepest object read, shallowest object not read): a list is a level too
@pytest.mark.parametrize(
    ("lists", "read", "unread"), [(False, 64, 65), (True, 64, 66)], ids=["objects", "lists"]
)
def test_references_are_read_64_levels_deep(lists: bool, read: int, unread: int) -> None:
    """The walk for patient references stops below depth 64 (request bodies are refused
    long before: the JSON depth limit); at 64 it still finds them."""
    found = compartment_of(_nested(read, lists=lists), base_urls=BASES)
    assert found.references == {"Patient/p1"}
    too_deep = compartment_of(_nested(unread, lists=lists), base_urls=BASES)
    assert too_deep.references == frozenset()


def test_summaries_walk_when_a_consent_reads_dependents() -> None:
    """needs_walk: a consent naming data by its dependents needs every reference read."""
    plain = deny_dr("p1")
    dependents = parse_consent(
        {
            "resourceType": "Consent",
            "id": "c-dep",
            "status": "active",
            "subject": {"reference": "Patient/p1"},
            "decision": "permit",
            "provision": [
                {"data": [{"meaning": "dependents", "reference": {"reference": "Encounter/e1"}}]}
            ],
        },
        version="R5",
    )
    raw = b'{"resourceType":"Observation"}'
    assert not needs_walk(raw, [(plain,)])
    assert needs_walk(raw, [(plain,), (dependents,)])


def test_permits_judges_a_resource_about_to_be_written() -> None:
    """The write path: compartment and consent alone, for a body no answer walk has seen."""
    j = judge(practitioner(), {"Patient/p1": (deny_dr("p1"),)})
    assert not j.permits(observation("o1", "p1"))
    absolute = observation("o2", "p2")
    absolute["subject"] = {"reference": f"{BASES[0]}/Patient/p2"}
    assert j.permits(absolute)
    assert not judge(practitioner()).permits({"resourceType": "Observation", "id": "orphan"})


def _inline_hiv() -> dict[str, Any]:
    """A DS4P inline security label (HIV) on an element."""
    return {
        "url": INLINE_LABEL_URL,
        "valueCoding": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "HIV",
        },
    }


def test_a_permit_with_redaction_removes_the_labelled_element_and_records_it() -> None:
    """Under ``uncovered = redact`` no consent names HIV: the HIV-labelled element goes, the
    rest is released, and the trail says one resource was narrowed; a resource labelled as a
    whole is withheld. Unlabelled resources are released untouched and not counted."""
    j = Judge(
        caller=practitioner(),
        action=ACTION_ACCESS,
        policies={},
        defaults=Defaults(jurisdiction="opt-out", uncovered="redact"),
        now=NOW,
        base_urls=BASES,
    )
    plain = observation("o3", "p3")
    assert j.allowed(plain)
    assert (j.trail.narrowed, j.trail.redacted) == (False, 0)
    assert plain == observation("o3", "p3")
    labelled = observation(
        "o2",
        "p2",
        issued="2024-01-01",
        valueCodeableConcept={"text": "HIV result", "extension": [_inline_hiv()]},
    )
    assert j.allowed(labelled)
    assert "valueCodeableConcept" not in labelled
    assert (labelled["id"], labelled["issued"]) == ("o2", "2024-01-01")
    assert (j.trail.narrowed, j.trail.redacted, j.trail.withheld) == (True, 1, 0)
    assert j.trail.released == {"Patient/p3", "Patient/p2"}
    assert j.trail.refs == ["Observation/o3", "Observation/o2"]
    whole = observation("o4", "p2", extension=[_inline_hiv()])
    assert not j.allowed(whole)
    assert (j.trail.redacted, j.trail.withheld) == (1, 1)


# (id, the answer's bytes, whether summaries must walk every element)
RAW_WALKS = [
    ("no-bytes", None, True),
    ("inline-label-url", b'{"url":"' + INLINE_LABEL_URL.encode() + b'"}', True),
    ("escaped-slashes", b'{"url":"x\\/extension-inline-sec-label"}', True),
    ("unicode-escape", b'{"url":"\\u0068ttp"}', True),
    ("plain", b'{"resourceType":"Observation","id":"o1"}', False),
]


@pytest.mark.parametrize(("raw", "walk"), [c[1:] for c in RAW_WALKS], ids=[c[0] for c in RAW_WALKS])
def test_summaries_skip_the_walk_only_for_bytes_without_labels(
    raw: bytes | None, walk: bool
) -> None:
    assert needs_walk(raw, [(deny_dr("p1"),)]) is walk


def _bundled(levels: int, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` inside ``levels`` nested collection Bundles."""
    node = resource
    for _ in range(levels):
        node = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": node}]}
    return node


def test_patients_in_reads_bundles_16_deep_and_no_deeper() -> None:
    """The patients to load policies for are found through 16 nested Bundles; deeper ones are
    not looked into (the filter withholds them: it stops at the same depth)."""
    assert patients_in(_bundled(16, observation("o1", "p1")), base_urls=BASES) == {"Patient/p1"}
    assert patients_in(_bundled(17, observation("o1", "p1")), base_urls=BASES) == set()


def test_patients_in_ignores_entries_that_are_not_a_list() -> None:
    for entries in (5, "Patient/p1", {"resource": observation("o1", "p1")}):
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        assert patients_in(bundle, base_urls=BASES) == set()


def test_an_unresolved_patient_beside_a_known_one_withholds_unless_allowed() -> None:
    """A resource of p2 that also names a patient on another server could be that patient's
    data: withheld, unless the deployment allows unknown patients for this context."""
    shared = observation("o2", "p2", performer=[{"reference": "http://other.test/fhir/Patient/x"}])
    assert not judge(practitioner()).allowed(dict(shared))
    assert judge(practitioner(), allow_unknown=True).allowed(dict(shared))


def test_a_patients_own_record_needs_no_consent_even_under_opt_in() -> None:
    caller = caller_of(identity("launch/patient patient/*.rs", patient="p2"))
    j = Judge(
        caller=caller,
        action=ACTION_ACCESS,
        policies={},
        defaults=Defaults(jurisdiction="opt-in"),
        now=NOW,
        base_urls=BASES,
    )
    assert j.allowed(observation("o2", "p2"))
    assert j.trail.decisions == {"Patient/p2": None}


_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
_PURPOSE = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def _deny_only(**conditions: Any) -> Any:
    """p1 permits, except what ``conditions`` (R5 provision elements) name."""
    return parse_consent(
        {
            "resourceType": "Consent",
            "id": "c-p1",
            "status": "active",
            "subject": {"reference": "Patient/p1"},
            "decision": "permit",
            "provision": [conditions],
        },
        version="R5",
    )


def test_the_action_and_the_callers_purposes_reach_the_decision() -> None:
    reads_denied = _deny_only(action=[{"coding": [{"system": _ACTION, "code": "access"}]}])
    assert not judge(practitioner(), {"Patient/p1": (reads_denied,)}).allowed(
        observation("o1", "p1")
    )
    marketing_denied = _deny_only(purpose=[{"system": _PURPOSE, "code": "HMARKT"}])
    marketer = caller_of(
        identity("user/*.rs", fhir_user="Practitioner/dr", purpose_of_use=((_PURPOSE, "HMARKT"),))
    )
    treating = caller_of(
        identity("user/*.rs", fhir_user="Practitioner/dr", purpose_of_use=((_PURPOSE, "TREAT"),))
    )
    policies = {"Patient/p1": (marketing_denied,)}
    assert not judge(marketer, policies).allowed(observation("o1", "p1"))
    assert judge(treating, policies).allowed(observation("o1", "p1"))


def test_summaries_do_not_walk_when_told_not_to() -> None:
    """``walk=False`` (the answer's bytes showed no inline label: needs_walk) is honoured:
    element labels are then not looked for."""
    labelled = observation("o2", "p2", valueCodeableConcept={"extension": [_inline_hiv()]})
    j = Judge(
        caller=practitioner(),
        action=ACTION_ACCESS,
        policies={},
        defaults=Defaults(jurisdiction="opt-out", uncovered="redact"),
        now=NOW,
        base_urls=BASES,
        walk=False,
    )
    assert j.allowed(labelled)
    assert j.trail.redacted == 0


# (id, a resource outside the CompartmentDefinition, its kind, its patients, unresolved)
BINARIES = [
    (
        "binary-of-a-patient",
        {"resourceType": "Binary", "securityContext": {"reference": "Patient/p1"}},
        Kind.PATIENT_DATA,
        {"Patient/p1"},
        False,
    ),
    (
        "binary-of-a-group",
        {"resourceType": "Binary", "securityContext": {"reference": "Group/g1"}},
        Kind.UNKNOWN,
        set(),
        True,
    ),
    (
        "binary-context-not-an-object",
        {"resourceType": "Binary", "securityContext": "Patient/p1"},
        Kind.UNKNOWN,
        set(),
        True,
    ),
    (
        "device-with-a-context-field",
        {
            "resourceType": "Device",
            "securityContext": {"reference": "Group/g1"},
            "patient": {"reference": "Patient/p1"},
        },
        Kind.PATIENT_DATA,
        {"Patient/p1"},
        False,
    ),
    (
        "device-of-no-patient",
        {"resourceType": "Device", "location": {"reference": "Location/l1"}},
        Kind.NOT_PATIENT_DATA,
        set(),
        False,
    ),
]


@pytest.mark.parametrize(
    ("resource", "kind", "patients", "unresolved"),
    [c[1:] for c in BINARIES],
    ids=[c[0] for c in BINARIES],
)
def test_a_binary_belongs_to_its_security_context(
    resource: dict[str, Any], kind: Kind, patients: set[str], unresolved: bool
) -> None:
    refs = compartment_of(resource, base_urls=BASES)
    assert (refs.kind, set(refs.references), refs.unresolved) == (kind, patients, unresolved)


def test_an_expired_consent_does_not_withhold() -> None:
    expired = parse_consent(
        {
            "resourceType": "Consent",
            "id": "c-p1",
            "status": "active",
            "subject": {"reference": "Patient/p1"},
            "decision": "deny",
            "period": {"end": "2020-01-01"},
        },
        version="R5",
    )
    assert judge(practitioner(), {"Patient/p1": (expired,)}).allowed(observation("o1", "p1"))


def test_break_the_glass_overrides_only_the_patients_named() -> None:
    """Overriding p1's denial does not skip p2's: a resource of both stays withheld."""
    policies = {"Patient/p1": (deny_dr("p1"),), "Patient/p2": (deny_dr("p2"),)}
    both = observation("o1", "p1", performer=[{"reference": "Patient/p2"}])
    j = judge(practitioner(), policies, override=frozenset({"Patient/p1"}))
    assert not j.allowed(both)
    assert j.trail.overridden == {"Patient/p1"}


def test_redaction_removes_what_any_patients_decision_leaves_uncovered() -> None:
    """A resource in two compartments: p2's consent permits HIV-labelled data, p1 has none.
    Both permit (p1 by the opt-out default) but leave labels uncovered (p1 HIV and PSY, p2
    PSY); everything either leaves is removed, and each redacted resource is counted."""
    hiv_named = parse_consent(
        {
            "resourceType": "Consent",
            "id": "c-p2",
            "status": "active",
            "subject": {"reference": "Patient/p2"},
            "decision": "deny",
            "provision": [
                {
                    "securityLabel": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                            "code": "HIV",
                        }
                    ]
                }
            ],
        },
        version="R5",
    )
    psy = _inline_hiv()
    psy["valueCoding"] = dict(psy["valueCoding"], code="PSY")
    j = Judge(
        caller=practitioner(),
        action=ACTION_ACCESS,
        policies={"Patient/p2": (hiv_named,)},
        defaults=Defaults(jurisdiction="opt-out", uncovered="redact"),
        now=NOW,
        base_urls=BASES,
    )
    for oid in ("o1", "o2"):
        both = observation(
            oid,
            "p2",
            performer=[{"reference": "Patient/p1"}],
            valueCodeableConcept={"text": "HIV", "extension": [_inline_hiv()]},
            note=[{"text": "PSY", "extension": [psy]}],
            issued="2024",
        )
        assert j.allowed(both)
        assert ("valueCodeableConcept" in both, "note" in both, both["issued"]) == (
            False,
            False,
            "2024",
        )
    assert j.trail.redacted == 2
