"""Consent's base decision and provision tree between R4 and R5 (the ``consent`` step).

R4 (http://hl7.org/fhir/R4/consent.html) has one root ``Consent.provision``; its ``type``
(deny | permit) is the base rule and every nested provision states its own ``type``. R5
(http://hl7.org/fhir/R5/consent.html) moves the base to ``Consent.decision`` ("Action to take -
permit or deny - as default") and drops ``provision.type``: each level of provisions is
"assumed to be a negation of the previous level" (the ConsentProvisionType binding), so a
provision at depth *d* means the decision flipped *d* times. That is also how
:mod:`middleware.consent.parse` reads R5, so the conversion keeps the decision as the gateway
enforces it:

- R4 root ``provision.type`` <-> R5 ``decision``.
- R4 root ``provision.period`` <-> R5 ``Consent.period``: both bound the whole consent (R5
  ``provision.period``: "the bound effective time of the consent and should be in the base
  provision"; :class:`middleware.consent.model.Policy` reads them alike).
- An R4 root with no other conditions of its own (nothing but ``type``, ``period`` and nested
  provisions): its nested provisions are R5's top-level provisions.
- An R4 root with conditions (actor, purpose, period, ...) becomes R5's single top-level
  provision.
- A provision whose R4 ``type`` is not what R5 implies at its depth keeps it in the *modifier*
  extension ``http://hl7.org/fhir/4.0/StructureDefinition/extension-Consent.provision.type``
  (an R5 reader that does not know it must not act on that provision; FHIR R5
  extensibility.html#modifierExtension). Back in R4 it is the type again; without it, a
  provision takes the type R5 implies.
- An R5 Consent whose single top-level provision carries a type equal to the decision was an
  R4 root with conditions, and becomes the root again.

Every other element of a provision is left to the steps at ``Consent.provision*``. Consent
decisions are taken on the upstream's native version before any conversion; this mapping is
for the client's reading and for writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from middleware.mapping.versions.carry import Release, xver_url

__all__ = ["TYPE_URL", "Consent"]

TYPE_URL: Final = xver_url("R4", "Consent.provision.type")
_FLIP: Final = {"permit": "deny", "deny": "permit"}


@dataclass(frozen=True, slots=True)
class Consent:
    """The ``consent`` step: R4 ``provision`` <-> R5 ``decision``, ``period``, ``provision``."""

    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        return _to_r5(values) if target == "R5" else _to_r4(values)


def _flip(effect: str | None) -> str | None:
    return _FLIP.get(effect) if effect else None


def _to_r5(values: Mapping[str, Any]) -> dict[str, Any]:
    root = values.get("provision")
    if type(root) is not dict:
        return {}
    decision = root.get("type") if isinstance(root.get("type"), str) else None
    out: dict[str, Any] = {"decision": decision} if decision else {}
    if "period" in root:
        out["period"] = root["period"]
        root = {k: v for k, v in root.items() if k != "period"}
    if any(key not in ("type", "provision") for key in root):
        top = [_down(root, decision, _flip(decision))]
    else:
        children = root.get("provision")
        nested = children if type(children) is list else []
        top = [_down(child, _own_type(child), _flip(decision)) for child in nested]
    if top:
        out["provision"] = top
    return out


def _to_r4(values: Mapping[str, Any]) -> dict[str, Any]:
    decision = values.get("decision") if isinstance(values.get("decision"), str) else None
    found = values.get("provision")
    top = found if type(found) is list else []
    period = {"period": values["period"]} if "period" in values else {}
    if len(top) == 1 and decision and _carried_type(top[0]) == decision:
        root = _up(top[0], _flip(decision))
        # An R5 provision with a period of its own keeps it; Consent.period then has no place.
        return {"provision": {"type": decision, **period, **root}}
    root = {"type": decision} if decision else {}
    children = [_up(child, _flip(decision)) for child in top]
    root |= period | ({"provision": children} if children else {})
    return {"provision": root} if root else {}


def _own_type(node: Any) -> str | None:
    found = node.get("type") if type(node) is dict else None
    return found if isinstance(found, str) else None


def _carried_type(node: Any) -> str | None:
    mods = node.get("modifierExtension") if type(node) is dict else None
    for ext in mods if type(mods) is list else ():
        if (
            type(ext) is dict
            and ext.get("url") == TYPE_URL
            and isinstance(ext.get("valueCode"), str)
        ):
            return str(ext["valueCode"])
    return None


def _down(node: Any, r4_type: str | None, implied: str | None) -> Any:
    """An R4 provision (its type given) as an R5 one at a depth where R5 implies ``implied``."""
    if type(node) is not dict:
        return node
    out = {k: v for k, v in node.items() if k != "type"}
    children = node.get("provision")
    if type(children) is list:
        out["provision"] = [_down(c, _own_type(c), _flip(implied)) for c in children]
    if r4_type is not None and r4_type != implied:
        mods = out.get("modifierExtension")
        carried = {"url": TYPE_URL, "valueCode": r4_type}
        out["modifierExtension"] = [*mods, carried] if type(mods) is list else [carried]
    return out


def _up(node: Any, implied: str | None) -> Any:
    """An R5 provision at a depth where R5 implies ``implied``, as an R4 one with its type."""
    if type(node) is not dict:
        return node
    r4_type = _carried_type(node) or implied
    out: dict[str, Any] = {"type": r4_type} if r4_type else {}
    for key, value in node.items():
        if key == "modifierExtension" and type(value) is list:
            kept = [e for e in value if not (type(e) is dict and e.get("url") == TYPE_URL)]
            if kept:
                out[key] = kept
        elif key == "provision" and type(value) is list:
            out[key] = [_up(child, _flip(implied)) for child in value]
        else:
            out[key] = value
    return out
