"""Naming a patient caller by the tag an attempt carries (consent.callers), and how the
officer's listing shows a caller (audit.cli_attempts.caller_text)."""

from __future__ import annotations

import pytest

from middleware.audit.cli_attempts import PSEUDONYMOUS, UNNAMED, caller_text
from middleware.consent.access import CALLER_CHAIN, CALLER_OWN, CALLER_TAG
from middleware.consent.callers import TAG_LABEL, CallerResolver, attempt_tag, caller_tag
from middleware.consent.records import ATTEMPT_TYPE, attempt_evidence, canonical_consent
from middleware.fhir import jsoncodec
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import PSEUDONYM_SIZE, SALT_SIZE, EntryKind
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.contract.helpers import PSEUDONYMS, SIGN
from tests.unit.consent.builders import consent

A, B = PSEUDONYMS[0], PSEUDONYMS[1]
TAG = bytes(range(16))


def attempt(principal: dict[str, object]) -> bytes:
    return attempt_evidence(
        operation="read", status=404, principal=principal, acting_as="patient", consent_id="c"
    )


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        (attempt({"iss": "i", CALLER_TAG: TAG.hex()}), TAG),
        (attempt({"iss": "i"}), None),
        (attempt({"iss": "i", CALLER_CHAIN: A.hex()}), None),
        (attempt({"iss": "i", CALLER_TAG: TAG.hex()[:-2]}), None),
        (attempt({"iss": "i", CALLER_TAG: "zz" * 16}), None),
        (attempt({"iss": "i", CALLER_TAG: 7}), None),
        (jsoncodec.encode_canonical({"type": "other", "principal": {CALLER_TAG: TAG.hex()}}), None),
        (jsoncodec.encode_canonical({"type": ATTEMPT_TYPE, "principal": []}), None),
        (b"not json", None),
    ],
    ids=[
        "named",
        "none",
        "legacy-chain",
        "short",
        "not-hex",
        "not-text",
        "not-attempt",
        "odd-principal",
        "junk",
    ],
)
def test_the_tag_an_attempt_names(evidence: bytes, expected: bytes | None) -> None:
    assert attempt_tag(evidence) == expected


def test_a_tag_is_a_function_of_the_key_only_and_no_entrys_key() -> None:
    """16 bytes, the same for one key, another for another key; the label is no salt's length
    (so the tag is never the evidence key of an entry of that patient)."""
    one, two = bytes(32), bytes([1]) * 32
    assert len(caller_tag(one)) == PSEUDONYM_SIZE
    assert caller_tag(one) == caller_tag(one)
    assert caller_tag(one) != caller_tag(two)
    assert len(TAG_LABEL) != SALT_SIZE


KEYS = {A: bytes([10]) * 32, B: bytes([11]) * 32}


class Keys:
    """The stored evidence keys by chain; a shred deletes one."""

    def __init__(self) -> None:
        self.keys = dict(KEYS)

    async def __call__(self, chain: bytes) -> bytes | None:
        return self.keys.get(chain)


async def _world() -> tuple[MemoryLogStore, MemoryConsentStore, Keys]:
    """A with a consent on its chain A; B with one on B; both chains keyed."""
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
    return log, store, Keys()


async def test_a_tag_resolves_to_its_patient_by_the_consents_or_a_candidate() -> None:
    log, store, keys = await _world()
    callers = CallerResolver(log, store, keys)
    assert await callers.resolve(caller_tag(KEYS[A])) == "Patient/a"
    assert await callers.resolve(caller_tag(KEYS[B])) == "Patient/b"
    assert await callers.resolve(caller_tag(bytes(32))) is None  # nobody's key
    # A patient with no consent entry: only a named candidate resolves them.
    await store.pseudonym_for("Patient/c", PSEUDONYMS[2])
    keys.keys[PSEUDONYMS[2]] = bytes([12]) * 32
    tag_c = caller_tag(keys.keys[PSEUDONYMS[2]])
    assert await CallerResolver(log, store, keys).resolve(tag_c) is None
    named = CallerResolver(log, store, keys, ["Patient/x", "Patient/c"])
    assert await named.resolve(tag_c) == "Patient/c"
    # A candidate whose key is another's is not taken.
    assert await CallerResolver(log, store, keys, ["Patient/b"]).resolve(caller_tag(KEYS[A])) == (
        "Patient/a"
    )


async def test_a_shredded_patients_tag_resolves_to_nobody() -> None:
    """What a shred does to the caller (delete their chain's key, forget their pseudonym,
    erase their consents' evidence): their tag names nobody, a candidate naming them too."""
    log, store, keys = await _world()
    tag = caller_tag(KEYS[A])
    del keys.keys[A]
    assert await CallerResolver(log, store, keys, ["Patient/a"]).resolve(tag) is None
    await store.forget("Patient/a")
    del log.log.evidence[0]
    assert await CallerResolver(log, store, keys, ["Patient/a"]).resolve(tag) is None
    # A new chain for the patient (their next call) has a new key: the old tag stays nobody's.
    await store.pseudonym_for("Patient/a", PSEUDONYMS[3])
    keys.keys[PSEUDONYMS[3]] = bytes([13]) * 32
    assert await CallerResolver(log, store, keys, ["Patient/a"]).resolve(tag) is None


async def test_a_consent_naming_another_patient_does_not_lend_them_a_tag() -> None:
    """A consent entry on chain X whose evidence names B (forged or mixed up) only makes B a
    candidate: B's tag comes from B's own chain's key, so X's key names nobody."""
    log, store, keys = await _world()
    forged = canonical_consent(consent("R5", "permit", consent_id="x", patient="Patient/b"))
    await log.append(
        [NewEntry.create(EntryKind.CONSENT, forged, recorded_us=6, pseudonym=PSEUDONYMS[4])],
        sign=SIGN,
    )
    keys.keys[PSEUDONYMS[4]] = bytes([14]) * 32
    assert (
        await CallerResolver(log, store, keys).resolve(caller_tag(keys.keys[PSEUDONYMS[4]])) is None
    )


# -- how the officer's listing names a caller (audit.cli_attempts.caller_text) ---------------


@pytest.mark.parametrize(
    ("principal", "resolved", "shown"),
    [
        ({"iss": "i", CALLER_TAG: TAG.hex()}, "Patient/a", "Patient/a"),
        ({"iss": "i", CALLER_TAG: TAG.hex()}, None, f"{PSEUDONYMOUS} {TAG.hex()}"),
        ({"iss": "i", CALLER_CHAIN: A.hex()}, None, f"{PSEUDONYMOUS} {A.hex()}"),
        ({"iss": "i", CALLER_OWN: True}, None, "Patient/b (the patient)"),
        # Written before callers were named: another patient's probe, a clinician's EHR
        # launch and the patient's own look alike; none is blamed on the chain's patient.
        ({"iss": "i"}, None, UNNAMED),
        ({"iss": "i", "clientId": "app", "roles": ["r"]}, None, UNNAMED),
        ({"iss": "i", CALLER_OWN: "true"}, None, UNNAMED),
        ({"iss": "i", "sub": "s", "fhirUser": "Practitioner/o"}, None, "Practitioner/o"),
        ({"iss": "i", "sub": "s", "roles": ["consent-admin"]}, None, "i#s (consent-admin)"),
    ],
    ids=[
        "resolved",
        "forgotten",
        "legacy-chain",
        "the-patient",
        "unnamed",
        "unnamed-client",
        "own-not-true",
        "fhir-user",
        "account-and-roles",
    ],
)
def test_how_a_caller_is_shown(
    principal: dict[str, object], resolved: str | None, shown: str
) -> None:
    assert caller_text(principal, "Patient/b", resolved) == shown
