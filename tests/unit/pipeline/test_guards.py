"""Search guards: inference families refused by caller kind; counts only for see-all callers;
patient-context searches pinned to the caller's compartment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.errors import Forbidden
from middleware.fhir.compartment import Kind, request_patients
from middleware.fhir.compartment_data import PATIENT_COMPARTMENT
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.pipeline.guards import (
    DEFAULT_PATIENT_REFUSED,
    Family,
    GuardPolicy,
    check_search,
    count_family,
    families_of,
    pin_patient,
)

POLICY = GuardPolicy()
SECRET = "SECRET-VALUE"

# -- recognising families --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        # plain searches belong to no family
        ("code", "1234-5", set()),
        ("subject", "Patient/1", set()),
        ("subject:Patient", "1", set()),
        ("code:text", "sugar", set()),
        ("_summary", "true", set()),
        ("_total", "none", set()),
        ("_sort", "-date", set()),
        ("_count", "10", set()),
        # reverse chaining
        ("_has:Observation:patient:code", "1234-5", {Family.HAS}),
        ("_HAS:Observation:patient:code", "x", {Family.HAS}),
        ("_has", "x", {Family.HAS}),
        # chaining
        ("subject.name", "peter", {Family.CHAIN}),
        ("subject:Patient.name", "peter", {Family.CHAIN}),
        ("subject:Patient.organization.name", "acme", {Family.CHAIN}),
        # named families
        ("_filter", "name eq peter", {Family.FILTER}),
        ("_text", "cancer", {Family.TEXT}),
        ("_content", "cancer", {Family.CONTENT}),
        ("_list", "List/42", {Family.LIST}),
        ("_list", "$current-allergies", {Family.LIST}),
        ("_query", "my-query", {Family.QUERY}),
        ("_Filter", "x", {Family.FILTER}),
        (" _text ", "x", {Family.TEXT}),
        # :missing, also behind a chain
        ("birthdate:missing", "true", {Family.MISSING}),
        ("birthdate:MISSING", "false", {Family.MISSING}),
        ("subject.birthdate:missing", "true", {Family.CHAIN, Family.MISSING}),
        # counts
        ("_summary", "count", {Family.COUNT}),
        ("_summary", " COUNT ", {Family.COUNT}),
        ("_summary", "true,count", {Family.COUNT}),
        ("_total", "accurate", {Family.TOTAL}),
        ("_total", "estimate", {Family.TOTAL}),
        ("_total", "Accurate", {Family.TOTAL}),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_families_of(name: str, value: str, expected: set[Family]) -> None:
    assert families_of(name, value, frozenset()) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("birthdate", {Family.SORT}),
        ("-birthdate", {Family.SORT}),
        ("date,-BIRTHDATE", {Family.SORT}),
        ("birthdate:iterate", {Family.SORT}),
        ("date", set()),
        ("-date,name", set()),
    ],
    ids=["asc", "desc", "second-key-any-case", "modifier", "other-key", "other-keys"],
)
def test_sort_family_only_on_sensitive_params(value: str, expected: set[Family]) -> None:
    assert families_of("_sort", value, frozenset({"birthdate"})) == expected


# -- check_search ------------------------------------------------------------------------------

INFERENCE = [
    ("_has:Observation:patient:code", SECRET, Family.HAS),
    ("subject:Patient.name", SECRET, Family.CHAIN),
    ("subject.name", SECRET, Family.CHAIN),
    ("_filter", SECRET, Family.FILTER),
    ("_text", SECRET, Family.TEXT),
    ("_content", SECRET, Family.CONTENT),
    ("code:missing", "true", Family.MISSING),
    ("_list", SECRET, Family.LIST),
    ("_query", SECRET, Family.QUERY),
]
INFERENCE_IDS = [f"{family.value}:{name}" for name, _, family in INFERENCE]


@pytest.mark.parametrize(("name", "value", "family"), INFERENCE, ids=INFERENCE_IDS)
def test_patient_callers_refused_inference_families(name: str, value: str, family: Family) -> None:
    params = [("code", "1234-5"), (name, value)]
    with pytest.raises(Forbidden) as caught:
        check_search(params, caller_kind="patient", sees_everything=True, policy=POLICY)
    assert caught.value.status == 403
    assert family.value in caught.value.diagnostics
    assert SECRET not in caught.value.diagnostics


@pytest.mark.parametrize(("name", "value", "family"), INFERENCE, ids=INFERENCE_IDS)
@pytest.mark.parametrize("kind", ["user", "system"])
def test_user_and_system_callers_may_use_inference_families_by_default(
    name: str, value: str, family: Family, kind: str
) -> None:
    check_search([(name, value)], caller_kind=kind, sees_everything=False, policy=POLICY)


@pytest.mark.parametrize(("name", "value", "family"), INFERENCE, ids=INFERENCE_IDS)
@pytest.mark.parametrize("kind", ["none", "robot", ""])
def test_unknown_caller_kinds_are_most_restricted(
    name: str, value: str, family: Family, kind: str
) -> None:
    with pytest.raises(Forbidden):
        check_search([(name, value)], caller_kind=kind, sees_everything=True, policy=POLICY)


COUNTS = [("_summary", "count"), ("_total", "accurate"), ("_total", "estimate")]


@pytest.mark.parametrize(("name", "value"), COUNTS, ids=["summary-count", "accurate", "estimate"])
@pytest.mark.parametrize("kind", ["patient", "user", "system", "none"])
def test_counts_refused_unless_the_caller_sees_everything(name: str, value: str, kind: str) -> None:
    with pytest.raises(Forbidden, match="family"):
        check_search([(name, value)], caller_kind=kind, sees_everything=False, policy=POLICY)
    if kind != "none":
        check_search([(name, value)], caller_kind=kind, sees_everything=True, policy=POLICY)


@pytest.mark.parametrize(("name", "value"), COUNTS, ids=["summary-count", "accurate", "estimate"])
@pytest.mark.parametrize("kind", ["patient", "user", "system", "none"])
def test_counts_pass_where_the_gateway_counts_them(name: str, value: str, kind: str) -> None:
    """A search the gateway answers by counting (``counted``) is not refused for asking a count,
    whoever asks: every caller that may search may count what it may see."""
    check_search(
        [(name, value)], caller_kind=kind, sees_everything=False, policy=POLICY, counted=True
    )


def test_a_configured_count_refusal_holds_where_the_gateway_counts() -> None:
    policy = GuardPolicy(user=frozenset({Family.COUNT}))
    with pytest.raises(Forbidden, match="the count family"):
        check_search(
            [("_count", "0")],
            caller_kind="user",
            sees_everything=False,
            policy=policy,
            counted=True,
        )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([("_summary", "count")], Family.COUNT),
        ([("_count", "000")], Family.COUNT),
        ([("_count", "0"), ("_totalMethod", "count")], Family.COUNT),
        ([("_total", "accurate"), ("_summary", "count")], Family.COUNT),
        ([("_total", " Estimate")], Family.TOTAL),
        ([("_Total", "accurate"), ("_count", "3")], Family.TOTAL),
        ([("_total", "none")], None),
        ([("_count", "3"), ("_summary", "true")], None),
        ([], None),
    ],
)
def test_count_family(params: list[tuple[str, str]], expected: Family | None) -> None:
    assert count_family(params) == expected


@pytest.mark.parametrize(
    ("params", "kind", "sees_everything", "policy"),
    [
        ([("code", "1"), ("_summary", "true"), ("_total", "none")], "patient", False, POLICY),
        ([("_sort", "-date")], "patient", False, POLICY),
        ([("_summary", "count")], "user", False, GuardPolicy(refuse_counts=False)),
        ([("subject.name", "x")], "patient", True, GuardPolicy(patient=frozenset())),
        ([], "none", False, POLICY),
    ],
    ids=[
        "plain-search",
        "sort-allowed-by-default",
        "counts-switched-off",
        "patient-opened",
        "empty",
    ],
)
def test_searches_that_pass(
    params: list[tuple[str, str]], kind: str, sees_everything: bool, policy: GuardPolicy
) -> None:
    check_search(params, caller_kind=kind, sees_everything=sees_everything, policy=policy)


@pytest.mark.parametrize(
    ("params", "kind", "policy", "family"),
    [
        ([("subject.name", "x")], "user", GuardPolicy(user=frozenset({Family.CHAIN})), "chain"),
        (
            [("_sort", "birthdate")],
            "patient",
            GuardPolicy(sensitive_sort=frozenset({"birthdate"})),
            "_sort",
        ),
        (
            [("_sort", "birthdate")],
            "system",
            GuardPolicy(system=frozenset({Family.SORT}), sensitive_sort=frozenset({"birthdate"})),
            "_sort",
        ),
        ([("_summary", "count")], "system", GuardPolicy(system=frozenset({Family.COUNT})), "count"),
    ],
    ids=[
        "user-chain-configured",
        "patient-sensitive-sort",
        "system-sensitive-sort",
        "count-even-for-see-all",
    ],
)
def test_configured_refusals(
    params: list[tuple[str, str]], kind: str, policy: GuardPolicy, family: str
) -> None:
    with pytest.raises(Forbidden, match=f"the {family} family"):
        check_search(params, caller_kind=kind, sees_everything=True, policy=policy)


def test_default_policy_matches_the_issue() -> None:
    assert POLICY.patient == DEFAULT_PATIENT_REFUSED
    assert POLICY.refused("user", sees_everything=True) == frozenset()
    assert POLICY.refused("user", sees_everything=False) == {Family.COUNT, Family.TOTAL}
    assert POLICY.sensitive_sort == frozenset()


# -- pin_patient -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "params", "expected"),
    [
        ("Observation", [("code", "x")], [("code", "x"), ("patient", "Patient/p1")]),
        ("Condition", [], [("patient", "Patient/p1")]),
        ("Coverage", [], [("patient", "Patient/p1")]),
        ("AdverseEvent", [], [("subject", "Patient/p1")]),
        ("Group", [], [("member", "Patient/p1")]),
        ("Patient", [("name", "x")], [("name", "x"), ("_id", "p1")]),
        # the caller's own patient may already be named
        ("Observation", [("patient", "p1")], [("patient", "p1"), ("patient", "Patient/p1")]),
        (
            "Observation",
            [("subject", "Patient/p1")],
            [("subject", "Patient/p1"), ("patient", "Patient/p1")],
        ),
        (
            "Observation",
            [("subject:Patient", "p1")],
            [("subject:Patient", "p1"), ("patient", "Patient/p1")],
        ),
        ("Patient", [("_id", "p1")], [("_id", "p1"), ("_id", "p1")]),
        # other references that name no patient are left alone
        (
            "Observation",
            [("performer", "Practitioner/7")],
            [("performer", "Practitioner/7"), ("patient", "Patient/p1")],
        ),
    ],
    ids=[
        "observation-patient",
        "condition-patient",
        "coverage-patient",
        "adverse-event-subject",
        "group-member",
        "patient-id",
        "own-bare-id",
        "own-reference",
        "own-typed-modifier",
        "own-patient-id",
        "practitioner-reference",
    ],
)
def test_pin_patient(
    resource_type: str, params: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    assert pin_patient(resource_type, params, "p1") == expected


@pytest.mark.parametrize(
    ("resource_type", "params"),
    [
        # another patient
        ("Observation", [("patient", "p2")]),
        ("Observation", [("patient", "p1,p2")]),
        ("Observation", [("subject", "Patient/p2")]),
        ("Observation", [("subject:Patient", "p2")]),
        ("Patient", [("_id", "p2")]),
        ("Patient", [("_id", "p1,p2")]),
        # patients named in a way that cannot be checked
        ("Observation", [("subject.name", "peter")]),
        ("Observation", [("subject:Patient.name", "peter")]),
        ("Observation", [("patient:identifier", "urn:mrn|123")]),
        ("Observation", [("subject", "p2")]),
        ("Patient", [("_has:Observation:patient:code", "x")]),
        ("Observation", [("patient", "p\\,2")]),
        # not patient data or not a type
        ("Medication", []),
        ("Practitioner", []),
        ("NotAType", []),
        (None, []),
    ],
    ids=[
        "other-bare-id",
        "other-in-or-list",
        "other-reference",
        "other-typed-modifier",
        "other-patient-id",
        "other-patient-id-in-list",
        "chain",
        "typed-chain",
        "identifier",
        "bare-id-of-multi-target-param",
        "reverse-chain",
        "escape",
        "medication",
        "practitioner",
        "unknown-type",
        "system-search",
    ],
)
def test_pin_patient_refused(resource_type: str | None, params: list[tuple[str, str]]) -> None:
    with pytest.raises(Forbidden) as caught:
        pin_patient(resource_type, params, "p1")
    assert "p2" not in caught.value.diagnostics


@pytest.mark.parametrize(
    "patient_id", ["", "a/b", "x" * 65, "p 1"], ids=["empty", "slash", "long", "space"]
)
def test_pin_patient_needs_a_fhir_id(patient_id: str) -> None:
    with pytest.raises(ValueError, match="FHIR id"):
        pin_patient("Observation", [], patient_id)


_ids = st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True)


@given(
    resource_type=st.sampled_from(sorted(PATIENT_COMPARTMENT)),
    patient_id=_ids,
    code=st.text(alphabet="abc", min_size=1, max_size=5),
)
@settings(max_examples=200)
def test_a_pinned_search_names_exactly_the_callers_patient(
    resource_type: str, patient_id: str, code: str
) -> None:
    """Whatever the compartment type, the pinned query names the patient and no one else, as
    the compartment module reads it (the same reading that authorises the request)."""
    pinned = pin_patient(resource_type, [("_count", code)], patient_id)
    request = FhirRequest(
        interaction=Interaction.SEARCH_TYPE,
        method="GET",
        level=Level.TYPE,
        path=resource_type,
        resource_type=resource_type,
    )
    refs = request_patients(request, pinned)
    assert refs.kind is Kind.PATIENT_DATA
    assert refs.ids == {patient_id}
    assert not refs.unresolved


_NAMES = st.sampled_from(["_summary", " _SUMMARY", "_count", "_Count:x", "_total", "code", "_sort"])
_VALUES = st.sampled_from(
    ["count", "COUNT ", "0", "00", " 0", "3", "accurate", " Estimate", "none"]
)


@settings(max_examples=300)
@given(params=st.lists(st.tuples(_NAMES, _VALUES), max_size=4))
def test_count_family_reads_counts_as_the_guard_does(params: list[tuple[str, str]]) -> None:
    """Property: whatever the guard would refuse as a count is counted, and nothing else."""
    found = set().union(*(families_of(n, v, frozenset()) for n, v in params))
    expected = (
        Family.COUNT if Family.COUNT in found else Family.TOTAL if Family.TOTAL in found else None
    )
    assert count_family(params) == expected
