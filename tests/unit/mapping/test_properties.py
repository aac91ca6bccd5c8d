"""Invariants over random maps and resources."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.fhir import jsoncodec
from middleware.mapping import is_added, map_response, parse_conceptmap, prepare_write, translate
from middleware.mapping.index import build
from middleware.mapping.model import Relationship
from tests.unit.mapping.builders import (
    LOCAL,
    LOINC,
    binding,
    element,
    group,
    make_profile,
    r5_map,
    target,
)

EQUIVALENT: frozenset[Relationship] = frozenset({"equivalent"})
code_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(code_text, code_text, min_size=1, max_size=12).filter(
        lambda d: len(set(d.values())) == len(d)
    )
)
def test_reverse_of_forward_is_identity_for_one_to_one_equivalent_maps(
    pairs: dict[str, str],
) -> None:
    cm = parse_conceptmap(r5_map(group(*(element(s, target(t)) for s, t in pairs.items()))))
    indexes = build([cm])
    assert indexes.irreversible[cm.canonical] == ()
    for source in pairs:
        [there] = translate(
            indexes.forward[cm.canonical], LOCAL, source, auto=EQUIVALENT, context={}
        ).targets
        [back] = translate(
            indexes.reverse[cm.canonical], LOINC, there.concept.code, auto=EQUIVALENT, context={}
        ).targets
        assert back.concept.key == (LOCAL, source)


# --- resources as an upstream sends them


OID = "urn:oid:1.2.3"
SNOMED = "http://snomed.info/sct"
MAP = r5_map(
    group(
        element("A", target("X")),
        element("B", target("Y", "source-is-narrower-than-target")),
        element("C", target("Z", "related-to")),
        element("AMB", target("P"), target("Q")),
        element("M", noMap=True),
        unmapped={"mode": "use-source-code", "relationship": "related-to"},
    )
)
PROFILE = make_profile(
    MAP,
    binding(
        elements=["Observation.code", "Observation.component.code"],
        auto={"response": ["equivalent", "source-is-narrower-than-target", "related-to"]},
    ),
    files={"identifiers/a.json": {"aliases": [{"upstream": OID, "client": "http://mrn.example"}]}},
    identifiers="identifiers/a.json",
)

decimals = st.decimals(
    allow_nan=False, allow_infinity=False, places=3, min_value=-1000, max_value=1000
)
raw_numbers = decimals.map(lambda d: jsoncodec.decode(str(d).encode()))
codings = st.fixed_dictionaries(
    {
        "system": st.sampled_from([LOCAL, SNOMED, ""]),
        "code": st.sampled_from(["A", "B", "C", "AMB", "M", "NOPE", ""]),
    },
    optional={"display": st.text(max_size=5), "userSelected": st.booleans()},
)
concepts = st.fixed_dictionaries(
    {"coding": st.lists(codings, min_size=1, max_size=3)}, optional={"text": st.text(max_size=5)}
)
identifiers = st.fixed_dictionaries(
    {
        "system": st.sampled_from([OID, "http://other.example"]),
        "value": st.text(min_size=1, max_size=5),
    }
)
unknown = st.recursive(
    st.none() | st.booleans() | st.integers() | raw_numbers | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["x", "y", "z"]), inner, max_size=3)
    ),
    max_leaves=8,
)
observations = st.fixed_dictionaries(
    {"resourceType": st.just("Observation"), "status": st.just("final"), "code": concepts},
    optional={
        "category": st.lists(concepts, min_size=1, max_size=2),
        "subject": st.fixed_dictionaries({"identifier": identifiers}),
        "identifier": st.lists(identifiers, min_size=1, max_size=2),
        "valueQuantity": st.fixed_dictionaries({"value": raw_numbers}),
        "component": st.lists(st.fixed_dictionaries({"code": concepts}), min_size=1, max_size=2),
        "extensionLike": unknown,
    },
)
resources = observations | st.lists(observations, min_size=1, max_size=4).map(
    lambda found: {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in found],
    }
)


def all_codings(node: Any) -> list[Any]:
    if isinstance(node, list):
        return [c for item in node for c in all_codings(item)]
    if not isinstance(node, dict):
        return []
    here = node["coding"] if isinstance(node.get("coding"), list) else []
    return here + [c for key, value in node.items() if key != "coding" for c in all_codings(value)]


@settings(max_examples=150, deadline=None)
@given(resources)
def test_write_back_strips_exactly_what_was_added(resource: dict[str, Any]) -> None:
    answered = map_response(resource, PROFILE).resource
    written = prepare_write(answered, PROFILE).resource
    assert jsoncodec.encode(written) == jsoncodec.encode(resource)


@settings(max_examples=150, deadline=None)
@given(resources)
def test_never_a_coding_without_a_system(resource: dict[str, Any]) -> None:
    answered = map_response(resource, PROFILE).resource
    for coding in all_codings(answered):
        if is_added(coding):
            assert isinstance(coding.get("system"), str)
            assert coding["system"]
            assert isinstance(coding.get("code"), str)
            assert coding["code"]


@settings(max_examples=100, deadline=None)
@given(resources)
def test_mapping_an_answer_twice_adds_nothing_more(resource: dict[str, Any]) -> None:
    once = map_response(resource, PROFILE).resource
    assert jsoncodec.encode(map_response(once, PROFILE).resource) == jsoncodec.encode(once)


@settings(max_examples=100, deadline=None)
@given(resources)
def test_only_codings_are_added_and_only_in_configured_elements(resource: dict[str, Any]) -> None:
    answered = map_response(resource, PROFILE).resource
    added = [c for c in all_codings(answered) if is_added(c)]
    assert len(all_codings(answered)) == len(all_codings(resource)) + len(added)
    assert {c["system"] for c in added} <= {LOINC}
