"""Who may read a ledger leaf's contents (ledger.access): which reader a token is, then which
leaves that reader may read. The app-level table is ``tests/app/test_ledger_privacy.py``."""

from __future__ import annotations

import pytest

from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.errors import Forbidden
from middleware.ledger.access import CONSENT_KINDS, Reader, check_leaf, check_listing, reader_of
from middleware.ledger.leaf import EntryKind, Leaf

AUDITOR = "ledger-auditor"
ADMIN = "consent-admin"
MINE = bytes(range(1, 17))
THEIRS = bytes(range(2, 18))


def who(scopes: str, *, patient: str | None = None, roles: tuple[str, ...] = ()) -> Identity:
    return Identity(
        subject="s",
        issuer="https://idp.test",
        expires_at=0.0,
        scopes=parse_scopes(scopes).scopes,
        patient=patient,
        roles=frozenset(roles),
    )


def leaf(kind: EntryKind, pseudonym: bytes | None) -> Leaf:
    return Leaf(kind=kind, recorded_us=1, pseudonym=pseudonym, commitment=bytes(32))


def reader(identity: Identity) -> Reader:
    return reader_of(identity, auditor_role=AUDITOR, admin_role=ADMIN)


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        # the auditor: role and a user/ or system/ AuditEvent read scope, both
        (who("user/AuditEvent.r", roles=(AUDITOR,)), Reader("auditor")),
        (who("system/AuditEvent.rs", roles=(AUDITOR,)), Reader("auditor")),
        (who("system/*.r", roles=(AUDITOR, ADMIN)), Reader("auditor")),
        # the consent administrator: consent kinds only
        (who("user/Consent.r", roles=(ADMIN,)), Reader("consent-admin", kinds=CONSENT_KINDS)),
        (
            who("user/Consent.r", roles=(AUDITOR, ADMIN)),
            Reader("consent-admin", kinds=CONSENT_KINDS),
        ),
        # a patient: consent kinds with Consent.r, every kind with AuditEvent.r
        (
            who("patient/Consent.r", patient="p1"),
            Reader("patient", "Patient/p1", CONSENT_KINDS),
        ),
        (who("patient/AuditEvent.r", patient="p1"), Reader("patient", "Patient/p1")),
        # patient/ is not user/: the auditor role with a patient scope reads as that patient
        (
            who("patient/AuditEvent.r", roles=(AUDITOR,), patient="p1"),
            Reader("patient", "Patient/p1"),
        ),
    ],
    ids=[
        "auditor-user",
        "auditor-system",
        "auditor-wildcard",
        "admin",
        "admin-without-audit-scope",
        "patient-consent",
        "patient-audit",
        "auditor-role-patient-scope",
    ],
)
def test_reader_of(identity: Identity, expected: Reader) -> None:
    assert reader(identity) == expected


@pytest.mark.parametrize(
    "identity",
    [
        who("user/AuditEvent.r"),  # the scope without the role
        who("user/Consent.r", roles=(AUDITOR,)),  # the role without an AuditEvent scope
        who("user/AuditEvent.c", roles=(AUDITOR,)),  # not a read
        who("user/Consent.r"),  # a practitioner without the admin role
        who("system/*.cruds"),  # an EHR backend
        who("patient/Observation.r", patient="p1"),  # a patient's app for something else
        who("patient/AuditEvent.r"),  # patient scopes without a launch patient
        who("user/Consent.r?category=x", roles=(ADMIN,)),  # granular scopes grant nothing
    ],
    ids=[
        "scope-without-role",
        "role-without-audit-scope",
        "auditor-not-read",
        "practitioner",
        "ehr-backend",
        "patient-other-scope",
        "no-launch-patient",
        "granular-admin",
    ],
)
def test_anyone_else_is_no_reader(identity: Identity) -> None:
    with pytest.raises(Forbidden):
        reader(identity)


AUDITOR_READER = Reader("auditor")
ADMIN_READER = Reader("consent-admin", kinds=CONSENT_KINDS)
PATIENT_CONSENTS = Reader("patient", "Patient/p1", CONSENT_KINDS)
PATIENT_ALL = Reader("patient", "Patient/p1")


@pytest.mark.parametrize(
    ("who_reads", "kind", "pseudonym", "own", "allowed"),
    [
        # the auditor reads everything, with or without a pseudonym
        (AUDITOR_READER, EntryKind.DISCLOSURE, THEIRS, None, True),
        (AUDITOR_READER, EntryKind.KEY_EVENT, None, None, True),
        # the administrator: consent kinds of anyone, nothing else
        (ADMIN_READER, EntryKind.CONSENT, THEIRS, None, True),
        (ADMIN_READER, EntryKind.CONSENT_REVOKE, THEIRS, None, True),
        (ADMIN_READER, EntryKind.DISCLOSURE, THEIRS, None, False),
        (ADMIN_READER, EntryKind.ADMIN, THEIRS, None, False),
        # a patient: only leaves with their own pseudonym, of the kinds their scope covers
        (PATIENT_CONSENTS, EntryKind.CONSENT, MINE, MINE, True),
        (PATIENT_CONSENTS, EntryKind.DISCLOSURE, MINE, MINE, False),
        (PATIENT_CONSENTS, EntryKind.CONSENT, THEIRS, MINE, False),
        (PATIENT_ALL, EntryKind.DISCLOSURE, MINE, MINE, True),
        (PATIENT_ALL, EntryKind.ACCESS_DECISION, THEIRS, MINE, False),
        (PATIENT_ALL, EntryKind.ADMIN, None, MINE, False),  # no patient is not "mine"
        (PATIENT_ALL, EntryKind.DISCLOSURE, THEIRS, None, False),  # no pseudonym yet
    ],
    ids=str,
)
def test_check_leaf(
    who_reads: Reader, kind: EntryKind, pseudonym: bytes | None, own: bytes | None, allowed: bool
) -> None:
    entry = leaf(kind, pseudonym)
    if allowed:
        check_leaf(who_reads, entry, own)
    else:
        with pytest.raises(Forbidden):
            check_leaf(who_reads, entry, own)


@pytest.mark.parametrize(
    ("who_reads", "allowed"),
    [(AUDITOR_READER, True), (ADMIN_READER, False), (PATIENT_ALL, False)],
    ids=["auditor", "admin", "patient"],
)
def test_only_the_auditor_lists(who_reads: Reader, allowed: bool) -> None:
    if allowed:
        check_listing(who_reads)
    else:
        with pytest.raises(Forbidden):
            check_listing(who_reads)


def test_a_refusal_names_no_pseudonym() -> None:
    with pytest.raises(Forbidden) as refused:
        check_leaf(PATIENT_ALL, leaf(EntryKind.DISCLOSURE, THEIRS), MINE)
    assert THEIRS.hex() not in str(refused.value)
    assert MINE.hex() not in str(refused.value)
