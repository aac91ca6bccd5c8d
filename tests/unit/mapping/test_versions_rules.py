"""The conversion rules and settings are checked at load: a bad file stops the gateway with one
SettingsError naming the file and the problem; the shipped rules name real elements."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from middleware.errors import SettingsError
from middleware.mapping.loader import folder_reader
from middleware.mapping.paths import ElementPath, check
from middleware.mapping.profile import ReadFailed
from middleware.mapping.versions import DEFAULT_RULES, Release, load_conversion, load_rules
from middleware.mapping.versions.carry import BACKBONE, DATATYPES, Spec, decode, encode, parse_spec
from middleware.mapping.versions.engine import Step
from middleware.mapping.versions.ops import Carry

Json = dict[str, Any]
MAPPINGS = Path(__file__).parents[3] / "mappings"
READ = folder_reader(MAPPINGS)
RULES = load_rules(DEFAULT_RULES, READ)
TYPES = [
    "AllergyIntolerance",
    "AuditEvent",
    "Condition",
    "Consent",
    "DocumentReference",
    "Encounter",
    "MedicationRequest",
    "Observation",
    "Patient",
    "Provenance",
]


def files(**found: Any) -> Callable[[str], Any]:
    """A reader over in-memory files (``a/b.json`` given as ``a__b_json``)."""
    table = {
        name.replace("__", "/").replace("_json", ".json"): value for name, value in found.items()
    }

    def read(path: str) -> Any:
        if path not in table:
            raise ReadFailed("cannot be read (No such file or directory)")
        return table[path]

    return read


def manifest(**types: str) -> Json:
    return {"types": types}


def encounter_rules(*steps: Json, **extra: Any) -> Json:
    return {"resourceType": "Encounter", "steps": list(steps), **extra}


def load_one(rules: Json) -> None:
    load_rules("m.json", files(m_json=manifest(Encounter="e.json"), e_json=rules))


# --- the shipped rules


def test_the_shipped_rules_cover_the_ten_types() -> None:
    assert sorted(RULES.types) == TYPES
    assert RULES.source == DEFAULT_RULES


def _element(step: Step, release: str, key: str) -> ElementPath:
    where = [s.rstrip("*") for s in step.where["R4" if release == "R4" else "R5"]]
    return ElementPath(step.resource_type, (*where, key))


def _want(spec: Spec) -> str | None:
    return spec.type if spec.type in DATATYPES and spec.type != "CodeableReference" else None


STEPS = [(step.origin, step) for rules in RULES.types.values() for step in rules.steps]


@pytest.mark.parametrize(("origin", "step"), STEPS, ids=[o for o, _ in STEPS])
def test_every_step_names_elements_of_the_right_type_in_each_release(
    origin: str, step: Step
) -> None:
    """R4 elements are checked against the fhir.resources R4B models (for these elements R4B
    is R4), R5 elements against the R5 models; an element a step carries has no counterpart."""
    releases: tuple[Release, Release] = ("R4", "R5")
    for release in releases:
        model_version = "R4B" if release == "R4" else "R5"
        for key, spec in step.keys[release].items():
            assert check(_element(step, release, key), model_version, want=_want(spec)) is None
            if isinstance(step.op, Carry):
                other = "R5" if release == "R4" else "R4B"
                assert check(_element(step, release, key), other, want=None) is not None


def test_status_and_required_paths_exist() -> None:
    versions: tuple[tuple[Release, str], ...] = (("R4", "R4B"), ("R5", "R5"))
    for rules in RULES.types.values():
        for status in rules.statuses:
            for release, version in versions:
                if status.codes[release]:
                    path = ElementPath(rules.resource_type, status.path)
                    assert check(path, version, want=None) is None, (path, version)
        for release, version in versions:
            for steps in rules.required.get(release, ()):
                last = steps[-1].replace("[x]", "String")
                path = ElementPath(
                    rules.resource_type, (*(s.rstrip("*") for s in steps[:-1]), last)
                )
                assert check(path, version, want=None) is None, (path, version)


# --- settings


def test_conversion_settings_default_to_the_shipped_rules_and_refuse_lossy_writes() -> None:
    conversion = load_conversion({}, READ)
    assert conversion.rules == RULES
    assert conversion.refuse_on_loss("write")
    assert not conversion.refuse_on_loss("response")


def test_conversion_settings_can_flip_each_operation() -> None:
    conversion = load_conversion({"loss": {"response": "refuse", "write": "report"}}, READ)
    assert conversion.refuse == {"response"}


def test_bad_conversion_settings_list_every_problem() -> None:
    with pytest.raises(SettingsError) as caught:
        load_conversion({"rules": "", "loss": {"write": "maybe"}, "extra": 1}, READ)
    message = str(caught.value)
    assert "conversion: unknown key 'extra'" in message
    assert "conversion.rules: a path below the mappings folder" in message
    assert "conversion.loss.write: 'maybe' is not 'report' or 'refuse'" in message


def test_the_shipped_profile_section_loads() -> None:
    profile = json.loads((MAPPINGS / "profiles" / "r5-client-r4-server.json").read_text())
    assert load_conversion(profile["conversion"], READ).rules.types.keys() == RULES.types.keys()


# --- bad rule files


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        (encounter_rules({"at": "Encounter", "op": "teleport"}), "e.json: steps[0]: op must be one of"),
        (encounter_rules({"at": "Encounter", "op": "carry", "r4": {"x": "code"}, "colour": 1}), "steps[0]: unknown keys ['colour']"),
        (encounter_rules({"at": "Encounter", "op": "carry", "r4": {"x": "Codeable"}}), "steps[0]: r4.x: 'Codeable' is not a FHIR primitive or datatype name"),
        (encounter_rules({"at": "Patient.x", "op": "carry", "r4": {"x": "code"}}), "steps[0]: at: 'Patient.x' is not a path starting with Encounter"),
        (encounter_rules({"at": "Encounter", "op": "carry", "r4": {"x": "code"}, "r5": {"y": "code"}}), "carry: elements of exactly one side"),
        (encounter_rules({"at": "Encounter", "op": "rename", "r4": {"a": "code"}, "r5": {"b": "code"}, "item": "magic"}), "rename: unknown item 'magic'"),
        (encounter_rules({"at": "Encounter", "op": "rename", "r4": {"a": "code"}, "r5": {"b": "Coding"}, "item": "code-coding"}), "system goes with code-concept/code-coding"),
        (encounter_rules({"at": "Encounter", "op": "codeable-reference", "r4": {"a": "CodeableConcept"}, "r5": {"b": "CodeableReference"}}), "codeable-reference: a missing or malformed parameter ('concept')"),
        (
            encounter_rules(
                {"at": "Encounter.participant", "op": "rename", "r4": {"individual": "Reference"}, "r5": {"actor": "Reference"}},
                {"at": "Encounter", "op": "rename", "r4": {"participant": [{"individual": "Reference"}]}, "r5": {"participant": [{"actor": "Reference"}]}},
            ),
            "steps[0]: must come after e.json: steps[1], which is above it",
        ),
        (
            encounter_rules(
                {"at": "Encounter", "op": "carry", "r4": {"x": "code"}},
                {"at": "Encounter", "op": "carry", "r4": {"x": "code"}},
            ),
            "steps[1]: converts ['x'] again",
        ),
        (encounter_rules(statuses=[{"path": "Encounter.status", "R4": ["a"]}]), "statuses[0]: needs path, R4 and R5"),
        (encounter_rules(required={"R6": []}), "required: {'R4': [path, ...], 'R5': [...]}"),
        (encounter_rules(datatypes={"Widget": ["Encounter.x"]}), "datatypes.Widget: not a datatype with steps"),
        ({"resourceType": "Patient"}, "e.json: an object for resourceType 'Encounter'"),
        (encounter_rules({"at": "Encounter", "op": "carry", "r4": {"stauts": "code"}}), "steps[0]: Encounter has no element 'stauts' in R4"),
        (encounter_rules({"at": "Encounter", "op": "rename", "r4": {"class": "CodeableConcept"}, "r5": {"class": "CodeableConcept[]"}}), "steps[0]: Encounter.class is a Coding in R4, not a CodeableConcept"),
        (encounter_rules({"at": "Encounter", "op": "carry", "r4": {"subject": "Reference"}}), "steps[0]: carries Encounter.subject, but R5 has it"),
    ],
    ids=[
        "unknown-op", "unknown-key", "unknown-type", "foreign-path", "carry-both-sides", "unknown-item",
        "system-without-item", "missing-parameter", "inner-before-outer", "element-twice",
        "status-without-r5", "required-unknown-release", "unknown-datatype", "wrong-resource-type",
        "no-such-element", "wrong-datatype", "carries-what-has-a-counterpart",
    ],
)  # fmt: skip
def test_a_bad_rule_names_its_file_and_problem(rules: Json, problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_one(rules)
    assert str(caught.value).startswith("invalid conversion rules m.json:")
    assert problem in str(caught.value)


def test_every_problem_of_every_file_is_listed_at_once() -> None:
    read = files(
        m_json={"types": {"Encounter": "e.json", "Consent": "c.json", "Patient": "missing.json"}},
        e_json=encounter_rules({"op": "teleport"}),
        c_json={"resourceType": "Consent", "steps": [{"at": "Consent", "op": "carry"}]},
    )
    with pytest.raises(SettingsError) as caught:
        load_rules("m.json", read)
    lines = str(caught.value).splitlines()[1:]
    assert [line.strip().split(":")[0] for line in lines] == ["e.json", "c.json", "missing.json"]


def test_a_missing_manifest_is_named() -> None:
    with pytest.raises(SettingsError, match=r"nope\.json: cannot be read"):
        load_rules("nope.json", READ)


# --- the cross-version extension codec


SPECS = [
    ("code", "arrived", None),
    ("code", "arrived", {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}),
    ("CodeableConcept[]", [{"text": "a"}, {"text": "b"}], None),
    (
        {"status": "code", "period": "Period"},
        {"status": "planned", "period": {"start": "2024"}},
        None,
    ),
    (
        [{"use": "CodeableConcept[]", "value": "CodeableReference[]"}],
        [{"value": [{"concept": {"text": "x"}}]}],
        None,
    ),
    ("CodeableReference", {"reference": {"reference": "Device/1"}}, None),
]


@pytest.mark.parametrize(("raw", "value", "meta"), SPECS, ids=["code", "code-with-meta", "list", "backbone", "nested-r5-type", "r5-type"])  # fmt: skip
@pytest.mark.parametrize("host", ["R4", "R5"])
def test_encode_and_decode_are_inverses(raw: Any, value: Any, meta: Any, host: Any) -> None:
    problems: list[str] = []
    spec = parse_spec(raw, "x", problems)
    assert spec is not None
    assert problems == []
    exts = encode(value, meta, spec, "http://example.org/e", host)
    assert exts is not None
    assert decode(exts, spec, host) == (value, meta)


def test_r4_carries_an_r5_only_type_as_a_complex_extension() -> None:
    spec = Spec("CodeableReference")
    assert encode({"concept": {"text": "x"}}, None, spec, "u", "R4") == [
        {"url": "u", "extension": [{"url": "concept", "valueCodeableConcept": {"text": "x"}}]}
    ]
    assert encode({"concept": {"text": "x"}}, None, spec, "u", "R5") == [
        {"url": "u", "valueCodeableReference": {"concept": {"text": "x"}}}
    ]


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (Spec(BACKBONE, children=(("status", Spec("code")),)), {"status": "a", "surprise": 1}),
        (Spec(BACKBONE, children=(("status", Spec("code")),)), {"modifierExtension": []}),
        (Spec("CodeableConcept"), "not a concept"),
        (Spec("code"), {"not": "a code"}),
        (Spec("code", many=True), []),
    ],
    ids=[
        "unnamed-child",
        "modifier-extension",
        "primitive-for-datatype",
        "object-for-primitive",
        "empty-list",
    ],
)
def test_what_cannot_be_carried_faithfully_is_refused(spec: Spec, value: Any) -> None:
    assert encode(value, None, spec, "u", "R5") is None
