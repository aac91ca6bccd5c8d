"""What the consent API stores and answers: canonical Consent bytes, attempt evidence, and the
FHIR resources and Bundles it returns. Pure: no I/O.

**Canonical bytes.** The evidence of a ``consent`` / ``consent-revoke`` ledger entry is
:func:`canonical_consent`: the Consent as accepted, with what the server manages removed
(``meta.versionId``, ``meta.lastUpdated``, the ledger receipt extension; ``meta`` too when
nothing else is left in it), so a Consent read and sent back unchanged has the same bytes;
encoded by :func:`~middleware.fhir.jsoncodec.encode_canonical` (keys sorted, no whitespace,
UTF-8, numbers exactly as the client wrote them: RFC 8785 except for numbers, see there).
These are the bytes that are committed on the ledger, stored in the index, and that a
patient's detached Ed25519 signature covers. The version and last-updated time are not in
them: they follow from the ledger (the record's position among the consent's entries, and the
entry's recorded time) and are added when a Consent is answered (:func:`render_consent`).

**Attempt evidence** (:func:`attempt_evidence`) is the PHI-minimal record of one call to the
consent API: who (token subject, issuer, client, ``fhirUser``, roles), acting as what, which
operation on which consent id, the outcome (HTTP status), the request's ``X-Request-Id`` and, for a
change, the consent entry's ledger index and any detached signature. It names no patient: the
entry's pseudonym links it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from middleware.consent.model import normalize_reference
from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.storage.consent_base import ConsentRecord

__all__ = [
    "ATTEMPT_TYPE",
    "LEDGER_EXTENSION",
    "REVOKED_STATUSES",
    "SERVER_META",
    "attempt_evidence",
    "bundle",
    "canonical_consent",
    "consent_keys",
    "instant",
    "is_revocation",
    "render_consent",
    "revoked",
    "signed_change",
]

#: Elements of ``meta`` the server manages (FHIR R4 §2.36.0.1 "Resource.meta"): never stored.
SERVER_META: Final = ("versionId", "lastUpdated")
#: Statuses that end a consent's force. Moving into one of them from any other status is a
#: revocation (R4 ``rejected``/``inactive``; R5 ``inactive``/``not-done``; both
#: ``entered-in-error``): recorded as a ``consent-revoke`` entry.
REVOKED_STATUSES: Final = frozenset({"inactive", "rejected", "not-done", "entered-in-error"})
#: ``meta.extension`` of an answered Consent: the receipt URL of its ledger entry.
LEDGER_EXTENSION: Final = "https://consentry.dev/fhir/StructureDefinition/ledger-receipt"
#: ``type`` of attempt evidence (versioned: a verifier reads the fields by it).
ATTEMPT_TYPE: Final = "consentry/consent-api-attempt/v1"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def canonical_consent(resource: Mapping[str, Any]) -> bytes:
    """The canonical bytes of ``resource`` (see the module docstring). ``resource`` is not
    modified."""
    body = dict(resource)
    meta = body.get("meta")
    if isinstance(meta, Mapping):
        kept = {k: v for k, v in meta.items() if k not in SERVER_META}
        extensions = kept.get("extension")
        if isinstance(extensions, list):
            ours = [
                e for e in extensions if isinstance(e, Mapping) and e.get("url") == LEDGER_EXTENSION
            ]
            if ours:
                kept["extension"] = [e for e in extensions if e not in ours]
                if not kept["extension"]:
                    del kept["extension"]
        if kept:
            body["meta"] = kept
        else:
            del body["meta"]
    return jsoncodec.encode_canonical(body)


def signed_change(resource: Mapping[str, Any], replaces: int | None) -> bytes:
    """What a detached signature over a change covers: :func:`canonical_consent` of
    ``resource`` with ``meta.versionId`` set to ``replaces``, the version the change replaces
    (update, revoke), so a signed change applies once, to that version only; a create
    (``replaces`` None) is the canonical bytes alone. A client signs the Consent it read, with
    the ``meta.versionId`` it read, as changed. Pure."""
    data = canonical_consent(resource)
    if replaces is None:
        return data
    body = dict(jsoncodec.decode(data, max_depth=STORED_MAX_JSON_DEPTH))
    meta = body.get("meta")
    body["meta"] = {**(meta if isinstance(meta, Mapping) else {}), "versionId": str(replaces)}
    return jsoncodec.encode_canonical(body)


def consent_keys(resource: object) -> tuple[str, str, str] | None:
    """``(id, status, patient)`` of a stored Consent (R4 ``patient`` or R5 ``subject``,
    normalised to ``Patient/<id>``); None when one is missing or ``resource`` is not a JSON
    object. Used to rebuild the index from ledger evidence without re-validating it."""
    if not isinstance(resource, Mapping):
        return None
    cid, status = resource.get("id"), resource.get("status")
    for key in ("patient", "subject"):
        ref = resource.get(key)
        literal = ref.get("reference") if isinstance(ref, Mapping) else None
        if isinstance(literal, str) and normalize_reference(literal).startswith("Patient/"):
            if isinstance(cid, str) and cid and isinstance(status, str) and status:
                return cid, status, normalize_reference(literal)
            return None
    return None


def is_revocation(previous_status: str | None, status: str) -> bool:
    """True when moving from ``previous_status`` (None: a new consent) to ``status`` revokes."""
    return (
        previous_status is not None
        and previous_status not in REVOKED_STATUSES
        and status in REVOKED_STATUSES
    )


def revoked(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``resource`` with ``status`` ``inactive`` (the status R4 and R5 share for "no
    longer in force"), what ``$revoke`` records."""
    return {**resource, "status": "inactive"}


def instant(recorded_us: int) -> str:
    """A FHIR ``instant`` (UTC, microseconds) for a ledger recorded time."""
    moment = _EPOCH + timedelta(microseconds=recorded_us)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def render_consent(record: ConsentRecord, receipt_url: str) -> dict[str, Any]:
    """The Consent of ``record`` as answered: its stored JSON plus ``meta.versionId``,
    ``meta.lastUpdated`` and the ledger receipt extension (``receipt_url``)."""
    body = jsoncodec.decode(record.data, max_depth=STORED_MAX_JSON_DEPTH)
    meta = dict(body.get("meta") or {})
    extensions = [e for e in meta.get("extension", ()) if e.get("url") != LEDGER_EXTENSION]
    extensions.append({"url": LEDGER_EXTENSION, "valueUrl": receipt_url})
    meta.update(
        versionId=str(record.version), lastUpdated=instant(record.recorded_us), extension=extensions
    )
    body["meta"] = meta
    return dict(body)


def bundle(
    kind: str,
    entries: Sequence[tuple[ConsentRecord, str]],
    *,
    base: str,
    self_link: str,
) -> dict[str, Any]:
    """A ``searchset`` or ``history`` Bundle (FHIR R4 §2.36 Bundle) of ``(record, receipt_url)``
    pairs, with ``fullUrl`` under ``base``; history entries carry ``request``/``response``."""
    items: list[dict[str, Any]] = []
    for record, receipt in entries:
        resource = render_consent(record, receipt)
        entry: dict[str, Any] = {"fullUrl": f"{base}/Consent/{record.consent_id}"}
        entry["resource"] = resource
        if kind == "searchset":
            entry["search"] = {"mode": "match"}
        else:
            method = "POST" if record.version == 1 else "PUT"
            url = "Consent" if method == "POST" else f"Consent/{record.consent_id}"
            entry["request"] = {"method": method, "url": url}
            entry["response"] = {
                "status": "201 Created" if method == "POST" else "200 OK",
                "etag": f'W/"{record.version}"',
                "lastModified": resource["meta"]["lastUpdated"],
            }
        items.append(entry)
    return {
        "resourceType": "Bundle",
        "type": kind,
        "total": len(items),
        "link": [{"relation": "self", "url": self_link}],
        "entry": items,
    }


def attempt_evidence(
    *,
    operation: str,
    status: int,
    principal: Mapping[str, Any],
    acting_as: str | None,
    consent_id: str | None,
    consent_entry: int | None = None,
    version: int | None = None,
    signature: Mapping[str, str] | None = None,
    reason: str | None = None,
    request_id: str | None = None,
) -> bytes:
    """Canonical JSON bytes of one attempt (see the module docstring). ``reason`` is the
    refusal's diagnostics, which never hold PHI (errors.GatewayError)."""
    record: dict[str, Any] = {
        "type": ATTEMPT_TYPE,
        "operation": operation,
        "outcome": status,
        "principal": dict(principal),
    }
    optional: Iterable[tuple[str, Any]] = (
        ("actingAs", acting_as),
        ("consent", consent_id),
        ("consentEntry", consent_entry),
        ("version", version),
        ("signature", None if signature is None else dict(signature)),
        ("reason", reason),
        ("requestId", request_id),
    )
    record.update((key, value) for key, value in optional if value is not None)
    return jsoncodec.encode_canonical(record)
