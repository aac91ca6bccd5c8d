"""Limits on a Consent's provisions (consent.limits): checked before any recursive code reads
them, at write time with the operator's settings and always with the parser's ceiling; and a
stored consent beyond them skipped (not in force) or failing closed (active) in the registry."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.consent.limits import CEILING, DEFAULT_LIMITS, ConsentLimits, limit_problems
from middleware.consent.parse import InvalidConsent, parse_consent
from middleware.consent.records import canonical_consent
from middleware.consent.registry import ConsentRegistry, UnreadableConsent
from middleware.storage.consent_base import ConsentRecord
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore

TREAT = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]


def chain(depth: int) -> dict[str, Any]:
    """One provision with ``depth - 1`` levels below it, each the only child of the last."""
    node: dict[str, Any] = {"purpose": TREAT}
    for _ in range(depth - 1):
        node = {"purpose": TREAT, "provision": [node]}
    return node


def r5(*provisions: dict[str, Any], status: str = "active", cid: str = "c1") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "decision": "deny",
        "provision": list(provisions),
    }


def r4(root: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "patient": {"reference": "Patient/p1"},
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"code": "59284-0"}]}],
        "policyRule": {"coding": [{"code": "OPTIN"}]},
        "provision": {"type": "deny", **root},
    }


LIMITS = ConsentLimits(max_depth=3, max_provisions=5)


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        # within the limits
        (r5(), []),
        (r5(chain(3)), []),
        (r5(*[{"purpose": TREAT}] * 5), []),
        (r4(chain(3)), []),  # R4: the root object is depth 1, its children depth 2
        # one past each limit
        (r5(chain(4)), ["nests deeper than 3 levels (consent_max_depth)"]),
        (r5(*[{"purpose": TREAT}] * 6), ["more than 5 provisions (consent_max_provisions)"]),
        (r4(chain(4)), ["nests deeper than 3 levels (consent_max_depth)"]),
        # a thousand deep: refused after a few levels, without recursion
        (r5(chain(1_000)), ["nests deeper than 3 levels (consent_max_depth)"]),
        # values of the wrong type are the structure check's business, not counted
        ({**r5(), "provision": [1, "x", None, [{"purpose": TREAT}]]}, []),
        ({**r5(), "provision": 7}, []),
    ],
    ids=[
        "none",
        "depth-3",
        "five",
        "r4-depth-3",
        "depth-4",
        "six",
        "r4-depth-4",
        "depth-1000",
        "odd-items",
        "odd-value",
    ],
)
def test_limit_problems(body: dict[str, Any], problems: list[str]) -> None:
    assert [p.removeprefix("Consent.provision: ") for p in limit_problems(body, LIMITS)] == (
        problems
    )


def test_parse_refuses_past_the_given_limits_and_always_past_the_ceiling() -> None:
    """Attack: a Consent ~120 provisions deep exhausted the stack in the structure check
    (pydantic) wherever it was parsed; the limits are checked before it runs."""
    assert parse_consent(r5(chain(DEFAULT_LIMITS.max_depth))).consent_id == "c1"
    with pytest.raises(InvalidConsent, match="consent_max_depth"):
        parse_consent(r5(chain(DEFAULT_LIMITS.max_depth + 1)), limits=DEFAULT_LIMITS)
    assert parse_consent(r5(chain(CEILING.max_depth))).consent_id == "c1"
    for depth in (CEILING.max_depth + 1, 120, 5_000):
        with pytest.raises(InvalidConsent, match="the parser's depth"):
            parse_consent(r5(chain(depth)))
    loose = ConsentLimits(max_depth=10_000, max_provisions=100_000)
    with pytest.raises(InvalidConsent, match="the parser's depth"):
        parse_consent(r5(chain(CEILING.max_depth + 1)), limits=loose)


def test_a_status_that_is_not_a_string_is_a_problem_not_a_type_error() -> None:
    """Attack: ``Consent.status`` a list raised TypeError (unhashable) from the set lookup."""
    for status in (["active"], {"a": 1}, 1):
        with pytest.raises(InvalidConsent, match=r"Consent\.status"):
            parse_consent({**r5(), "status": status})


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ConsentLimits(max_depth=0, max_provisions=1)


def recorded(index: int, body: dict[str, Any], *, revoked: bool = False) -> ConsentRecord:
    return ConsentRecord(
        index, body["id"], "Patient/p1", body["status"], revoked, index, canonical_consent(body)
    )


async def test_an_active_stored_consent_past_the_ceiling_fails_closed() -> None:
    """A consent stored before the limits existed, still active: the registry may not decide
    without it (it may deny), so the patient is denied entirely (503), and it neither crashes
    nor recurses."""
    store = MemoryConsentStore()
    await store.record(recorded(1, r5(chain(200), cid="deep")))
    await store.record(recorded(2, r5(chain(1), cid="fine")))
    registry = ConsentRegistry(store, MemoryLogStore())
    with pytest.raises(UnreadableConsent):
        await registry.policies("Patient/p1")


@pytest.mark.parametrize(
    ("status", "revoked"), [("inactive", True), ("inactive", False), ("draft", False)]
)
async def test_a_stored_consent_past_the_ceiling_and_not_in_force_is_skipped(
    status: str,
    revoked: bool,
) -> None:
    """Only active consents are enforced, so one that cannot be compiled and is not active
    cannot permit (or deny) anything: skipped, and the patient's other consents decide."""
    store = MemoryConsentStore()
    await store.record(recorded(1, r5(chain(200), status=status, cid="deep"), revoked=revoked))
    await store.record(recorded(2, r5(chain(1), cid="fine")))
    policies = await ConsentRegistry(store, MemoryLogStore()).policies("Patient/p1")
    assert [p.consent_id for p in policies] == ["fine"]
