"""Consents signed by the patient's registered key: registering it, and requiring it.

**Registration** (``POST Consent/$register-key``, a ``Parameters`` with ``patient``
(``valueReference``, ``Patient/<id>``), ``publicKey`` (``valueBase64Binary``, a 32-byte
Ed25519 public key) and, for a rotation, ``replaces`` (``valueInteger``, the version of the
key record it replaces)). The *first* registration (no ``replaces``; 409 when a key is
registered already) is made by whoever the setting ``consent_key_enrolment`` names: ``admin``
(default: a consent administrator, who has checked who the patient is) or ``patient`` (also
the patient, with a patient-context token for that patient with ``patient/Consent.u``; a
stolen token could then enrol the thief's key first). A *rotation* names the version it
replaces (412 when that is not the current one), so a signed rotation applies once; by the
patient it must carry a detached signature by the registered (old) key over the canonical
bytes of the submitted Parameters, ``replaces`` included (``X-Consent-Signature`` /
``X-Consent-Signer-Key``, the same headers and canonical form as a Consent); an
administrator may rotate without one (a lost key). Registrations of one patient are
serialised (:mod:`middleware.consent.serial`), so of two concurrent first registrations one
is 201 and the other 409.

**Where it is kept.** A registration is recorded like a consent version, so it is durable and
rebuilt like one: a ``consent`` ledger entry on the patient's chain whose evidence is a small
record (:func:`~middleware.consent.keyrecord.key_record`), and its row in the consent store.
Each rotation is a new version of that record, so its history is the key's history. The
record is not a Consent: the registry never compiles it, the Consent API never shows it, and
no Consent may take its id. A crypto-shred of the patient erases it with their consents.

**Requirement** (setting ``consent_signatures = "patient-key"``; default ``off``, where a
signature stays optional and any key may sign): every change of a patient's consents (create,
update, revoke), by the patient or an administrator, must carry a signature that verifies with
that patient's registered key (:func:`check_patient_signature`), else 422. What is signed: the
canonical bytes of the version recorded (update, revoke: they hold the consent id, so a
signature cannot be moved to another consent, the patient, so not to another patient, and
the version replaced as ``meta.versionId``, so it applies once);
for a create, the canonical bytes of the Consent with the id the client chose
(:mod:`middleware.consent.operations`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, Final

from middleware.auth.identity import Identity
from middleware.consent.access import authorize, check_patient
from middleware.consent.keyrecord import KEY_SIZE, KEY_STATUS, key_id, key_record, registered_key
from middleware.consent.model import normalize_reference
from middleware.consent.recording import record_entry
from middleware.consent.records import canonical_consent
from middleware.consent.service import Call, ConsentService, Result, Trail
from middleware.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    PreconditionFailed,
    UnprocessableEntity,
)
from middleware.fhir import jsoncodec
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import verify_detached
from middleware.storage.consent_base import ConsentRecord

__all__ = ["check_patient_signature", "register_key"]

_PATIENT_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 datatypes.html#id


async def check_patient_signature(
    svc: ConsentService, patient: str, call: Call, signed: bytes
) -> None:
    """In ``patient-key`` mode, raise 422 unless ``call`` carries a signature of ``signed``
    by ``patient``'s registered key (checked before anything is recorded). Off: nothing."""
    if svc.signatures != "patient-key":
        return
    store = await svc.store()
    key = registered_key(await store.current(key_id(store.lookup(patient))))
    if key is None:
        raise UnprocessableEntity(
            "this deployment requires consents signed by the patient's registered key, and "
            "the patient has none: register one with POST Consent/$register-key"
        )
    if call.signature is None:
        raise UnprocessableEntity(
            "this deployment requires a consent change signed by the patient's registered "
            "key (X-Consent-Signature, X-Consent-Signer-Key)"
        )
    public_key, signature = call.signature
    if public_key != key:
        raise UnprocessableEntity("X-Consent-Signer-Key is not the patient's registered key")
    if not verify_detached(key, signed, signature):
        raise UnprocessableEntity(
            "X-Consent-Signature does not verify with the patient's registered key"
        )


async def register_key(svc: ConsentService, identity: Identity, call: Call, trail: Trail) -> Result:
    """``POST Consent/$register-key`` (see the module docstring): 201 on a first
    registration, 200 on a rotation; the answer is a Parameters naming the patient, the key
    and the record's version."""
    acting = authorize(identity, "register-key", admin_role=svc.admin_role)
    trail.acting_as = acting.as_
    params = _parameters(call.body)
    patient, public_key, replaces = _patient(params), _public_key(params), _replaces(params)
    trail.patient = patient
    check_patient(acting, patient)
    store = await svc.store()
    lookup = store.lookup(patient)
    trail.consent_id = kid = key_id(lookup)
    async with svc.serial.hold(kid):  # compare-and-set on the record's version
        current = await (await svc.store()).current(kid)  # the store caught up with the ledger
        _check_version(svc, acting.as_, current, replaces)
        old = registered_key(current)
        if old is not None and acting.as_ == "patient":  # an administrator may replace a lost key
            _check_rotation(old, call, canonical_consent(params))
        return await _record(
            svc, trail, patient=patient, lookup=lookup, public_key=public_key, current=current
        )


def _check_version(
    svc: ConsentService, acting_as: str, current: ConsentRecord | None, replaces: int | None
) -> None:
    if replaces is None:
        if current is not None:
            raise Conflict(
                f"a key is registered (version {current.version}): a rotation names the "
                "version it replaces (parameter replaces)"
            )
        if acting_as == "patient" and svc.key_enrolment != "patient":
            raise Forbidden("a first key registration is made by a consent administrator")
    elif current is None or current.version != replaces:
        raise PreconditionFailed("replaces does not name the current version of the key record")


async def _record(
    svc: ConsentService,
    trail: Trail,
    *,
    patient: str,
    lookup: bytes,
    public_key: bytes,
    current: ConsentRecord | None,
) -> Result:
    data = canonical_consent(key_record(patient, lookup, public_key))
    record = await record_entry(
        svc,
        trail,
        EntryKind.CONSENT,
        data,
        consent_id=key_id(lookup),
        patient=patient,
        status=KEY_STATUS,
        previous=current,
    )
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": patient}},
            {"name": "publicKey", "valueBase64Binary": base64.b64encode(public_key).decode()},
            {"name": "version", "valueInteger": record.version},
        ],
    }
    return (201 if current is None else 200), [], jsoncodec.encode(body)


def _check_rotation(old: bytes, call: Call, signed: bytes) -> None:
    if call.signature is None:
        raise UnprocessableEntity(
            "a key is registered: a rotation by the patient is signed by the registered key "
            "(X-Consent-Signature, X-Consent-Signer-Key over the canonical Parameters)"
        )
    public_key, signature = call.signature
    if public_key != old or not verify_detached(old, signed, signature):
        raise UnprocessableEntity(
            "the rotation is not signed by the patient's registered key over the canonical "
            "bytes of the Parameters"
        )


def _parameters(body: bytes) -> Mapping[str, Any]:
    try:
        given = jsoncodec.decode(body) if body else None
    except jsoncodec.DecodeError as exc:
        raise BadRequest("the body is not valid JSON") from exc
    if not isinstance(given, Mapping) or given.get("resourceType") != "Parameters":
        raise BadRequest("$register-key takes a Parameters resource (patient, publicKey)")
    return given


def _param(params: Mapping[str, Any], name: str, value_key: str) -> object:
    found = [
        p.get(value_key)
        for p in params.get("parameter") or ()
        if isinstance(p, Mapping) and p.get("name") == name
    ]
    if len(found) != 1 or found[0] is None:
        raise UnprocessableEntity(f"Parameters.parameter {name} ({value_key}): exactly one")
    return found[0]


def _patient(params: Mapping[str, Any]) -> str:
    ref = _param(params, "patient", "valueReference")
    literal = ref.get("reference") if isinstance(ref, Mapping) else None
    patient = normalize_reference(literal) if isinstance(literal, str) else ""
    if not patient.startswith("Patient/") or not _PATIENT_ID.fullmatch(patient[8:]):
        raise UnprocessableEntity("Parameters.parameter patient: a reference Patient/<id>")
    return patient


def _replaces(params: Mapping[str, Any]) -> int | None:
    found = [
        p.get("valueInteger")
        for p in params.get("parameter") or ()
        if isinstance(p, Mapping) and p.get("name") == "replaces"
    ]
    if not found:
        return None
    value = found[0]
    if len(found) != 1 or not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UnprocessableEntity("Parameters.parameter replaces (valueInteger): a version")
    return value


def _public_key(params: Mapping[str, Any]) -> bytes:
    value = _param(params, "publicKey", "valueBase64Binary")
    try:
        key = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnprocessableEntity("Parameters.parameter publicKey: not base64") from exc
    if len(key) != KEY_SIZE:
        raise UnprocessableEntity("Parameters.parameter publicKey: an Ed25519 key is 32 bytes")
    return key
