"""Answers get marked codings added; writes get them stripped and client codes translated back."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.errors import UnprocessableEntity, UpstreamError
from middleware.fhir import jsoncodec
from middleware.mapping import MARKER_URL, is_added, map_response, prepare_write, strip_added
from middleware.mapping.model import Concept
from middleware.mapping.resource import added_coding
from tests.unit.mapping.builders import (
    CANONICAL,
    LOCAL,
    LOINC,
    UCUM,
    UNIT_ATTRIBUTE,
    binding,
    coding,
    element,
    group,
    make_profile,
    observation,
    r5_map,
    target,
    unit,
)

LAB = r5_map(
    group(
        element("A", target("X", display="Ex")),
        element("N", target("NX", "source-is-narrower-than-target")),
        element("M", noMap=True),
        element("AMB", target("P"), target("Q")),
        element(
            "CREA",
            target("2160-0", dependsOn=unit("mg/dL")),
            target("14682-9", dependsOn=unit("umol/L")),
        ),
    ),
    additionalAttribute=UNIT_ATTRIBUTE,
)
AUTO = {"response": ["equivalent", "source-is-narrower-than-target"], "write": ["equivalent"]}


def profile(**extra: Any) -> Any:
    unmapped = extra.pop("unmapped", {})
    return make_profile(
        LAB,
        binding(auto=AUTO, attributes={"unit": ["Observation.valueQuantity"]}, unmapped=unmapped),
        **extra,
    )


def codes(resource: Any, element: str = "code") -> list[tuple[str, str, bool]]:
    return [(c["system"], c["code"], is_added(c)) for c in resource[element]["coding"]]


def test_a_translation_is_added_next_to_the_source_and_marked() -> None:
    out = map_response(observation(coding(LOCAL, "A")), profile()).resource
    assert out["code"]["coding"] == [
        coding(LOCAL, "A"),
        {
            "extension": [
                {
                    "url": MARKER_URL,
                    "extension": [
                        {"url": "conceptmap", "valueCanonical": CANONICAL},
                        {"url": "relationship", "valueCode": "equivalent"},
                    ],
                }
            ],
            "system": LOINC,
            "code": "X",
            "display": "Ex",
        },
    ]


RESPONSES = [
    ("equivalent", [coding(LOCAL, "A")], [(LOCAL, "A", False), (LOINC, "X", True)]),
    ("narrower-allowed", [coding(LOCAL, "N")], [(LOCAL, "N", False), (LOINC, "NX", True)]),
    ("no-map", [coding(LOCAL, "M")], [(LOCAL, "M", False)]),
    ("ambiguous-adds-nothing", [coding(LOCAL, "AMB")], [(LOCAL, "AMB", False)]),
    (
        "already-there",
        [coding(LOCAL, "A"), coding(LOINC, "X")],
        [(LOCAL, "A", False), (LOINC, "X", False)],
    ),
    (
        "conflict-kept-upstream",
        [coding(LOCAL, "A"), coding(LOINC, "Y")],
        [(LOCAL, "A", False), (LOINC, "Y", False)],
    ),
    (
        "other-system-ignored",
        [coding("http://snomed.info/sct", "1")],
        [("http://snomed.info/sct", "1", False)],
    ),
]


@pytest.mark.parametrize(
    ("codings", "expected"), [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES]
)
def test_responses(codings: list[dict[str, Any]], expected: list[tuple[str, str, bool]]) -> None:
    assert codes(map_response(observation(*codings), profile()).resource) == expected


def test_ambiguity_and_conflicts_become_notes() -> None:
    mapped = map_response(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": observation(coding(LOCAL, "AMB"))},
                {"resource": observation(coding(LOCAL, "A"), coding(LOINC, "Y"))},
            ],
        },
        profile(),
    )
    assert [(n.source, n.status) for n in mapped.notes] == [
        (f"{LOCAL}|AMB", "ambiguous"),
        (f"{LOCAL}|A", None),
    ]


def test_depends_on_reads_the_resource() -> None:
    quantity = {
        "value": jsoncodec.decode(b"88.40"),
        "unit": "umol/L",
        "system": UCUM,
        "code": "umol/L",
    }
    out = map_response(
        observation(coding(LOCAL, "CREA"), valueQuantity=quantity), profile()
    ).resource
    assert codes(out) == [(LOCAL, "CREA", False), (LOINC, "14682-9", True)]


def test_bundle_entries_and_contained_resources_are_mapped() -> None:
    inner = observation(coding(LOCAL, "A"), id="c1")
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": observation(coding(LOCAL, "A"), contained=[inner])},
            {
                "resource": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": inner}],
                }
            },
        ],
    }
    out = map_response(bundle, profile()).resource
    first = out["entry"][0]["resource"]
    assert codes(first)[-1] == (LOINC, "X", True)
    assert codes(first["contained"][0])[-1] == (LOINC, "X", True)
    assert codes(out["entry"][1]["resource"]["entry"][0]["resource"])[-1] == (LOINC, "X", True)


def test_the_input_is_never_mutated() -> None:
    resource = observation(coding(LOCAL, "A"), contained=[observation(coding(LOCAL, "A"))])
    before = copy.deepcopy(resource)
    map_response(resource, profile())
    prepare_write(resource, profile())
    assert resource == before


def test_nothing_to_do_returns_the_same_object() -> None:
    resource = observation(coding("http://snomed.info/sct", "1"))
    assert map_response(resource, profile()).resource is resource


def test_decimals_and_unknown_elements_survive_byte_for_byte() -> None:
    text = (
        b'{"resourceType":"Observation","status":"final","_status":{"extension":[{"url":"x","valueDecimal":1.10}]},'
        b'"code":{"coding":[{"system":"'
        + LOCAL.encode()
        + b'","code":"A","userSelected":true}],"text":"t"},'
        b'"valueQuantity":{"value":5.40,"comparator":"<"},"unknownElement":{"z":1e2,"a":[0.10,-0.0]},'
        b'"component":[{"code":{"text":"c"},"valueQuantity":{"value":12345678901234567890.123456789}}]}'
    )
    out = jsoncodec.encode(map_response(jsoncodec.decode(text), profile()).resource)
    added = jsoncodec.encode(added_coding(Concept(LOINC, "X", "Ex"), CANONICAL, "equivalent"))
    expected = text.replace(b'"userSelected":true}]', b'"userSelected":true},' + added + b"]")
    assert out == expected
    assert jsoncodec.encode(prepare_write(jsoncodec.decode(out), profile()).resource) == text


# --- response policy for unmapped codes


def test_response_reject_is_a_502() -> None:
    strict = profile(unmapped={"response": {"mode": "reject"}})
    with pytest.raises(UpstreamError) as caught:
        map_response(observation(coding(LOCAL, "NOPE")), strict)
    assert "NOPE" not in caught.value.diagnostics  # upstream codes stay out of the answer


def test_response_fixed_adds_the_fixed_coding_marked() -> None:
    fixed = {
        "mode": "fixed",
        "coding": {"system": LOINC, "code": "LA-UNK"},
        "relationship": "related-to",
    }
    out = map_response(
        observation(coding(LOCAL, "NOPE")), profile(unmapped={"response": fixed})
    ).resource
    assert codes(out) == [(LOCAL, "NOPE", False), (LOINC, "LA-UNK", True)]
    assert out["code"]["coding"][1]["extension"][0]["extension"][1]["valueCode"] == "related-to"


# --- writes


def test_write_strips_what_was_added_and_nothing_else() -> None:
    added = added_coding(Concept(LOINC, "X"), CANONICAL, "equivalent")
    resource = observation(coding(LOCAL, "A"), added, category=[{"coding": [added]}])
    out = prepare_write(resource, profile()).resource
    assert codes(out) == [(LOCAL, "A", False)]
    assert out["category"] == [{}]  # an emptied coding list is dropped, never left empty


def test_strip_added_leaves_a_resource_without_markers_alone() -> None:
    resource = observation(coding(LOCAL, "A"))
    assert strip_added(resource) is resource


WRITES = [
    ("reverse-equivalent", [coding(LOINC, "X")], [(LOINC, "X", False), (LOCAL, "A", True)]),
    (
        "upstream-code-present",
        [coding(LOINC, "Y"), coding(LOCAL, "A")],
        [(LOINC, "Y", False), (LOCAL, "A", False)],
    ),
    (
        "other-system",
        [coding("http://snomed.info/sct", "1")],
        [("http://snomed.info/sct", "1", False)],
    ),
]


@pytest.mark.parametrize(
    ("codings", "expected"), [w[1:] for w in WRITES], ids=[w[0] for w in WRITES]
)
def test_writes(codings: list[dict[str, Any]], expected: list[tuple[str, str, bool]]) -> None:
    assert codes(prepare_write(observation(*codings), profile()).resource) == expected


def test_write_ambiguous_reverse_is_refused_when_strict() -> None:
    many = r5_map(group(element("A", target("X")), element("B", target("X"))))
    with pytest.raises(UnprocessableEntity, match=r"several upstream equivalents"):
        prepare_write(observation(coding(LOINC, "X")), make_profile(many, strict=True))


def test_write_ambiguous_reverse_passes_with_a_note_when_not_strict() -> None:
    many = r5_map(group(element("A", target("X")), element("B", target("X"))))
    mapped = prepare_write(observation(coding(LOINC, "X")), make_profile(many, strict=False))
    assert codes(mapped.resource) == [(LOINC, "X", False)]
    assert [n.status for n in mapped.notes] == ["ambiguous"]


def test_write_not_equivalent_reverse_is_not_applied() -> None:
    with pytest.raises(UnprocessableEntity, match="no upstream equivalent"):
        prepare_write(observation(coding(LOINC, "NX")), profile())


def test_write_unmapped_pass() -> None:
    lenient = profile(unmapped={"write": {"mode": "pass"}})
    out = prepare_write(observation(coding(LOINC, "NOPE")), lenient).resource
    assert codes(out) == [(LOINC, "NOPE", False)]


# -- translations cached by their dependsOn values ----------------------------------------------

_units = st.sampled_from(["mg/dL", "umol/L", "mmol/L", None])
_codes = st.sampled_from(["A", "CREA", "AMB", "NOPE"])


def _lab(code: str, unit_code: str | None) -> dict[str, Any]:
    extra = {} if unit_code is None else {"valueQuantity": {"system": UCUM, "code": unit_code}}
    return observation(coding(LOCAL, code), **extra)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(_codes, _units), min_size=1, max_size=8))
def test_a_bundle_maps_each_resource_as_mapping_it_alone_would(
    labs: list[tuple[str, str | None]],
) -> None:
    """Translations that read the unit are cached by the unit's values across a Bundle's
    resources: each entry is still what mapping that resource by itself gives (a cache keyed
    only by the code would give the second unit's resource the first one's LOINC code)."""
    resources = [_lab(code, unit_code) for code, unit_code in labs]
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
    mapped = map_response(bundle, profile())
    alone = [map_response(r, profile()) for r in resources]
    assert [e["resource"] for e in mapped.resource["entry"]] == [a.resource for a in alone]
    assert mapped.notes == tuple(note for a in alone for note in a.notes)
