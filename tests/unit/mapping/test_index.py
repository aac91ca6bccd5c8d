"""Forward and reverse indexes from one file; irreversible entries; other-map links and cycles."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.mapping import parse_conceptmap
from middleware.mapping.conceptmap import ConceptMap
from middleware.mapping.index import InvalidMapSet, build
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


def cm(*groups: dict[str, Any], url: str = "http://ex/a", **extra: Any) -> ConceptMap:
    return parse_conceptmap(r5_map(*groups, url=url, **extra))


def other_map(url: str, to: str) -> dict[str, Any]:
    return {"mode": "other-map", "otherMap": to}


def test_forward_and_reverse_come_from_the_same_entries() -> None:
    m = cm(
        group(
            element("A", target("X")), element("B", target("Y", "source-is-narrower-than-target"))
        )
    )
    indexes = build([m])
    forward, reverse = indexes.forward[m.canonical], indexes.reverse[m.canonical]
    assert [(str(t.concept), t.relationship) for t in forward.lookup(LOCAL, "B").targets] == [
        (f"{LOINC}|Y", "source-is-narrower-than-target")
    ]
    assert [(str(t.concept), t.relationship) for t in reverse.lookup(LOINC, "Y").targets] == [
        (f"{LOCAL}|B", "source-is-broader-than-target")
    ]
    assert (forward.source_systems, reverse.source_systems) == (
        frozenset({LOCAL}),
        frozenset({LOINC}),
    )


def test_reverse_swaps_depends_on_and_product() -> None:
    m = cm(
        group(element("A", target("X", dependsOn=unit("mg"), product=unit("g")))),
        additionalAttribute=UNIT_ATTRIBUTE,
    )
    [back] = build([m]).reverse[m.canonical].lookup(LOINC, "X").targets
    assert [a.value for a in back.depends_on] == ["http://unitsofmeasure.org|g"]
    assert [a.value for a in back.product] == ["http://unitsofmeasure.org|mg"]


def test_unmapped_rules_have_no_reverse() -> None:
    m = cm(
        group(
            element("A", target("X")),
            unmapped={"mode": "use-source-code", "relationship": "equivalent"},
        )
    )
    reverse = build([m]).reverse[m.canonical]
    assert reverse.lookup(LOINC, "Q").targets == ()


# --- irreversible entries are reported, not refused


def test_many_to_one_and_not_equivalent_are_reported() -> None:
    m = cm(
        group(
            element("A", target("X")),
            element("A2", target("X")),
            element("B", target("Y", "related-to")),
            element("C", target("Z")),
        )
    )
    report = build([m]).irreversible[m.canonical]
    kinds = sorted((r.kind, str(r.target), tuple(str(s) for s in r.sources)) for r in report)
    assert kinds == [
        ("many-to-one", f"{LOINC}|X", (f"{LOCAL}|A", f"{LOCAL}|A2")),
        ("not-equivalent", f"{LOINC}|Y", (f"{LOCAL}|B",)),
    ]
    assert all(str(r) for r in report)


def test_a_one_to_one_equivalent_map_reports_nothing() -> None:
    m = cm(group(element("A", target("X")), element("B", target("Y"))))
    assert build([m]).irreversible[m.canonical] == ()


# --- other-map


def test_other_map_continues_in_the_other_maps_forward_index() -> None:
    a = cm(group(element("A", target("X")), unmapped=other_map("a", "http://ex/b")))
    b = cm(group(element("B", target("Y"))), url="http://ex/b")
    indexes = build([a, b])
    [found] = indexes.forward[a.canonical].lookup(LOCAL, "B").targets
    assert (str(found.concept), found.conceptmap) == (f"{LOINC}|Y", "http://ex/b|1")


def test_other_map_by_versioned_canonical() -> None:
    a = cm(group(element("A", target("X")), unmapped=other_map("a", "http://ex/b|1")))
    b = cm(group(element("B", target("Y"))), url="http://ex/b")
    assert build([a, b]).forward[a.canonical].lookup(LOCAL, "B").targets


CYCLES = [
    ("self", [("http://ex/a", "http://ex/a")], "other-map cycle: http://ex/a|1 -> http://ex/a|1"),
    (
        "two",
        [("http://ex/a", "http://ex/b"), ("http://ex/b", "http://ex/a|1")],
        "other-map cycle: http://ex/a|1 -> http://ex/b|1 -> http://ex/a|1",
    ),
    (
        "three",
        [
            ("http://ex/a", "http://ex/b"),
            ("http://ex/b", "http://ex/c"),
            ("http://ex/c", "http://ex/a"),
        ],
        "other-map cycle: http://ex/a|1 -> http://ex/b|1 -> http://ex/c|1 -> http://ex/a|1",
    ),
]


@pytest.mark.parametrize(("links", "message"), [c[1:] for c in CYCLES], ids=[c[0] for c in CYCLES])
def test_other_map_cycles_are_found_at_load(links: list[tuple[str, str]], message: str) -> None:
    maps = [
        cm(group(element("A", target("X")), unmapped=other_map(u, to)), url=u) for u, to in links
    ]
    with pytest.raises(InvalidMapSet) as caught:
        build(maps)
    assert message in caught.value.problems


def test_a_missing_other_map_is_named() -> None:
    a = cm(group(element("A", target("X")), unmapped=other_map("a", "http://ex/gone")))
    with pytest.raises(InvalidMapSet, match="other-map http://ex/gone is not loaded"):
        build([a])


def test_an_acyclic_chain_resolves_in_any_order() -> None:
    a = cm(group(element("A", target("X")), unmapped=other_map("a", "http://ex/b")))
    b = cm(
        group(element("B", target("Y")), unmapped=other_map("b", "http://ex/c")), url="http://ex/b"
    )
    c = cm(group(element("C", target("Z"))), url="http://ex/c")
    indexes = build([a, c, b])
    [found] = indexes.forward[a.canonical].lookup(LOCAL, "C").targets
    assert found.conceptmap == "http://ex/c|1"
