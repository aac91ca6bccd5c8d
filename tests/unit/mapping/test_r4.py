"""R4 ConceptMaps load as R5: HL7's equivalence -> relationship table, and its direction."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.mapping import inverse, parse_conceptmap
from middleware.mapping.conceptmap import InvalidConceptMap
from middleware.mapping.index import build
from middleware.mapping.model import Relationship
from middleware.mapping.r4 import EQUIVALENCE_TO_RELATIONSHIP
from middleware.mapping.translate import translate
from tests.unit.mapping.builders import LOCAL, LOINC, MAP, r4_target


def r4_map(*elements: dict[str, Any], unmapped: dict[str, Any] | None = None) -> dict[str, Any]:
    group: dict[str, Any] = {"source": LOCAL, "target": LOINC, "element": list(elements)}
    if unmapped:
        group["unmapped"] = unmapped
    return {
        "resourceType": "ConceptMap",
        "url": MAP,
        "version": "1",
        "status": "active",
        "sourceUri": "http://upstream.example/ValueSet/lab",
        "group": [group],
    }


def one(equivalence: str, **extra: Any) -> dict[str, Any]:
    return r4_map({"code": "A", "target": [r4_target("X", equivalence, **extra)]})


# (equivalence, relationship): http://hl7.org/fhir/StructureMap/ConceptMap4to5#ConceptMapRelationship
TABLE = [
    ("relatedto", "related-to"),
    ("inexact", "related-to"),
    ("equivalent", "equivalent"),
    ("equal", "equivalent"),
    ("wider", "source-is-narrower-than-target"),
    ("subsumes", "source-is-narrower-than-target"),
    ("narrower", "source-is-broader-than-target"),
    ("specializes", "source-is-broader-than-target"),
    ("unmatched", "not-related-to"),
    ("disjoint", "not-related-to"),  # child of 'unmatched' in the R4 code system
]


@pytest.mark.parametrize(("equivalence", "relationship"), TABLE, ids=[t[0] for t in TABLE])
def test_the_hl7_table(equivalence: str, relationship: str) -> None:
    assert EQUIVALENCE_TO_RELATIONSHIP[equivalence] == relationship


def test_the_table_covers_every_r4_code() -> None:
    r4_codes = {e for e, _ in TABLE}
    assert set(EQUIVALENCE_TO_RELATIONSHIP) == r4_codes


@pytest.mark.parametrize(
    ("equivalence", "relationship"),
    [t for t in TABLE if t[1] != "not-related-to"],
    ids=[t[0] for t in TABLE if t[1] != "not-related-to"],
)
def test_loaded_entries_carry_the_r5_relationship(equivalence: str, relationship: str) -> None:
    cm = parse_conceptmap(one(equivalence, comment="why"))
    assert cm.written_in == "R4"
    assert [e.relationship for e in cm.entries] == [relationship]


# --- direction: R4 'wider' == R5 'source-is-narrower-than-target', read forward and backward


DIRECTION = [
    ("wider", "source-is-narrower-than-target", "source-is-broader-than-target"),
    ("subsumes", "source-is-narrower-than-target", "source-is-broader-than-target"),
    ("narrower", "source-is-broader-than-target", "source-is-narrower-than-target"),
    ("specializes", "source-is-broader-than-target", "source-is-narrower-than-target"),
    ("equal", "equivalent", "equivalent"),
    ("relatedto", "related-to", "related-to"),
]


@pytest.mark.parametrize(
    ("equivalence", "forward", "backward"), DIRECTION, ids=[d[0] for d in DIRECTION]
)
def test_direction_of_a_converted_relationship(
    equivalence: str, forward: str, backward: str
) -> None:
    cm = parse_conceptmap(one(equivalence, comment="why"))
    indexes = build([cm])
    everything: set[Relationship] = {
        "related-to",
        "equivalent",
        "source-is-narrower-than-target",
        "source-is-broader-than-target",
    }
    there = translate(indexes.forward[cm.canonical], LOCAL, "A", auto=everything, context={})
    back = translate(indexes.reverse[cm.canonical], LOINC, "X", auto=everything, context={})
    assert [t.relationship for t in there.targets] == [forward]
    assert [(str(t.concept), t.relationship) for t in back.targets] == [(f"{LOCAL}|A", backward)]


@pytest.mark.parametrize(
    "relationship",
    [
        "related-to",
        "equivalent",
        "source-is-narrower-than-target",
        "source-is-broader-than-target",
        "not-related-to",
    ],
)
def test_inverse_is_an_involution(relationship: Any) -> None:
    assert inverse(inverse(relationship)) == relationship


# --- the other renames


@pytest.mark.parametrize("equivalence", ["unmatched", "disjoint"])
def test_a_codeless_unmatched_target_is_no_map(equivalence: str) -> None:
    cm = parse_conceptmap(
        r4_map({"code": "A", "target": [r4_target(None, equivalence, comment="none")]})
    )
    assert cm.entries == ()
    assert cm.groups[0].no_map == frozenset({"A"})


def test_an_unmatched_target_with_a_code_is_an_explicit_negative() -> None:
    cm = parse_conceptmap(
        r4_map({"code": "A", "target": [r4_target("X", "disjoint", comment="not X")]})
    )
    assert cm.entries == ()
    assert cm.groups[0].no_map == frozenset({"A"})


def test_provided_becomes_use_source_code_with_the_weakest_relationship() -> None:
    cm = parse_conceptmap(
        r4_map({"code": "A", "target": [r4_target("X", "equal")]}, unmapped={"mode": "provided"})
    )
    rule = cm.groups[0].unmapped
    assert rule is not None
    assert (rule.mode, rule.relationship) == ("use-source-code", "related-to")


def test_other_map_url_becomes_other_map() -> None:
    cm = parse_conceptmap(
        r4_map(
            {"code": "A", "target": [r4_target("X", "equal")]},
            unmapped={"mode": "other-map", "url": "http://example.org/other|2"},
        )
    )
    rule = cm.groups[0].unmapped
    assert rule is not None
    assert (rule.mode, rule.other_map) == ("other-map", "http://example.org/other|2")


def test_group_versions_join_the_systems() -> None:
    raw = r4_map({"code": "A", "target": [r4_target("X", "equal")]})
    raw["group"][0] |= {"sourceVersion": "7", "targetVersion": "2.77"}
    cm = parse_conceptmap(raw)
    assert cm.groups[0].source == LOCAL
    assert cm.entries[0].target.version == "2.77"


def test_depends_on_property_becomes_a_declared_attribute() -> None:
    depends = [{"property": "http://example.org/unit", "system": "http://u", "value": "mg"}]
    cm = parse_conceptmap(
        r4_map({"code": "A", "target": [r4_target("X", "equal", dependsOn=depends)]})
    )
    [attribute] = cm.entries[0].depends_on
    assert (attribute.attribute, attribute.value) == ("http://example.org/unit", "http://u|mg")


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        (r4_target("X", "narrower"), "needs a comment (R4 cmd-1)"),
        (r4_target("X", "inexact"), "needs a comment (R4 cmd-1)"),
        (r4_target("X", "bogus"), "ConceptMap.group[0].element[0].target[0].equivalence"),
    ],
    ids=["narrower-without-comment", "inexact-without-comment", "unknown-equivalence"],
)
def test_r4_problems(target: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidConceptMap) as caught:
        parse_conceptmap(r4_map({"code": "A", "target": [target]}))
    assert any(problem in p for p in caught.value.problems)
