"""Who may use the consent API for what (consent.access): one table per rule."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.consent.access import (
    CALLER_OWN,
    CALLER_TAG,
    OPERATIONS,
    Acting,
    Operation,
    authorize,
    check_patient,
    performer,
)
from middleware.errors import Forbidden

ROLE = "consent-admin"


def who(
    scopes: str, *, patient: str | None = None, roles: tuple[str, ...] = (), **kw: Any
) -> Identity:
    return Identity(
        subject="s",
        issuer="https://idp.test",
        expires_at=0.0,
        scopes=parse_scopes(scopes).scopes,
        patient=patient,
        roles=frozenset(roles),
        **kw,
    )


PATIENT_ALL = who("launch/patient patient/Consent.cruds", patient="p1")
ADMIN = who("user/Consent.cruds", roles=(ROLE,), fhir_user="Practitioner/o")


@pytest.mark.parametrize(
    ("identity", "operation", "expected"),
    [
        # a patient-context token, per permission letter
        (PATIENT_ALL, "create", Acting("patient", "Patient/p1")),
        (PATIENT_ALL, "search", Acting("patient", "Patient/p1")),
        (who("patient/Consent.c", patient="p1"), "create", Acting("patient", "Patient/p1")),
        (who("patient/Consent.c", patient="p1"), "update", None),
        (who("patient/Consent.u", patient="p1"), "revoke", Acting("patient", "Patient/p1")),
        (who("patient/Consent.rs", patient="p1"), "read", Acting("patient", "Patient/p1")),
        (who("patient/Consent.rs", patient="p1"), "explain", Acting("patient", "Patient/p1")),
        (who("patient/Consent.rs", patient="p1"), "create", None),
        (who("patient/Consent.write", patient="p1"), "update", Acting("patient", "Patient/p1")),
        (who("patient/*.cruds", patient="p1"), "create", Acting("patient", "Patient/p1")),
        (who("patient/Observation.cruds", patient="p1"), "read", None),
        (who("patient/Consent.cruds"), "read", None),  # no launch patient
        (who("patient/Consent.rs?category=x|y", patient="p1"), "read", None),  # granular
        # a consent administrator: the role and a user/ or system/ scope
        (ADMIN, "create", Acting("consent-admin")),
        (ADMIN, "explain", Acting("consent-admin")),
        (who("system/Consent.u", roles=(ROLE,)), "revoke", Acting("consent-admin")),
        (who("user/Consent.rs", roles=(ROLE,)), "update", None),
        (who("user/Patient.cruds", roles=(ROLE,)), "read", None),
        (who("user/Consent.cruds", roles=("doctor",)), "read", None),
        (who("user/Consent.cruds"), "create", None),
        # both: the administrator's rule wins
        (
            who("patient/Consent.r user/Consent.r", patient="p1", roles=(ROLE,)),
            "read",
            Acting("consent-admin"),
        ),
        # nobody
        (who(""), "read", None),
    ],
    ids=[
        "patient-create",
        "patient-search",
        "patient-c-create",
        "patient-c-not-update",
        "patient-u-revoke",
        "patient-r-read",
        "patient-r-explain",
        "patient-r-not-create",
        "patient-v1-write",
        "patient-wildcard",
        "patient-other-type",
        "patient-scope-without-context",
        "patient-granular-never",
        "admin-create",
        "admin-explain",
        "admin-system-scope",
        "admin-without-u",
        "admin-other-type",
        "other-role",
        "scope-without-role",
        "both-admin-wins",
        "no-scopes",
    ],
)
def test_authorize(identity: Identity, operation: Operation, expected: Acting | None) -> None:
    if expected is None:
        with pytest.raises(Forbidden):
            authorize(identity, operation, admin_role=ROLE)
    else:
        assert authorize(identity, operation, admin_role=ROLE) == expected


def test_the_admin_role_is_configurable() -> None:
    custom = who("user/Consent.r", roles=("privacy-officer",))
    assert authorize(custom, "read", admin_role="privacy-officer") == Acting("consent-admin")
    with pytest.raises(Forbidden):
        authorize(custom, "read", admin_role=ROLE)


def test_every_operation_needs_one_smart_permission() -> None:
    assert set(OPERATIONS.values()) <= set("cruds")


@pytest.mark.parametrize(
    ("acting", "patient", "allowed"),
    [
        (Acting("patient", "Patient/p1"), "Patient/p1", True),
        (Acting("patient", "Patient/p1"), "Patient/p2", False),
        (Acting("patient", "Patient/p1"), "Patient/p10", False),
        (Acting("consent-admin"), "Patient/anyone", True),
    ],
    ids=["own", "other", "prefix-is-not-own", "admin-any"],
)
def test_check_patient(acting: Acting, patient: str, allowed: bool) -> None:
    if allowed:
        check_patient(acting, patient)
    else:
        with pytest.raises(Forbidden):
            check_patient(acting, patient)


def test_the_performer_names_who_acted_and_nothing_of_the_token() -> None:
    identity = who(
        "user/Consent.cruds",
        roles=(ROLE, "a"),
        fhir_user="Practitioner/o",
        client_id="app",
        token_id="j1",
        purpose_of_use=(("x", "TREAT"),),
    )
    assert performer(identity) == {
        "sub": "s",
        "iss": "https://idp.test",
        "clientId": "app",
        "fhirUser": "Practitioner/o",
        "roles": ["a", ROLE],
        "jti": "j1",
    }


def test_a_patient_performer_is_not_named() -> None:
    identity = who("patient/Consent.r", patient="p1", fhir_user="Patient/p1")
    assert performer(identity) == {"iss": "https://idp.test"}


@pytest.mark.parametrize(
    ("claims", "named"),
    [
        ({"patient": "p1", "token_id": "j1", "client_id": "app"}, False),
        ({"fhir_user": "Patient/p1", "token_id": "j1", "client_id": "app"}, False),
        ({"patient": "p1", "fhir_user": "Patient/p1", "token_id": "j1"}, False),
        ({"fhir_user": "Practitioner/o", "token_id": "j1", "client_id": "app"}, True),
        ({"patient": "p1", "fhir_user": "Practitioner/o", "token_id": "j1"}, True),
    ],
    ids=["launch-patient", "patient-fhiruser", "both", "practitioner", "clinician-ehr-launch"],
)
def test_a_patient_callers_account_is_not_in_the_evidence(
    claims: dict[str, Any], named: bool
) -> None:
    """The attempt evidence is plain text that a shred of the patient may not reach (an
    attempt on another patient's chain, or on none): a patient caller's ``sub`` and ``jti``
    (their account, e.g. ``user-<pid>``) are left out; others' are kept."""
    clinician_launch = "patient" in claims and named  # patient context, a clinician acting
    scopes = (
        "launch/patient patient/Observation.r user/Consent.cruds"
        if clinician_launch
        else "user/Consent.r"
        if named
        else "patient/Consent.r"
    )
    who_acted = performer(who(scopes, **claims))
    assert ("sub" in who_acted, "jti" in who_acted) == (named, named)
    assert who_acted["iss"] == "https://idp.test"


@pytest.mark.parametrize(
    ("claims", "tag_kept"),
    [
        ({"patient": "p1", "token_id": "j1"}, True),
        ({"fhir_user": "Patient/p1"}, True),
        ({"fhir_user": "Practitioner/o", "token_id": "j1"}, False),
    ],
    ids=["launch-patient", "patient-fhiruser", "practitioner"],
)
def test_a_patient_callers_tag_names_them_on_another_chain(
    claims: dict[str, Any], tag_kept: bool
) -> None:
    """A patient caller's attempt about another patient is named by the caller's tag (hex),
    nothing else of theirs; on their own chain it says so (ownChain); a caller named by their
    account gets neither."""
    scopes = "patient/Consent.r" if tag_kept else "user/Consent.r"
    who_acted = performer(who(scopes, **claims), tag=bytes(range(16)))
    assert (CALLER_TAG in who_acted) is tag_kept
    if tag_kept:
        assert who_acted == {"iss": "https://idp.test", CALLER_TAG: bytes(range(16)).hex()}
    own = performer(who(scopes, **claims), own=True)
    assert own.get(CALLER_TAG) is None
    assert (own.get(CALLER_OWN) is True) is tag_kept
    assert CALLER_OWN not in performer(who(scopes, **claims))
    # Never both: an attempt on another chain is not the patient's own.
    assert CALLER_OWN not in performer(who(scopes, **claims), tag=bytes(16), own=True)
