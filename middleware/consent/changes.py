"""Recording one consent change, and answering with the recorded version.

:func:`commit_change` verifies a detached signature over the canonical bytes with the version
the change replaces (:func:`~middleware.consent.records.signed_change`; and, when the
deployment requires it, that it is by the patient's registered key:
:mod:`middleware.consent.signers`), appends the
``consent`` / ``consent-revoke`` entry (evidence: the canonical bytes; pseudonym: the
patient's, created on the patient's first consent; leaf ``consent`` field: the entry of the
version it supersedes), then records it in the consent store, in that order (see
:mod:`middleware.consent.service`). :func:`resource_result` is the answer carrying a version:
``ETag`` ``W/"<version>"``, ``Last-Modified``, the ledger index and receipt URL (headers and
``meta.extension``) and, for writes, ``Location``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final

from middleware.consent.model import Policy
from middleware.consent.recording import record_entry
from middleware.consent.records import canonical_consent, render_consent, signed_change
from middleware.consent.service import Call, ConsentService, Result, Trail
from middleware.consent.signers import check_patient_signature
from middleware.errors import UnprocessableEntity
from middleware.fhir import jsoncodec
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import verify_detached
from middleware.storage.consent_base import ConsentRecord

__all__ = ["LEDGER_INDEX_HEADER", "LEDGER_RECEIPT_HEADER", "commit_change", "resource_result"]

LEDGER_INDEX_HEADER: Final = "x-consentry-ledger-index"
LEDGER_RECEIPT_HEADER: Final = "x-consentry-ledger-receipt"


async def commit_change(
    svc: ConsentService,
    kind: EntryKind,
    resource: Mapping[str, Any],
    policy: Policy,
    *,
    previous: ConsentRecord | None,
    call: Call,
    trail: Trail,
    signed: bytes | None = None,
    replaces: int | None = None,
) -> ConsentRecord:
    """Append the change to the ledger, then record it in the store (module docstring of
    :mod:`middleware.consent.service`). A signature covers ``signed``; by default
    :func:`~middleware.consent.records.signed_change` of ``resource`` and ``replaces`` (the
    version an update or revocation replaces; None for a create: the canonical bytes
    recorded). An unsigned create under ``off`` passes those of the Consent as submitted,
    without ``id``."""
    data = canonical_consent(resource)
    signed = signed_change(resource, replaces) if signed is None else signed
    await check_patient_signature(svc, policy.patient, call, signed)
    if call.signature is not None:
        public_key, signature = call.signature
        if not verify_detached(public_key, signed, signature):
            raise UnprocessableEntity(
                "X-Consent-Signature does not verify with X-Consent-Signer-Key over the "
                "Consent's canonical bytes"
            )
        trail.signature = {
            "alg": "Ed25519",
            "publicKey": base64.b64encode(public_key).decode("ascii"),
            "signature": base64.b64encode(signature).decode("ascii"),
        }
        if replaces is not None:  # the recorded version with meta.versionId = the replaced one
            trail.signature["replaces"] = str(replaces)
        elif signed != data:
            trail.signature["over"] = "submitted"  # the recorded version without its id
    return await record_entry(
        svc,
        trail,
        kind,
        data,
        consent_id=policy.consent_id,
        patient=policy.patient,
        status=policy.status,
        previous=previous,
    )


def resource_result(
    svc: ConsentService, record: ConsentRecord, status: int, *, location: bool
) -> Result:
    receipt = svc.receipt_url(record.ledger_index)
    modified = datetime.fromtimestamp(record.recorded_us / 1_000_000, UTC)
    headers = [
        ("etag", f'W/"{record.version}"'),
        ("last-modified", format_datetime(modified, usegmt=True)),
        (LEDGER_INDEX_HEADER, str(record.ledger_index)),
        (LEDGER_RECEIPT_HEADER, receipt),
    ]
    if location:
        url = f"{svc.base_url}/Consent/{record.consent_id}/_history/{record.version}"
        headers.append(("location", url))
    return status, headers, jsoncodec.encode(render_consent(record, receipt))
