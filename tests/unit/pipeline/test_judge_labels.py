"""Labels on data in the per-resource verdict (pipeline.judge with consent.labels): purpose-of-use
labels withhold from callers whose purposes do not meet them; 42 CFR Part 2 data is released
only on a consent naming it, and then carries the refrain label and the notice."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.consent.decide import Defaults
from middleware.consent.labels import (
    ACT_CODE,
    ACT_REASON,
    DEFAULT_PART2_NOTICE,
    DISPLAY_URL,
    LabelRules,
    parse_labels,
)
from middleware.consent.parse import parse_consent
from middleware.consent.summary import INLINE_LABEL_URL
from middleware.pipeline.caller import Caller, caller_of
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.judge import Judge
from tests.unit.pipeline.test_judge import BASES, NOW, identity, judge, observation

PART2 = {"system": ACT_CODE, "code": "42CFRPart2"}
SUD = {"system": ACT_CODE, "code": "SUD"}
REFRAIN = {
    "system": ACT_CODE,
    "code": "NORDSCLCD",
    "display": "no redisclosure without consent directive",
}
NOTICE = {"url": DISPLAY_URL, "valueAnnotation": {"text": DEFAULT_PART2_NOTICE}}


def dr(*purposes: str) -> Caller:
    return caller_of(
        identity(
            "user/*.rs",
            fhir_user="Practitioner/dr",
            purpose_of_use=tuple((ACT_REASON, p) for p in purposes),
        )
    )


def patient_caller(pid: str) -> Caller:
    return caller_of(identity("launch/patient patient/*.rs", patient=pid))


def purpose(*codes: str) -> dict[str, Any]:
    return {"security": [{"system": ACT_REASON, "code": c} for c in codes]}


def naming(patient: str, *labels: dict[str, str]) -> Any:
    """``patient``'s consent: deny, except a permit naming ``labels`` (42 CFR 2.31: a
    consent that names the information)."""
    return parse_consent(
        {
            "resourceType": "Consent",
            "id": f"c-{patient}",
            "status": "active",
            "subject": {"reference": f"Patient/{patient}"},
            "decision": "deny",
            "provision": [{"securityLabel": list(labels)}],
        },
        version="R5",
        ledger_index=3,
    )


def general_permit(patient: str) -> Any:
    return parse_consent(
        {
            "resourceType": "Consent",
            "id": f"g-{patient}",
            "status": "active",
            "subject": {"reference": f"Patient/{patient}"},
            "decision": "permit",
        },
        version="R5",
        ledger_index=4,
    )


# --- purpose-of-use labels


@pytest.mark.parametrize(
    ("labels", "purposes", "released"),
    [
        (("TREAT",), ("TREAT",), True),
        (("TREAT",), ("ETREAT",), True),
        (("ETREAT",), ("TREAT",), False),
        (("TREAT",), ("HMARKT",), False),
        (("TREAT",), (), False),
        (("HRESCH", "HPAYMT"), ("COVAUTH",), True),
    ],
    ids=["same", "specialised", "general", "unrelated", "no-purpose", "several"],
)
def test_purpose_labels_decide_before_consent(
    labels: tuple[str, ...], purposes: tuple[str, ...], released: bool
) -> None:
    """Opt-out, no consent: consent permits every one of these; the labels alone decide."""
    j = judge(dr(*purposes))
    assert j.allowed(observation("o1", "p1", meta=purpose(*labels))) is released
    assert j.trail.withheld == (0 if released else 1)


def test_a_purpose_label_does_not_keep_the_patients_own_record_from_them() -> None:
    """45 CFR 164.524: the individual's access to their own record does not depend on the
    uses it is labelled for (a patient app states no purpose, or PATRQT). Another patient's
    record is still theirs to miss, by the compartment rule."""
    own = observation("o1", "p1", meta=purpose("TREAT"))
    assert judge(patient_caller("p1")).allowed(own)
    assert not judge(patient_caller("p2")).allowed(observation("o2", "p1", meta=purpose("TREAT")))


def test_the_patients_own_part2_data_under_a_purpose_label_reaches_them_marked() -> None:
    """Not screened by purpose does not mean not Part 2: the mark still goes on."""
    resource = observation("o1", "p1", meta={"security": [PART2, *purpose("TREAT")["security"]]})
    assert judge(patient_caller("p1")).allowed(resource)
    assert REFRAIN in resource["meta"]["security"]
    assert resource["meta"]["extension"] == [NOTICE]


def test_htest_is_a_tag_not_a_restriction_unless_configured() -> None:
    """Synthetic data sets label every record HTEST ("test health data"): by default a caller
    not claiming to test still gets them; a deployment that means it as a purpose enforces it."""
    tagged = observation("o1", "p1", meta=purpose("HTEST"))
    assert judge(dr("TREAT")).allowed(tagged)
    assert not judge(dr("TREAT")).allowed(observation("o2", "p1", meta=purpose("HTEST", "HRESCH")))
    strict = Judge(
        caller=dr("TREAT"),
        action=("http://terminology.hl7.org/CodeSystem/consentaction", "access"),
        policies={},
        defaults=Defaults(jurisdiction="opt-out", labels=LabelRules(ignored_purposes=frozenset())),
        now=NOW,
        base_urls=BASES,
    )
    assert not strict.allowed(observation("o3", "p1", meta=purpose("HTEST")))


def test_only_purpose_codes_can_be_ignored() -> None:
    with pytest.raises(ValueError, match="not purpose-of-use codes"):
        LabelRules(ignored_purposes=frozenset({"NOPE"}))


def test_a_purpose_label_withholds_data_of_no_patient() -> None:
    practitioner = {"resourceType": "Practitioner", "id": "x", "meta": purpose("HOPERAT")}
    assert not judge(dr("TREAT")).allowed(practitioner)
    assert judge(dr("HSYSADMIN")).allowed(practitioner)


def test_a_search_page_loses_only_the_resources_whose_purpose_is_not_met() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": observation("o1", "p1", meta=purpose("HRESCH"))},
            {"resource": observation("o2", "p1")},
            {"resource": observation("o3", "p1", meta=purpose("TREAT"))},
        ],
    }
    released, _ = filter_answer(bundle, judge(dr("COC")).allowed)
    assert released is not None
    assert [e["resource"]["id"] for e in released["entry"]] == ["o2", "o3"]


# --- 42 CFR Part 2


def test_a_general_permit_does_not_release_part2_data() -> None:
    """Opt-out (default permit) and an explicit general permit: neither names Part 2."""
    resource = observation("o1", "p1", meta={"security": [PART2]})
    assert not judge(dr("TREAT")).allowed(dict(resource))
    j = judge(dr("TREAT"), {"Patient/p1": (general_permit("p1"),)})
    assert not j.allowed(dict(resource))


def test_a_consent_naming_part2_releases_it_marked() -> None:
    j = judge(dr("TREAT"), {"Patient/p1": (naming("p1", PART2),)})
    resource = observation("o1", "p1", meta={"security": [PART2]})
    assert j.allowed(resource)
    assert resource["meta"]["security"] == [PART2, REFRAIN]
    assert resource["meta"]["extension"] == [NOTICE]


def test_a_consent_naming_another_label_does_not_release_part2() -> None:
    j = judge(dr(), {"Patient/p1": (naming("p1", SUD),)})
    assert not j.allowed(observation("o1", "p1", meta={"security": [PART2, SUD]}))


def test_configured_sensitivities_are_part2_data() -> None:
    """With SUD configured as Part 2, SUD data is released marked, on a consent naming SUD."""
    rules = LabelRules(parse_labels("SUD"))
    j = Judge(
        caller=dr(),
        action=("http://terminology.hl7.org/CodeSystem/consentaction", "access"),
        policies={"Patient/p1": (naming("p1", SUD),)},
        defaults=Defaults(jurisdiction="opt-out", labels=rules),
        now=NOW,
        base_urls=BASES,
    )
    resource = observation("o1", "p1", meta={"security": [SUD]})
    assert j.allowed(resource)
    assert REFRAIN in resource["meta"]["security"]


def test_the_patients_own_part2_data_reaches_them_marked() -> None:
    resource = observation("o1", "p1", meta={"security": [PART2]})
    assert judge(patient_caller("p1")).allowed(resource)
    assert resource["meta"]["extension"] == [NOTICE]


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Observation", "id": "o9", "meta": {"security": [PART2]}},
        {"resourceType": "Practitioner", "id": "x", "meta": {"security": [PART2]}},
    ],
    ids=["unknown-patient", "no-patient"],
)
def test_part2_data_tied_to_no_known_patient_is_withheld(resource: dict[str, Any]) -> None:
    """Released on scopes alone otherwise (allow_unknown, or not patient data): no consent
    was asked, so none named it."""
    assert not judge(dr(), allow_unknown=True).allowed(resource)


def test_break_the_glass_releases_part2_data_marked() -> None:
    """42 CFR 2.51 (medical emergencies): the override reaches Part 2 data; it still carries
    the refrain label and the notice."""
    j = judge(
        dr("ETREAT"), {"Patient/p1": (naming("p1", SUD),)}, override=frozenset({"Patient/p1"})
    )
    resource = observation("o1", "p1", meta={"security": [PART2]})
    assert j.allowed(resource)
    assert j.trail.break_glass
    assert REFRAIN in resource["meta"]["security"]


def test_an_inline_part2_element_marks_the_resource_it_is_released_in() -> None:
    inline = {"url": INLINE_LABEL_URL, "valueCoding": PART2}
    resource = observation("o1", "p1", note=[{"text": "x", "extension": [inline]}])
    j = judge(dr(), {"Patient/p1": (naming("p1", PART2),)})
    assert j.allowed(resource)
    assert resource["meta"]["extension"] == [NOTICE]


def test_an_uncovered_inline_part2_element_is_redacted_and_nothing_is_marked() -> None:
    inline = {"url": INLINE_LABEL_URL, "valueCoding": PART2}
    resource = observation("o1", "p1", note=[{"text": "x", "extension": [inline]}, {"text": "y"}])
    j = Judge(
        caller=dr(),
        action=("http://terminology.hl7.org/CodeSystem/consentaction", "access"),
        policies={},
        defaults=Defaults(jurisdiction="opt-out", uncovered="redact"),
        now=NOW,
        base_urls=BASES,
    )
    assert j.allowed(resource)
    assert resource["note"] == [{"text": "y"}]
    assert "extension" not in resource["meta"]


def test_a_resource_without_labels_is_left_as_it_was() -> None:
    resource = observation("o1", "p1")
    assert judge(dr()).allowed(resource)
    assert resource == observation("o1", "p1")
