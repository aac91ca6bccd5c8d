"""The Judge's faster paths check what the slow ones check (pipeline.judge)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.consent.decide import Defaults
from middleware.fhir.compartment import Kind, PatientRefs
from middleware.pipeline.caller import ACTION_ACCESS, caller_of
from middleware.pipeline.judge import Judge, _has_escape, references_of
from tests.unit.pipeline.test_judge import BASES, NOW

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SCOPES = (
    "user/*.rs",
    "user/*.s",
    "user/Observation.rs",
    "user/Observation.r?category=laboratory",
    f"user/Observation.s?category={CATEGORY}|vital-signs",
    "user/Condition.rs?category=problem-list-item",
    "user/Condition.c",
    "patient/Observation.rs",
    "system/*.rs",
)
TYPES = ("Observation", "Condition", "Patient")
CATEGORIES = (
    {"coding": [{"system": CATEGORY, "code": "laboratory"}]},
    {"coding": [{"system": CATEGORY, "code": "vital-signs"}]},
    {"coding": [{"code": "problem-list-item"}]},
)


@settings(deadline=None, max_examples=300)
@given(
    scopes=st.lists(st.sampled_from(SCOPES), min_size=1, max_size=3, unique=True),
    fhir_user=st.none() | st.just("Practitioner/dr"),
    resources=st.lists(
        st.builds(
            lambda rtype, cats: {"resourceType": rtype, **({"category": cats} if cats else {})},
            st.sampled_from(TYPES),
            st.lists(st.sampled_from(CATEGORIES), max_size=2),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_may_see_by_type_agrees_with_the_caller(
    scopes: list[str], fhir_user: str | None, resources: list[dict[str, Any]]
) -> None:
    """Judge._may_see (answered once per type when a scope grants the whole type) equals
    Caller.may_see for every resource, in any order, on one Judge."""
    identity = Identity(
        subject="sub",
        issuer="https://issuer.test",
        expires_at=2e9,
        scopes=parse_scopes(" ".join(scopes)).scopes,
        fhir_user=fhir_user,
    )
    if identity.kind == "none":
        return
    caller = caller_of(identity)
    judge = Judge(
        caller=caller,
        action=ACTION_ACCESS,
        policies={},
        defaults=Defaults(),
        now=NOW,
        base_urls=BASES,
    )
    for resource in resources:
        expected = caller.may_see(resource)
        assert judge._may_see(resource["resourceType"], resource) == expected


@settings(max_examples=500)
@given(
    raw=st.binary(max_size=200) | st.lists(st.sampled_from((b"\\", b"u", b"a", b'"'))).map(b"".join)
)
def test_escape_check_is_a_substring_search(raw: bytes) -> None:
    """_has_escape(raw) is ``b"\\u" in raw``, past the backslashes it looks at one by one too."""
    assert _has_escape(raw) == (b"\\u" in raw)


def test_escape_check_past_many_backslashes() -> None:
    many = b'\\"' * 100
    assert not _has_escape(many)
    assert _has_escape(many + b"\\u0041")


@given(
    ids=st.frozensets(st.text(alphabet="abc-.19", min_size=1, max_size=4), max_size=3),
    kind=st.sampled_from(tuple(Kind)),
    unresolved=st.booleans(),
)
def test_references_of_is_the_property(ids: frozenset[str], kind: Kind, unresolved: bool) -> None:
    """references_of(refs) (made once per set of ids) equals refs.references."""
    refs = PatientRefs(kind, ids, unresolved)
    assert references_of(refs) == refs.references
    assert references_of(refs) == refs.references  # and again, from the cache
