"""Resolving a patient caller's pseudonym named by an attempt (consent.callers)."""

from __future__ import annotations

import pytest

from middleware.audit.cli_attempts import PSEUDONYMOUS, caller_text
from middleware.consent.access import CALLER_CHAIN
from middleware.consent.callers import attempt_chain, resolve_chain
from middleware.consent.records import ATTEMPT_TYPE, attempt_evidence, canonical_consent
from middleware.fhir import jsoncodec
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.contract.helpers import PSEUDONYMS, SIGN
from tests.unit.consent.builders import consent

A, B = PSEUDONYMS[0], PSEUDONYMS[1]


def attempt(principal: dict[str, object]) -> bytes:
    return attempt_evidence(
        operation="read", status=404, principal=principal, acting_as="patient", consent_id="c"
    )


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        (attempt({"iss": "i", CALLER_CHAIN: A.hex()}), A),
        (attempt({"iss": "i"}), None),
        (attempt({"iss": "i", CALLER_CHAIN: A.hex()[:-2]}), None),
        (attempt({"iss": "i", CALLER_CHAIN: "zz" * 16}), None),
        (attempt({"iss": "i", CALLER_CHAIN: 7}), None),
        (jsoncodec.encode_canonical({"type": "other", "principal": {CALLER_CHAIN: A.hex()}}), None),
        (jsoncodec.encode_canonical({"type": ATTEMPT_TYPE, "principal": []}), None),
        (b"not json", None),
    ],
    ids=["named", "none", "short", "not-hex", "not-text", "not-attempt", "odd-principal", "junk"],
)
def test_the_chain_an_attempt_names(evidence: bytes, expected: bytes | None) -> None:
    assert attempt_chain(evidence) == expected


async def _world() -> tuple[MemoryLogStore, MemoryConsentStore]:
    """A with a consent on its chain A; B with one on B."""
    log = MemoryLogStore()
    store = MemoryConsentStore()
    await store.pseudonym_for("Patient/a", A)
    await store.pseudonym_for("Patient/b", B)
    entries = [
        NewEntry.create(
            EntryKind.CONSENT,
            canonical_consent(consent("R5", "permit", consent_id=cid, patient=patient)),
            recorded_us=5,
            pseudonym=chain,
        )
        for cid, patient, chain in (("ca", "Patient/a", A), ("cb", "Patient/b", B))
    ]
    await log.append(entries, sign=SIGN)
    return log, store


async def test_a_chain_resolves_to_its_patient_by_its_consents_or_a_candidate() -> None:
    log, store = await _world()
    assert await resolve_chain(log, store, A) == "Patient/a"
    assert await resolve_chain(log, store, B) == "Patient/b"
    # A chain with no consent entry: only a named candidate resolves it.
    await store.pseudonym_for("Patient/c", PSEUDONYMS[2])
    assert await resolve_chain(log, store, PSEUDONYMS[2]) is None
    assert await resolve_chain(log, store, PSEUDONYMS[2], ["Patient/x", "Patient/c"]) == (
        "Patient/c"
    )
    # A candidate whose pseudonym is another is not taken.
    assert await resolve_chain(log, store, A, ["Patient/b"]) == "Patient/a"


async def test_a_forgotten_chain_resolves_to_nobody() -> None:
    """What a shred does to the caller (forget their pseudonym, erase their consents'
    evidence): their chain names nobody, also for a candidate naming them."""
    log, store = await _world()
    await store.forget("Patient/a")
    assert await resolve_chain(log, store, A) is None
    assert await resolve_chain(log, store, A, ["Patient/a"]) is None
    del log.log.evidence[0]
    assert await resolve_chain(log, store, A) is None
    # A new pseudonym for the patient (their next call) does not bring the old chain back.
    await store.pseudonym_for("Patient/a", PSEUDONYMS[3])
    assert await resolve_chain(log, store, A, ["Patient/a"]) is None


async def test_a_consent_naming_another_patients_chain_is_not_believed() -> None:
    """A consent entry on chain A whose evidence names B (a forged or mixed-up entry) does
    not make A resolve to B: the table's pseudonym of B is B's."""
    log, store = await _world()
    forged = canonical_consent(consent("R5", "permit", consent_id="x", patient="Patient/b"))
    await log.append(
        [NewEntry.create(EntryKind.CONSENT, forged, recorded_us=6, pseudonym=PSEUDONYMS[4])],
        sign=SIGN,
    )
    assert await resolve_chain(log, store, PSEUDONYMS[4]) is None


# -- how the officer's listing names a caller (audit.cli_attempts.caller_text) ---------------


@pytest.mark.parametrize(
    ("principal", "resolved", "shown"),
    [
        ({"iss": "i", CALLER_CHAIN: A.hex()}, "Patient/a", "Patient/a"),
        ({"iss": "i", CALLER_CHAIN: A.hex()}, None, f"{PSEUDONYMOUS} {A.hex()}"),
        ({"iss": "i"}, None, "Patient/b (the patient)"),
        ({"iss": "i", "sub": "s", "fhirUser": "Practitioner/o"}, None, "Practitioner/o"),
        ({"iss": "i", "sub": "s", "roles": ["consent-admin"]}, None, "i#s (consent-admin)"),
    ],
    ids=["resolved", "forgotten", "the-patient", "fhir-user", "account-and-roles"],
)
def test_how_a_caller_is_shown(
    principal: dict[str, object], resolved: str | None, shown: str
) -> None:
    assert caller_text(principal, "Patient/b", resolved) == shown
