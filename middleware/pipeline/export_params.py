"""What a Bulk Data ``$export`` kick-off asks for, and the upstream searches that answer it.

Pure: :func:`export_request` reads the kick-off's parameters (FHIR Bulk Data Access IG v2,
"Bulk Data Kick-off Request": ``_outputFormat``, ``_since``, ``_type``; every other parameter
is refused with 400 ``not-supported``, as the IG lets a server do) into an
:class:`ExportRequest`; :func:`searches` turns it, with the export's level, into the upstream
type searches the gateway pages through (the upstream has no ``$export`` of its own).

- ``_type`` absent: the Patient compartment's types (R4 CompartmentDefinition) plus Patient;
  at most :data:`MAX_TYPES` types in one export. A name that is no FHIR R4 resource type
  (:data:`~middleware.fhir.resource_types.RESOURCE_TYPES`, case-exact) is refused (400: it
  would otherwise start a job only the upstream's first answer could fail). A gateway-owned
  type (Consent, AuditEvent) is refused (403: its own API serves those); at patient and
  group level a type outside the Patient compartment is refused (400), the IG's "resources
  in the patient compartment".
- ``_since`` (one FHIR instant, with time and zone) becomes ``_lastUpdated=ge<instant>``.
- Patient and system level: one search per type; group level: one per type and member,
  pinned to the member's compartment (:func:`~middleware.pipeline.guards.pin_patient`).

A job is bound to :func:`owner_of` its kick-off's token (issuer, subject, launch patient and
the client it was issued to), and :func:`job_types` reads the types it exports back from its
kick-off URL (what a token must still grant to see the job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from middleware.audit.httptypes import principal_of
from middleware.auth.identity import Identity
from middleware.consent.fhirtime import bounds
from middleware.errors import BadRequest, Forbidden
from middleware.fhir.compartment_data import PATIENT_COMPARTMENT
from middleware.fhir.resource_types import RESOURCE_TYPES
from middleware.pipeline.guards import pin_patient
from middleware.pipeline.judge import GATEWAY_OWNED
from middleware.pipeline.params import decode_params, encode_params

__all__ = [
    "DEFAULT_TYPES",
    "MAX_TYPES",
    "NDJSON",
    "ExportRequest",
    "export_request",
    "job_types",
    "owner_of",
    "searches",
]

NDJSON: Final = "application/fhir+ndjson"
_OUTPUT_FORMATS: Final = frozenset({NDJSON, "application/ndjson", "ndjson"})
_PARAMS: Final = frozenset({"_since", "_type", "_outputFormat"})
#: The types exported when ``_type`` is absent: the Patient compartment's, and Patient.
DEFAULT_TYPES: Final = tuple(sorted((set(PATIENT_COMPARTMENT) | {"Patient"}) - GATEWAY_OWNED))
#: At most this many types in one export (each is at least one upstream search).
MAX_TYPES: Final = 2 * len(DEFAULT_TYPES)


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """The kick-off's ask: the resource ``types`` in order and ``since`` (the instant as
    given, None: everything)."""

    types: tuple[str, ...]
    since: str | None


def export_request(params: Sequence[tuple[str, str]], *, compartment: bool) -> ExportRequest:
    """The kick-off parameters read (module docstring); ``compartment``: a patient or group
    level export, whose types must be patient data. Raises 400 or 403."""
    since: str | None = None
    types: list[str] = []
    for name, value in params:
        if name not in _PARAMS:
            raise BadRequest(
                "a bulk export takes _since, _type and _outputFormat only", code="not-supported"
            )
        if name == "_since":
            interval = bounds(value)
            if interval is None or "T" not in value or since is not None:
                raise BadRequest("_since: expected one FHIR instant (with time and zone)")
            since = value
        elif name == "_type":
            types += [t.strip() for t in value.split(",")]
        elif value not in _OUTPUT_FORMATS:
            raise BadRequest("_outputFormat: only NDJSON (application/fhir+ndjson) is produced")
    for rtype in types:
        if rtype not in RESOURCE_TYPES:
            raise BadRequest("_type: expected FHIR resource type names")
        if rtype in GATEWAY_OWNED:
            raise Forbidden("these resources are served by the gateway's own API")
        if compartment and rtype != "Patient" and rtype not in PATIENT_COMPARTMENT:
            raise BadRequest(f"_type: {rtype} is not in the Patient compartment")
    unique = tuple(dict.fromkeys(types)) or DEFAULT_TYPES
    if len(unique) > MAX_TYPES:
        raise BadRequest(f"_type: at most {MAX_TYPES} types in one export")
    return ExportRequest(unique, since)


def searches(
    asked: ExportRequest,
    *,
    count: int,
    members: Sequence[str] | None = None,
    base_urls: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """The upstream searches of an export, as ``(type, target)`` in order: one per type, or,
    with ``members`` (patient ids of a Group), one per type and member pinned to that
    member's compartment. ``count``: the page size asked of the upstream."""
    base: list[tuple[str, str]] = [("_count", str(count))]
    if asked.since is not None:
        base.append(("_lastUpdated", f"ge{asked.since}"))
    found: list[tuple[str, str]] = []
    for rtype in asked.types:
        if members is None:
            found.append((rtype, f"{rtype}?{encode_params(base)}"))
            continue
        for member in members:
            pinned = pin_patient(rtype, base, member, base_urls=base_urls)
            found.append((rtype, f"{rtype}?{encode_params(pinned)}"))
    return found


def owner_of(identity: Identity) -> str:
    """Who an export job is bound to: the principal (issuer, subject, launch patient) and
    the client (``client_id``/``azp``) the token was issued to, so another app of the same
    user cannot read or cancel the job (parts hold no NUL, so they cannot run together)."""
    return f"{principal_of(identity)}\x00{identity.client_id or ''}"


def job_types(request_url: str) -> tuple[str, ...]:
    """The resource types a job exports, read back from its kick-off URL (``request`` of the
    manifest; it was accepted once, so it reads again)."""
    query = request_url.partition("?")[2]
    asked = export_request(decode_params(query.encode("ascii")), compartment=False)
    return asked.types
