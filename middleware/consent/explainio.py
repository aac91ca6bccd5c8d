"""The ``Consent/$explain`` operation's input and output. Pure: no I/O.

Input, either a FHIR ``Parameters`` resource (http://hl7.org/fhir/R4/parameters.html)::

    actor       0..1  valueReference   the principal (Practitioner/1, Organization/2, ...)
    role        0..*  valueCoding      roles the principal holds
    identifier  0..*  valueIdentifier  identifiers the principal is known by
    membership  0..*  valueReference   organisations, care teams, groups it acts for
    action      0..1  valueCoding      default consentaction#access
    purpose     0..*  valueCoding      purposes of use (v3 ActReason)
    resource    1..1  resource         the resource access is asked for

or plain JSON with the same content: ``{"principal": {"reference", "roles": [Coding],
"identifiers": [Identifier], "memberships": [str]}, "action": Coding, "purpose": [Coding],
"resource": {...}}``. Without a principal, the caller's own ``fhirUser`` is asked about.

Output answers in kind: ``Parameters`` with ``effect`` (valueCode), one ``obligation`` per
obligation (parts ``code``, ``label``), one ``trace`` per step (parts ``consent``,
``ledgerIndex`` as a decimal string, ``provision``, ``reason``, one ``membership``
valueReference per membership of the principal the provision's actors name) and one ``patient``
(valueReference) per patient whose consents were asked; or, for plain JSON,
:func:`~middleware.consent.explain.explain`'s dict plus ``patients``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from middleware.consent.decide import Decision
from middleware.consent.explain import explain
from middleware.consent.model import Coding, Policy, normalize_reference
from middleware.consent.request import Principal
from middleware.errors import BadRequest

__all__ = ["ACCESS", "ExplainQuery", "parse_explain", "render_explanation"]

#: The default action: consentaction#access (http://terminology.hl7.org/CodeSystem/consentaction).
ACCESS: Final[Coding] = ("http://terminology.hl7.org/CodeSystem/consentaction", "access")
_SINGLE: Final = frozenset({"actor", "action", "resource"})
_KNOWN: Final = frozenset({"actor", "role", "identifier", "membership", "action", "purpose"})


@dataclass(frozen=True, slots=True)
class ExplainQuery:
    """A parsed explain request; ``principal`` None means "the caller". ``parameters`` says
    the request came as a Parameters resource (answer in kind)."""

    principal: Principal | None
    action: Coding
    purposes: frozenset[Coding]
    resource: Mapping[str, Any]
    parameters: bool


def parse_explain(body: object) -> ExplainQuery:
    """Read an explain request; raises :class:`BadRequest` naming every problem."""
    if not isinstance(body, Mapping):
        raise BadRequest("$explain expects a Parameters resource or a JSON object")
    if body.get("resourceType") == "Parameters":
        return _from_parameters(body)
    problems: list[str] = []
    unknown = sorted(set(body) - {"principal", "action", "purpose", "resource"})
    problems.extend(f"{name}: unknown input" for name in unknown)
    principal = None
    given = body.get("principal")
    if given is not None:
        if isinstance(given, Mapping):
            principal = Principal(
                reference=_reference(given.get("reference"), "principal.reference", problems),
                roles=frozenset(_codings(given.get("roles", []), "principal.roles", problems)),
                identifiers=frozenset(
                    _identifiers(given.get("identifiers", []), "principal.identifiers", problems)
                ),
                memberships=frozenset(
                    _references(given.get("memberships", []), "principal.memberships", problems)
                ),
            )
        else:
            problems.append("principal: expected an object")
    action = _codings([body["action"]], "action", problems) if "action" in body else [ACCESS]
    purposes = _codings(body.get("purpose", []), "purpose", problems)
    resource = body.get("resource")
    return _query(principal, action, purposes, resource, problems, parameters=False)


def render_explanation(
    decision: Decision,
    patients: Iterable[str],
    *,
    parameters: bool,
    principal: Principal | None = None,
    policies: Iterable[Policy] = (),
) -> dict[str, Any]:
    """The answer to ``$explain`` (see the module docstring); ``principal`` and ``policies``
    (what was decided on) name the memberships that made a provision apply."""
    explained = explain(decision, principal, policies)
    asked = sorted(patients)
    if not parameters:
        return {**explained, "patients": asked}
    items: list[dict[str, Any]] = [{"name": "effect", "valueCode": explained["effect"]}]
    for obligation in explained["obligations"]:
        parts = [{"name": "code", "valueCode": obligation["code"]}]
        parts += [{"name": "label", "valueCoding": label} for label in obligation["labels"]]
        items.append({"name": "obligation", "part": parts})
    names = {"consent": "consent", "ledgerIndex": "ledgerIndex", "provision": "provision"}
    for step in explained["trace"]:
        parts = [
            {"name": name, "valueString": str(step[key])}
            for key, name in names.items()
            if key in step
        ]
        parts.append({"name": "reason", "valueString": step["reason"]})
        parts += [
            {"name": "membership", "valueReference": {"reference": ref}}
            for ref in step.get("memberships", ())
        ]
        items.append({"name": "trace", "part": parts})
    items += [{"name": "patient", "valueReference": {"reference": p}} for p in asked]
    return {"resourceType": "Parameters", "parameter": items}


def _from_parameters(body: Mapping[str, Any]) -> ExplainQuery:
    problems: list[str] = []
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for i, item in enumerate(body.get("parameter") or []):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or name not in _KNOWN | {"resource"}:
            problems.append(f"Parameters.parameter[{i}]: unknown or unnamed parameter")
            continue
        by_name.setdefault(name, []).append(item)
    for name in sorted(_SINGLE):
        if len(by_name.get(name, [])) > 1:
            problems.append(f"{name}: at most one")

    def values(name: str, key: str) -> list[Any]:
        return [item.get(key) for item in by_name.get(name, [])]

    actor = [_reference(v, "actor", problems) for v in values("actor", "valueReference")]
    roles = _codings(values("role", "valueCoding"), "role", problems)
    identifiers = _identifiers(values("identifier", "valueIdentifier"), "identifier", problems)
    members = _references(values("membership", "valueReference"), "membership", problems)
    principal = None
    if actor or roles or identifiers or members:
        principal = Principal(
            reference=actor[0] if actor else None,
            roles=frozenset(roles),
            identifiers=frozenset(identifiers),
            memberships=frozenset(members),
        )
    actions = values("action", "valueCoding")
    action = _codings(actions, "action", problems) if actions else [ACCESS]
    purposes = _codings(values("purpose", "valueCoding"), "purpose", problems)
    resources = values("resource", "resource")
    resource = resources[0] if resources else None
    return _query(principal, action, purposes, resource, problems, parameters=True)


def _query(
    principal: Principal | None,
    action: list[Coding],
    purposes: list[Coding],
    resource: object,
    problems: list[str],
    *,
    parameters: bool,
) -> ExplainQuery:
    if not isinstance(resource, Mapping) or not isinstance(resource.get("resourceType"), str):
        problems.append("resource: required, a FHIR resource")
    if problems or not isinstance(resource, Mapping) or not action:
        raise _invalid(problems or ["action: required"])
    return ExplainQuery(principal, action[0], frozenset(purposes), resource, parameters)


def _invalid(problems: list[str]) -> BadRequest:
    error = BadRequest(f"invalid $explain request: {'; '.join(problems)}")
    error.issues = tuple(problems)
    return error


def _reference(value: object, where: str, problems: list[str]) -> str | None:
    if value is None:
        return None
    literal = value.get("reference") if isinstance(value, Mapping) else value
    if isinstance(literal, str) and literal:
        return normalize_reference(literal)
    problems.append(f"{where}: expected a literal reference")
    return None


def _references(values: object, where: str, problems: list[str]) -> list[str]:
    if not isinstance(values, list):
        problems.append(f"{where}: expected a list")
        return []
    return [r for v in values if (r := _reference(v, where, problems)) is not None]


def _codings(values: object, where: str, problems: list[str]) -> list[Coding]:
    if not isinstance(values, list):
        problems.append(f"{where}: expected a list of Codings")
        return []
    out: list[Coding] = []
    for value in values:
        code = value.get("code") if isinstance(value, Mapping) else None
        system = value.get("system", "") if isinstance(value, Mapping) else None
        if isinstance(code, str) and code and isinstance(system, str):
            out.append((system, code))
        else:
            problems.append(f"{where}: expected a Coding with a code")
    return out


def _identifiers(values: object, where: str, problems: list[str]) -> list[tuple[str, str]]:
    if not isinstance(values, list):
        problems.append(f"{where}: expected a list of Identifiers")
        return []
    out: list[tuple[str, str]] = []
    for value in values:
        system = value.get("system") if isinstance(value, Mapping) else None
        ident = value.get("value") if isinstance(value, Mapping) else None
        if isinstance(system, str) and system and isinstance(ident, str) and ident:
            out.append((system, ident))
        else:
            problems.append(f"{where}: expected an Identifier with system and value")
    return out
