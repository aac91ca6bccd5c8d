"""From a conversion step's JSON to its operation: parameters checked, problems collected.

Each operation (:mod:`middleware.mapping.versions.ops`, ``versions.audit``,
``versions.consent``) takes the step's element specs (``r4``, ``r5``) and the parameters listed
in :data:`PARAMS`; anything else in a step is an error, so a typo never silently changes a
conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from middleware.mapping.versions.audit import Display, Network, Outcome
from middleware.mapping.versions.carry import Release, Spec
from middleware.mapping.versions.consent import Consent
from middleware.mapping.versions.items import ITEMS, NEEDS_SYSTEM, WHOLE
from middleware.mapping.versions.ops import (
    Carry,
    Choice,
    CodeableReference,
    Hoist,
    Join,
    Op,
    Participants,
    Rename,
    Unit,
)

__all__ = ["COMMON", "PARAMS", "build"]

COMMON: Final = frozenset({"at", "op", "r4", "r5", "note", "modifier", "choice"})
PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "rename": frozenset({"item", "whole", "system", "to5", "to4"}),
    "carry": frozenset(),
    "codeable-reference": frozenset({"concept", "reference", "group", "wrap"}),
    "participants": frozenset({"functions", "system", "role", "actor"}),
    "hoist": frozenset({"children", "into"}),
    "choice": frozenset({"alternatives"}),
    "join": frozenset({"into"}),
    "unit": frozenset({"value", "unit"}),
    "outcome": frozenset({"system", "to5", "to4"}),
    "network": frozenset({"uriType"}),
    "display": frozenset({"name"}),
    "consent": frozenset(),
}


def build(
    name: str,
    step: Mapping[str, Any],
    keys: Mapping[Release, Mapping[str, Spec]],
    problems: list[str],
) -> Op | None:
    """The operation ``name`` of ``step`` (its JSON) over ``keys``; None after a problem."""
    k4, k5 = keys["R4"], keys["R5"]
    try:
        if name == "rename":
            return _rename(step, k4, k5, problems)
        if name == "carry":
            _require(bool(k4) != bool(k5), "carry: elements of exactly one side")
            return Carry()
        if name == "codeable-reference":
            _require(len(k5) == 1, "codeable-reference: one R5 element")
            concept, reference = str(step["concept"]), str(step["reference"])
            group = step.get("group")
            _require(
                set(k4) == ({group} if group else {concept, reference}),
                "codeable-reference: r4 must hold concept and reference (or their group)",
            )
            return CodeableReference(
                concept, reference, next(iter(k5.items())), k4, group, step.get("wrap")
            )
        if name == "participants":
            functions = dict(step["functions"])
            _require(
                set(functions) == set(k4) and len(k5) == 1, "participants: r4 keys = functions"
            )
            return Participants(
                functions,
                str(step["system"]),
                next(iter(k5)),
                str(step["role"]),
                str(step["actor"]),
            )
        if name == "hoist":
            children, into = dict(step["children"]), step.get("into")
            _require(len(k4) == 1, "hoist: one R4 backbone")
            _require(
                set(k5) == set(children.values()) | ({into} if into else set()), "hoist: r5 keys"
            )
            return Hoist(next(iter(k4)), into, children)
        if name == "choice":
            alternatives = dict(step["alternatives"])
            _require(
                set(alternatives) == set(k4) and set(alternatives.values()) == set(k5),
                "choice: keys",
            )
            return Choice(alternatives, keys)
        if name == "join":
            _require(len(k5) == 1 and step["into"] in k4, "join: one R5 list, into an R4 element")
            return Join(tuple(k4), next(iter(k5)), str(step["into"]))
        if name == "unit":
            _require(len(k4) == 1 and len(k5) == 2 and step["value"] in k5, "unit: keys")
            unit_key = next(k for k in k5 if k != step["value"])
            return Unit(next(iter(k4)), str(step["value"]), unit_key, str(step["unit"]))
        if name == "outcome":
            _require(
                set(k4) == {"outcome", "outcomeDesc"} and set(k5) == {"outcome"}, "outcome: keys"
            )
            return Outcome(str(step["system"]), dict(step["to5"]), dict(step["to4"]))
        if name == "network":
            _require(set(k4) == {"network"}, "network: r4 must be network")
            return Network(str(step["uriType"]))
        if name == "display":
            _require(len(k5) == 1 and set(k4) == {*k5, step["name"]}, "display: keys")
            return Display(next(iter(k5)), str(step["name"]))
        if name == "consent":
            _require(
                set(k4) == {"provision"} and set(k5) == {"decision", "period", "provision"},
                "consent: keys",
            )
            return Consent()
    except ValueError as exc:
        problems.append(str(exc))
        return None
    except (KeyError, TypeError) as exc:
        problems.append(f"{name}: a missing or malformed parameter ({exc})")
        return None
    problems.append(f"unknown op {name!r}")
    return None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _rename(
    step: Mapping[str, Any], k4: Mapping[str, Spec], k5: Mapping[str, Spec], problems: list[str]
) -> Op | None:
    _require(len(k4) == 1 and len(k5) == 1, "rename: one element each side")
    item_name, whole_name = step.get("item"), step.get("whole")
    _require(item_name is None or item_name in ITEMS, f"rename: unknown item {item_name!r}")
    _require(whole_name is None or whole_name in WHOLE, f"rename: unknown whole {whole_name!r}")
    needs_system = item_name in NEEDS_SYSTEM
    _require(
        needs_system == ("system" in step), "rename: system goes with code-concept/code-coding"
    )
    to5, to4 = dict(step.get("to5", {})), dict(step.get("to4", {}))
    codes = {str(v) for v in (*to5, *to5.values(), *to4, *to4.values())}
    _require(all(isinstance(c, str) and c for c in codes), "rename: to5/to4 map codes to codes")
    return Rename(
        next(iter(k4.items())),
        next(iter(k5.items())),
        ITEMS[item_name] if item_name else None,
        WHOLE[whole_name] if whole_name else None,
        {"system": str(step["system"])} if needs_system else {},
        to5,
        to4,
    )
