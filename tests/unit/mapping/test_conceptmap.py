"""Loading an R5 ConceptMap: what is accepted, and every fault named with its location."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.mapping import parse_conceptmap
from middleware.mapping.conceptmap import InvalidConceptMap
from tests.unit.mapping.builders import (
    LOCAL,
    LOINC,
    UNIT_ATTRIBUTE,
    element,
    group,
    r5_map,
    target,
    unit,
)


def test_a_valid_map_keeps_its_entries_and_groups() -> None:
    cm = parse_conceptmap(
        r5_map(
            group(
                element("A", target("X", display="Ex")),
                element("B", noMap=True),
                target=f"{LOINC}|2.77",
                unmapped={"mode": "fixed", "code": "ZZ", "relationship": "related-to"},
            ),
            additionalAttribute=UNIT_ATTRIBUTE,
        )
    )
    assert cm.canonical == "http://example.org/fhir/ConceptMap/lab|1"
    assert cm.written_in == "R5"
    [entry] = cm.entries
    assert (str(entry.source), str(entry.target), entry.target.version) == (
        f"{LOCAL}|A",
        f"{LOINC}|X",
        "2.77",
    )
    [g] = cm.groups
    assert (g.codes, g.no_map) == (frozenset({"A", "B"}), frozenset({"B"}))
    assert g.unmapped is not None
    assert g.unmapped.fixed is not None
    assert (str(g.unmapped.fixed), g.unmapped.fixed.version) == (f"{LOINC}|ZZ", "2.77")


def test_not_related_to_targets_are_negative_assertions() -> None:
    cm = parse_conceptmap(
        r5_map(group(element("A", target("X", "not-related-to", comment="not X"))))
    )
    assert cm.entries == ()
    assert cm.groups[0].no_map == frozenset({"A"})


def test_depends_on_values_are_normalised() -> None:
    depends = [
        *unit("mg/dL"),
        {"attribute": "flag", "valueBoolean": True},
        {"attribute": "kind", "valueCode": "serum"},
    ]
    attributes = [
        *UNIT_ATTRIBUTE,
        {"code": "flag", "type": "boolean"},
        {"code": "kind", "type": "code"},
    ]
    cm = parse_conceptmap(
        r5_map(group(element("A", target("X", dependsOn=depends))), additionalAttribute=attributes)
    )
    assert [(a.attribute, a.value) for a in cm.entries[0].depends_on] == [
        ("flag", "true"),
        ("kind", "serum"),
        ("unit", "http://unitsofmeasure.org|mg/dL"),
    ]


def _with_unmapped(unmapped: dict[str, Any]) -> dict[str, Any]:
    return r5_map(group(element("A", target("X")), unmapped=unmapped))


# (id, map, expected fragment of one problem)
PROBLEMS: list[tuple[str, dict[str, Any], str]] = [
    # structure (fhir.resources)
    (
        "unknown-element",
        r5_map(group(element("A", target("X", colour="red")))),
        "ConceptMap.group[0].element[0].target[0].colour: Extra inputs are not permitted",
    ),
    (
        "empty-version",
        {**r5_map(group()), "version": ""},
        "ConceptMap.version: String should match pattern",
    ),
    (
        "no-version",
        {k: v for k, v in r5_map(group()).items() if k != "version"},
        "ConceptMap.version: required",
    ),
    # codes fhir.resources does not check
    (
        "bad-relationship",
        r5_map(group(element("A", target("X", "wider")))),
        "ConceptMap.group[0].element[0].target[0].relationship: 'wider' is not an R5",
    ),
    (
        "bad-mode",
        _with_unmapped({"mode": "guess", "relationship": "equivalent"}),
        "unmapped.mode: 'guess' is not use-source-code",
    ),
    (
        "mixed-versions",
        _with_unmapped({"mode": "provided", "relationship": "equivalent"}),
        "mixes R4 elements with R5 elements (target.relationship, unmapped.relationship)",
    ),
    # invariants
    (
        "cmd-1",
        r5_map(group(element("A", target("X", "source-is-broader-than-target")))),
        "needs a comment (cmd-1)",
    ),
    ("cmd-2", _with_unmapped({"mode": "fixed", "relationship": "related-to"}), "(cmd-2)"),
    ("cmd-3", _with_unmapped({"mode": "other-map"}), "(cmd-3)"),
    (
        "cmd-4",
        r5_map(group(element("A", target("X"), noMap=True))),
        "noMap is true, so there must be no target (cmd-4)",
    ),
    (
        "cmd-8",
        _with_unmapped({"mode": "use-source-code", "code": "Z", "relationship": "equivalent"}),
        "(cmd-8)",
    ),
    ("cmd-9", _with_unmapped({"mode": "use-source-code"}), "(cmd-9)"),
    (
        "cmd-10",
        _with_unmapped(
            {"mode": "fixed", "code": "Z", "relationship": "equivalent", "otherMap": "x"}
        ),
        "(cmd-10)",
    ),
    # refused rather than ignored
    (
        "element-value-set",
        r5_map(group({"valueSet": "http://vs", "target": [target("X")]})),
        "mapping a valueSet is not supported (cmd-5)",
    ),
    (
        "target-value-set",
        r5_map(group(element("A", {"valueSet": "http://vs", "relationship": "equivalent"}))),
        "mapping to a valueSet is not supported (cmd-7)",
    ),
    (
        "depends-on-quantity",
        r5_map(
            group(
                element(
                    "A",
                    target("X", dependsOn=[{"attribute": "unit", "valueQuantity": {"value": 1}}]),
                )
            ),
            additionalAttribute=UNIT_ATTRIBUTE,
        ),
        "valueQuantity is not supported",
    ),
    (
        "undeclared-attribute",
        r5_map(group(element("A", target("X", dependsOn=unit("mg"))))),
        "'unit' is not declared in additionalAttribute",
    ),
    (
        "no-target-system",
        r5_map(group(element("A", target("X")), target="")),
        "needs source and target",
    ),
    (
        "no-target-and-no-nomap",
        r5_map(group(element("A"))),
        "has no target; say noMap: true",
    ),
    (
        "mapped-twice",
        r5_map(group(element("A", target("X"))), group(element("A", target("X")))),
        "is mapped twice",
    ),
]


@pytest.mark.parametrize(
    ("raw", "problem"), [p[1:] for p in PROBLEMS], ids=[p[0] for p in PROBLEMS]
)
def test_every_problem_is_named(raw: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidConceptMap) as caught:
        parse_conceptmap(raw)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_all_problems_are_reported_at_once() -> None:
    raw = r5_map(
        group(element("A", target("X", "wider")), element("B", target("Y", "nope"))),
    )
    with pytest.raises(InvalidConceptMap) as caught:
        parse_conceptmap(raw)
    assert len(caught.value.problems) == 2


def test_a_draft_map_may_omit_the_broader_comment() -> None:
    raw = r5_map(group(element("A", target("X", "source-is-broader-than-target"))))
    raw["status"] = "draft"
    assert len(parse_conceptmap(raw).entries) == 1


def test_not_a_conceptmap() -> None:
    with pytest.raises(InvalidConceptMap, match="not ConceptMap"):
        parse_conceptmap({"resourceType": "ValueSet"})
