"""Invariants over generated resources of every converted type (small generators on purpose).

- R4 -> R5 -> R4 gives the input back, unless the loss report says something was lost;
- the R4 input validates with fhir.resources' R4B models and the R5 output with its R5 models;
- the input is never mutated, and the converter gives what it gave before its speed work;
- a Consent keeps its decision: the R4 and R5 forms compile to the same provision tree.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.consent.model import Provision
from middleware.consent.parse import parse_consent
from middleware.mapping.golden import validate_resource
from middleware.mapping.loader import folder_reader
from middleware.mapping.versions import DEFAULT_RULES, convert, convert_document, load_rules
from tests.unit.mapping.before import versions as before

Json = dict[str, Any]
RULES = load_rules(DEFAULT_RULES, folder_reader(Path(__file__).parents[3] / "mappings"))
SETTINGS = settings(max_examples=int(os.environ.get("VERSIONS_EXAMPLES", "25")), deadline=None)

# --- building blocks

word = st.sampled_from(["a", "b", "low", "high", "x-1"])
day = st.sampled_from(["2024-01-01", "2024-02-29", "2023-12-31"])
instant = st.sampled_from(["2024-01-01T10:00:00Z", "2024-02-29T23:59:59+01:00"])
moment = st.one_of(day, instant)
decimal = st.sampled_from(["5.40", "0.10", "12.0", "1.000", "100"]).map(
    lambda text: msgspec.Raw(text.encode())
)
coding = st.builds(
    lambda system, code: {"system": system, "code": code},
    st.sampled_from(["http://loinc.org", "http://snomed.info/sct"]),
    word,
)
concept = st.one_of(
    st.builds(lambda text: {"text": text}, word),
    st.builds(lambda c: {"coding": [c]}, coding),
)
reference = st.builds(
    lambda kind, ident: {"reference": f"{kind}/{ident}"},
    st.sampled_from(["Patient", "Practitioner", "Organization", "Condition"]),
    st.sampled_from(["1", "p2"]),
)
period = st.builds(lambda start: {"start": start}, moment)
patient = st.just({"reference": "Patient/p1"})


def some(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, min_size=1, max_size=2)


def resource(kind: str, required: Json, optional: Json) -> st.SearchStrategy[Json]:
    return st.fixed_dictionaries({"resourceType": st.just(kind), **required}, optional=optional)


def keyed(key: str, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Json]:
    return strategy.map(lambda value: {key: value})


def one_of_keys(**alternatives: st.SearchStrategy[Any]) -> st.SearchStrategy[Json]:
    """One of several choice elements (``value[x]``): a dict of exactly one of them."""
    return st.one_of(*(keyed(k, s) for k, s in alternatives.items()))


def merged(
    base: st.SearchStrategy[Json], *extra: st.SearchStrategy[Json]
) -> st.SearchStrategy[Json]:
    return st.tuples(base, *extra).map(lambda parts: {k: v for p in parts for k, v in p.items()})


# --- one generator per type, R4

patients = resource(
    "Patient",
    {},
    {
        "gender": st.sampled_from(["male", "female", "other", "unknown"]),
        "birthDate": day,
        "name": some(st.builds(lambda f: {"family": f}, word)),
        "photo": some(
            st.builds(lambda s: {"contentType": "image/png", "size": s}, st.integers(0, 10**6))
        ),
    },
)
observations = merged(
    resource(
        "Observation",
        {
            "status": st.sampled_from(["registered", "final", "amended", "cancelled"]),
            "code": concept,
        },
        {
            "subject": patient,
            "interpretation": some(concept),
            "referenceRange": some(st.builds(lambda v: {"low": {"value": v}}, decimal)),
            "component": some(
                st.builds(lambda c, v: {"code": c, "valueQuantity": {"value": v}}, concept, decimal)
            ),
        },
    ),
    one_of_keys(
        valueQuantity=st.builds(lambda v: {"value": v, "unit": "mmol/L"}, decimal),
        valueSampledData=st.builds(
            lambda o, p: {"origin": {"value": o}, "period": p, "dimensions": 1, "data": "1 2"},
            decimal,
            decimal,
        ),
        valueString=word,
    ),
)
encounters = resource(
    "Encounter",
    {
        "status": st.sampled_from(["planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled"]),
        "class": coding,
    },
    {
        "statusHistory": some(st.builds(lambda s, p: {"status": s, "period": p}, st.sampled_from(["planned", "arrived"]), period)),
        "classHistory": some(st.builds(lambda c, p: {"class": c, "period": p}, coding, period)),
        "serviceType": concept,
        "subject": patient,
        "participant": some(st.fixed_dictionaries({}, optional={"type": some(concept), "individual": reference}).filter(bool)),
        "period": period,
        "reasonCode": some(concept),
        "reasonReference": some(reference),
        "diagnosis": some(st.fixed_dictionaries({"condition": reference}, optional={"use": concept, "rank": st.integers(1, 3)})),
        "hospitalization": st.fixed_dictionaries(
            {"admitSource": concept},
            optional={"dietPreference": some(concept), "specialCourtesy": some(concept), "dischargeDisposition": concept},
        ),
        "location": some(st.fixed_dictionaries({"location": reference}, optional={"status": st.sampled_from(["planned", "active", "completed"]), "physicalType": concept})),
    },
)  # fmt: skip
clinical = st.sampled_from(["active", "recurrence", "inactive", "resolved"]).map(
    lambda c: {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": c}
        ]
    }
)
conditions = resource(
    "Condition",
    {"clinicalStatus": clinical, "subject": patient},
    {
        "code": concept,
        "recorder": reference,
        "asserter": reference,
        "evidence": some(st.fixed_dictionaries({}, optional={"code": some(concept), "detail": some(reference)}).filter(bool)),
    },
)  # fmt: skip
allergies = resource(
    "AllergyIntolerance",
    {"patient": patient},
    {
        "type": st.sampled_from(["allergy", "intolerance"]),
        "category": st.just(["medication"]),
        "code": concept,
        "recorder": reference,
        "asserter": reference,
        "reaction": some(st.builds(lambda m: {"manifestation": m}, some(concept))),
    },
)
dosages = merged(
    st.fixed_dictionaries({}, optional={
        "text": word,
        "doseAndRate": st.builds(lambda v: [{"doseQuantity": {"value": v}}], decimal),
        "maxDosePerPeriod": st.builds(lambda n: {"numerator": {"value": n}, "denominator": {"value": 1}}, st.integers(1, 9)),
    }),
    st.one_of(st.just({}), one_of_keys(asNeededBoolean=st.booleans(), asNeededCodeableConcept=concept)),
).filter(bool)  # fmt: skip
medication_requests = merged(
    resource(
        "MedicationRequest",
        {"status": st.sampled_from(["active", "on-hold", "completed", "stopped", "draft"]), "intent": st.sampled_from(["order", "plan"]), "subject": patient},
        {
            "performer": reference,
            "reasonCode": some(concept),
            "reasonReference": some(reference),
            "instantiatesUri": some(st.just("http://example.org/protocol")),
            "detectedIssue": some(reference),
            "dosageInstruction": some(dosages),
            "dispenseRequest": st.fixed_dictionaries({"performer": reference}, optional={"numberOfRepeatsAllowed": st.integers(0, 3)}),
        },
    ),
    one_of_keys(medicationCodeableConcept=concept, medicationReference=reference),
    st.one_of(st.just({}), one_of_keys(reportedBoolean=st.booleans(), reportedReference=reference)),
)  # fmt: skip
conditions_of_a_provision = st.fixed_dictionaries(
    {"purpose": some(st.builds(lambda c: {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": c}, st.sampled_from(["TREAT", "HRESCH", "ETREAT"])))},
    optional={
        "actor": some(st.builds(lambda r: {"role": {"text": "recipient"}, "reference": r}, reference)),
        "class": some(st.builds(lambda c: {"system": "http://hl7.org/fhir/resource-types", "code": c}, st.sampled_from(["Observation", "Condition"]))),
    },
)  # fmt: skip
effect = st.sampled_from(["deny", "permit"])


def provisions(depth: int, alternating: bool, parent: str) -> st.SearchStrategy[Json]:
    """A nested provision; ``alternating``: its type negates its parent's (R5's reading)."""
    own = st.just("permit" if parent == "deny" else "deny") if alternating else effect

    def node(pair: tuple[str, Json]) -> st.SearchStrategy[Json]:
        kind, body = pair
        if depth == 0:
            return st.just({"type": kind, **body})
        return st.lists(provisions(depth - 1, alternating, kind), max_size=2).map(
            lambda children: {"type": kind, **body, **({"provision": children} if children else {})}
        )

    return st.tuples(own, conditions_of_a_provision).flatmap(node)


def consents(alternating: bool) -> st.SearchStrategy[Json]:
    def build(root_type: str) -> st.SearchStrategy[Json]:
        root = st.fixed_dictionaries(
            {"type": st.just(root_type)},
            optional={
                "period": period,
                "provision": st.lists(
                    provisions(1, alternating, root_type), min_size=1, max_size=2
                ),
            },
        )
        return resource(
            "Consent",
            {
                "id": st.just("k1"),
                "status": st.sampled_from(["draft", "proposed", "active", "rejected", "inactive"]),
                "scope": concept,
                "category": some(concept),
                "patient": patient,
                "provision": root,
            },
            {
                "dateTime": moment,
                "performer": some(reference),
                "organization": some(reference),
                "sourceReference": reference,
                "policy": some(st.fixed_dictionaries({"uri": st.just("https://example.org/policy")}, optional={"authority": st.just("https://example.org")})),
                "policyRule": concept,
                "verification": some(st.fixed_dictionaries({"verified": st.booleans()}, optional={"verificationDate": moment})),
            },
        )  # fmt: skip

    return effect.flatmap(build)


agents = st.fixed_dictionaries(
    {"who": reference, "requestor": st.booleans()},
    optional={
        "type": concept,
        "name": word,
        "altId": word,
        "network": st.builds(lambda a, t: {"address": a, "type": t}, st.sampled_from(["10.0.0.1", "https://app.example"]), st.sampled_from(["1", "2", "5"])),
        "purposeOfUse": some(concept),
    },
)  # fmt: skip
entities = st.fixed_dictionaries(
    {"what": reference},
    optional={
        "type": coding, "role": coding, "lifecycle": coding, "securityLabel": some(coding),
        "name": word, "description": word,
        "detail": some(st.builds(lambda t, v: {"type": t, "valueString": v}, word, word)),
    },
)  # fmt: skip
audit_events = resource(
    "AuditEvent",
    {
        "type": coding,
        "subtype": some(coding),
        "action": st.sampled_from(["C", "R", "U", "D", "E"]),
        "recorded": instant,
        "agent": some(agents),
        "source": st.fixed_dictionaries({"observer": reference}, optional={"site": word, "type": some(coding)}),
    },
    {
        "period": period,
        "outcome": st.sampled_from(["0", "4", "8", "12"]),
        "outcomeDesc": word,
        "purposeOfEvent": some(concept),
        "entity": some(entities),
    },
)  # fmt: skip
provenances = resource(
    "Provenance",
    {"target": some(reference), "recorded": instant, "agent": some(st.builds(lambda w: {"who": w}, reference))},
    {
        "reason": some(concept),
        "entity": some(st.builds(lambda r, w: {"role": r, "what": w}, st.sampled_from(["derivation", "revision", "source", "removal"]), reference)),
    },
)  # fmt: skip
document_references = resource(
    "DocumentReference",
    {
        "status": st.sampled_from(["current", "superseded"]),
        "content": some(st.fixed_dictionaries(
            {"attachment": st.fixed_dictionaries({"url": st.just("Binary/b1")}, optional={"contentType": st.just("application/pdf"), "size": st.integers(0, 10**6)})},
            optional={"format": coding},
        )),
    },
    {
        "masterIdentifier": st.builds(lambda v: {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.{v}"}, st.integers(1, 9)),
        "identifier": some(st.builds(lambda v: {"value": v}, word)),
        "docStatus": st.sampled_from(["preliminary", "final", "amended"]),
        "type": concept,
        "subject": patient,
        "date": instant,
        "authenticator": reference,
        "relatesTo": some(st.builds(lambda c, t: {"code": c, "target": t}, st.sampled_from(["replaces", "appends"]), reference)),
        "context": st.fixed_dictionaries(
            {"encounter": some(reference)},
            optional={"event": some(concept), "period": period, "facilityType": concept, "practiceSetting": concept, "sourcePatientInfo": patient, "related": some(reference)},
        ),
    },
)  # fmt: skip

R4_RESOURCES: dict[str, st.SearchStrategy[Json]] = {
    "Patient": patients,
    "Observation": observations,
    "Encounter": encounters,
    "Condition": conditions,
    "AllergyIntolerance": allergies,
    "MedicationRequest": medication_requests,
    "Consent": consents(alternating=False),
    "AuditEvent": audit_events,
    "Provenance": provenances,
    "DocumentReference": document_references,
}


# --- properties


@pytest.mark.parametrize("kind", sorted(R4_RESOURCES))
@SETTINGS
@given(data=st.data())
def test_r4_to_r5_to_r4_gives_the_input_back_unless_a_loss_is_reported(
    kind: str, data: st.DataObject
) -> None:
    r4 = data.draw(R4_RESOURCES[kind])
    assert validate_resource(r4, "R4") == []
    snapshot = copy.deepcopy(r4)
    r5 = convert(r4, source="R4", target="R5", rules=RULES)
    assert r4 == snapshot
    assert validate_resource(r5.resource, "R5") == []
    back = convert(r5.resource, source="R5", target="R4", rules=RULES)
    if not r5.lost:
        assert back.resource == r4
    assert all(loss.kind in ("carried", "dropped", "missing") for loss in r5.losses)


@SETTINGS
@given(st.one_of(encounters, medication_requests, consents(alternating=True), document_references))
def test_the_only_losses_of_these_generators_are_carried(r4: Json) -> None:
    r5 = convert(r4, source="R4", target="R5", rules=RULES)
    assert r5.lost == ()
    assert convert(r5.resource, source="R5", target="R4", rules=RULES).resource == r4


def tree(node: Provision) -> Provision:
    return replace(node, path="", children=tuple(tree(c) for c in node.children))


@SETTINGS
@given(consents(alternating=True))
def test_a_consent_compiles_to_the_same_decision_tree_in_both_releases(r4: Json) -> None:
    """Nested types that negate their parents (R5's reading) carry no modifier extension,
    and the gateway's consent compiler reads the same decisions from both forms."""
    r5 = convert(r4, source="R4", target="R5", rules=RULES).resource
    assert "modifierExtension" not in str(r5)
    old, new = parse_consent(r4), parse_consent(r5)
    [top] = old.root.children
    assert new.root.effect == top.effect == r4["provision"]["type"]
    assert tree(new.root).children == tree(top).children
    assert new.period == old.period


def r5_provision() -> st.SearchStrategy[Json]:
    purposes: st.SearchStrategy[Any] = conditions_of_a_provision.map(lambda c: c["purpose"])
    children: st.SearchStrategy[Any] = st.lists(r5_provisions, min_size=1, max_size=2)
    return st.fixed_dictionaries({"purpose": purposes}, optional={"provision": children})


r5_provisions: st.SearchStrategy[Json] = st.deferred(r5_provision)
r5_consents = resource(
    "Consent",
    {
        "status": st.sampled_from(["draft", "active", "inactive", "not-done"]),
        "category": some(concept),
        "subject": patient,
        "decision": effect,
        "extension": st.just([{"url": "http://hl7.org/fhir/4.0/StructureDefinition/extension-Consent.scope", "valueCodeableConcept": {"text": "privacy"}}]),
    },
    {"provision": st.lists(r5_provisions, min_size=1, max_size=3), "grantor": some(reference), "period": period, "date": day},
)  # fmt: skip


@SETTINGS
@given(r5_consents)
def test_an_r5_consent_goes_to_r4_and_back_unchanged(r5: Json) -> None:
    assert validate_resource(r5, "R5") == []
    r4 = convert(r5, source="R5", target="R4", rules=RULES)
    assert r4.lost == ()
    assert validate_resource(r4.resource, "R4") == []
    assert convert(r4.resource, source="R4", target="R5", rules=RULES).resource == r5


def _as_before(converted: Any) -> tuple[Json, list[tuple[str, str, str]]]:
    return converted.resource, [(loss.path, loss.reason, loss.kind) for loss in converted.losses]


@pytest.mark.parametrize("kind", sorted(R4_RESOURCES))
@SETTINGS
@given(data=st.data())
def test_the_converter_converts_as_it_did_before_its_speed_work(
    kind: str, data: st.DataObject
) -> None:
    """Both ways (R5 -> R4 restores what R4 -> R5 carried): the same resource and losses as the
    converter before it copied only the steps' paths and skipped steps with nothing to do
    (``tests/unit/mapping/before``), and neither input is changed (nothing shared is
    written)."""
    r4 = data.draw(R4_RESOURCES[kind])
    if data.draw(st.booleans()):  # a list a carried element is added to: never the input's
        r4 = {**r4, "extension": [{"url": "http://example.org/x", "valueString": "a"}]}
    snapshot = copy.deepcopy(r4)
    r5 = convert(r4, source="R4", target="R5", rules=RULES, status="report")
    assert r4 == snapshot
    old = before.convert(r4, source="R4", target="R5", rules=RULES, status="report")
    assert _as_before(r5) == _as_before(old)
    r5_snapshot = copy.deepcopy(r5.resource)
    back = convert(r5.resource, source="R5", target="R4", rules=RULES, status="report")
    assert r5.resource == r5_snapshot
    old_back = before.convert(r5.resource, source="R5", target="R4", rules=RULES, status="report")
    assert _as_before(back) == _as_before(old_back)


@SETTINGS
@given(st.lists(st.sampled_from(sorted(R4_RESOURCES)), min_size=1, max_size=4), st.data())
def test_a_bundle_converts_as_it_did_before_its_speed_work(
    kinds: list[str], data: st.DataObject
) -> None:
    """convert_document over a searchset (one entry without a resource, one nested Bundle)."""
    resources = [data.draw(R4_RESOURCES[kind]) for kind in kinds]
    nested = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resources[0]}]}
    entries = [{"resource": r} for r in resources] + [{"search": {"mode": "include"}}]
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [*entries, {"resource": nested}],
    }
    snapshot = copy.deepcopy(bundle)
    new = convert_document(bundle, source="R4", target="R5", rules=RULES, status="report")
    old = before.convert_document(bundle, source="R4", target="R5", rules=RULES, status="report")
    assert bundle == snapshot
    assert _as_before(new) == _as_before(old)
