"""Which consents count, how several combine, the defaults, and sensitive data."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from middleware.consent import Defaults, Obligation, Principal, explain, parse_consent
from tests.unit.consent.builders import (
    ACT_CODE,
    CONF,
    VERSIONS,
    actor,
    ask,
    coding,
    consent,
    policy,
    resource,
    rule,
)

HIV = (ACT_CODE, "HIV")
PSY = (ACT_CODE, "PSY")

# (id, version, status): every status but active is ignored
STATUSES = [
    *(("R4", s) for s in ("draft", "proposed", "rejected", "inactive", "entered-in-error")),
    *(("R5", s) for s in ("draft", "inactive", "not-done", "entered-in-error", "unknown")),
]


@pytest.mark.parametrize(("version", "status"), STATUSES, ids=[f"{v}-{s}" for v, s in STATUSES])
def test_only_active_consents_count(version: str, status: str) -> None:
    """A permitting consent that is not active is skipped: the opt-in default denies."""
    decision = ask([policy(version, "permit", status=status)])
    assert decision.effect == "deny"
    assert decision.trace[0].reason == f"ignored: status {status}; only active consents count"


# (id, R5 Consent.period, counts)
PERIODS = [
    ("current", {"start": "2024-01-01", "end": "2024-12-31"}, True),
    ("expired", {"end": "2024-05-31"}, False),
    ("not-yet", {"start": "2024-07"}, False),
    ("open-ended", {"start": "2020"}, True),
]


@pytest.mark.parametrize(
    ("period", "counts"), [c[1:] for c in PERIODS], ids=[c[0] for c in PERIODS]
)
def test_consent_period(period: dict[str, str], counts: bool) -> None:
    decision = ask([policy("R5", "permit", period=period)])
    assert decision.effect == ("permit" if counts else "deny")


@pytest.mark.parametrize("version", VERSIONS)
def test_consent_of_another_patient_is_ignored(version: str) -> None:
    decision = ask([policy(version, "permit", patient="Patient/other")])
    assert decision.effect == "deny"
    assert decision.trace[0].reason.startswith("ignored: resource not in")


PERMITS = ("permit", "c-permit")
DENIES = ("deny", "c-deny")
# (id, consents as (decision, id), algorithm, jurisdiction, expected)
COMBINING: list[tuple[str, list[tuple[str, str]], str, str, str]] = [
    ("deny-overrides-mixed", [PERMITS, DENIES], "deny-overrides", "opt-out", "deny"),
    ("deny-overrides-permits", [PERMITS], "deny-overrides", "opt-in", "permit"),
    ("permit-overrides-mixed", [DENIES, PERMITS], "permit-overrides", "opt-in", "permit"),
    ("permit-overrides-denies", [DENIES], "permit-overrides", "opt-out", "deny"),
    ("none-opt-in", [], "deny-overrides", "opt-in", "deny"),
    ("none-opt-out", [], "deny-overrides", "opt-out", "permit"),
    ("none-permit-overrides-opt-out", [], "permit-overrides", "opt-out", "permit"),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("consents", "algorithm", "jurisdiction", "expected"),
    [c[1:] for c in COMBINING],
    ids=[c[0] for c in COMBINING],
)
def test_combining(
    consents: list[tuple[str, str]], algorithm: str, jurisdiction: str, expected: str, version: str
) -> None:
    policies = [policy(version, d, consent_id=cid) for d, cid in consents]
    defaults = Defaults(jurisdiction=jurisdiction, combining=algorithm)  # type: ignore[arg-type]
    assert ask(policies, defaults=defaults).effect == expected


# (id, jurisdiction, per-type defaults, resource type, expected)
DEFAULTS: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("opt-in", "opt-in", {}, "Observation", "deny"),
    ("opt-out", "opt-out", {}, "Observation", "permit"),
    ("opt-out-but-type-denied", "opt-out", {"Observation": "deny"}, "Observation", "deny"),
    ("opt-in-but-type-permitted", "opt-in", {"Practitioner": "permit"}, "Practitioner", "permit"),
    ("type-default-other-type", "opt-in", {"Practitioner": "permit"}, "Observation", "deny"),
]


@pytest.mark.parametrize(
    ("jurisdiction", "by_type", "resource_type", "expected"),
    [c[1:] for c in DEFAULTS],
    ids=[c[0] for c in DEFAULTS],
)
def test_defaults_when_no_consent_applies(
    jurisdiction: str, by_type: dict[str, Any], resource_type: str, expected: str
) -> None:
    defaults = Defaults(jurisdiction=jurisdiction, category_defaults=by_type)  # type: ignore[arg-type]
    assert ask([], target=resource(resource_type), defaults=defaults).effect == expected


@pytest.mark.parametrize(("jurisdiction", "expected"), [("opt-in", "deny"), ("opt-out", "permit")])
def test_a_consent_that_only_restricts_grants_nothing(jurisdiction: str, expected: str) -> None:
    """An R4 consent without a base, denying marketing only, is silent about treatment: the
    jurisdiction default answers, so under opt-in treatment still needs an explicit grant."""
    restricting = consent("R4", "deny")
    restricting["provision"] = {"type": "deny", "purpose": [coding(ACT_CODE, "HMARKT")]}
    defaults = Defaults(jurisdiction=jurisdiction)  # type: ignore[arg-type]
    decision = ask([parse_consent(restricting)], defaults=defaults)
    assert decision.effect == expected
    assert decision.trace[0].reason.startswith("not applicable")


# Sensitive labels need a permit that names them, on the deciding provision or an ancestor.
# (id, base, rules, principal, resource labels, uncovered mode, expected effect, obligation labels)
SENSITIVE: list[tuple[str, str, tuple[Any, ...], str, frozenset[Any], str, str, frozenset[Any]]] = [
    ("plain-base-permit", "permit", (), "dr", frozenset(), "deny", "permit", frozenset()),
    ("hiv-base-permit-denied", "permit", (), "dr", frozenset({HIV}), "deny", "deny", frozenset()),
    (
        "hiv-base-permit-redacted",
        "permit",
        (),
        "dr",
        frozenset({HIV}),
        "redact",
        "permit",
        frozenset({HIV}),
    ),
    (
        "hiv-named-by-permit",
        "deny",
        (rule(securityLabel=[coding(ACT_CODE, "HIV")]),),
        "dr",
        frozenset({HIV}),
        "deny",
        "permit",
        frozenset(),
    ),
    (
        "hiv-named-psy-not",
        "deny",
        (rule(securityLabel=[coding(ACT_CODE, "HIV")]),),
        "dr",
        frozenset({HIV, PSY}),
        "redact",
        "permit",
        frozenset({PSY}),
    ),
    (
        "hiv-named-by-deny-ancestor-dr-excepted",
        "permit",
        (rule(rule(actor=[actor("Practitioner/dr")]), securityLabel=[coding(ACT_CODE, "HIV")]),),
        "dr",
        frozenset({HIV}),
        "deny",
        "permit",
        frozenset(),
    ),
    (
        "hiv-named-by-deny-ancestor-nurse-not",
        "permit",
        (rule(rule(actor=[actor("Practitioner/dr")]), securityLabel=[coding(ACT_CODE, "HIV")]),),
        "nurse",
        frozenset({HIV}),
        "redact",
        "deny",
        frozenset(),
    ),
    (
        "restricted-base-permit",
        "permit",
        (),
        "dr",
        frozenset({(CONF, "R")}),
        "deny",
        "deny",
        frozenset(),
    ),
    (
        "restricted-named",
        "deny",
        (rule(securityLabel=[coding(CONF, "R")]),),
        "dr",
        frozenset({(CONF, "R")}),
        "deny",
        "permit",
        frozenset(),
    ),
    (
        "very-restricted-redacted",
        "permit",
        (),
        "dr",
        frozenset({(CONF, "V")}),
        "redact",
        "permit",
        frozenset({(CONF, "V")}),
    ),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("base", "rules", "who", "labels", "mode", "expected", "redact"),
    [c[1:] for c in SENSITIVE],
    ids=[c[0] for c in SENSITIVE],
)
def test_sensitive_data_needs_explicit_consent(
    base: str,
    rules: tuple[Any, ...],
    who: str,
    labels: frozenset[Any],
    mode: str,
    expected: str,
    redact: frozenset[Any],
    version: str,
) -> None:
    defaults = Defaults(uncovered=mode)  # type: ignore[arg-type]
    decision = ask(
        [policy(version, base, *rules)],
        who=Principal(reference=f"Practitioner/{who}"),
        target=resource(security_labels=labels),
        defaults=defaults,
    )
    assert decision.effect == expected
    expected_obligations = (Obligation("redact", redact),) if redact else ()
    assert decision.obligations == expected_obligations


def test_defaults_never_cover_sensitive_data() -> None:
    """Under opt-out with no consent, HIV data is still refused."""
    target = resource(security_labels=frozenset({HIV}))
    assert ask([], target=target, defaults=Defaults(jurisdiction="opt-out")).effect == "deny"


def test_trace_and_explain() -> None:
    """The trace names each consent, its ledger index, the deciding provision and why."""
    allowed = dataclasses.replace(policy("R5", "permit", consent_id="a"), ledger_index=7)
    revoked = policy("R4", "permit", consent_id="b", status="inactive")
    decision = ask([allowed, revoked])
    assert explain(decision) == {
        "effect": "permit",
        "obligations": [],
        "trace": [
            {
                "consent": "a",
                "ledgerIndex": 7,
                "provision": "Consent.decision",
                "reason": "permit: base decision",
            },
            {"consent": "b", "reason": "ignored: status inactive; only active consents count"},
            {"reason": "permit: a consent permits (deny-overrides)"},
        ],
    }


def test_explain_obligation_labels_are_codings() -> None:
    decision = ask(
        [policy("R5", "permit")],
        target=resource(security_labels=frozenset({HIV, PSY})),
        defaults=Defaults(uncovered="redact"),
    )
    assert explain(decision)["obligations"] == [
        {
            "code": "redact",
            "labels": [{"system": ACT_CODE, "code": "HIV"}, {"system": ACT_CODE, "code": "PSY"}],
        }
    ]


BAD_DEFAULTS: list[tuple[str, dict[str, Any]]] = [
    ("jurisdiction", {"jurisdiction": "maybe"}),
    ("combining", {"combining": "latest-wins"}),
    ("uncovered", {"uncovered": "ignore"}),
    ("confidentiality", {"explicit_confidentiality": "X"}),
    ("category-effect", {"category_defaults": {"Observation": "allow"}}),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in BAD_DEFAULTS], ids=[c[0] for c in BAD_DEFAULTS])
def test_defaults_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        Defaults(**kwargs)


def test_defaults_category_mapping_is_read_only() -> None:
    by_type: dict[str, Any] = {"Observation": "deny"}
    defaults = Defaults(category_defaults=by_type)
    by_type["Observation"] = "permit"
    assert defaults.category_defaults["Observation"] == "deny"
    with pytest.raises(TypeError):
        defaults.category_defaults["Condition"] = "permit"  # type: ignore[index]
