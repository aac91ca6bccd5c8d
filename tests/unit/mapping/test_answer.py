"""The one-pass answer mapping (answer.py) gives what the stages it fuses gave, in place.

The oracle is the stages themselves, run one after the other on a copy: identifier systems
and codings (``map_response``), then the R4 -> R5 conversion (``convert_document``), as the
gateway ran them. Random Bundles mix the converter's resource generators with what the
hospital-a profile maps: local lab codes (one with a ``dependsOn``), aliased and other
identifier systems in resources, references, extensions and contained resources, nested
Bundles.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.fhir import jsoncodec
from middleware.mapping import map_response
from middleware.mapping.answer import fusable, map_answer_in_place
from middleware.mapping.loader import load_profile
from middleware.mapping.versions import Loss, convert_document
from tests.unit.mapping.test_versions_properties import R4_RESOURCES

Json = dict[str, Any]
PROFILES = Path(__file__).parents[3] / "mappings" / "profiles"
HOSPITAL_A = load_profile(PROFILES / "hospital-a.json")
R5_CLIENT = load_profile(PROFILES / "r5-client-r4-server.json")
#: hospital-a's codes and identifier aliases with the R4 -> R5 conversion, as the bench maps.
BOTH = dataclasses.replace(HOSPITAL_A, conversion=R5_CLIENT.conversion)

systems = st.sampled_from(["urn:oid:1.2.3.4.5", "http://hospital-a.example/mrn", "urn:x", 7])
identifier = st.builds(lambda s, v: {"system": s, "value": v}, systems, st.sampled_from(["1", "2"]))
identifiers = st.lists(identifier, min_size=1, max_size=2)
lab = st.sampled_from(["GLU", "K", "NA", "CREA", "HGB", "MISC", "ZZZ"])
lab_coding = st.builds(
    lambda code: {"system": "http://hospital-a.example/CodeSystem/lab", "code": code}, lab
)
loinc = st.builds(lambda c: {"system": "http://loinc.org", "code": c}, st.sampled_from(["2345-7"]))
unit = st.sampled_from(["mmol/L", "umol/L", "mg/dL"])
extension = st.builds(
    lambda ids: {"url": "http://x/e", "valueReference": {"identifier": ids}}, identifier
)


def decorated(resource: Json) -> st.SearchStrategy[Json]:
    """``resource`` with hospital-a's codes, identifiers and extensions added at random."""
    extras: dict[str, st.SearchStrategy[Any]] = {
        "identifier": identifiers,
        "extension": st.lists(extension, max_size=2),
        "subject": st.builds(
            lambda ids: {"reference": "Patient/p1", "identifier": ids}, identifier
        ),
    }
    if resource["resourceType"] == "Observation":
        extras["code"] = st.builds(
            lambda cs: {"coding": cs}, st.lists(st.one_of(lab_coding, loinc), max_size=3)
        )
        extras["valueQuantity"] = st.builds(
            lambda u: {
                "value": msgspec.Raw(b"5.40"),
                "unit": u,
                "system": "http://unitsofmeasure.org",
                "code": u,
            },
            unit,
        )
    chosen = st.fixed_dictionaries({}, optional=extras)
    return chosen.map(lambda added: {**resource, **added})


def contained(resource: Json) -> st.SearchStrategy[Json]:
    inner = st.one_of(R4_RESOURCES["Observation"], R4_RESOURCES["Patient"]).flatmap(decorated)
    return st.lists(inner, max_size=2).map(
        lambda items: {**resource, "contained": items} if items else resource
    )


#: Every converted type, and one without rules (its loss is "unconverted").
resources = st.one_of(
    *R4_RESOURCES.values(), st.just({"resourceType": "Basic", "code": {"text": "x"}})
).flatmap(decorated)
resources = st.one_of(resources, resources.flatmap(contained))


def bundles(depth: int) -> st.SearchStrategy[Json]:
    entry_resource = resources if depth == 0 else st.one_of(resources, bundles(depth - 1))
    entry = st.fixed_dictionaries(
        {"fullUrl": st.just("http://up/fhir/Observation/1")},
        optional={"resource": entry_resource, "search": st.just({"mode": "match"})},
    )
    return st.builds(
        lambda entries, ids: {
            "resourceType": "Bundle",
            "type": "searchset",
            **({"identifier": ids} if ids else {}),
            "entry": entries,
        },
        st.lists(entry, min_size=1, max_size=4),
        st.none() | identifier,
    )


documents = st.one_of(bundles(1), resources)


def before(document: Any, profile: Any, convert: bool, refuse: bool) -> Any:
    """The stages as the gateway ran them, on a copy; or the error they raised."""
    try:
        mapped = map_response(copy.deepcopy(document), profile)
        out: Any = mapped.resource
        losses: tuple[Loss, ...] = ()
        if convert and isinstance(out, dict):
            done = convert_document(
                out,
                source="R4",
                target="R5",
                rules=profile.conversion.rules,
                refuse_on_loss=refuse,
                status="report",
            )
            out, losses = done.resource, done.losses
        return jsoncodec.encode(out), mapped.notes, losses
    except Exception as exc:  # noqa: BLE001 - the same error, or a difference
        return type(exc), str(exc)


def now(document: Any, profile: Any, convert: bool, refuse: bool) -> Any:
    try:
        done = map_answer_in_place(
            copy.deepcopy(document),
            profile,
            conversion=("R4", "R5") if convert else None,
            refuse_on_loss=refuse,
        )
        return jsoncodec.encode(done.resource), done.notes, done.losses
    except Exception as exc:  # noqa: BLE001
        return type(exc), str(exc)


def test_the_shipped_profiles_are_fused() -> None:
    """Otherwise the equivalence below would only test the fallback."""
    assert fusable(BOTH)
    assert fusable(R5_CLIENT)


@settings(max_examples=300, deadline=None)
@given(document=documents, convert=st.booleans(), refuse=st.booleans())
def test_one_pass_gives_what_the_stages_gave(document: Any, convert: bool, refuse: bool) -> None:
    """Same bytes, notes, losses (or the same error) as the stages one after the other."""
    assert now(document, BOTH, convert, refuse) == before(document, BOTH, convert, refuse)


@settings(max_examples=100, deadline=None)
@given(document=documents)
def test_one_pass_gives_what_the_stages_gave_under_another_profile(document: Any) -> None:
    assert now(document, R5_CLIENT, True, False) == before(document, R5_CLIENT, True, False)


@pytest.mark.parametrize(
    "document",
    [
        [{"identifier": {"system": "urn:oid:1.2.3.4.5"}}],
        {
            "resourceType": "Bundle",
            "entry": {"resource": {"identifier": [[{"system": "urn:oid:1.2.3.4.5"}]]}},
        },
        {"resourceType": "Bundle", "entry": [[{"resource": [{"resourceType": "Observation"}]}]]},
        {"resourceType": "Observation", "contained": {"resourceType": "Patient", "id": "x"}},
        {"resourceType": "Observation", "contained": [[{"resourceType": "Patient"}], "x", 1]},
        {"resourceType": "Bundle", "contained": [{"resourceType": "Observation"}], "entry": []},
        {
            "resourceType": "Parameters",
            "parameter": [
                {
                    "resource": {
                        "resourceType": "Observation",
                        "identifier": [{"system": "urn:oid:1.2.3.4.5"}],
                    }
                }
            ],
        },
        {
            "resourceType": 3,
            "contained": [
                {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Observation"}}]}
            ],
        },
    ],
    ids=[
        "list",
        "entry-dict",
        "nested-lists",
        "contained-dict",
        "contained-odd",
        "bundle-contained",
        "parameters",
        "odd-type",
    ],
)
def test_odd_shapes_map_as_the_stages_mapped_them(document: Any) -> None:
    """Shapes the generators rarely reach: the stages' own readings of them are kept."""
    for convert in (False, True):
        assert now(document, BOTH, convert, False) == before(document, BOTH, convert, False)


def observation(codes: list[tuple[str, str]], unit: str) -> Json:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code} for system, code in codes]},
        "valueQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": unit},
    }


LAB = "http://hospital-a.example/CodeSystem/lab"


def test_repeated_codes_map_as_each_did_alone() -> None:
    """The one pass remembers what a code added, except where the translation read the
    resource (CREA depends on the unit) or noted something (each occurrence notes again)."""
    resources = [
        observation([(LAB, "CREA")], "mg/dL"),
        observation([(LAB, "CREA")], "umol/L"),
        observation([(LAB, "CREA")], "mg/dL"),
        observation([(LAB, "GLU"), ("http://loinc.org", "1-1")], "mg/dL"),
        observation([(LAB, "GLU"), ("http://loinc.org", "1-1")], "mg/dL"),
        observation([(LAB, "MISC")], "mg/dL"),
        observation([(LAB, "MISC")], "mg/dL"),
        observation([(LAB, "GLU")], "mg/dL"),
        observation([(LAB, "GLU")], "mg/dL"),
    ]
    document: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    document["entry"] = [{"resource": resource} for resource in resources]
    done = now(document, HOSPITAL_A, False, False)
    assert done == before(document, HOSPITAL_A, False, False)
    codes = [entry["resource"]["code"]["coding"] for entry in jsoncodec.decode(done[0])["entry"]]
    assert [c[-1]["code"] for c in codes[:3]] == ["2160-0", "14682-9", "2160-0"]
    assert len(done[1]) == 4  # two "already has a LOINC code", two unmapped MISC


def test_the_answer_is_edited_in_place_and_says_it_changed() -> None:
    document = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://hospital-a.example/CodeSystem/lab", "code": "GLU"}]},
        "identifier": [{"system": "urn:oid:1.2.3.4.5", "value": "1"}],
    }
    done = map_answer_in_place(document, HOSPITAL_A)
    assert done.resource is document
    assert done.changed
    assert document["identifier"][0]["system"] == "http://hospital-a.example/mrn"
    assert len(document["code"]["coding"]) == 2
    untouched = {"resourceType": "Observation", "status": "final"}
    assert not map_answer_in_place(untouched, HOSPITAL_A).changed


@pytest.mark.parametrize(
    "r5",
    [
        {"resourceType": "Observation", "status": "final", "instantiatesCanonical": "http://x/pd"},
        {"resourceType": "Observation", "status": "final", "bodyStructure": {"reference": "B/1"}},
        {
            "resourceType": "Observation",
            "status": "final",
            "component": [{"code": {"text": "a"}, "valueReference": {"reference": "B/1"}}],
        },
    ],
    ids=["root-carried", "root-carried-reference", "below-root-carried"],
)
def test_what_r5_carried_into_r4_comes_back_in_one_pass(r5: Json) -> None:
    """The conversion skips a resource no step can change (TypeRules.idle): not one whose
    extensions carry what a step restores (every R4 -> R5 root step of Observation has no
    R4 element of its own, so only the extension list tells it has work)."""
    assert R5_CLIENT.conversion is not None
    rules = R5_CLIENT.conversion.rules
    r4 = convert_document(r5, source="R5", target="R4", rules=rules).resource
    assert "extension" in jsoncodec.encode(r4).decode()
    back = map_answer_in_place(copy.deepcopy(r4), R5_CLIENT, conversion=("R4", "R5"))
    assert back.resource == r5
    assert convert_document(r4, source="R4", target="R5", rules=rules).resource == r5


def test_the_mapper_tells_its_caller_when_an_owned_answer_changed() -> None:
    """Release returns the upstream's bytes for a read whose answer the mapping left alone:
    it tells by the object it gets back, so an answer changed in place comes back as a new
    root (a shallow copy) and one left alone as itself."""
    from middleware.pipeline.mapper import Mapper  # noqa: PLC0415 - the stage under test

    mapper = Mapper(HOSPITAL_A, "digest")
    untouched = {"resourceType": "Observation", "status": "final"}
    assert mapper.answer(untouched, owned=True) is untouched
    coded = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": LAB, "code": "GLU"}]},
    }
    mapped = mapper.answer(coded, owned=True)
    assert mapped is not coded
    assert mapped == mapper.answer(
        {"resourceType": "Observation", "code": {"coding": [{"system": LAB, "code": "GLU"}]}}
    )
    converting = Mapper(R5_CLIENT, "digest")
    plain = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert converting.answer(plain, owned=True) is not plain  # a conversion always answers anew
