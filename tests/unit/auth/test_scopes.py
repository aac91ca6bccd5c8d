"""SMART v1/v2 scopes: parsing (garbage is dropped, never widened) and the access test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.auth.scopes import (
    ALL_PERMISSIONS,
    Coding,
    ContextKind,
    Scope,
    allows,
    candidate_scopes,
    parse_scope,
    parse_scopes,
)

CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PROBLEM = (CONDITION_CATEGORY, "problem-list-item")
LAB = (OBS_CATEGORY, "laboratory")
VITALS = (OBS_CATEGORY, "vital-signs")

RS = frozenset("rs")
CUD = frozenset("cud")


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # v1 (SMART 1.0 names, read as their v2 equivalents)
        ("patient/Observation.read", Scope("patient", "Observation", RS)),
        ("patient/Observation.write", Scope("patient", "Observation", CUD)),
        ("user/*.*", Scope("user", "*", ALL_PERMISSIONS)),
        ("user/*.read", Scope("user", "*", RS)),
        ("system/Patient.write", Scope("system", "Patient", CUD)),
        # v2
        ("patient/Observation.rs", Scope("patient", "Observation", RS)),
        ("user/Condition.cruds", Scope("user", "Condition", ALL_PERMISSIONS)),
        ("system/*.r", Scope("system", "*", frozenset("r"))),
        ("patient/Encounter.cd", Scope("patient", "Encounter", frozenset("cd"))),
        # v2 granular
        (
            f"user/Condition.cruds?category={CONDITION_CATEGORY}|problem-list-item",
            Scope(
                "user",
                "Condition",
                ALL_PERMISSIONS,
                (("category", f"{CONDITION_CATEGORY}|problem-list-item"),),
            ),
        ),
        (
            "patient/Observation.rs?category=http%3A%2F%2Fx%7Claboratory",
            Scope("patient", "Observation", RS, (("category", "http://x|laboratory"),)),
        ),
        (
            "patient/Observation.rs?category=laboratory&code=1234-5",
            Scope("patient", "Observation", RS, (("category", "laboratory"), ("code", "1234-5"))),
        ),
    ],
    ids=[
        "v1-read",
        "v1-write",
        "v1-star-star",
        "v1-wildcard-type",
        "v1-system",
        "v2-rs",
        "v2-cruds",
        "v2-system-wildcard",
        "v2-cd",
        "v2-granular-category",
        "v2-granular-percent-encoded",
        "v2-granular-two-params",
    ],
)
def test_scope_parses(text: str, expected: Scope) -> None:
    scope = parse_scope(text)
    assert scope == expected
    assert scope is not None
    assert scope.text == text


@pytest.mark.parametrize(
    "text",
    [
        "patient/Observation.sr",  # v2 letters out of cruds order
        "patient/Observation.rr",  # repeated letter
        "patient/Observation.",  # no permissions
        "patient/Observation.readwrite",
        "patient/Observation.x",
        "patient/observation.read",  # resource types are case-sensitive
        "patient/NotAResource.read",
        "admin/Observation.read",  # unknown context
        "Patient/Observation.read",
        "patient/Observation",  # no permission part
        "patient/Observation.read?category=laboratory",  # granular needs v2 permissions
        "patient/Observation.rs?category=",  # empty constraint value
        "patient/Observation.rs?=laboratory",  # empty parameter name
        "patient/Observation.rs?category",  # no '='
        "patient/Observation.rs?",  # empty query
        "patient/Observation.rs?category=a&",  # trailing '&'
        "patient//Observation.rs",
        "patient/*.rs.rs",
        "",
    ],
    ids=[
        "out-of-order",
        "repeated",
        "empty-permissions",
        "readwrite",
        "unknown-letter",
        "lowercase-type",
        "unknown-type",
        "unknown-context",
        "capital-context",
        "no-permission",
        "v1-with-query",
        "empty-value",
        "empty-name",
        "no-equals",
        "empty-query",
        "trailing-ampersand",
        "double-slash",
        "two-dots",
        "empty",
    ],
)
def test_garbled_scope_is_rejected(text: str) -> None:
    assert parse_scope(text) is None


def test_parse_scopes_sorts_resource_scopes_from_the_rest() -> None:
    parsed = parse_scopes(
        "openid fhirUser launch/patient launch offline_access patient/Observation.rs "
        "patient/Observation.rs nonsense patient/Observation.sr consentry/break-glass",
        extra={"consentry/break-glass"},
    )
    assert parsed.scopes == (Scope("patient", "Observation", RS),)
    assert parsed.recognised == {
        "openid",
        "fhirUser",
        "launch/patient",
        "launch",
        "offline_access",
        "consentry/break-glass",
    }
    assert parsed.dropped == ("nonsense", "patient/Observation.sr")


def test_parse_scopes_accepts_a_list() -> None:
    parsed = parse_scopes(["patient/Patient.r openid", "user/Condition.s"])
    assert [s.text for s in parsed.scopes] == ["patient/Patient.r", "user/Condition.s"]
    assert parsed.recognised == {"openid"}


# --- allows -----------------------------------------------------------------------------------

PATIENT_OBS = parse_scopes("patient/Observation.rs").scopes
USER_ALL = parse_scopes("user/*.cruds").scopes
SYSTEM_READ = parse_scopes("system/*.read").scopes
LAB_ONLY = parse_scopes(f"patient/Observation.rs?category={OBS_CATEGORY}|laboratory").scopes
PROBLEMS = parse_scopes(
    f"user/Condition.cruds?category={CONDITION_CATEGORY}|problem-list-item"
).scopes
LAB_OR_VITALS = parse_scopes("patient/Observation.rs?category=laboratory,vital-signs").scopes
LAB_AND_CODE = parse_scopes("patient/Observation.rs?category=laboratory&code=1234-5").scopes
ANY_OBS_CATEGORY = parse_scopes(f"patient/Observation.rs?category={OBS_CATEGORY}|").scopes
NO_SYSTEM = parse_scopes("patient/Observation.rs?category=|laboratory").scopes
GRANULAR_AND_BROAD = LAB_ONLY + PATIENT_OBS


@pytest.mark.parametrize(
    ("scopes", "context", "resource_type", "permission", "categories", "expected"),
    [
        # context: a scope speaks only for its own context
        (PATIENT_OBS, "patient", "Observation", "r", None, True),
        (PATIENT_OBS, "patient", "Observation", "s", None, True),
        (PATIENT_OBS, "user", "Observation", "r", None, False),
        (PATIENT_OBS, "system", "Observation", "r", None, False),
        (PATIENT_OBS, "patient", "Observation", "c", None, False),
        (PATIENT_OBS, "patient", "Condition", "r", None, False),
        # wildcards
        (USER_ALL, "user", "Condition", "d", None, True),
        (USER_ALL, "patient", "Condition", "r", None, False),
        (SYSTEM_READ, "system", "Patient", "s", None, True),
        (SYSTEM_READ, "system", "Patient", "u", None, False),
        ((), "patient", "Observation", "r", None, False),
        # granular: a matching category coding is required
        (LAB_ONLY, "patient", "Observation", "r", [LAB], True),
        (LAB_ONLY, "patient", "Observation", "r", [VITALS, LAB], True),
        (LAB_ONLY, "patient", "Observation", "r", [VITALS], False),
        (LAB_ONLY, "patient", "Observation", "r", [], False),
        (LAB_ONLY, "patient", "Observation", "r", None, False),
        (LAB_ONLY, "patient", "Observation", "r", [("http://other", "laboratory")], False),
        (LAB_ONLY, "patient", "Observation", "r", [("", "laboratory")], False),
        (PROBLEMS, "user", "Condition", "u", [PROBLEM], True),
        (PROBLEMS, "user", "Condition", "u", [(CONDITION_CATEGORY, "encounter-diagnosis")], False),
        (LAB_OR_VITALS, "patient", "Observation", "r", [VITALS], True),
        (LAB_OR_VITALS, "patient", "Observation", "r", [(OBS_CATEGORY, "imaging")], False),
        (ANY_OBS_CATEGORY, "patient", "Observation", "r", [VITALS], True),
        (ANY_OBS_CATEGORY, "patient", "Observation", "r", [("http://other", "x")], False),
        (NO_SYSTEM, "patient", "Observation", "r", [("", "laboratory")], True),
        (NO_SYSTEM, "patient", "Observation", "r", [LAB], False),
        (LAB_AND_CODE, "patient", "Observation", "r", [LAB], False),
        (GRANULAR_AND_BROAD, "patient", "Observation", "r", [VITALS], True),
    ],
    ids=[
        "patient-read",
        "patient-search",
        "patient-scope-not-user",
        "patient-scope-not-system",
        "no-create",
        "other-type",
        "user-wildcard-delete",
        "user-wildcard-not-patient",
        "system-read-search",
        "system-read-no-update",
        "no-scopes",
        "lab-matches",
        "lab-among-several",
        "vitals-not-lab",
        "no-categories",
        "categories-unknown",
        "same-code-other-system",
        "same-code-no-system",
        "problem-list",
        "encounter-diagnosis-not-problem-list",
        "comma-is-or",
        "comma-no-match",
        "system-bar-any-code",
        "system-bar-other-system",
        "bar-code-no-system",
        "bar-code-rejects-a-system",
        "unenforceable-param-grants-nothing",
        "broad-scope-unions-with-granular",
    ],
)
def test_allows(
    scopes: tuple[Scope, ...],
    context: ContextKind,
    resource_type: str,
    permission: str,
    categories: list[Coding] | None,
    expected: bool,
) -> None:
    assert allows(scopes, context, resource_type, permission, categories) is expected


def test_candidate_scopes_are_what_a_search_is_narrowed_by() -> None:
    scopes = LAB_ONLY + PROBLEMS + USER_ALL
    assert candidate_scopes(scopes, "patient", "Observation", "s") == LAB_ONLY
    assert candidate_scopes(scopes, "user", "Condition", "r") == PROBLEMS + USER_ALL


def test_unknown_permission_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="permission"):
        allows(USER_ALL, "user", "Patient", "read")


# --- properties -------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(codec="ascii", exclude_characters=" \t\n\r"), max_size=40)


@given(garbage=st.lists(_text, max_size=5))
def test_unparseable_scopes_never_widen_access(garbage: list[str]) -> None:
    """Adding strings that do not parse can never make ``allows`` answer True."""
    unparseable = [g for g in garbage if parse_scope(g) is None]
    parsed = parse_scopes([LAB_ONLY[0].text, *unparseable])
    assert parsed.scopes == LAB_ONLY
    assert set(parsed.dropped) | parsed.recognised == set(" ".join(unparseable).split())
    assert not allows(parsed.scopes, "patient", "Observation", "r", [VITALS])


@given(
    context=st.sampled_from(["patient", "user", "system"]),
    resource_type=st.sampled_from(["Observation", "Condition", "*"]),
    letters=st.sets(st.sampled_from("cruds"), min_size=1),
)
def test_v2_scopes_round_trip(context: ContextKind, resource_type: str, letters: set[str]) -> None:
    perm = "".join(c for c in "cruds" if c in letters)
    scope = parse_scope(f"{context}/{resource_type}.{perm}")
    assert scope == Scope(context, resource_type, frozenset(letters))
