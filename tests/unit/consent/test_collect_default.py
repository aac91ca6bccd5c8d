"""The ``collect`` default: the record holder's new data needs no consent, and nothing else opens.

Under opt-in, ``Defaults(collect="permit")`` permits FHIR consentaction ``collect`` when no
consent applies and the caller acts for the record holder (no launch patient); every other
action, a patient-context caller, a consent that denies collection and sensitive labels stay as
the jurisdiction and the consents say.
"""

from __future__ import annotations

from typing import Any

import pytest

from middleware.consent import Defaults, Principal
from tests.unit.consent.builders import (
    ACCESS,
    ACT_CODE,
    ACTION_SYSTEM,
    VERSIONS,
    ask,
    policy,
    resource,
    rule,
)

COLLECT = (ACTION_SYSTEM, "collect")
CORRECT = (ACTION_SYSTEM, "correct")
EHR = Principal()  # a backend service: no user, no launch patient
DR = Principal(reference="Practitioner/dr")
OTHER_PATIENT = Principal(reference="Patient/p2", patient="Patient/p2")
HOLDER = Defaults(collect="permit")

# (id, principal, action, collect default, jurisdiction, expected)
NO_CONSENT: list[tuple[str, Principal, Any, str, str, str]] = [
    # the record holder's callers collect new data under opt-in
    ("ehr-collects", EHR, COLLECT, "permit", "opt-in", "permit"),
    ("practitioner-collects", DR, COLLECT, "permit", "opt-in", "permit"),
    # nothing but collect changes
    ("ehr-access-still-opt-in", EHR, ACCESS, "permit", "opt-in", "deny"),
    ("ehr-correct-still-opt-in", EHR, CORRECT, "permit", "opt-in", "deny"),
    # a patient writing into another patient's record is not the holder collecting
    ("other-patient-collects", OTHER_PATIENT, COLLECT, "permit", "opt-in", "deny"),
    # the setting's other value: collect follows the jurisdiction like every action
    ("jurisdiction-mode", EHR, COLLECT, "jurisdiction", "opt-in", "deny"),
    ("jurisdiction-mode-opt-out", EHR, COLLECT, "jurisdiction", "opt-out", "permit"),
]


@pytest.mark.parametrize(
    ("who", "action", "collect", "jurisdiction", "expected"),
    [c[1:] for c in NO_CONSENT],
    ids=[c[0] for c in NO_CONSENT],
)
def test_the_collect_default_when_no_consent_applies(
    who: Principal, action: Any, collect: str, jurisdiction: str, expected: str
) -> None:
    defaults = Defaults(jurisdiction=jurisdiction, collect=collect)  # type: ignore[arg-type]
    decision = ask([], who=who, action=action, defaults=defaults)
    assert decision.effect == expected


def test_the_trace_names_the_holder_collection() -> None:
    """$explain shows why a create was permitted without a consent."""
    decision = ask([], who=EHR, action=COLLECT, defaults=HOLDER)
    assert decision.trace[-1].reason == (
        "permit: no consent applies; collection of new data by the record holder"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_consent_that_denies_collection_still_refuses(version: str) -> None:
    """Base permit, one provision about ``collect`` (so it flips to deny): collection is
    refused while access stays permitted (the consent does apply, and is followed)."""
    no_collect = policy(version, "permit", rule(action=["collect"]))
    assert ask([no_collect], who=EHR, action=COLLECT, defaults=HOLDER).effect == "deny"
    assert ask([no_collect], who=EHR, action=ACCESS, defaults=HOLDER).effect == "permit"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_base_deny_consent_refuses_collection(version: str) -> None:
    """A consent whose base decision is deny applies to everything, collection included."""
    refuses = policy(version, "deny")
    assert ask([refuses], who=EHR, action=COLLECT, defaults=HOLDER).effect == "deny"


def test_a_type_default_comes_before_the_collect_default() -> None:
    """A deployment's per-type default is the more specific rule."""
    defaults = Defaults(collect="permit", category_defaults={"Observation": "deny"})
    assert ask([], who=EHR, action=COLLECT, defaults=defaults).effect == "deny"


def test_sensitive_new_data_still_needs_a_consent_naming_its_labels() -> None:
    """Like the opt-out default, the collect default names no sensitivity label: an HIV
    result is collected only under a permit that names HIV."""
    hiv = resource(security_labels=frozenset({(ACT_CODE, "HIV")}))
    assert ask([], who=EHR, action=COLLECT, target=hiv, defaults=HOLDER).effect == "deny"


# Redaction is honoured only on what is released: a write cannot be redacted.
REDACT_HOLDER = Defaults(collect="permit", uncovered="redact")
REDACT_OPT_OUT = Defaults(jurisdiction="opt-out", uncovered="redact")
UNCOVERED_WRITES: list[tuple[str, Any, Defaults, str]] = [
    ("collect-default-redact-mode", COLLECT, REDACT_HOLDER, "deny"),
    ("opt-out-collect-redact-mode", COLLECT, REDACT_OPT_OUT, "deny"),
    ("opt-out-correct-redact-mode", CORRECT, REDACT_OPT_OUT, "deny"),
    # a read of the same resource is released with the labelled parts removed
    ("opt-out-access-redact-mode", ACCESS, REDACT_OPT_OUT, "permit"),
]


@pytest.mark.parametrize(
    ("action", "defaults", "expected"),
    [c[1:] for c in UNCOVERED_WRITES],
    ids=[c[0] for c in UNCOVERED_WRITES],
)
def test_redact_mode_never_lets_a_write_store_labels_no_permit_names(
    action: Any, defaults: Defaults, expected: str
) -> None:
    """Attack: with ``consent_uncovered_labels = "redact"``, an EHR wrote an HIV-labelled
    result for a patient without any consent naming HIV: the decision was "permit, redact HIV",
    and a write forwards its whole body, so the obligation could not be honoured and the
    sensitive data was stored. A write of labels no permit names is now refused in both modes."""
    hiv = resource(security_labels=frozenset({(ACT_CODE, "HIV")}))
    decision = ask([], who=EHR, action=action, target=hiv, defaults=defaults)
    assert decision.effect == expected
    if expected == "permit":
        assert [o.code for o in decision.obligations] == ["redact"]


def test_the_engine_default_is_the_jurisdiction() -> None:
    """The pure engine keeps its behaviour unless told: the gateway's setting chooses."""
    assert Defaults().collect == "jurisdiction"
    assert ask([], who=EHR, action=COLLECT).effect == "deny"
    with pytest.raises(ValueError, match="collect"):
        Defaults(collect="always")  # type: ignore[arg-type]
