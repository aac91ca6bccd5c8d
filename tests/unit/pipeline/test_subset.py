"""``_summary`` and ``_elements`` applied at the gateway (FHIR R4 search.html#summary,
#elements): what each mode keeps, the SUBSETTED tag, the 400s, searchset matches only, and the
generated tables against the R4 StructureDefinitions."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.errors import BadRequest
from middleware.fhir.resource_types import RESOURCE_TYPES
from middleware.fhir.summary_data import (
    CHOICE_ELEMENTS,
    CHOICE_SUFFIXES,
    MANDATORY_ELEMENTS,
    SUMMARY_ELEMENTS,
)
from middleware.pipeline.subset import (
    SUBSET_PARAMS,
    SUBSETTED_TAG,
    Subset,
    apply_subset,
    apply_subset_to_answer,
    split_subset,
)

ROOT = Path(__file__).resolve().parents[3]
SECRET = "SECRET-VALUE"
TAG = dict(SUBSETTED_TAG)
ALWAYS = {"resourceType", "id", "meta"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_summary", ROOT / "scripts" / "gen_summary.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def summary(value: str) -> Subset:
    return Subset(summary=value)


def elements(*names: str) -> Subset:
    return Subset(elements=frozenset(names))


def observation() -> dict[str, Any]:
    """An Observation with summary, non-summary, mandatory, choice and primitive-extension
    elements (R4 observation.html)."""
    return {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "3", "lastUpdated": "2024-01-01T00:00:00Z"},
        "text": {"status": "generated", "div": "<div>glucose 5.4</div>"},
        "contained": [{"resourceType": "Practitioner", "id": "p"}],
        "extension": [{"url": "http://example.org/x", "valueString": "x"}],
        "identifier": [{"value": "lab-1"}],
        "status": "final",
        "_status": {"extension": [{"url": "http://example.org/y", "valueString": "y"}]},
        "category": [{"text": "laboratory"}],
        "code": {"text": "glucose"},
        "subject": {"reference": "Patient/a"},
        "encounter": {"reference": "Encounter/e"},
        "effectiveDateTime": "2024-01-01",
        "issued": "2024-01-02T00:00:00Z",
        "performer": [{"reference": "#p"}],
        "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
        "interpretation": [{"text": "normal"}],
        "note": [{"text": "fasting"}],
        "referenceRange": [{"text": "3.9-5.5"}],
        "component": [{"code": {"text": "c"}, "valueString": "v"}],
    }


def patient() -> dict[str, Any]:
    """A Patient (R4 patient.html): no mandatory elements."""
    return {
        "resourceType": "Patient",
        "id": "a",
        "meta": {"tag": [{"system": "http://example.org/tags", "code": "HTEST"}]},
        "text": {"status": "generated", "div": "<div>Ann</div>"},
        "identifier": [{"value": "mrn-1"}],
        "active": True,
        "name": [{"family": "Smith"}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://example.org/t", "valueTime": "08:00:00"}]},
        "deceasedBoolean": False,
        "multipleBirthInteger": 2,
        "maritalStatus": {"text": "married"},
        "photo": [{"contentType": "image/png", "data": "AAAA"}],
        "contact": [{"name": {"family": "Smith"}}],
        "communication": [{"language": {"text": "en"}}],
        "generalPractitioner": [{"reference": "Practitioner/p"}],
        "managingOrganization": {"reference": "Organization/o"},
        "link": [{"other": {"reference": "Patient/b"}, "type": "seealso"}],
    }


def unknown_type() -> dict[str, Any]:
    """A type R4 does not define (R5 Ingredient)."""
    return {
        "resourceType": "Ingredient",
        "id": "i",
        "meta": {"versionId": "1"},
        "text": {"status": "generated", "div": "<div>i</div>"},
        "status": "active",
        "substance": {"code": {"concept": {"text": "s"}}},
    }


def document_bundle() -> dict[str, Any]:
    """A stored document Bundle, read as a resource (R4 bundle.html: ``type`` is mandatory)."""
    return {
        "resourceType": "Bundle",
        "id": "d",
        "identifier": {"value": "doc-1"},
        "type": "document",
        "timestamp": "2024-01-01T00:00:00Z",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c"}}],
    }


def keys(resource: dict[str, Any]) -> set[str]:
    return set(resource)


# -- split_subset: what it takes out of the query ---------------------------------------------

OTHER = [("code", "1234-5"), ("_count", "10")]


@pytest.mark.parametrize(
    ("params", "subset", "rest"),
    [
        # neither given: nothing taken, order kept
        (OTHER, None, OTHER),
        ([], None, []),
        # each subsetting _summary value, taken out wherever it stands
        ([("_summary", "true"), *OTHER], summary("true"), OTHER),
        ([OTHER[0], ("_summary", "text"), OTHER[1]], summary("text"), OTHER),
        ([*OTHER, ("_summary", "data")], summary("data"), OTHER),
        ([*OTHER, ("_summary", "false")], summary("false"), OTHER),
        # count is not a subset: left in place for the stage that refuses or forwards it
        (
            [OTHER[0], ("_summary", "count"), OTHER[1]],
            None,
            [OTHER[0], ("_summary", "count"), OTHER[1]],
        ),
        # _elements: plain, several, qualified by type, a choice base name, underscores
        ([("_elements", "code"), *OTHER], elements("code"), OTHER),
        (
            [*OTHER, ("_elements", "code,status,subject")],
            elements("code", "status", "subject"),
            OTHER,
        ),
        ([("_elements", "Observation.code,status")], elements("Observation.code", "status"), []),
        ([("_elements", "value,effectiveDateTime")], elements("value", "effectiveDateTime"), []),
        ([("_elements", "a_b")], elements("a_b"), []),
        # names are case-sensitive: these are other (unknown) params, not ours
        (
            [("_Summary", "true"), ("_ELEMENTS", "code")],
            None,
            [("_Summary", "true"), ("_ELEMENTS", "code")],
        ),
    ],
    ids=[
        "none",
        "empty",
        "summary-true-first",
        "summary-text-middle",
        "summary-data-last",
        "summary-false",
        "summary-count-stays",
        "elements-one",
        "elements-several",
        "elements-qualified",
        "elements-choice",
        "elements-underscore",
        "case-sensitive-names",
    ],
)
def test_split_subset_takes_out_the_subset_and_keeps_the_rest_in_order(
    params: list[tuple[str, str]], subset: Subset | None, rest: list[tuple[str, str]]
) -> None:
    assert split_subset(params) == (subset, rest)


def test_split_subset_returns_a_new_list() -> None:
    params = list(OTHER)
    _, rest = split_subset(params)
    rest.append(("x", "y"))
    assert params == OTHER


@pytest.mark.parametrize(
    "params",
    [
        # repeated
        [("_summary", "true"), ("_summary", "true")],
        [("_summary", "true"), ("_summary", "data")],
        [("_summary", "count"), ("_summary", "count")],
        [("_elements", "code"), ("_elements", "status")],
        # both
        [("_summary", "true"), ("_elements", "code")],
        [("_elements", "code"), ("_summary", "false")],
        [("_summary", "count"), ("_elements", "code")],
        # unknown _summary values (case-sensitive)
        [("_summary", SECRET)],
        [("_summary", "TRUE")],
        [("_summary", "True")],
        [("_summary", "")],
        [("_summary", "true ")],
        # empty or malformed _elements items
        [("_elements", "")],
        [("_elements", "code,")],
        [("_elements", ",code")],
        [("_elements", "code,,status")],
        [("_elements", " code")],
        [("_elements", "code, status")],
        [("_elements", "name.given")],
        [("_elements", "Observation.code.text")],
        [("_elements", "Observation.")],
        [("_elements", ".code")],
        [("_elements", "value[x]")],
        [("_elements", "-text")],
        [("_elements", "1code")],
        [("_elements", "_status")],
        [("_elements", SECRET + "!")],
        # modifiers are not defined for result parameters
        [("_summary:exact", "true")],
        [("_elements:missing", "code")],
    ],
    ids=[
        "summary-repeated",
        "summary-repeated-different",
        "count-repeated",
        "elements-repeated",
        "both",
        "both-reversed",
        "both-with-count",
        "summary-unknown",
        "summary-upper",
        "summary-capitalised",
        "summary-empty",
        "summary-trailing-space",
        "elements-empty",
        "elements-trailing-comma",
        "elements-leading-comma",
        "elements-empty-item",
        "elements-leading-space",
        "elements-space-after-comma",
        "elements-nested-path",
        "elements-qualified-nested-path",
        "elements-qualifier-only",
        "elements-leading-dot",
        "elements-choice-syntax",
        "elements-exclusion",
        "elements-digit-first",
        "elements-primitive-companion",
        "elements-punctuation",
        "summary-modifier",
        "elements-modifier",
    ],
)
def test_split_subset_refuses_with_400_and_never_echoes_the_value(
    params: list[tuple[str, str]],
) -> None:
    with pytest.raises(BadRequest) as caught:
        split_subset([*OTHER, *params])
    assert caught.value.status == 400
    assert caught.value.code == "invalid"
    assert SECRET not in caught.value.diagnostics
    assert any(param in caught.value.diagnostics for param in SUBSET_PARAMS)


@pytest.mark.parametrize(
    ("summary_value", "elements_value"),
    [
        (None, None),
        ("true", frozenset({"code"})),
        ("count", None),
        ("TRUE", None),
        (None, frozenset()),
        (None, frozenset({"a.b.c"})),
    ],
    ids=["neither", "both", "count", "unknown-summary", "no-elements", "malformed-element"],
)
def test_subset_is_validated_on_construction(
    summary_value: str | None, elements_value: frozenset[str] | None
) -> None:
    with pytest.raises(ValueError):
        Subset(summary=summary_value, elements=elements_value)


# -- apply_subset: what each mode keeps -------------------------------------------------------

OBS_SUMMARY = ALWAYS | {
    "identifier",
    "status",
    "_status",
    "code",
    "subject",
    "encounter",
    "effectiveDateTime",
    "issued",
    "performer",
    "valueQuantity",
    "component",
}
PATIENT_SUMMARY = ALWAYS | {
    "identifier",
    "active",
    "name",
    "gender",
    "birthDate",
    "_birthDate",
    "deceasedBoolean",
    "managingOrganization",
    "link",
}


@pytest.mark.parametrize(
    ("resource", "subset", "kept"),
    [
        # _summary=true: the isSummary elements (+ mandatory, + resourceType/id/meta); R4 marks
        # text, contained, extension, category, interpretation, note, referenceRange non-summary
        (observation(), summary("true"), OBS_SUMMARY),
        (patient(), summary("true"), PATIENT_SUMMARY),
        # _summary=text: text, id, meta and the mandatory elements
        (observation(), summary("text"), ALWAYS | {"text", "status", "_status", "code"}),
        (patient(), summary("text"), ALWAYS | {"text"}),
        # _summary=data: everything but text
        (observation(), summary("data"), set(observation()) - {"text"}),
        (patient(), summary("data"), set(patient()) - {"text"}),
        # _elements: the listed elements, the mandatory ones, resourceType/id/meta
        (observation(), elements("code"), ALWAYS | {"code", "status", "_status"}),
        (observation(), elements("Observation.code"), ALWAYS | {"code", "status", "_status"}),
        (observation(), elements("Patient.name"), ALWAYS | {"code", "status", "_status"}),
        (
            observation(),
            elements("note", "subject"),
            ALWAYS | {"code", "status", "_status", "note", "subject"},
        ),
        (observation(), elements("value"), ALWAYS | {"code", "status", "_status", "valueQuantity"}),
        (
            observation(),
            elements("valueQuantity"),
            ALWAYS | {"code", "status", "_status", "valueQuantity"},
        ),
        (observation(), elements("valueString"), ALWAYS | {"code", "status", "_status"}),
        (
            observation(),
            elements("effective", "text"),
            ALWAYS | {"code", "status", "_status", "effectiveDateTime", "text"},
        ),
        (observation(), elements("val", "notAnElement"), ALWAYS | {"code", "status", "_status"}),
        (observation(), elements("Code"), ALWAYS | {"code", "status", "_status"}),
        (patient(), elements("birthDate"), ALWAYS | {"birthDate", "_birthDate"}),
        (
            patient(),
            elements("deceased", "Patient.multipleBirth"),
            ALWAYS | {"deceasedBoolean", "multipleBirthInteger"},
        ),
        (patient(), elements("Observation.code"), ALWAYS),
        # a stored Bundle read as a resource: type is mandatory (R4 bundle.html)
        (
            document_bundle(),
            elements("identifier"),
            ALWAYS | {"identifier", "type"},
        ),
        (document_bundle(), summary("text"), {"resourceType", "id", "meta", "type"}),
        # a type the tables do not know: only resourceType/id/meta (+ text for text)
        (unknown_type(), summary("true"), ALWAYS),
        (unknown_type(), summary("text"), ALWAYS | {"text"}),
        (unknown_type(), elements("status"), ALWAYS),
        (unknown_type(), summary("data"), set(unknown_type()) - {"text"}),
        ({"id": "x", "status": "final"}, summary("true"), {"id", "meta"}),
    ],
    ids=[
        "observation-summary-true",
        "patient-summary-true",
        "observation-summary-text",
        "patient-summary-text",
        "observation-summary-data",
        "patient-summary-data",
        "observation-elements-code",
        "observation-elements-qualified",
        "observation-elements-other-type-qualifier",
        "observation-elements-several",
        "observation-elements-choice-base",
        "observation-elements-choice-name",
        "observation-elements-choice-name-absent",
        "observation-elements-choice-and-text",
        "observation-elements-not-elements",
        "observation-elements-case-sensitive",
        "patient-elements-primitive-companion",
        "patient-elements-choice-bases",
        "patient-elements-other-type",
        "document-bundle-elements",
        "document-bundle-summary-text",
        "unknown-type-summary-true",
        "unknown-type-summary-text",
        "unknown-type-elements",
        "unknown-type-summary-data",
        "no-resource-type",
    ],
)
def test_apply_subset_keeps_what_the_spec_table_says(
    resource: dict[str, Any], subset: Subset, kept: set[str]
) -> None:
    result = apply_subset(resource, subset)
    assert keys(result) == kept
    for name in kept - {"meta"}:
        assert result[name] == resource[name], name


def test_summary_false_keeps_everything_untagged() -> None:
    resource = observation()
    result = apply_subset(resource, summary("false"))
    assert result == observation()
    assert result is not resource


def test_summary_true_drops_contained_resources_as_the_table_says() -> None:
    assert "contained" not in SUMMARY_ELEMENTS["Observation"]
    assert "contained" not in apply_subset(observation(), summary("true"))


# -- the SUBSETTED tag ------------------------------------------------------------------------

SUBSETS = [
    summary("true"),
    summary("text"),
    summary("data"),
    elements("code"),
    elements("Observation.note", "value"),
]
SUBSET_IDS = ["true", "text", "data", "elements", "elements-qualified"]


@pytest.mark.parametrize("subset", SUBSETS, ids=SUBSET_IDS)
def test_every_subsetted_resource_is_tagged_and_keeps_its_meta(subset: Subset) -> None:
    result = apply_subset(observation(), subset)
    assert result["meta"] == {**observation()["meta"], "tag": [TAG]}


@pytest.mark.parametrize("subset", SUBSETS, ids=SUBSET_IDS)
def test_the_tag_is_added_after_existing_tags(subset: Subset) -> None:
    result = apply_subset(patient(), subset)
    assert result["meta"]["tag"] == [*patient()["meta"]["tag"], TAG]


@pytest.mark.parametrize("subset", SUBSETS, ids=SUBSET_IDS)
def test_the_tag_is_not_duplicated(subset: Subset) -> None:
    resource = observation()
    resource["meta"]["tag"] = [{**TAG, "display": "Resource encoded in summary mode"}]
    result = apply_subset(resource, subset)
    assert result["meta"]["tag"] == resource["meta"]["tag"]


@pytest.mark.parametrize("subset", SUBSETS, ids=SUBSET_IDS)
def test_a_resource_without_meta_gets_one_for_the_tag(subset: Subset) -> None:
    resource = {"resourceType": "Observation", "status": "final", "code": {"text": "c"}}
    assert apply_subset(resource, subset)["meta"] == {"tag": [TAG]}


@pytest.mark.parametrize("subset", [*SUBSETS, summary("false")], ids=[*SUBSET_IDS, "false"])
@pytest.mark.parametrize("make", [observation, patient, unknown_type], ids=["obs", "pat", "unk"])
def test_the_input_is_not_mutated(subset: Subset, make: Any) -> None:
    resource = make()
    apply_subset(resource, subset)
    assert resource == make()


# -- apply_subset_to_answer: matches only, Bundle-level untouched -----------------------------


def searchset() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "s",
        "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
        "type": "searchset",
        "link": [{"relation": "self", "url": "http://gw.example/fhir/Observation"}],
        "entry": [
            {"fullUrl": "urn:1", "resource": observation(), "search": {"mode": "match"}},
            {"fullUrl": "urn:2", "resource": observation()},
            {"fullUrl": "urn:3", "resource": patient(), "search": {"mode": "include"}},
            {
                "resource": {"resourceType": "OperationOutcome", "issue": []},
                "search": {"mode": "outcome"},
            },
            {"fullUrl": "urn:4"},
            "not an entry",
        ],
    }


def test_searchset_subsets_matches_and_leaves_the_rest_whole() -> None:
    answer = searchset()
    result = apply_subset_to_answer(answer, elements("code"))
    assert {k: v for k, v in result.items() if k != "entry"} == {
        k: v for k, v in searchset().items() if k != "entry"
    }
    match, no_mode, include, outcome, no_resource, junk = result["entry"]
    small = ALWAYS | {"code", "status", "_status"}
    assert keys(match["resource"]) == small
    assert match["search"] == {"mode": "match"}
    assert match["fullUrl"] == "urn:1"
    assert keys(no_mode["resource"]) == small
    assert include is answer["entry"][2]
    assert include["resource"] == patient()
    assert outcome is answer["entry"][3]
    assert no_resource is answer["entry"][4]
    assert junk == "not an entry"
    assert answer == searchset()


def test_searchset_under_summary_true_tags_matches_not_the_bundle() -> None:
    result = apply_subset_to_answer(searchset(), summary("true"))
    assert result["meta"] == searchset()["meta"]
    assert result["entry"][0]["resource"]["meta"]["tag"] == [TAG]
    assert result["entry"][2]["resource"]["meta"] == patient()["meta"]


def test_history_subsets_every_version_and_keeps_deletes() -> None:
    deleted = {"request": {"method": "DELETE", "url": "Patient/a"}}
    history = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": patient(), "request": {"method": "PUT"}}, deleted],
    }
    result = apply_subset_to_answer(history, summary("text"))
    assert keys(result["entry"][0]["resource"]) == ALWAYS | {"text"}
    assert result["entry"][0]["request"] == {"method": "PUT"}
    assert result["entry"][1] is deleted


@pytest.mark.parametrize(
    ("make", "subset"),
    [
        (observation, summary("true")),
        (patient, elements("name")),
        (document_bundle, elements("identifier")),
        (unknown_type, summary("text")),
    ],
    ids=["observation", "patient", "document-bundle", "unknown-type"],
)
def test_a_plain_resource_answer_is_subsetted_as_one_resource(make: Any, subset: Subset) -> None:
    answer = make()
    assert apply_subset_to_answer(answer, subset) == apply_subset(make(), subset)
    assert answer == make()


@pytest.mark.parametrize(
    "document", [None, [], "text", 3, {"resourceType": "Bundle", "type": "searchset"}]
)
def test_answers_without_resources_to_subset_are_returned_as_is(document: Any) -> None:
    assert apply_subset_to_answer(document, summary("true")) is document


def test_summary_false_returns_the_answer_itself() -> None:
    answer = searchset()
    assert apply_subset_to_answer(answer, summary("false")) is answer


# -- properties -------------------------------------------------------------------------------

NAMES = sorted({*observation(), *patient(), *unknown_type(), "contained", "_id", "valueString"})
values = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=2)
)
resources = st.builds(
    lambda rtype, body: {"resourceType": rtype, **body},
    st.sampled_from(["Observation", "Patient", "Ingredient", "Bundle"]),
    st.dictionaries(st.sampled_from([n for n in NAMES if n != "resourceType"]), values),
)
subsets = st.one_of(
    st.sampled_from(["true", "text", "data", "false"]).map(summary),
    st.frozensets(
        st.sampled_from([*NAMES[1:], "Observation.code", "Patient.name", "value", "deceased"]),
        min_size=1,
    )
    .filter(lambda names: all(not n.startswith("_") for n in names))
    .map(lambda n: Subset(elements=n)),
)


@given(resources, subsets)
def test_a_subset_only_removes_shares_values_and_tags_once(
    resource: dict[str, Any], subset: Subset
) -> None:
    before = copy.deepcopy(resource)
    result = apply_subset(resource, subset)
    assert resource == before
    assert set(result) <= set(resource) | {"meta"}
    assert result["resourceType"] == resource["resourceType"]
    if "id" in resource:
        assert result["id"] is resource["id"]
    for name, value in result.items():
        if name != "meta":
            assert value is resource[name]
    if subset.summary == "false":
        assert result == resource
    else:
        assert result["meta"]["tag"].count(TAG) == 1


@given(resources, subsets)
def test_a_primitive_companion_goes_with_its_element(
    resource: dict[str, Any], subset: Subset
) -> None:
    result = apply_subset(resource, subset)
    for name in resource:
        if name.startswith("_") and name[1:] in resource:
            assert (name in result) == (name[1:] in result), name


# -- the generated tables ---------------------------------------------------------------------


def test_the_tables_cover_exactly_the_r4_resource_types() -> None:
    assert set(SUMMARY_ELEMENTS) == RESOURCE_TYPES
    assert set(MANDATORY_ELEMENTS) == RESOURCE_TYPES
    assert set(CHOICE_ELEMENTS) <= RESOURCE_TYPES


@pytest.mark.parametrize(
    ("rtype", "in_summary", "not_in_summary", "mandatory"),
    [
        (
            "Observation",
            {
                "code",
                "status",
                "subject",
                "effectiveDateTime",
                "effectivePeriod",
                "effectiveTiming",
                "effectiveInstant",
                "valueQuantity",
                "valueCodeableConcept",
                "valueString",
                "valueBoolean",
                "valueInteger",
                "valueRange",
                "valueRatio",
                "valueSampledData",
                "valueTime",
                "valueDateTime",
                "valuePeriod",
                "id",
                "meta",
            },
            {"note", "referenceRange", "text", "contained", "extension", "category"},
            {"code", "status"},
        ),
        (
            "Patient",
            {"identifier", "name", "gender", "birthDate", "deceasedBoolean", "deceasedDateTime"},
            {"multipleBirthBoolean", "multipleBirthInteger", "contact", "text", "photo"},
            set(),
        ),
        (
            "MedicationRequest",
            {"status", "intent", "medicationCodeableConcept", "medicationReference", "subject"},
            {"note", "dosageInstruction", "encounter"},
            {"status", "intent", "medicationCodeableConcept", "medicationReference", "subject"},
        ),
        ("Bundle", {"type", "entry", "total", "link"}, {"language"}, {"type"}),
    ],
    ids=["Observation", "Patient", "MedicationRequest", "Bundle"],
)
def test_the_tables_match_the_r4_resource_pages(
    rtype: str, in_summary: set[str], not_in_summary: set[str], mandatory: set[str]
) -> None:
    assert in_summary <= SUMMARY_ELEMENTS[rtype]
    assert not (not_in_summary & SUMMARY_ELEMENTS[rtype])
    assert MANDATORY_ELEMENTS[rtype] == mandatory


def test_choice_tables_name_bases_and_suffixes() -> None:
    assert CHOICE_ELEMENTS["Observation"] == {"effective", "value"}
    assert CHOICE_ELEMENTS["Patient"] == {"deceased", "multipleBirth"}
    assert {"Quantity", "DateTime", "CodeableConcept", "Reference", "Boolean"} <= CHOICE_SUFFIXES
    assert all(suffix[0].isupper() for suffix in CHOICE_SUFFIXES)


# -- the generator ----------------------------------------------------------------------------


def definitions() -> Path | None:
    """The R4 definitions folder, or None locally when not installed (CI must have them)."""
    folder: Path = GEN.default_definitions()
    if (folder / GEN.STRUCTURE_DEFINITIONS_FILE).exists():
        return folder
    if os.environ.get("CI") == "true":
        pytest.fail(f"the FHIR R4 definitions are missing at {folder}; run install-upstream.sh")
    return None


def test_generator_reproduces_the_committed_module() -> None:
    folder = definitions()
    if folder is None:
        pytest.skip("the FHIR R4 definitions are not installed (run install-upstream.sh)")
    table = GEN.build(GEN.load(folder / GEN.STRUCTURE_DEFINITIONS_FILE))
    committed = (ROOT / "middleware" / "fhir" / "summary_data.py").read_text(encoding="utf-8")
    assert GEN.render(table) == committed


def definition(rtype: str, *elements: dict[str, Any], abstract: bool = False) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "StructureDefinition",
            "kind": "resource",
            "abstract": abstract,
            "type": rtype,
            "fhirVersion": "4.0.1",
            "snapshot": {"element": [{"path": rtype, "min": 0}, *elements]},
        }
    }


def element(path: str, *types: str, summary: bool = False, minimum: int = 0) -> dict[str, Any]:
    return {
        "path": path,
        "min": minimum,
        "isSummary": summary,
        "type": [{"code": t} for t in types],
    }


def test_generator_lists_summary_mandatory_and_choice_names() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            definition(
                "Thing",
                element("Thing.id", "http://hl7.org/fhirpath/System.String", summary=True),
                element("Thing.status", "code", summary=True, minimum=1),
                element("Thing.value[x]", "dateTime", "Quantity", summary=True),
                element("Thing.item[x]", "Reference", "CodeableConcept", minimum=1),
                element("Thing.note", "Annotation"),
                element("Thing.part", "BackboneElement", summary=True),
                element("Thing.part.detail", "string", summary=True, minimum=1),
            ),
            definition(
                "DomainResource", element("DomainResource.text", summary=True), abstract=True
            ),
            {"resource": {"resourceType": "SearchParameter", "code": "x"}},
        ],
    }
    table = GEN.build(bundle)
    assert table.summary == {"Thing": ("id", "part", "status", "valueDateTime", "valueQuantity")}
    assert table.mandatory == {"Thing": ("itemCodeableConcept", "itemReference", "status")}
    assert table.choices == {"Thing": ("item", "value")}
    assert table.suffixes == ("CodeableConcept", "DateTime", "Quantity", "Reference")
    namespace: dict[str, Any] = {}
    exec(compile(GEN.render(table), "summary_data.py", "exec"), namespace)
    assert namespace["SUMMARY_ELEMENTS"] == {"Thing": frozenset(table.summary["Thing"])}
    assert namespace["MANDATORY_ELEMENTS"] == {"Thing": frozenset(table.mandatory["Thing"])}
    assert namespace["CHOICE_ELEMENTS"] == {"Thing": frozenset({"item", "value"})}
    assert namespace["CHOICE_SUFFIXES"] == frozenset(table.suffixes)


@pytest.mark.parametrize(
    "bundle",
    [
        {"resourceType": "Parameters"},
        {"resourceType": "Bundle", "entry": []},
        {"resourceType": "Bundle", "entry": [definition("T", element("T.v[x]", "not a type"))]},
        {"resourceType": "Bundle", "entry": [definition("T", element("T.v[x]"))]},
    ],
    ids=["not-a-bundle", "no-definitions", "bad-choice-type", "choice-without-types"],
)
def test_generator_refuses_what_it_cannot_read(bundle: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        GEN.build(bundle)
