"""The whole of a decision's trace, and the sensitive-label edge cases mutation testing found
unpinned (scripts/mutation.sh decision): a skipped consent must not stop the consents after it
from counting, and every step names its consent, ledger index, provision and reason exactly."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from middleware.consent import Defaults, Obligation, Policy, parse_consent
from middleware.consent.decide import TraceStep
from tests.unit.consent.builders import ACT_CODE, CONF, actor, ask, coding, consent, policy, rule
from tests.unit.consent.builders import resource as summary

HIV = (ACT_CODE, "HIV")
PSY = (ACT_CODE, "PSY")
OLD_CONF = "http://hl7.org/fhir/v3/Confidentiality"


def _at(p: Policy, index: int) -> Policy:
    return dataclasses.replace(p, ledger_index=index)


def _restricting() -> Policy:
    """An R4 consent without a base decision that only denies marketing: silent on treatment."""
    body = consent("R4", "deny", consent_id="skip")
    body["provision"] = {"type": "deny", "purpose": [coding(ACT_CODE, "HMARKT")]}
    return parse_consent(body)


# (id, a consent that does not count, its trace reason)
SKIPPED: list[tuple[str, Policy, str]] = [
    (
        "not-active",
        policy("R5", "deny", consent_id="skip", status="inactive"),
        "ignored: status inactive; only active consents count",
    ),
    (
        "other-patient",
        policy("R5", "deny", consent_id="skip", patient="Patient/other"),
        "ignored: resource not in this patient's compartment",
    ),
    (
        "expired",
        policy("R5", "deny", consent_id="skip", period={"end": "2024-05-31"}),
        "ignored: outside the consent period",
    ),
    (
        "not-applicable",
        _restricting(),
        "not applicable: no provision matches and there is no base decision",
    ),
]


@pytest.mark.parametrize(
    ("skipped", "reason"), [c[1:] for c in SKIPPED], ids=[c[0] for c in SKIPPED]
)
def test_a_skipped_consent_leaves_the_next_one_counting(skipped: Policy, reason: str) -> None:
    """A consent that does not count is traced with its id and ledger index and passed over;
    the permit after it still decides (stopping at the first skipped consent would fall back
    to the opt-in default and deny)."""
    granting = _at(policy("R5", "permit", consent_id="ok"), 9)
    decision = ask([_at(skipped, 3), granting])
    assert decision.effect == "permit"
    assert decision.trace == (
        TraceStep("skip", 3, None, reason),
        TraceStep("ok", 9, "Consent.decision", "permit: base decision"),
        TraceStep(None, None, None, "permit: a consent permits (deny-overrides)"),
    )


def _trace(decision: Any) -> list[str]:
    return [step.reason for step in decision.trace]


# (id, consents, defaults, resource labels, effect, the trace's reasons)
TRACES: list[tuple[str, list[Policy], Defaults, frozenset[Any], str, list[str]]] = [
    (
        "deepest-provision",
        [policy("R5", "deny", rule(actor=[actor("Practitioner/dr")]))],
        Defaults(),
        frozenset(),
        "permit",
        ["permit: deepest matching provision", "permit: a consent permits (deny-overrides)"],
    ),
    (
        "deny-overrides",
        [policy("R5", "permit", consent_id="a"), policy("R5", "deny", consent_id="b")],
        Defaults(),
        frozenset(),
        "deny",
        [
            "permit: base decision",
            "deny: base decision",
            "deny: a consent denies (deny-overrides)",
        ],
    ),
    (
        "type-default",
        [],
        Defaults(jurisdiction="opt-out", category_defaults={"Observation": "deny"}),
        frozenset(),
        "deny",
        ["deny: no consent applies; default for Observation"],
    ),
    (
        "jurisdiction-default",
        [],
        Defaults(jurisdiction="opt-out"),
        frozenset(),
        "permit",
        ["permit: no consent applies; jurisdiction default opt-out"],
    ),
    (
        "uncovered-denied",
        [policy("R5", "permit")],
        Defaults(),
        frozenset({HIV, PSY}),
        "deny",
        [
            "permit: base decision",
            "permit: a consent permits (deny-overrides)",
            "deny: no permit names the labels HIV, PSY",
        ],
    ),
    (
        "uncovered-redacted",
        [policy("R5", "permit")],
        Defaults(uncovered="redact"),
        frozenset({HIV, PSY}),
        "permit",
        [
            "permit: base decision",
            "permit: a consent permits (deny-overrides)",
            "permit with redaction: no permit names HIV, PSY",
        ],
    ),
]


@pytest.mark.parametrize(
    ("policies", "defaults", "labels", "effect", "reasons"),
    [c[1:] for c in TRACES],
    ids=[c[0] for c in TRACES],
)
def test_trace_reasons(
    policies: list[Policy],
    defaults: Defaults,
    labels: frozenset[Any],
    effect: str,
    reasons: list[str],
) -> None:
    """Each way a decision ends leaves its own last step, with every step's exact reason."""
    decision = ask(policies, target=summary(security_labels=labels), defaults=defaults)
    assert decision.effect == effect
    assert _trace(decision) == reasons


def test_deepest_provision_is_named_by_its_path() -> None:
    decision = ask([policy("R5", "deny", rule(actor=[actor("Practitioner/dr")]))])
    assert decision.trace[0].provision_path == "Consent.provision[0]"


# Sensitive-label coverage. (id, consents, defaults, resource labels, effect, redacted labels)
COVERAGE: list[tuple[str, list[Policy], Defaults, frozenset[Any], str, frozenset[Any]]] = [
    (
        # What permits cover adds up over consents: each names one of the two labels.
        "labels-named-by-two-consents",
        [
            policy("R5", "deny", rule(securityLabel=[coding(ACT_CODE, "HIV")]), consent_id="a"),
            policy("R5", "deny", rule(securityLabel=[coding(ACT_CODE, "PSY")]), consent_id="b"),
        ],
        Defaults(),
        frozenset({HIV, PSY}),
        "permit",
        frozenset(),
    ),
    (
        # A label named by code alone (no system) covers that code in any system.
        "label-named-without-system",
        [policy("R5", "deny", rule(securityLabel=[{"code": "HIV"}]))],
        Defaults(),
        frozenset({HIV}),
        "permit",
        frozenset(),
    ),
    (
        # The lowest confidentiality level needing a consent still needs one.
        "level-at-threshold-not-named",
        [policy("R5", "permit")],
        Defaults(explicit_confidentiality="L"),
        frozenset({(CONF, "L")}),
        "deny",
        frozenset(),
    ),
    (
        # The redacted confidentiality label is the resource's own coding (pre-R4 system).
        "own-confidentiality-coding-redacted",
        [policy("R5", "permit")],
        Defaults(uncovered="redact"),
        frozenset({(OLD_CONF, "V")}),
        "permit",
        frozenset({(OLD_CONF, "V")}),
    ),
    (
        # A code "N" in another system is no confidentiality label: the unlabelled resource is
        # N, and the label to redact is v3-Confidentiality N.
        "code-of-another-system-is-not-confidentiality",
        [policy("R5", "permit")],
        Defaults(uncovered="redact", explicit_confidentiality="N"),
        frozenset({("urn:example:tags", "N")}),
        "permit",
        frozenset({(CONF, "N")}),
    ),
]


@pytest.mark.parametrize(
    ("policies", "defaults", "labels", "effect", "redacted"),
    [c[1:] for c in COVERAGE],
    ids=[c[0] for c in COVERAGE],
)
def test_sensitive_label_coverage(
    policies: list[Policy],
    defaults: Defaults,
    labels: frozenset[Any],
    effect: str,
    redacted: frozenset[Any],
) -> None:
    decision = ask(policies, target=summary(security_labels=labels), defaults=defaults)
    assert decision.effect == effect
    assert decision.obligations == ((Obligation("redact", redacted),) if redacted else ())


# (id, bad settings, the message naming what is wrong)
BAD: list[tuple[str, dict[str, Any], str]] = [
    (
        "jurisdiction",
        {"jurisdiction": "maybe"},
        "jurisdiction must be opt-in or opt-out, not 'maybe'",
    ),
    ("combining", {"combining": "latest-wins"}, "unknown combining algorithm 'latest-wins'"),
    ("uncovered", {"uncovered": "ignore"}, "uncovered must be deny or redact, not 'ignore'"),
    ("collect", {"collect": "always"}, "collect must be permit or jurisdiction, not 'always'"),
    ("confidentiality", {"explicit_confidentiality": "X"}, "unknown confidentiality code 'X'"),
    (
        "category-effect",
        {"category_defaults": {"Observation": "allow"}},
        "category defaults must be permit or deny: {'Observation': 'allow'}",
    ),
]


@pytest.mark.parametrize(("kwargs", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_defaults_say_what_is_wrong(kwargs: dict[str, Any], message: str) -> None:
    """A misconfigured deployment stops at start-up with the setting and value named."""
    with pytest.raises(ValueError) as caught:
        Defaults(**kwargs)
    assert str(caught.value) == message
