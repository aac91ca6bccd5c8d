"""One code through one index under a policy: unmapped modes, noMap, dependsOn, ambiguity."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.mapping import parse_conceptmap, translate
from middleware.mapping.index import Index, build
from middleware.mapping.model import Context, Relationship
from tests.unit.mapping.builders import (
    LOCAL,
    LOINC,
    UCUM,
    UNIT_ATTRIBUTE,
    element,
    group,
    r5_map,
    target,
    unit,
)

ALL: frozenset[Relationship] = frozenset(
    {"equivalent", "related-to", "source-is-narrower-than-target", "source-is-broader-than-target"}
)
EQUIVALENT: frozenset[Relationship] = frozenset({"equivalent"})


def forward(
    *groups: dict[str, Any], others: tuple[dict[str, Any], ...] = (), **extra: Any
) -> Index:
    main = parse_conceptmap(r5_map(*groups, **extra))
    indexes = build([main, *(parse_conceptmap(o) for o in others)])
    return indexes.forward[main.canonical]


def found(index: Index, code: str, **kwargs: Any) -> tuple[str, list[tuple[str, str, str]]]:
    kwargs.setdefault("auto", ALL)
    kwargs.setdefault("context", {})
    result = translate(index, LOCAL, code, **kwargs)
    return result.status, [(str(t.concept), t.relationship, t.via) for t in result.targets]


# --- group.unmapped modes (R5 ConceptMap group.unmapped.mode), each


MODES = [
    (
        "use-source-code",
        {"mode": "use-source-code", "relationship": "related-to"},
        ("mapped", [(f"{LOINC}|Q", "related-to", "use-source-code")]),
    ),
    (
        "fixed",
        {
            "mode": "fixed",
            "code": "ZZ",
            "display": "Other",
            "relationship": "source-is-narrower-than-target",
        },
        ("mapped", [(f"{LOINC}|ZZ", "source-is-narrower-than-target", "fixed")]),
    ),
    (
        "other-map",
        {"mode": "other-map", "otherMap": "http://ex/other"},
        ("mapped", [(f"{LOINC}|OQ", "equivalent", "element")]),
    ),
    ("none", None, ("unmapped", [])),
]


@pytest.mark.parametrize(
    ("unmapped", "expected"), [m[1:] for m in MODES], ids=[m[0] for m in MODES]
)
def test_unmapped_modes(unmapped: dict[str, Any] | None, expected: Any) -> None:
    extra: dict[str, Any] = {"unmapped": unmapped} if unmapped else {}
    other = r5_map(group(element("Q", target("OQ"))), url="http://ex/other")
    index = forward(group(element("A", target("X")), **extra), others=(other,))
    assert found(index, "Q") == expected
    # a listed code never falls through to the unmapped rule
    assert found(index, "A") == ("mapped", [(f"{LOINC}|X", "equivalent", "element")])


def test_no_map_is_not_rescued_by_the_unmapped_rule() -> None:
    index = forward(
        group(
            element("M", noMap=True),
            unmapped={"mode": "use-source-code", "relationship": "equivalent"},
        )
    )
    assert found(index, "M") == ("no-map", [])


def test_no_map_in_the_other_map_is_no_map() -> None:
    other = r5_map(group(element("Q", noMap=True)), url="http://ex/other")
    index = forward(
        group(
            element("A", target("X")), unmapped={"mode": "other-map", "otherMap": "http://ex/other"}
        ),
        others=(other,),
    )
    assert found(index, "Q") == ("no-map", [])


def test_a_code_of_another_system_is_unmapped() -> None:
    index = forward(group(element("A", target("X"))))
    assert translate(index, "http://other", "A", auto=ALL, context={}).status == "unmapped"


# --- dependsOn / product


def creatinine() -> Index:
    return forward(
        group(
            element(
                "CREA",
                target("2160-0", dependsOn=unit("mg/dL")),
                target("14682-9", dependsOn=unit("umol/L")),
            )
        ),
        additionalAttribute=UNIT_ATTRIBUTE,
    )


DEPENDS = [
    ("mass-unit", {"unit": frozenset({f"{UCUM}|mg/dL", "mg/dL"})}, ("mapped", [f"{LOINC}|2160-0"])),
    ("substance-unit", {"unit": frozenset({f"{UCUM}|umol/L"})}, ("mapped", [f"{LOINC}|14682-9"])),
    ("other-unit", {"unit": frozenset({f"{UCUM}|g/L"})}, ("unmapped", [])),
    ("no-unit", {}, ("unmapped", [])),
    (
        "both-units",
        {"unit": frozenset({f"{UCUM}|mg/dL", f"{UCUM}|umol/L"})},
        ("ambiguous", [f"{LOINC}|2160-0", f"{LOINC}|14682-9"]),
    ),
]


@pytest.mark.parametrize(
    ("context", "expected"), [d[1:] for d in DEPENDS], ids=[d[0] for d in DEPENDS]
)
def test_depends_on(context: Context, expected: tuple[str, list[str]]) -> None:
    result = translate(creatinine(), LOCAL, "CREA", auto=ALL, context=context)
    assert (result.status, [str(t.concept) for t in result.targets]) == expected


def test_without_a_context_dependent_targets_are_conditional_not_guessed() -> None:
    result = translate(creatinine(), LOCAL, "CREA", auto=ALL, context=None)
    assert result.status == "unmapped"
    assert [str(t.concept) for t in result.conditional] == [f"{LOINC}|2160-0", f"{LOINC}|14682-9"]


def test_a_product_must_already_hold() -> None:
    index = forward(
        group(element("A", target("X", product=unit("mg")))), additionalAttribute=UNIT_ATTRIBUTE
    )
    holds = {"unit": frozenset({f"{UCUM}|mg"})}
    assert translate(index, LOCAL, "A", auto=ALL, context=holds).status == "mapped"
    assert translate(index, LOCAL, "A", auto=ALL, context={}).status == "unmapped"


# --- policy and ambiguity


def test_relationships_outside_the_policy_are_withheld() -> None:
    index = forward(group(element("A", target("X", "related-to"))))
    result = translate(index, LOCAL, "A", auto=EQUIVALENT, context={})
    assert result.status == "unmapped"
    assert [t.relationship for t in result.withheld] == ["related-to"]


def test_several_matches_in_one_system_are_ambiguous_and_all_reported() -> None:
    index = forward(group(element("A", target("X"), target("Y"))))
    result = translate(index, LOCAL, "A", auto=ALL, context={})
    assert result.status == "ambiguous"
    assert [str(t.concept) for t in result.targets] == [f"{LOINC}|X", f"{LOINC}|Y"]


def test_the_policy_can_remove_an_ambiguity() -> None:
    index = forward(group(element("A", target("X"), target("Y", "related-to"))))
    result = translate(index, LOCAL, "A", auto=EQUIVALENT, context={})
    assert (result.status, [str(t.concept) for t in result.targets]) == ("mapped", [f"{LOINC}|X"])


def test_one_match_in_each_of_two_systems_is_not_ambiguous() -> None:
    index = forward(
        group(element("A", target("X"))),
        group(element("A", target("S1")), target="http://snomed.info/sct"),
    )
    assert translate(index, LOCAL, "A", auto=ALL, context={}).status == "mapped"


def test_the_same_target_twice_counts_once() -> None:
    index = forward(
        group(element("A", target("X"))),
        group(unmapped={"mode": "fixed", "code": "X", "relationship": "equivalent"}),
    )
    result = translate(index, LOCAL, "A", auto=ALL, context={})
    assert (result.status, len(result.targets)) == ("mapped", 1)
