"""R4 (and R4B) ConceptMaps, converted to R5 shape before anything else reads them.

The ``equivalence`` -> ``relationship`` table is HL7's own
(http://hl7.org/fhir/StructureMap/ConceptMap4to5#ConceptMapRelationship, FHIR Extensions Pack
5.1.0, ConceptMap "ConceptMap4to5_ConceptMapRelationship"). That table has no row for
``disjoint``; the R4 code system places ``disjoint`` under ``unmatched``
(http://hl7.org/fhir/R4/codesystem-concept-map-equivalence.html), so it converts like
``unmatched``, to ``not-related-to``. An ``unmatched``/``disjoint`` target without a code is
R4's way of saying "no map" and becomes R5 ``element.noMap = true``.

Other R4 -> R5 renames (http://hl7.org/fhir/R5/conceptmap.html, "R4 to R5"):
``source[x]``/``target[x]`` -> ``sourceScope[x]``/``targetScope[x]``; ``group.sourceVersion``
joins ``group.source`` as ``url|version``; ``unmapped.mode = provided`` -> ``use-source-code``;
``unmapped.url`` -> ``unmapped.otherMap``; ``dependsOn``/``product`` ``property`` (a uri) ->
``attribute`` declared in ``additionalAttribute``, with ``system`` + ``value`` -> ``valueCoding``
and a bare ``value`` -> ``valueString``. R4 states no relationship for ``unmapped``; R5 needs
one (cmd-9), and this module asserts the weakest, ``related-to``, so that a profile has to
allow it before such codes are applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from middleware.mapping.model import Relationship

__all__ = ["EQUIVALENCE_TO_RELATIONSHIP", "R4_ONLY_KEYS", "convert_r4", "looks_r4", "r5_elements"]

EQUIVALENCE_TO_RELATIONSHIP: Final[Mapping[str, Relationship]] = {
    "relatedto": "related-to",
    "inexact": "related-to",
    "equivalent": "equivalent",
    "equal": "equivalent",
    "wider": "source-is-narrower-than-target",
    "subsumes": "source-is-narrower-than-target",
    "narrower": "source-is-broader-than-target",
    "specializes": "source-is-broader-than-target",
    "unmatched": "not-related-to",
    "disjoint": "not-related-to",  # child of 'unmatched' in the R4 code system
}
_NO_MAP: Final = frozenset({"unmatched", "disjoint"})
_UNMAPPED_MODES: Final = {"provided": "use-source-code", "fixed": "fixed", "other-map": "other-map"}
_ROOT_RENAMES: Final = {
    "sourceUri": "sourceScopeUri",
    "sourceCanonical": "sourceScopeCanonical",
    "targetUri": "targetScopeUri",
    "targetCanonical": "targetScopeCanonical",
}
_R5_ROOT: Final = (
    "additionalAttribute",
    "property",
    "sourceScopeUri",
    "sourceScopeCanonical",
    "targetScopeUri",
    "targetScopeCanonical",
)
#: Keys only an R4/R4B ConceptMap has, at the root or in a group.
R4_ONLY_KEYS: Final = frozenset({*_ROOT_RENAMES, "sourceVersion", "targetVersion"})


def looks_r4(raw: Mapping[str, Any]) -> bool:
    """True if ``raw`` uses an element only R4/R4B defines (``equivalence``, ``source[x]``...)."""
    if any(key in raw for key in R4_ONLY_KEYS):
        return True
    for group in _dicts(raw.get("group")):
        if any(key in group for key in R4_ONLY_KEYS):
            return True
        unmapped = group.get("unmapped")
        if isinstance(unmapped, Mapping) and (
            "url" in unmapped or unmapped.get("mode") == "provided"
        ):
            return True
        for element in _dicts(group.get("element")):
            if any("equivalence" in target for target in _dicts(element.get("target"))):
                return True
    return False


def r5_elements(raw: Mapping[str, Any]) -> list[str]:
    """The R5-only elements ``raw`` uses (an R4 map holding any of them mixes versions)."""
    found = [key for key in _R5_ROOT if key in raw]
    for group in _dicts(raw.get("group")):
        unmapped = group.get("unmapped")
        if isinstance(unmapped, Mapping):
            found += [f"unmapped.{k}" for k in ("otherMap", "relationship") if k in unmapped]
        for element in _dicts(group.get("element")):
            found += ["element.noMap"] if "noMap" in element else []
            for target in _dicts(element.get("target")):
                found += ["target.relationship"] if "relationship" in target else []
    return sorted(set(found))


def convert_r4(raw: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """Return the R5 form of an R4/R4B ConceptMap that fhir.resources already accepted.

    Appends to ``problems`` what cannot be converted faithfully (an unknown ``equivalence``,
    a code-less ``unmatched`` target next to real targets, R4 cmd-1: ``narrower``/``inexact``
    without a comment).
    """
    out: dict[str, Any] = {_ROOT_RENAMES.get(key, key): value for key, value in raw.items()}
    attributes: dict[str, str] = {}
    groups = []
    for g, group in enumerate(_dicts(raw.get("group"))):
        where = f"ConceptMap.group[{g}]"
        new = {k: v for k, v in group.items() if k not in ("sourceVersion", "targetVersion")}
        for side in ("source", "target"):
            if f"{side}Version" in group and side in group:
                new[side] = f"{group[side]}|{group[f'{side}Version']}"
        new["element"] = [
            _element(element, f"{where}.element[{e}]", attributes, problems)
            for e, element in enumerate(_dicts(group.get("element")))
        ]
        if isinstance(group.get("unmapped"), Mapping):
            new["unmapped"] = _unmapped(group["unmapped"])
        groups.append(new)
    if "group" in raw:
        out["group"] = groups
    if attributes:
        out["additionalAttribute"] = [
            {"code": code, "uri": code, "type": kind} for code, kind in attributes.items()
        ]
    return out


def _element(
    element: Mapping[str, Any], where: str, attributes: dict[str, str], problems: list[str]
) -> dict[str, Any]:
    new = {k: v for k, v in element.items() if k != "target"}
    targets = []
    no_map = False
    for t, target in enumerate(_dicts(element.get("target"))):
        at = f"{where}.target[{t}]"
        equivalence = target.get("equivalence")
        if equivalence in ("narrower", "inexact") and not target.get("comment"):
            problems.append(f"{at}: equivalence '{equivalence}' needs a comment (R4 cmd-1)")
        if equivalence in _NO_MAP and "code" not in target:
            no_map = True
            continue
        converted = {k: v for k, v in target.items() if k not in ("equivalence", "_equivalence")}
        relationship = EQUIVALENCE_TO_RELATIONSHIP.get(str(equivalence))
        if relationship is None:
            problems.append(f"{at}.equivalence: {equivalence!r} is not an R4 equivalence code")
        else:
            converted["relationship"] = relationship
        for kind in ("dependsOn", "product"):
            if kind in target:
                converted[kind] = [_depends(d, attributes) for d in _dicts(target[kind])]
        targets.append(converted)
    if no_map and targets:
        problems.append(f"{where}: an 'unmatched' target without a code next to mapped targets")
    elif no_map:
        new["noMap"] = True
    if targets:
        new["target"] = targets
    return new


def _depends(depends: Mapping[str, Any], attributes: dict[str, str]) -> dict[str, Any]:
    prop = str(depends.get("property", ""))
    out: dict[str, Any] = {"attribute": prop}
    value = depends.get("value")
    if "system" in depends:
        coding = {"system": depends["system"], "code": value}
        if "display" in depends:
            coding["display"] = depends["display"]
        out["valueCoding"] = coding
        attributes.setdefault(prop, "Coding")
    else:
        out["valueString"] = value
        attributes.setdefault(prop, "string")
    return out


def _unmapped(unmapped: Mapping[str, Any]) -> dict[str, Any]:
    mode = unmapped.get("mode")
    new = {k: v for k, v in unmapped.items() if k not in ("url", "mode")}
    new["mode"] = _UNMAPPED_MODES.get(str(mode), mode)
    if "url" in unmapped:
        new["otherMap"] = unmapped["url"]
    if new["mode"] != "other-map":
        new["relationship"] = "related-to"
    return new


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []
