"""The record of a patient's registered consent-signing key (pure; see
:mod:`middleware.consent.signers` for registration and the requirement).

It is kept like a consent version (a ``consent`` ledger entry and a consent store row) but it is
no Consent: id ``signer-key-<32 hex digits>`` (:data:`KEY_ID_PREFIX`, reserved: no Consent may
take such an id; the digits are the patient's keyed pseudonym-table lookup, so the id names
nobody), ``status`` :data:`KEY_STATUS`, ``subject`` the patient, the base64 key in the
extension :data:`KEY_EXTENSION`. The registry never compiles it; the Consent API never shows it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final, Literal

from middleware.fhir import jsoncodec
from middleware.storage.consent_base import ConsentRecord

__all__ = [
    "KEY_EXTENSION",
    "KEY_ID_PREFIX",
    "KEY_SIZE",
    "KEY_STATUS",
    "KeyEnrolment",
    "SignatureMode",
    "is_key_id",
    "key_id",
    "key_record",
    "registered_key",
]

#: An Ed25519 public key's size (RFC 8032).
KEY_SIZE: Final = 32
SignatureMode = Literal["off", "patient-key"]
KeyEnrolment = Literal["admin", "patient"]
KEY_ID_PREFIX: Final = "signer-key-"
KEY_STATUS: Final = "registered-key"
KEY_EXTENSION: Final = "https://consentry.dev/fhir/StructureDefinition/consent-signer-key"


def is_key_id(consent_id: str | None) -> bool:
    """Whether ``consent_id`` is reserved for key records."""
    return consent_id is not None and consent_id.startswith(KEY_ID_PREFIX)


def key_id(lookup: bytes) -> str:
    """The record id of a patient's registered key, from the patient's pseudonym-table
    lookup (``ConsentStore.lookup``, a keyed digest of the reference): the id is written in
    attempt entries, which must not name the patient."""
    return KEY_ID_PREFIX + lookup[:16].hex()


def key_record(patient: str, lookup: bytes, public_key: bytes) -> dict[str, Any]:
    """The record a registration appends (see the module docstring). Pure."""
    return {
        "resourceType": "Basic",
        "id": key_id(lookup),
        "status": KEY_STATUS,
        "subject": {"reference": patient},
        "extension": [
            {"url": KEY_EXTENSION, "valueBase64Binary": base64.b64encode(public_key).decode()}
        ],
    }


def registered_key(record: ConsentRecord | None) -> bytes | None:
    """The public key a stored key record holds; None for no record or an unreadable one."""
    if record is None or record.status != KEY_STATUS:
        return None
    try:
        stored = jsoncodec.decode(record.data)
    except jsoncodec.DecodeError:
        return None
    for ext in stored.get("extension", ()) if isinstance(stored, Mapping) else ():
        if isinstance(ext, Mapping) and ext.get("url") == KEY_EXTENSION:
            try:
                key = base64.b64decode(str(ext.get("valueBase64Binary")), validate=True)
            except (binascii.Error, ValueError):
                return None
            return key if len(key) == KEY_SIZE else None
    return None
