"""Test helpers: one consent scenario written as R4 JSON and as R5 JSON, and request values.

A scenario is a base decision plus a tree of :func:`rule` nodes in neutral form. :func:`consent`
writes it in either version so that the same tree means the same thing:

* R5: ``decision`` is the base; each rule becomes a provision without ``type`` (its effect is
  implied by depth).
* R4: the root ``provision`` carries ``type`` = base and no conditions; each rule becomes a
  nested provision whose ``type`` is written out explicitly, alternating with depth.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from middleware.consent import Defaults, Policy, Principal, ResourceSummary, decide, parse_consent
from middleware.consent.decide import Decision
from middleware.consent.model import Coding

PATIENT: Final = "Patient/p1"
NOW: Final = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
ACTION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
LOINC: Final = "http://loinc.org"
ACCESS: Final[Coding] = (ACTION_SYSTEM, "access")
TREAT: Final[Coding] = (ACT_CODE, "TREAT")
HMARKT: Final[Coding] = (ACT_CODE, "HMARKT")
VERSIONS: Final = ("R4", "R5")

DR: Final[dict[str, Any]] = {"reference": "Practitioner/dr"}
NURSE: Final[dict[str, Any]] = {"reference": "Practitioner/nurse"}


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [coding(system, code)]}


def actor(reference: str, role: str = "IRCP") -> dict[str, Any]:
    """An actor with a literal reference; R4 requires a role, so one is always written."""
    return {"role": concept(PARTICIPATION, role), "reference": {"reference": reference}}


def rule(*children: dict[str, Any], effect: str | None = None, **conditions: Any) -> dict[str, Any]:
    """A neutral provision.

    ``types=[...]`` names resource types (strings) or class codings (dicts); ``action`` and
    ``purpose`` take codes; other keys are FHIR elements as written. ``effect`` forces an R4
    ``type`` (R5 cannot say it: there the effect is implied by depth).
    """
    return {"conditions": conditions, "children": list(children), "effect": effect}


def flip(effect: str) -> str:
    return "deny" if effect == "permit" else "permit"


def _conditions(conditions: dict[str, Any], version: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in conditions.items():
        if key == "types":
            element = "class" if version == "R4" else "resourceType"
            out[element] = [
                coding("http://hl7.org/fhir/resource-types", t) if isinstance(t, str) else t
                for t in value
            ]
        elif key == "action":
            out["action"] = [concept(ACTION_SYSTEM, a) for a in value]
        elif key == "purpose":
            out["purpose"] = [coding(ACT_CODE, p) for p in value]
        else:
            out[key] = value
    return out


def _provision(node: dict[str, Any], version: str, implied: str) -> dict[str, Any]:
    out = _conditions(node["conditions"], version)
    effect = node["effect"] or implied
    if version == "R4":
        out["type"] = effect
    elif effect != implied:
        raise ValueError("R5 provisions cannot state an effect against their depth")
    if node["children"]:
        out["provision"] = [_provision(c, version, flip(effect)) for c in node["children"]]
    return out


def consent(
    version: str,
    decision: str,
    *rules: dict[str, Any],
    consent_id: str = "c1",
    status: str = "active",
    patient: str = PATIENT,
    **extra: Any,
) -> dict[str, Any]:
    """The scenario ``decision`` + ``rules`` as a Consent of ``version`` (R4 or R5)."""
    body: dict[str, Any] = {"resourceType": "Consent", "id": consent_id, "status": status}
    nested = [_provision(r, version, flip(decision)) for r in rules]
    if version == "R5":
        body |= {"subject": {"reference": patient}, "decision": decision}
        if nested:
            body["provision"] = nested
    else:
        body |= {
            "scope": concept(
                "http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"
            ),
            "category": [concept(LOINC, "59284-0")],
            "patient": {"reference": patient},
            "provision": {"type": decision, **({"provision": nested} if nested else {})},
        }
    return body | extra


def policy(version: str, decision: str, *rules: dict[str, Any], **kwargs: Any) -> Policy:
    return parse_consent(consent(version, decision, *rules, **kwargs))


def resource(resource_type: str = "Observation", **fields: Any) -> ResourceSummary:
    fields.setdefault("id", "o1")
    fields.setdefault("patients", frozenset({PATIENT}))
    return ResourceSummary(resource_type=resource_type, **fields)


def ask(
    policies: list[Policy],
    *,
    who: Principal | None = None,
    action: Coding = ACCESS,
    purposes: frozenset[Coding] = frozenset({TREAT}),
    target: ResourceSummary | None = None,
    defaults: Defaults | None = None,
    now: datetime = NOW,
) -> Decision:
    """decide() with test defaults: Dr asks to access an Observation for treatment, opt-in."""
    return decide(
        who or Principal(reference="Practitioner/dr"),
        action,
        purposes,
        target or resource(),
        policies,
        defaults=defaults or Defaults(),
        now=now,
    )
