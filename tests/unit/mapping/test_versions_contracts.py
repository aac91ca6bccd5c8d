"""The conversion's contracts: status value sets, the loss report and refusal, Consent's
decision, decimals and untouched elements, documents and contained resources, a pure input."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from middleware.consent.model import Provision
from middleware.consent.parse import parse_consent
from middleware.errors import UnprocessableEntity
from middleware.fhir import jsoncodec
from middleware.mapping.loader import folder_reader
from middleware.mapping.versions import (
    DEFAULT_RULES,
    Converted,
    Loss,
    Release,
    StatusNotInValueSet,
    convert,
    convert_document,
    load_rules,
)

Json = dict[str, Any]
MAPPINGS = Path(__file__).parents[3] / "mappings"
RULES = load_rules(DEFAULT_RULES, folder_reader(MAPPINGS))
X4 = "http://hl7.org/fhir/4.0/StructureDefinition/extension-"
X5 = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PATIENT = {"reference": "Patient/p1"}


def to(target: Release, resource: Json, **options: Any) -> Converted:
    source: Release = "R4" if target == "R5" else "R5"
    return convert(resource, source=source, target=target, rules=RULES, **options)


def encounter(status: str, **extra: Any) -> Json:
    return {"resourceType": "Encounter", "status": status, **extra}


def r4_consent(provision: Json, **extra: Any) -> Json:
    return {
        "resourceType": "Consent",
        "id": "k",
        "status": "active",
        "scope": {"text": "privacy"},
        "category": [{"text": "consent"}],
        "patient": PATIENT,
        **extra,
        "provision": provision,
    }


def purpose(code: str) -> list[Json]:
    return [{"system": ACT_REASON, "code": code}]


# --- status codes and the target release's value sets


@pytest.mark.parametrize(
    ("r4", "r5"),
    [
        ("planned", "planned"),
        ("arrived", "in-progress"),
        ("triaged", "in-progress"),
        ("in-progress", "in-progress"),
        ("onleave", "on-hold"),
        ("finished", "completed"),
        ("cancelled", "cancelled"),
        ("entered-in-error", "entered-in-error"),
        ("unknown", "unknown"),
    ],
)
def test_every_r4_encounter_status_has_an_r5_code(r4: str, r5: str) -> None:
    assert to("R5", encounter(r4)).resource["status"] == r5


@pytest.mark.parametrize(
    ("r5", "r4"),
    [("discharged", "finished"), ("discontinued", "cancelled")],
)
def test_r5_encounter_statuses_r4_lacks_map_to_the_nearest_and_are_carried(
    r5: str, r4: str
) -> None:
    out = to("R4", encounter(r5))
    assert out.resource == encounter(
        r4, extension=[{"url": f"{X5}Encounter.status", "valueCode": r5}]
    )
    assert out.losses[0].kind == "carried"
    assert to("R5", out.resource).resource == encounter(r5)


def test_a_status_outside_the_target_value_set_is_refused_with_422() -> None:
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "unknown"}]},
        "subject": PATIENT,
    }
    with pytest.raises(StatusNotInValueSet) as caught:
        to("R4", condition)
    assert caught.value.status == 422
    assert (caught.value.path, caught.value.code, caught.value.release) == (
        "Condition.clinicalStatus",
        "unknown",
        "R4",
    )
    assert isinstance(caught.value, UnprocessableEntity)


def test_an_answer_can_take_a_bad_status_as_a_loss_instead() -> None:
    out = to("R5", encounter("bogus"), status="report")
    assert out.resource["status"] == "bogus"
    assert out.losses == (Loss("Encounter.status", "not in the R5 value set", "invalid-status"),)


@pytest.mark.parametrize(
    ("target", "resource", "path"),
    [
        ("R5", encounter("bogus"), "Encounter.status"),
        ("R4", {"resourceType": "Consent", "status": "unknown"}, "Consent.status"),
        ("R4", {"resourceType": "MedicationRequest", "status": "active", "intent": "x"}, "MedicationRequest.intent"),
        ("R5", {"resourceType": "Provenance", "entity": [{"role": "bogus"}]}, "Provenance.entity.role"),
        ("R4", {"resourceType": "AllergyIntolerance", "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "presumed"}]}}, "AllergyIntolerance.verificationStatus"),
    ],
    ids=["encounter-unknown-code", "consent-unknown-r4-lacks", "intent", "nested-entity-role", "allergy-presumed-r4-lacks"],
)  # fmt: skip
def test_status_checks_cover_each_value_set(target: Release, resource: Json, path: str) -> None:
    with pytest.raises(StatusNotInValueSet, match=path):
        to(target, resource)


def test_codings_of_other_systems_in_a_status_concept_are_not_checked() -> None:
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": CLINICAL, "code": "active"},
                {"system": "http://snomed.info/sct", "code": "55561003"},
            ]
        },
        "subject": PATIENT,
    }
    assert to("R5", condition).resource == condition


# --- the loss report


def test_losses_name_paths_and_reasons_never_values() -> None:
    r4 = encounter(
        "arrived",
        statusHistory=[{"status": "planned", "period": {"start": "2024-01-01"}}],
        diagnosis=[{"condition": {"reference": "Condition/secret-c1"}, "rank": 1}],
    )
    out = to("R5", r4)
    assert [(loss.path, loss.kind) for loss in out.losses] == [
        ("Encounter.status", "carried"),
        ("Encounter.statusHistory", "carried"),
        ("Encounter.diagnosis.rank", "carried"),
    ]
    text = repr(out.losses)
    assert "arrived" not in text
    assert "secret" not in text
    assert "2024" not in text
    assert out.lost == ()


def test_a_type_without_rules_passes_unchanged_and_is_noted() -> None:
    practitioner = {"resourceType": "Practitioner", "id": "d1", "name": [{"family": "Who"}]}
    out = to("R5", practitioner)
    assert out.resource == practitioner
    assert out.resource is not practitioner
    assert out.losses == (
        Loss(
            "Practitioner", "not converted: no R4 -> R5 rules for this resource type", "unconverted"
        ),
    )


def test_a_required_element_without_source_is_reported_missing() -> None:
    r5 = {"resourceType": "Consent", "status": "active", "subject": PATIENT, "decision": "permit"}
    out = to("R4", r5)
    assert [(loss.path, loss.kind) for loss in out.lost] == [
        ("Consent.scope", "missing"),
        ("Consent.category", "missing"),
    ]


def test_a_consent_tree_r5_cannot_state_is_reported_dropped() -> None:
    r4 = r4_consent({"type": "deny", "provision": [{"purpose": purpose("TREAT")}]})
    out = to("R5", r4)
    assert [loss.path for loss in out.lost] == ["Consent.provision"]
    assert out.lost[0].kind == "dropped"


@pytest.mark.parametrize("target", ["R4", "R5"])
def test_refuse_on_loss_refuses_what_would_be_lost_with_422(target: Release) -> None:
    resource = (
        r4_consent({"type": "deny", "provision": [{"purpose": purpose("TREAT")}]})
        if target == "R5"
        else {"resourceType": "Consent", "status": "active", "decision": "deny"}
    )
    with pytest.raises(UnprocessableEntity) as caught:
        to(target, resource, refuse_on_loss=True)
    assert caught.value.status == 422
    assert "Consent." in caught.value.diagnostics


def test_refuse_on_loss_accepts_what_is_carried_or_not_converted() -> None:
    assert to("R5", encounter("arrived"), refuse_on_loss=True).losses[0].kind == "carried"
    practitioner = {"resourceType": "Practitioner"}
    assert to("R4", practitioner, refuse_on_loss=True).resource == practitioner


# --- carried values are restored only while they still describe the element


def test_a_carried_value_is_restored_and_its_extension_removed() -> None:
    r5 = encounter(
        "in-progress", extension=[{"url": f"{X4}Encounter.status", "valueCode": "arrived"}]
    )
    out = to("R4", r5)
    assert out.resource == encounter("arrived")
    assert out.losses == ()


def test_a_carried_value_for_an_edited_element_is_discarded_not_restored() -> None:
    # The client read "arrived" as in-progress, then completed the encounter.
    r5 = encounter(
        "completed", extension=[{"url": f"{X4}Encounter.status", "valueCode": "arrived"}]
    )
    out = to("R4", r5)
    assert out.resource == encounter("finished")
    assert [(loss.path, loss.kind) for loss in out.losses] == [("Encounter.status", "superseded")]
    assert not out.lost


def test_a_primitive_keeps_its_own_extensions() -> None:
    meta = {"extension": [{"url": "http://example.org/source", "valueString": "triage desk"}]}
    r4 = encounter("finished", _status=meta)
    r5 = to("R5", r4).resource
    assert r5 == encounter("completed", _status=meta)
    assert to("R4", r5).resource == r4


def test_elements_no_rule_names_pass_untouched() -> None:
    r4 = encounter(
        "planned",
        id="e1",
        meta={"versionId": "3", "profile": ["http://example.org/StructureDefinition/enc"]},
        text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
        identifier=[{"system": "urn:oid:1.2.3", "value": "42"}],
        priority={"text": "routine"},
        extension=[{"url": "http://example.org/ext", "valueString": "kept"}],
    )
    assert to("R5", r4).resource == r4


# --- Consent keeps its decision


def effects(node: Provision) -> Any:
    """A provision tree without its paths (they name R4 or R5 elements)."""
    return replace(node, path="", children=tuple(effects(c) for c in node.children))


def test_the_r4_root_type_is_the_r5_decision_and_nested_provisions_keep_their_effect() -> None:
    r4 = r4_consent(
        {
            "type": "deny",
            "period": {"start": "2024-01-01"},
            "provision": [
                {
                    "type": "permit",
                    "actor": [
                        {"role": {"text": "gp"}, "reference": {"reference": "Practitioner/d1"}}
                    ],
                    "provision": [{"type": "deny", "purpose": purpose("HRESCH")}],
                },
                {"type": "permit", "purpose": purpose("ETREAT")},
            ],
        }
    )
    r5 = to("R5", r4).resource
    assert r5["decision"] == "deny"
    assert r5["period"] == {"start": "2024-01-01"}
    assert "modifierExtension" not in jsoncodec.encode(r5).decode()
    old, new = parse_consent(r4), parse_consent(r5)
    [top] = old.root.children
    assert effects(new.root) == replace(effects(top), period=None)
    assert new.period == old.period
    assert to("R4", r5).resource == r4


def test_an_r5_consent_becomes_an_r4_tree_with_every_type_stated() -> None:
    actor = {"role": {"text": "researcher"}, "reference": {"reference": "Organization/o1"}}
    r5 = {
        "resourceType": "Consent",
        "id": "k",
        "status": "active",
        "category": [{"text": "consent"}],
        "subject": PATIENT,
        "decision": "permit",
        "provision": [{"purpose": purpose("HRESCH"), "provision": [{"actor": [actor]}]}],
        "extension": [{"url": f"{X4}Consent.scope", "valueCodeableConcept": {"text": "privacy"}}],
    }
    r4 = to("R4", r5).resource
    assert r4["provision"] == {
        "type": "permit",
        "provision": [
            {
                "type": "deny",
                "purpose": purpose("HRESCH"),
                "provision": [{"type": "permit", "actor": [actor]}],
            }
        ],
    }
    r4_policy, r5_policy = parse_consent(r4, version="R4"), parse_consent(r5)
    assert effects(r4_policy.root.children[0]) == effects(r5_policy.root)


def test_a_nested_type_r5_would_read_otherwise_travels_in_a_modifier_extension() -> None:
    agreeing = {"type": "permit", "purpose": purpose("TREAT")}
    r4 = r4_consent({"type": "permit", "provision": [agreeing, {"type": "deny", "purpose": purpose("HRESCH")}]})  # fmt: skip
    r5 = to("R5", r4).resource
    assert r5["decision"] == "permit"
    assert r5["provision"] == [
        {
            "purpose": purpose("TREAT"),
            "modifierExtension": [{"url": f"{X4}Consent.provision.type", "valueCode": "permit"}],
        },
        {"purpose": purpose("HRESCH")},
    ]
    assert to("R4", r5).resource == r4


def test_consent_decisions_are_not_taken_on_converted_resources() -> None:
    """Documentation by test: the conversion does not look at who may see what; the gateway
    decides on the upstream's native Consent before converting (see the module docstring)."""
    r4 = r4_consent({"type": "deny"})
    assert to("R5", r4).resource["decision"] == "deny"


# --- decimals, documents, contained resources, a pure input


def decimal(text: str) -> msgspec.Raw:
    return msgspec.Raw(text.encode())


def test_decimals_keep_their_text_through_every_kind_of_step() -> None:
    body = (
        b'{"resourceType":"Observation","status":"final","code":{"text":"ECG"},'
        b'"valueSampledData":{"origin":{"value":0.0},"period":10.00,"factor":1.50,"dimensions":1},'
        b'"component":[{"code":{"text":"k"},"valueQuantity":{"value":5.40}}]}'
    )
    r4 = jsoncodec.decode(body)
    r5 = to("R5", r4).resource
    encoded = jsoncodec.encode(r5)
    assert b'"interval":10.00,"intervalUnit":"ms","factor":1.50' in encoded
    assert b'"value":5.40' in encoded
    assert r5["valueSampledData"]["interval"] is r4["valueSampledData"]["period"]
    assert jsoncodec.encode(to("R4", r5).resource) == body


def test_a_carried_decimal_keeps_its_text() -> None:
    r5 = {
        "resourceType": "Patient",
        "photo": [{"contentType": "video/mp4", "duration": decimal("12.50")}],
    }
    r4 = to("R4", r5).resource
    assert jsoncodec.encode(r4["photo"][0]["extension"]) == (
        b'[{"url":"' + X5.encode() + b'Attachment.duration","valueDecimal":12.50}]'
    ).replace(b"Attachment.duration", b"Patient.photo.duration")
    assert jsoncodec.encode(to("R5", r4).resource) == jsoncodec.encode(r5)


def test_the_input_is_never_mutated() -> None:
    r4 = r4_consent(
        {"type": "deny", "provision": [{"type": "permit", "class": [{"code": "Observation"}]}]},
        dateTime="2024-01-01T10:00:00Z",
        contained=[encounter("arrived", id="e1")],
    )
    snapshot = copy.deepcopy(r4)
    r5 = to("R5", r4).resource
    r5_snapshot = copy.deepcopy(r5)
    to("R4", r5)
    assert r4 == snapshot
    assert r5 == r5_snapshot


def test_contained_resources_are_converted_too() -> None:
    r4 = {
        "resourceType": "Condition",
        "contained": [encounter("finished", id="e1")],
        "subject": PATIENT,
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "encounter": {"reference": "#e1"},
    }
    out = to("R5", r4)
    assert out.resource["contained"] == [encounter("completed", id="e1")]
    assert out.losses == ()


def test_a_bundle_converts_every_entry_and_nested_bundle() -> None:
    inner = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": encounter("onleave")}],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": encounter("arrived"), "search": {"mode": "match"}},
            {"resource": inner},
            {"resource": {"resourceType": "Practitioner"}},
            {"response": {"status": "404"}},
        ],
    }  # fmt: skip
    out = convert_document(bundle, source="R4", target="R5", rules=RULES)
    entries = out.resource["entry"]
    assert entries[0]["resource"]["status"] == "in-progress"
    assert entries[0]["search"] == {"mode": "match"}
    assert entries[1]["resource"]["entry"][0]["resource"]["status"] == "on-hold"
    assert entries[3] == {"response": {"status": "404"}}
    assert [(loss.path, loss.kind) for loss in out.losses] == [
        ("Bundle.entry[0].resource/Encounter.status", "carried"),
        ("Bundle.entry[2].resource/Practitioner", "unconverted"),
    ]
    back = convert_document(out.resource, source="R5", target="R4", rules=RULES)
    assert back.resource == bundle


def test_a_status_error_inside_a_bundle_names_the_entry() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": encounter("bogus")}],
    }
    with pytest.raises(
        StatusNotInValueSet, match=r"Bundle\.entry\[0\]\.resource/Encounter\.status"
    ):
        convert_document(bundle, source="R4", target="R5", rules=RULES)


def test_the_same_release_on_both_sides_converts_nothing() -> None:
    r4 = encounter("arrived")
    out = convert(r4, source="R4", target="R4", rules=RULES)
    assert out.resource == r4
    assert out.losses == ()
