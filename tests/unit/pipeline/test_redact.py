"""DS4P redaction: a labelled resource is withheld whole; labelled elements (inline labels,
contained resources, labelled primitives) are removed from a copy that is then marked
REDACTED once; unrelated labels and the input are left alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.fhir import jsoncodec
from middleware.pipeline.redact import INLINE_LABEL_URL, MAX_DEPTH, REDACTED, redact

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OLD_ACT_CODE = "http://hl7.org/fhir/v3/ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"

PSY = (ACT_CODE, "PSY")
ETH = (ACT_CODE, "ETH")
LABELS = frozenset({PSY, ETH})
MARKER = {"system": REDACTED[0], "code": REDACTED[1]}


def label(system: str = ACT_CODE, code: str = "PSY") -> dict[str, Any]:
    """A DS4P inline security label extension."""
    return {"url": INLINE_LABEL_URL, "valueCoding": {"system": system, "code": code}}


def observation(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
        "subject": {"reference": "Patient/p1"},
        **extra,
    }


def security(resource: dict[str, Any]) -> list[Any]:
    result: list[Any] = resource.get("meta", {}).get("security", [])
    return result


# -- withholding the whole resource ------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "labels"),
    [
        ({"system": ACT_CODE, "code": "PSY"}, LABELS),
        ({"system": ACT_CODE, "code": "ETH"}, LABELS),
        # the retired ActCode URL and the current one are one code system, both ways round
        ({"system": OLD_ACT_CODE, "code": "PSY"}, frozenset({PSY})),
        ({"system": ACT_CODE, "code": "PSY"}, frozenset({(OLD_ACT_CODE, "PSY")})),
        ({"system": OLD_ACT_CODE, "code": "PSY"}, frozenset({(OLD_ACT_CODE, "PSY")})),
        # any coding system, compared exactly
        ({"system": CONFIDENTIALITY, "code": "R"}, frozenset({(CONFIDENTIALITY, "R")})),
    ],
    ids=["psy", "eth", "old-system", "old-label", "old-both", "confidentiality"],
)
def test_labelled_resource_is_withheld(coding: dict[str, str], labels: frozenset[Any]) -> None:
    """``meta.security`` carrying a label withholds the whole resource."""
    resource = observation(meta={"security": [{"system": CONFIDENTIALITY, "code": "N"}, coding]})
    assert redact(resource, labels) is None


def test_root_inline_label_withholds() -> None:
    """An inline label on the resource's root element labels the whole resource."""
    assert redact(observation(extension=[label()]), LABELS) is None


def test_too_deep_is_withheld() -> None:
    """A resource nested past MAX_DEPTH cannot be inspected, so it is withheld (fail closed)."""
    deep: Any = {"url": "http://example.org/x"}
    for _ in range(MAX_DEPTH):
        deep = {"url": "http://example.org/x", "extension": [deep]}
    assert redact(observation(extension=[deep]), LABELS) is None
    assert redact(observation(), LABELS) is not None


# -- labels that do not match ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "labels"),
    [
        # other codes, other systems, a missing system, loose matches
        ({"system": ACT_CODE, "code": "HIV"}, LABELS),
        ({"system": CONFIDENTIALITY, "code": "PSY"}, LABELS),
        ({"code": "PSY"}, LABELS),
        ({"system": ACT_CODE, "code": "psy"}, LABELS),
        ({"system": ACT_CODE + "/", "code": "PSY"}, LABELS),
        # no labels asked for
        ({"system": ACT_CODE, "code": "PSY"}, frozenset()),
    ],
    ids=["other-code", "other-system", "no-system", "case", "trailing-slash", "none"],
)
def test_unrelated_labels_are_untouched(coding: dict[str, str], labels: frozenset[Any]) -> None:
    """A resource and an element whose labels do not match come back equal, unmarked."""
    resource = observation(
        meta={"security": [coding]},
        component=[
            {"code": {"text": "a"}, "extension": [label(coding.get("system", ""), coding["code"])]}
        ],
    )
    result = redact(resource, labels)
    assert result == resource
    assert result is not resource


# -- removing labelled elements ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # an element of an array
        (
            {
                "component": [
                    {"code": {"text": "keep"}},
                    {"code": {"text": "x"}, "extension": [label()]},
                ]
            },
            {"component": [{"code": {"text": "keep"}}]},
        ),
        # an element held by a key
        (
            {"valueCodeableConcept": {"text": "x", "extension": [label()]}, "issued": "2024"},
            {"issued": "2024"},
        ),
        # deep in arrays of objects of arrays
        (
            {
                "component": [
                    {
                        "code": {"text": "c"},
                        "interpretation": [
                            {
                                "coding": [
                                    {"code": "H"},
                                    {"code": "x", "extension": [label(code="ETH")]},
                                ]
                            }
                        ],
                    }
                ]
            },
            {
                "component": [
                    {"code": {"text": "c"}, "interpretation": [{"coding": [{"code": "H"}]}]}
                ]
            },
        ),
        # a labelled extension is itself an element
        (
            {
                "extension": [
                    {"url": "http://example.org/a", "extension": [label()]},
                    {"url": "http://example.org/b"},
                ]
            },
            {"extension": [{"url": "http://example.org/b"}]},
        ),
        # modifierExtension carries labels too
        (
            {"note": [{"text": "x", "modifierExtension": [label()]}, {"text": "ok"}]},
            {"note": [{"text": "ok"}]},
        ),
        # containers a removal empties go too (FHIR JSON has no empty arrays or objects)
        ({"note": [{"text": "x", "extension": [label()]}]}, {}),
        (
            {"valueCodeableConcept": {"coding": [{"code": "x", "extension": [label()]}]}},
            {},
        ),
        # the old ActCode URL in an inline label
        (
            {"note": [{"text": "x", "extension": [label(OLD_ACT_CODE)]}, {"text": "ok"}]},
            {"note": [{"text": "ok"}]},
        ),
    ],
    ids=[
        "array-element",
        "object-key",
        "nested",
        "extension",
        "modifier-extension",
        "emptied-array",
        "emptied-object",
        "old-system-inline",
    ],
)
def test_inline_labelled_elements_are_removed(
    extra: dict[str, Any], expected: dict[str, Any]
) -> None:
    result = redact(observation(**extra), LABELS)
    assert result is not None
    assert result == observation(**expected, meta={"security": [MARKER]})


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # a single primitive: its label sits in "_name"; value and "_name" both go
        ({"issued": "2024-01-01", "_issued": {"extension": [label()]}}, {}),
        # a labelled "_name" without a value (an extension-only primitive)
        ({"_issued": {"extension": [label()]}}, {}),
        # a primitive array: the same position of both arrays goes
        (
            {
                "category": [{"text": "c", "_text": {"id": "t"}}],
                "x": ["a", "b", "c"],
                "_x": [None, {"extension": [label()]}, {"id": "k"}],
            },
            {
                "category": [{"text": "c", "_text": {"id": "t"}}],
                "x": ["a", "c"],
                "_x": [None, {"id": "k"}],
            },
        ),
        # "_name" left with nothing but nulls goes
        ({"x": ["a", "b"], "_x": [None, {"extension": [label()]}]}, {"x": ["a"]}),
        # the only value goes: both keys go
        ({"x": ["a"], "_x": [{"extension": [label()]}]}, {}),
    ],
    ids=["single", "extension-only", "array", "nulls-only-left", "array-emptied"],
)
def test_labelled_primitives_go_with_their_values(
    extra: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Removing only a primitive's ``_name`` would release the value its label protects."""
    result = redact(observation(**extra), LABELS)
    assert result == observation(**expected, meta={"security": [MARKER]})


def test_positional_entries_stay_aligned() -> None:
    """An emptied ``_name`` entry becomes null instead of shifting later positions."""
    # the entry's only extension is itself labelled: removing it empties the entry
    inner_labelled = {"extension": [{"url": "http://example.org/e", "extension": [label()]}]}
    resource = observation(x=["a", "b", "c"], _x=[inner_labelled, None, {"id": "third"}])
    result = redact(resource, LABELS)
    assert result is not None
    assert result["x"] == ["a", "b", "c"]
    assert result["_x"] == [None, None, {"id": "third"}]


# -- contained resources -----------------------------------------------------------------------


def contained(cid: str, *codes: str, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Condition", "id": cid, **extra}
    if codes:
        resource["meta"] = {"security": [{"system": ACT_CODE, "code": code} for code in codes]}
    return resource


def test_labelled_contained_resource_is_removed() -> None:
    resource = observation(
        contained=[contained("c1"), contained("c2", "PSY"), contained("c3", "HIV")]
    )
    result = redact(resource, LABELS)
    assert result is not None
    assert [c["id"] for c in result["contained"]] == ["c1", "c3"]
    assert security(result) == [MARKER]


def test_contained_old_system_label_is_removed() -> None:
    labelled = contained("c1")
    labelled["meta"] = {"security": [{"system": OLD_ACT_CODE, "code": "ETH"}]}
    result = redact(observation(contained=[labelled], note=[{"text": "n"}]), LABELS)
    assert result == observation(note=[{"text": "n"}], meta={"security": [MARKER]})


def test_inline_labels_inside_contained_resources() -> None:
    """A contained resource keeps its place; its labelled element goes."""
    inner = contained(
        "c1", note=[{"text": "x", "extension": [label()]}, {"text": "ok"}], code={"text": "t"}
    )
    result = redact(observation(contained=[inner]), LABELS)
    assert result is not None
    assert result["contained"] == [contained("c1", note=[{"text": "ok"}], code={"text": "t"})]
    assert security(result) == [MARKER]


def test_resources_in_a_bundle_resource_are_checked_too() -> None:
    """Any nested resource with a matching ``meta.security`` goes, not only ``contained``."""
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": contained("a")}, {"resource": contained("b", "PSY")}],
    }
    result = redact(bundle, LABELS)
    assert result is not None
    assert result["entry"] == [{"resource": contained("a")}]


# -- the REDACTED marker --------------------------------------------------------------------


def test_marker_added_once_for_many_removals() -> None:
    resource = observation(
        note=[
            {"text": "a", "extension": [label()]},
            {"text": "b", "extension": [label(code="ETH")]},
        ],
        contained=[contained("c", "PSY")],
        _issued={"extension": [label()]},
    )
    result = redact(resource, LABELS)
    assert result is not None
    assert security(result) == [MARKER]


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (None, {"security": [MARKER]}),
        ({"versionId": "3"}, {"versionId": "3", "security": [MARKER]}),
        (
            {"security": [{"system": CONFIDENTIALITY, "code": "N"}]},
            {"security": [{"system": CONFIDENTIALITY, "code": "N"}, MARKER]},
        ),
        # already redacted once (e.g. upstream, or an earlier obligation): not added again
        ({"security": [dict(MARKER)]}, {"security": [MARKER]}),
    ],
    ids=["no-meta", "meta-without-security", "other-labels", "already-redacted"],
)
def test_marker_joins_existing_meta(meta: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    resource = observation(note=[{"text": "x", "extension": [label()]}, {"text": "ok"}])
    if meta is not None:
        resource["meta"] = meta
    result = redact(resource, LABELS)
    assert result is not None
    assert result["meta"] == expected


def test_no_marker_when_nothing_removed() -> None:
    resource = observation(note=[{"text": "ok"}])
    assert redact(resource, LABELS) == resource


# -- the input ------------------------------------------------------------------------------


def test_input_is_not_mutated_and_shares_nothing() -> None:
    resource = jsoncodec.decode(
        b'{"resourceType": "Observation", "id": "o",'
        b' "valueQuantity": {"value": 5.40},'
        b' "component": [{"valueQuantity": {"value": 1.0}},'
        b'   {"valueQuantity": {"value": 2.0}, "extension": [{"url": "'
        + INLINE_LABEL_URL.encode()
        + b'", "valueCoding": {"system": "http://hl7.org/fhir/v3/ActCode", "code": "PSY"}}]}],'
        b' "contained": [{"resourceType": "Condition", "id": "c",'
        b'   "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ETH"}]}}],'
        b' "meta": {"versionId": "1"}}'
    )
    before = copy.deepcopy(resource)
    result = redact(resource, LABELS)
    assert resource == before
    assert result is not None
    # decimals pass through byte for byte
    assert jsoncodec.encode(result) == (
        b'{"resourceType":"Observation","id":"o","valueQuantity":{"value":5.40},'
        b'"component":[{"valueQuantity":{"value":1.0}}],'
        b'"meta":{"versionId":"1","security":[{"system":"http://terminology.hl7.org/CodeSystem/'
        b'v3-ObservationValue","code":"REDACTED"}]}}'
    )
    result["component"][0]["valueQuantity"]["unit"] = "changed"
    result["meta"]["versionId"] = "changed"
    assert resource == before


# -- property: nothing labelled survives ----------------------------------------------------

SECRET = "SECRET-7731"

leaves = st.sampled_from(["open", 1, True, None])


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A FHIR-ish element; labelled ones hold SECRET (and so does everything inside them)."""
    labelled = draw(st.booleans())
    element: dict[str, Any] = {"v": SECRET if labelled else draw(leaves)}
    if labelled:
        system = draw(st.sampled_from([ACT_CODE, OLD_ACT_CODE]))
        element["extension"] = [label(system, draw(st.sampled_from(["PSY", "ETH"])))]
    elif draw(st.booleans()):
        element["extension"] = [label(code="HIV")]
    if depth < 3:
        for key in draw(st.lists(st.sampled_from(["a", "b", "c"]), max_size=2, unique=True)):
            if draw(st.booleans()):
                element[key] = draw(elements(depth + 1))
            else:
                element[key] = draw(st.lists(elements(depth + 1), max_size=3))
    return element


@given(body=elements())
def test_no_labelled_element_survives(body: dict[str, Any]) -> None:
    """Whatever the nesting, no value under a matching inline label is released, and the
    result is marked REDACTED exactly when something was removed."""
    resource = {"resourceType": "Basic", "id": "b", "element": body}
    before = copy.deepcopy(resource)
    result = redact(resource, LABELS)
    assert resource == before
    assert result is not None
    released = jsoncodec.encode(result)
    assert SECRET.encode() not in released
    assert b'"PSY"' not in released
    assert b'"ETH"' not in released
    had_secret = SECRET.encode() in jsoncodec.encode(resource)
    assert (security(result) == [MARKER]) is had_secret


@pytest.mark.parametrize(
    "system",
    [
        "http://hl7.org/fhir/v3/Confidentiality",
        "urn:oid:2.16.840.1.113883.5.25",
    ],
    ids=["old-url", "oid"],
)
def test_aliases_of_a_v3_system_are_the_same_label(system: str) -> None:
    """Attack: a label spelled with the retired URL or the HL7 OID of its code system escaped
    a redaction of that label (every alias is read as the code system, model.canonical_system)."""
    resource = observation(meta={"security": [{"system": system, "code": "R"}]})
    assert redact(resource, frozenset({(CONFIDENTIALITY, "R")})) is None
