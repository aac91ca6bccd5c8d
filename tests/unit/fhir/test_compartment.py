"""The FHIR R4 Patient compartment (http://hl7.org/fhir/R4/compartmentdefinition-patient.html):
which patients each resource and each request belongs to, and the three kinds of answer."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.fhir import compartment, jsoncodec
from middleware.fhir.classify import classify
from middleware.fhir.compartment import (
    Kind,
    PatientRefs,
    in_patient_scope,
    patients_of,
    patients_of_bundle_entries,
    request_patients,
)
from middleware.fhir.compartment_data import (
    COMPARTMENT_RESOURCE_TYPES,
    NOT_IN_COMPARTMENT_TYPES,
    PATIENT_COMPARTMENT,
    PATIENT_ONLY_PARAMS,
    SEARCH_ALIASES,
    UNTRANSLATED,
)
from middleware.fhir.resource_types import RESOURCE_TYPES

ROOT = Path(__file__).resolve().parents[3]
BASE = "http://gw.example/fhir"
PD, UNKNOWN, NOT_PD = Kind.PATIENT_DATA, Kind.UNKNOWN, Kind.NOT_PATIENT_DATA


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_compartment", ROOT / "scripts" / "gen_compartment.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def ref(reference: str, **more: Any) -> dict[str, Any]:
    return {"reference": reference, **more}


def res(rtype: str, **elements: Any) -> dict[str, Any]:
    return {"resourceType": rtype, **elements}


@dataclass(frozen=True)
class Case:
    name: str
    resource: dict[str, Any]
    kind: Kind
    ids: frozenset[str] = frozenset()
    unresolved: bool | None = None  # None: not pinned


def case(
    name: str, resource: dict[str, Any], kind: Kind, *ids: str, unresolved: bool | None = None
) -> Case:
    return Case(name, resource, kind, frozenset(ids), unresolved)


P1, P2 = ref("Patient/1"), ref("Patient/2")
DR = ref("Practitioner/d")

RESOURCES = [
    # subjects and patients, by the compartment params of each type
    case("observation-subject", res("Observation", subject=P1), PD, "1", unresolved=False),
    case("observation-performer", res("Observation", performer=[DR, P2]), PD, "2"),
    case(
        "observation-subject-and-performer",
        res("Observation", subject=P1, performer=[P2]),
        PD,
        "1",
        "2",
    ),
    case(
        "observation-practitioner-only",
        res("Observation", performer=[DR]),
        UNKNOWN,
        unresolved=False,
    ),
    case("observation-nothing", res("Observation", status="final"), UNKNOWN, unresolved=False),
    case(
        "observation-device-subject",
        res("Observation", subject=ref("Device/x")),
        UNKNOWN,
        unresolved=False,
    ),
    case(
        "observation-group-subject",
        res("Observation", subject=ref("Group/g")),
        UNKNOWN,
        unresolved=True,
    ),
    case("encounter-subject", res("Encounter", subject=P1), PD, "1"),
    case(
        "encounter-participant-not-a-param",
        res("Encounter", participant=[{"individual": P2}]),
        UNKNOWN,
    ),
    case("condition-subject", res("Condition", subject=P1), PD, "1"),
    case(
        "condition-asserter",
        res("Condition", subject=ref("Group/g"), asserter=P2),
        PD,
        "2",
        unresolved=True,
    ),
    case("allergy-patient", res("AllergyIntolerance", patient=P1), PD, "1"),
    case("allergy-recorder", res("AllergyIntolerance", recorder=P2), PD, "2"),
    case("allergy-asserter", res("AllergyIntolerance", patient=P1, asserter=P2), PD, "1", "2"),
    case("medicationrequest-subject", res("MedicationRequest", subject=P1), PD, "1"),
    case(
        "medicationrequest-requester-not-a-param", res("MedicationRequest", requester=P1), UNKNOWN
    ),
    case("diagnosticreport-subject", res("DiagnosticReport", subject=P1), PD, "1"),
    case("documentreference-subject", res("DocumentReference", subject=P1), PD, "1"),
    case("documentreference-author", res("DocumentReference", author=[DR, P2]), PD, "2"),
    case("careplan-subject", res("CarePlan", subject=P1), PD, "1"),
    case(
        "careplan-activity-performer",
        res(
            "CarePlan", activity=[{"detail": {"performer": [DR]}}, {"detail": {"performer": [P2]}}]
        ),
        PD,
        "2",
    ),
    case("immunization-patient", res("Immunization", patient=P1), PD, "1"),
    case("consent-patient", res("Consent", patient=P1), PD, "1"),
    case(
        "group-members",
        res("Group", member=[{"entity": P1}, {"entity": P2}, {"entity": DR}]),
        PD,
        "1",
        "2",
    ),
    case("group-no-members", res("Group", type="person"), UNKNOWN),
    case("provenance-target", res("Provenance", target=[ref("Observation/o"), P1]), PD, "1"),
    case(
        "provenance-agent-not-a-param",
        res("Provenance", target=[ref("Observation/o")], agent=[{"who": P1}]),
        UNKNOWN,
    ),
    case("auditevent-agent-who", res("AuditEvent", agent=[{"who": P1}, {"who": DR}]), PD, "1"),
    case("auditevent-entity-what", res("AuditEvent", entity=[{"what": P2}]), PD, "2"),
    case("task-for", res("Task", **{"for": P1}), PD, "1"),
    case("task-focus", res("Task", focus=P2), PD, "2"),
    case(
        "coverage-beneficiary",
        res("Coverage", beneficiary=P1, payor=[ref("Organization/o")]),
        PD,
        "1",
    ),
    case("person-link-target", res("Person", link=[{"target": P1}, {"target": DR}]), PD, "1"),
    case("relatedperson-patient", res("RelatedPerson", patient=P1), PD, "1"),
    case(
        "appointment-actor", res("Appointment", participant=[{"actor": P1}, {"actor": DR}]), PD, "1"
    ),
    case("enrollmentrequest-candidate", res("EnrollmentRequest", candidate=P1), PD, "1"),
    case("supplyrequest-deliverto", res("SupplyRequest", deliverTo=P1), PD, "1"),
    # the Patient itself: its own compartment, plus the patients it links to
    case("patient-own-id", res("Patient", id="1"), PD, "1"),
    case(
        "patient-link",
        res("Patient", id="1", link=[{"other": P2, "type": "seealso"}]),
        PD,
        "1",
        "2",
    ),
    case(
        "patient-link-relatedperson",
        res("Patient", id="1", link=[{"other": ref("RelatedPerson/r")}]),
        PD,
        "1",
    ),
    case("patient-without-id", res("Patient", name=[{"family": "X"}]), UNKNOWN),
    case("patient-invalid-id", res("Patient", id="a/b"), UNKNOWN),
    # not in the compartment by the definition
    case("practitioner", res("Practitioner", id="d"), NOT_PD),
    case("organization", res("Organization", id="o"), NOT_PD),
    case("medication", res("Medication", id="m"), NOT_PD),
    case("device-patient-element-not-in-definition", res("Device", patient=P1), NOT_PD),
    case("bundle-empty", res("Bundle", type="searchset"), NOT_PD),
    # types the definition does not list, and malformed resources
    case("parameters-empty", res("Parameters"), NOT_PD),
    case("unknown-type", res("DeviceUsage", patient=P1), UNKNOWN, unresolved=True),
    case("no-resource-type", {"subject": P1}, UNKNOWN, unresolved=True),
    case("resource-type-not-string", {"resourceType": ["Observation"]}, UNKNOWN, unresolved=True),
    case(
        "subject-not-an-object", res("Observation", subject="Patient/1"), UNKNOWN, unresolved=True
    ),
    case(
        "path-node-not-an-object",
        res("Appointment", participant=["Patient/1"]),
        UNKNOWN,
        unresolved=True,
    ),
    case(
        "reference-not-a-string",
        res("Observation", subject={"reference": 1}),
        UNKNOWN,
        unresolved=True,
    ),
    case(
        "nested-list-is-malformed", res("Observation", performer=[[P1]]), UNKNOWN, unresolved=True
    ),
]


def check(c: Case) -> None:
    got = patients_of(c.resource)
    assert (got.kind, got.ids) == (c.kind, c.ids)
    if c.unresolved is not None:
        assert got.unresolved is c.unresolved


@pytest.mark.parametrize("c", RESOURCES, ids=[c.name for c in RESOURCES])
def test_patients_of_resource(c: Case) -> None:
    check(c)


def obs_subject(reference: dict[str, Any], **more: Any) -> dict[str, Any]:
    return res("Observation", subject=reference, **more)


# Every form of Reference on Observation.subject: (name, reference, ids, unresolved).
REFERENCES: list[tuple[str, dict[str, Any], frozenset[str], bool]] = [
    ("relative", ref("Patient/1"), frozenset({"1"}), False),
    ("history", ref("Patient/1/_history/4"), frozenset({"1"}), False),
    ("history-bad-version", ref("Patient/1/_history/"), frozenset(), True),
    ("absolute-on-base", ref(f"{BASE}/Patient/1"), frozenset({"1"}), False),
    ("absolute-on-base-history", ref(f"{BASE}/Patient/1/_history/2"), frozenset({"1"}), False),
    ("absolute-other-server", ref("http://other.example/fhir/Patient/1"), frozenset(), True),
    ("absolute-base-prefix-only", ref(f"{BASE}X/Patient/1"), frozenset(), True),
    (
        "absolute-other-server-practitioner",
        ref("http://other.example/fhir/Practitioner/1"),
        frozenset(),
        False,
    ),
    (
        "absolute-other-server-history-practitioner",
        ref("http://o.example/Practitioner/1/_history/2"),
        frozenset(),
        False,
    ),
    ("urn-uuid", ref("urn:uuid:8a5c5d0e-5d2f-4c4b-9c31-0f3e4b3f9a11"), frozenset(), True),
    ("urn-uuid-typed-device", ref("urn:uuid:8a5c", type="Device"), frozenset(), False),
    ("urn-uuid-typed-patient", ref("urn:uuid:8a5c", type="Patient"), frozenset(), True),
    ("identifier-only", {"identifier": {"system": "urn:mrn", "value": "7"}}, frozenset(), True),
    (
        "identifier-typed-patient",
        {"identifier": {"value": "7"}, "type": "Patient"},
        frozenset(),
        True,
    ),
    (
        "identifier-typed-device",
        {"identifier": {"value": "7"}, "type": "Device"},
        frozenset(),
        False,
    ),
    (
        "identifier-typed-device-url",
        {"identifier": {"value": "7"}, "type": "http://hl7.org/fhir/StructureDefinition/Device"},
        frozenset(),
        False,
    ),
    ("display-only", {"display": "J. Smith"}, frozenset(), True),
    ("group", ref("Group/g"), frozenset(), True),
    ("conditional", ref("Patient?identifier=urn:mrn|7"), frozenset(), True),
    ("lowercase-type", ref("patient/1"), frozenset(), True),
    ("bad-id", ref("Patient/a b"), frozenset(), True),
    ("extra-segment", ref("Patient/1/x"), frozenset(), True),
    ("not-a-type", ref("Foo/1"), frozenset(), True),
    ("device", ref("Device/1"), frozenset(), False),
    ("self", ref("#"), frozenset(), False),
    ("contained-missing", ref("#nope"), frozenset(), True),
]


@pytest.mark.parametrize(
    ("reference", "ids", "unresolved"), [r[1:] for r in REFERENCES], ids=[r[0] for r in REFERENCES]
)
def test_reference_forms(reference: dict[str, Any], ids: frozenset[str], unresolved: bool) -> None:
    got = patients_of(obs_subject(reference), base_urls=[BASE, "http://alias.example/fhir/"])
    assert got.ids == ids
    assert got.unresolved is unresolved
    assert got.kind is (PD if ids else UNKNOWN)


def test_base_url_with_trailing_slash_matches() -> None:
    assert patients_of(obs_subject(ref(f"{BASE}/Patient/1")), base_urls=[BASE + "/"]).ids == {"1"}


@given(st.lists(st.sampled_from(["", "/", "http://a/fhir", "http://a/fhir/", "https://b", "x//"])))
def test_base_prefixes_are_made_as_before_per_resource(bases: list[str]) -> None:
    """The prefixes made once per tuple of bases are those made per resource before (as a
    list and as a tuple), and the same for repeated calls (the cache hands out its tuple)."""
    before = tuple(base.rstrip("/") + "/" for base in bases if base.strip("/")) if bases else ()
    assert compartment._bases(bases) == before
    assert compartment._bases(tuple(bases)) == before
    assert compartment._bases(tuple(bases)) == before


def test_without_base_urls_every_absolute_reference_is_foreign() -> None:
    got = patients_of(obs_subject(ref(f"{BASE}/Patient/1")))
    assert (got.kind, got.unresolved) == (UNKNOWN, True)


# -- contained resources: part of their container (R4 references.html#contained) ---------------

CONTAINED = [
    case(
        "contained-patient-as-subject",
        obs_subject(ref("#p"), contained=[res("Patient", id="p")]),
        UNKNOWN,
        unresolved=True,
    ),
    case(
        "contained-practitioner-as-performer",
        res(
            "Observation",
            subject=P1,
            performer=[ref("#d")],
            contained=[res("Practitioner", id="d")],
        ),
        PD,
        "1",
        unresolved=False,
    ),
    case(
        "contained-group-as-subject",
        obs_subject(ref("#g"), contained=[res("Group", id="g", member=[{"entity": P2}])]),
        PD,
        "2",
        unresolved=True,
    ),
    case(
        "contained-provenance-target-counts",
        obs_subject(ref("Device/x"), contained=[res("Provenance", id="pv", target=[P2])]),
        PD,
        "2",
    ),
    case(
        "contained-ref-resolves-in-container",
        res(
            "Observation",
            contained=[res("Provenance", id="pv", target=[ref("#p")]), res("Patient", id="p")],
        ),
        UNKNOWN,
        unresolved=True,
    ),
    case(
        "contained-in-non-compartment-type",
        res("Practitioner", contained=[obs_subject(P1, id="o")]),
        PD,
        "1",
    ),
    case(
        "contained-patient-in-non-compartment-type",
        res("Organization", contained=[res("Patient", id="p")]),
        UNKNOWN,
        unresolved=True,
    ),
    case(
        "contained-substance-in-medication",
        res("Medication", contained=[res("Substance", id="s")]),
        NOT_PD,
    ),
    case(
        "contained-not-a-list",
        obs_subject(P1, contained={"resourceType": "Patient"}),
        PD,
        "1",
        unresolved=True,
    ),
    case("contained-not-an-object", res("Medication", contained=["x"]), UNKNOWN, unresolved=True),
    case(
        "contained-patient-not-own-identity",
        res("Patient", id="1", contained=[res("Patient", id="2")]),
        PD,
        "1",
    ),
]


@pytest.mark.parametrize("c", CONTAINED, ids=[c.name for c in CONTAINED])
def test_contained(c: Case) -> None:
    check(c)


# -- Bundles and Parameters -----------------------------------------------------------------


def bundle(*resources: dict[str, Any] | None, **more: Any) -> dict[str, Any]:
    entries = [{"fullUrl": "x"} if r is None else {"resource": r} for r in resources]
    return res("Bundle", type="searchset", entry=entries, **more)


def test_bundle_entries_with_nested_bundle() -> None:
    """Nested Bundles are descended; each leaf is addressed by its path of entry indexes."""
    nested = bundle(obs_subject(P2), res("Practitioner"), res("Bundle", type="collection"))
    outer = bundle(obs_subject(P1), None, nested, res("Observation"), "junk")  # type: ignore[arg-type]
    got = dict(patients_of_bundle_entries(outer))
    assert got == {
        (0,): PatientRefs(PD, frozenset({"1"})),
        (2, 0): PatientRefs(PD, frozenset({"2"})),
        (2, 1): PatientRefs(NOT_PD),
        (3,): PatientRefs(UNKNOWN),
        (4,): PatientRefs(UNKNOWN, unresolved=True),
    }


def test_bundle_entries_malformed() -> None:
    assert list(patients_of_bundle_entries(res("Bundle"))) == []
    assert list(patients_of_bundle_entries(res("Bundle", entry={"x": 1}))) == [
        ((), PatientRefs(UNKNOWN, unresolved=True))
    ]
    assert list(patients_of_bundle_entries(res("Bundle", entry=["x"]))) == [
        ((0,), PatientRefs(UNKNOWN, unresolved=True))
    ]


def test_bundle_entries_depth_limit() -> None:
    inner: dict[str, Any] = bundle(obs_subject(P1))
    for _ in range(20):
        inner = bundle(inner)
    ((path, refs),) = patients_of_bundle_entries(inner)
    assert len(path) == 16
    assert refs == PatientRefs(UNKNOWN, unresolved=True)


def test_bundle_entries_base_urls() -> None:
    got = list(
        patients_of_bundle_entries(bundle(obs_subject(ref(f"{BASE}/Patient/9"))), base_urls=[BASE])
    )
    assert got == [((0,), PatientRefs(PD, frozenset({"9"})))]


CONTAINERS = [
    case(
        "bundle-one-patient",
        bundle(obs_subject(P1), res("Patient", id="1"), res("Medication")),
        PD,
        "1",
    ),
    case(
        "bundle-shared-patient",
        bundle(obs_subject(P1), res("Observation", subject=P2, performer=[P1])),
        PD,
        "1",
    ),
    case("bundle-two-patients", bundle(obs_subject(P1), obs_subject(P2)), UNKNOWN, unresolved=True),
    case(
        "bundle-an-unknown-part",
        bundle(obs_subject(P1), res("Observation")),
        UNKNOWN,
        unresolved=True,
    ),
    case("bundle-no-patient-data", bundle(res("Practitioner"), None), NOT_PD),
    case("bundle-nested", bundle(bundle(obs_subject(P1)), obs_subject(P1)), PD, "1"),
    case(
        "parameters-resource-and-part",
        res(
            "Parameters",
            parameter=[
                {"name": "a", "resource": obs_subject(P1)},
                {"name": "b", "part": [{"name": "c", "resource": res("Patient", id="1")}]},
            ],
        ),
        PD,
        "1",
    ),
    case(
        "parameters-values-only",
        res("Parameters", parameter=[{"name": "x", "valueString": "y"}]),
        NOT_PD,
    ),
    case(
        "parameters-malformed", res("Parameters", parameter={"name": "x"}), UNKNOWN, unresolved=True
    ),
    case(
        "parameters-part-patient-data",
        res(
            "Parameters",
            parameter=[{"name": "a", "part": [{"name": "b", "resource": obs_subject(P2)}]}],
        ),
        PD,
        "2",
    ),
]


@pytest.mark.parametrize("c", CONTAINERS, ids=[c.name for c in CONTAINERS])
def test_containers_as_a_whole(c: Case) -> None:
    """A container is attributed only to patients every patient-data part shares."""
    check(c)


def test_decoded_json_with_decimals() -> None:
    """Decoded bodies (decimals as msgspec.Raw) are read without touching the decimals."""
    body = b'{"resourceType":"Observation","subject":{"reference":"Patient/1"},"valueQuantity":{"value":5.40}}'
    decoded = jsoncodec.decode(body)
    assert isinstance(decoded["valueQuantity"]["value"], msgspec.Raw)
    assert patients_of(decoded).ids == {"1"}
    assert jsoncodec.encode(decoded) == body


def test_references_property() -> None:
    assert PatientRefs(PD, frozenset({"1", "2"})).references == {"Patient/1", "Patient/2"}


# -- requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    name: str
    method: str
    path: str
    query: str
    kind: Kind
    ids: frozenset[str] = frozenset()
    unresolved: bool = False


def rq(name: str, method: str, target: str, kind: Kind, *ids: str, unresolved: bool = False) -> Req:
    path, _, query = target.partition("?")
    return Req(name, method, path, query, kind, frozenset(ids), unresolved)


REQUESTS = [
    # instance level on a Patient: the id
    rq("read-patient", "GET", "Patient/1", PD, "1"),
    rq("vread-patient", "GET", "Patient/1/_history/3", PD, "1"),
    rq("update-patient", "PUT", "Patient/1", PD, "1"),
    rq("delete-patient", "DELETE", "Patient/1", PD, "1"),
    rq("history-patient", "GET", "Patient/1/_history", PD, "1"),
    rq("everything", "GET", "Patient/1/$everything", PD, "1"),
    # instance level elsewhere: the resource decides
    rq("read-observation", "GET", "Observation/5", UNKNOWN),
    rq("read-practitioner", "GET", "Practitioner/5", NOT_PD),
    rq("read-bundle", "GET", "Bundle/5", UNKNOWN),
    # compartment search
    rq("compartment-search", "GET", "Patient/7/Observation", PD, "7"),
    rq(
        "compartment-search-with-param",
        "GET",
        "Patient/7/Observation?performer=Patient/8",
        PD,
        "7",
        "8",
    ),
    rq("compartment-search-post", "POST", "Patient/7/Observation/_search", PD, "7"),
    rq("encounter-compartment", "GET", "Encounter/1/Observation", UNKNOWN),
    # type searches by compartment params
    rq("subject-typed", "GET", "Observation?subject=Patient/1", PD, "1"),
    rq("subject-history", "GET", "Observation?subject=Patient/1/_history/2", PD, "1"),
    rq("subject-absolute-base", "GET", f"Observation?subject={BASE}/Patient/1", PD, "1"),
    rq(
        "subject-absolute-other",
        "GET",
        "Observation?subject=http://o.example/Patient/1",
        UNKNOWN,
        unresolved=True,
    ),
    rq("patient-bare-id", "GET", "Observation?patient=1", PD, "1"),
    rq("subject-bare-id-ambiguous", "GET", "Observation?subject=1", UNKNOWN, unresolved=True),
    rq("subject-type-modifier", "GET", "Observation?subject:Patient=1", PD, "1"),
    rq("subject-group-modifier", "GET", "Observation?subject:Group=1", UNKNOWN, unresolved=True),
    rq("subject-device-modifier", "GET", "Observation?subject:Device=1", UNKNOWN),
    rq("patient-or", "GET", "Observation?patient=Patient/1,Patient/2", PD, "1", "2"),
    rq(
        "patient-or-with-group",
        "GET",
        "Observation?subject=Patient/1,Group/2",
        PD,
        "1",
        unresolved=True,
    ),
    rq("two-params", "GET", "Observation?subject=Patient/1&performer=Patient/2", PD, "1", "2"),
    rq("performer-practitioner", "GET", "Observation?performer=Practitioner/1", UNKNOWN),
    rq("chained", "GET", "Observation?subject.name=peter", UNKNOWN, unresolved=True),
    rq("chained-typed", "GET", "Observation?subject:Patient.name=peter", UNKNOWN, unresolved=True),
    rq("has", "GET", "Patient?_has:Observation:patient:code=1234", UNKNOWN, unresolved=True),
    rq(
        "has-on-non-compartment-type",
        "GET",
        "Practitioner?_has:Observation:performer:subject=Patient/1",
        UNKNOWN,
        unresolved=True,
    ),
    rq(
        "identifier-modifier",
        "GET",
        "Observation?subject:identifier=urn:mrn|7",
        UNKNOWN,
        unresolved=True,
    ),
    rq("missing-modifier", "GET", "Observation?subject:missing=true", UNKNOWN, unresolved=True),
    rq("escaped-comma", "GET", "Observation?patient=1\\,2", UNKNOWN, unresolved=True),
    rq("empty-value", "GET", "Observation?patient=", UNKNOWN),
    rq("not-a-compartment-param", "GET", "Observation?code=1234", UNKNOWN),
    rq("alias-observation-patient-typed", "GET", "Observation?patient=Patient/1", PD, "1"),
    rq("alias-condition-subject", "GET", "Condition?subject=Patient/1", PD, "1"),
    rq("alias-condition-subject-bare-id", "GET", "Condition?subject=1", UNKNOWN, unresolved=True),
    rq("alias-auditevent-entity", "GET", "AuditEvent?entity=Patient/1", PD, "1"),
    rq("allergy-recorder", "GET", "AllergyIntolerance?recorder=Patient/3", PD, "3"),
    rq("group-member", "GET", "Group?member=Patient/3", PD, "3"),
    # Patient searches
    rq("patient-id", "GET", "Patient?_id=1,2", PD, "1", "2"),
    rq("patient-id-modifier", "GET", "Patient?_id:not=1", UNKNOWN, unresolved=True),
    rq("patient-link", "GET", "Patient?link=Patient/4", PD, "4"),
    rq("patient-by-name", "GET", "Patient?name=smith", UNKNOWN),
    rq("id-on-observation", "GET", "Observation?_id=1", UNKNOWN),
    # conditional writes carry criteria in the query
    rq("conditional-update", "PUT", "Observation?subject=Patient/1&identifier=x", PD, "1"),
    rq("conditional-delete", "DELETE", "Observation?patient=1", PD, "1"),
    # no criteria: create, history, operations
    rq("create", "POST", "Observation", UNKNOWN),
    rq("history-type", "GET", "Observation/_history?patient=1", UNKNOWN),
    rq("type-operation", "GET", "Observation/$lastn?patient=1", UNKNOWN),
    # outside the compartment
    rq("practitioner-search", "GET", "Practitioner?name=x", NOT_PD),
    rq("medication-search", "GET", "Medication?code=x", NOT_PD),
    rq("parameters-type", "GET", "Parameters", UNKNOWN),
    # system level
    rq("capabilities", "GET", "metadata", NOT_PD),
    rq("system-search", "GET", "?_type=Observation", UNKNOWN, unresolved=True),
    rq("system-history", "GET", "_history", UNKNOWN, unresolved=True),
    rq("batch", "POST", "", UNKNOWN, unresolved=True),
]

HEADERS = {"content-type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("r", REQUESTS, ids=[r.name for r in REQUESTS])
def test_request_patients(r: Req) -> None:
    path = "/fhir/" + r.path if r.path else "/fhir"
    request = classify(r.method, path, path.encode(), r.query.encode(), HEADERS, base_path="/fhir")
    params = parse_qsl(r.query, keep_blank_values=True)
    got = request_patients(request, params, base_urls=[BASE])
    assert got == PatientRefs(r.kind, r.ids, r.unresolved)


# -- scope ----------------------------------------------------------------------------------

MINE = frozenset({"1"})
SCOPES = [
    ("not-patient-data", PatientRefs(NOT_PD), {}, True),
    ("unknown-denied-by-default", PatientRefs(UNKNOWN), {}, False),
    ("unknown-allowed-when-configured", PatientRefs(UNKNOWN), {"allow_unknown": True}, True),
    ("mine", PatientRefs(PD, frozenset({"1"})), {}, True),
    ("mine-and-another", PatientRefs(PD, frozenset({"1", "2"})), {}, True),
    ("another", PatientRefs(PD, frozenset({"2"})), {}, False),
    ("request-mine", PatientRefs(PD, frozenset({"1"})), {"every": True}, True),
    ("request-mine-and-another", PatientRefs(PD, frozenset({"1", "2"})), {"every": True}, False),
    ("request-mine-unresolved", PatientRefs(PD, frozenset({"1"}), True), {"every": True}, False),
    (
        "request-mine-unresolved-allowed",
        PatientRefs(PD, frozenset({"1"}), True),
        {"every": True, "allow_unknown": True},
        True,
    ),
    ("resource-mine-unresolved", PatientRefs(PD, frozenset({"1"}), True), {}, True),
]


@pytest.mark.parametrize(
    ("refs", "options", "expected"), [s[1:] for s in SCOPES], ids=[s[0] for s in SCOPES]
)
def test_in_patient_scope(refs: PatientRefs, options: dict[str, bool], expected: bool) -> None:
    assert in_patient_scope(refs, MINE, **options) is expected


# -- properties -----------------------------------------------------------------------------

IDS = st.from_regex(r"[A-Za-z0-9\-.]{1,12}", fullmatch=True)
NON_PATIENT_TYPES = sorted(RESOURCE_TYPES - {"Patient", "Group"})
ANY_REFERENCE = st.one_of(
    st.builds(lambda t, i: ref(f"{t}/{i}"), st.sampled_from(NON_PATIENT_TYPES), IDS),
    st.builds(lambda i: ref(f"Patient/{i}"), IDS),
    st.builds(lambda i: ref(f"Group/{i}"), IDS),
    st.builds(lambda i: ref(f"http://other.example/fhir/Patient/{i}"), IDS),
    st.builds(lambda i: ref(f"urn:uuid:{i}"), IDS),
    st.builds(lambda i: ref(f"#{i}"), IDS),
    st.builds(lambda i: {"identifier": {"value": i}}, IDS),
    st.builds(lambda t: {"display": t}, st.text(max_size=5)),
    st.text(max_size=5).map(ref),
)
NON_PATIENT_REFERENCE = ANY_REFERENCE.filter(
    lambda r: not str(r.get("reference", "")).startswith("Patient/")
)


@given(
    pid=IDS,
    performers=st.lists(NON_PATIENT_REFERENCE, max_size=5),
    extra=st.lists(NON_PATIENT_REFERENCE, max_size=3),
)
def test_subject_patient_always_found(
    pid: str, performers: list[dict[str, Any]], extra: list[dict[str, Any]]
) -> None:
    """An Observation about Patient/X is always patient data of X, whatever else it references."""
    contained = [res("Provenance", id=f"c{i}", target=[r]) for i, r in enumerate(extra)]
    got = patients_of(
        res("Observation", subject=ref(f"Patient/{pid}"), performer=performers, contained=contained)
    )
    assert got.kind is PD
    assert pid in got.ids


def place(resource: dict[str, Any], path: Sequence[str], reference: dict[str, Any]) -> None:
    """Append ``reference`` at ``path``, each segment a list (paths walk lists transparently)."""
    node = resource
    for segment in path[:-1]:
        child: dict[str, Any] = {}
        node.setdefault(segment, []).append(child)
        node = child
    node.setdefault(path[-1], []).append(reference)


PLACEMENTS = st.sampled_from(sorted(PATIENT_COMPARTMENT)).flatmap(
    lambda t: st.tuples(
        st.just(t),
        st.lists(
            st.tuples(st.sampled_from([p for _, p in PATIENT_COMPARTMENT[t]]), ANY_REFERENCE),
            max_size=6,
        ),
        st.tuples(st.sampled_from([p for _, p in PATIENT_COMPARTMENT[t]]), ANY_REFERENCE),
    )
)


@given(PLACEMENTS)
def test_adding_a_reference_never_removes_a_patient(
    placed: tuple[
        str, list[tuple[tuple[str, ...], dict[str, Any]]], tuple[tuple[str, ...], dict[str, Any]]
    ],
) -> None:
    rtype, references, (path, added) = placed
    resource = res(rtype)
    for where, reference in references:
        place(resource, where, reference)
    before = patients_of(resource)
    place(resource, path, added)
    after = patients_of(resource)
    assert before.ids <= after.ids
    assert after.kind is (PD if after.ids else UNKNOWN)
    assert before.unresolved <= after.unresolved


LEAVES = st.sampled_from(
    [obs_subject(P1), res("Practitioner"), res("Observation"), res("Patient", id="2")]
)
TREES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4).map(lambda rs: bundle(*rs)),
    max_leaves=20,
)


def at(tree: Mapping[str, Any], path: tuple[int, ...]) -> Any:
    node: Any = tree
    for index in path:
        node = node["entry"][index]["resource"]
    return node


def leaves(tree: Mapping[str, Any], prefix: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    found = []
    for index, entry in enumerate(tree.get("entry", [])):
        if entry["resource"]["resourceType"] == "Bundle":
            found += leaves(entry["resource"], (*prefix, index))
        else:
            found.append((*prefix, index))
    return found


@given(st.lists(TREES, max_size=5).map(lambda rs: bundle(*rs)))
def test_bundle_paths_address_every_leaf_once(tree: dict[str, Any]) -> None:
    """The pipeline removes entries by path: every non-Bundle resource is addressed exactly once."""
    got = list(patients_of_bundle_entries(tree))
    assert [path for path, _ in got] == leaves(tree)
    for path, refs in got:
        assert refs == patients_of(at(tree, path))


# -- the generated table against the definitions --------------------------------------------


def definitions() -> Path | None:
    """The R4 definitions folder, or None locally when not installed (CI must have them)."""
    folder: Path = GEN.default_definitions()
    if (folder / GEN.COMPARTMENT_FILE).exists():
        return folder
    if os.environ.get("CI") == "true":
        pytest.fail(f"the FHIR R4 definitions are missing at {folder}; run install-upstream.sh")
    return None


def test_every_definition_type_is_in_the_table() -> None:
    folder = definitions()
    assert not COMPARTMENT_RESOURCE_TYPES & NOT_IN_COMPARTMENT_TYPES
    assert COMPARTMENT_RESOURCE_TYPES | NOT_IN_COMPARTMENT_TYPES <= RESOURCE_TYPES
    named = {(t, p) for t, rows in PATIENT_COMPARTMENT.items() for p, _ in rows}
    named |= {(t, p) for t, params in SEARCH_ALIASES.items() for p in params}
    assert named >= PATIENT_ONLY_PARAMS
    assert UNTRANSLATED == ()
    if folder is None:
        return
    compartment = GEN.load(folder / GEN.COMPARTMENT_FILE)
    for item in compartment["resource"]:
        params = item.get("param", [])
        if params:
            assert {p for p, _ in PATIENT_COMPARTMENT[item["code"]]} == set(params), item["code"]
        else:
            assert item["code"] in NOT_IN_COMPARTMENT_TYPES


def test_generator_reproduces_the_committed_table() -> None:
    folder = definitions()
    if folder is None:
        return
    table = GEN.build(
        GEN.load(folder / GEN.COMPARTMENT_FILE), GEN.load(folder / GEN.SEARCH_PARAMETERS_FILE)
    )
    committed = (ROOT / "middleware" / "fhir" / "compartment_data.py").read_text(encoding="utf-8")
    assert GEN.render(table) == committed


TRANSLATIONS = [
    ("plain", "Observation.subject", "Observation", ("subject",), None),
    (
        "nested",
        "CarePlan.activity.detail.performer",
        "CarePlan",
        ("activity", "detail", "performer"),
        None,
    ),
    ("parenthesised", "(ExplanationOfBenefit.patient)", "ExplanationOfBenefit", ("patient",), None),
    ("resolve-is-patient", "Task.for.where(resolve() is Patient)", "Task", ("for",), "dropped"),
    ("as-reference", "Observation.value as Reference", "Observation", ("valueReference",), None),
    (
        "as-reference-parenthesised",
        "(Observation.value as Reference)",
        "Observation",
        ("valueReference",),
        None,
    ),
    ("as-function", "Observation.value.as(Reference)", "Observation", ("valueReference",), None),
    (
        "other-filter-kept",
        "Composition.section.where(code='x').entry",
        "Composition",
        ("section", "entry"),
        "approximated",
    ),
    ("index-kept", "Bundle.entry[0].resource", "Bundle", ("entry", "resource"), "approximated"),
    ("other-base", "Encounter.subject", "Observation", None, None),
]


@pytest.mark.parametrize(
    ("expr", "rtype", "segments", "note"),
    [t[1:] for t in TRANSLATIONS],
    ids=[t[0] for t in TRANSLATIONS],
)
def test_generator_translates(
    expr: str, rtype: str, segments: tuple[str, ...] | None, note: str | None
) -> None:
    assert GEN.translate(expr, rtype) == (segments, note)


@pytest.mark.parametrize(
    "expr",
    [
        "Observation.extension('http://x').value",
        "Observation.subject.resolve()",
        "Observation.value as Quantity",
    ],
    ids=["extension", "resolve", "cast-not-reference"],
)
def test_generator_refuses_what_it_cannot_translate(expr: str) -> None:
    segments, note = GEN.translate(expr, "Observation")
    assert segments is None
    assert note.startswith("untranslatable")


def test_generator_union_split() -> None:
    assert GEN.split_union("A.b | (A.c | A.d) | A.e.where(x = 'a|b')") == [
        "A.b",
        "(A.c | A.d)",
        "A.e.where(x = 'a|b')",
    ]


def test_generator_fails_on_untranslatable_unless_allowed() -> None:
    compartment = {
        "resourceType": "CompartmentDefinition",
        "code": "Patient",
        "resource": [{"code": "Observation", "param": ["subject", "weird"]}],
    }
    params = {
        "entry": [
            {
                "resource": {
                    "resourceType": "SearchParameter",
                    "code": "subject",
                    "base": ["Observation"],
                    "expression": "Observation.subject",
                    "target": ["Patient", "Group"],
                }
            },
            {
                "resource": {
                    "resourceType": "SearchParameter",
                    "code": "weird",
                    "base": ["Observation"],
                    "expression": "Observation.extension('u').value",
                }
            },
        ]
    }
    with pytest.raises(ValueError, match=r"Observation\.weird"):
        GEN.build(compartment, params)
    table = GEN.build(compartment, params, allow=True)
    assert table.compartment == {"Observation": [("subject", ("subject",))]}
    assert [u[:2] for u in table.untranslated] == [("Observation", "weird")]
    assert "Observation.weird" in GEN.render(table)
