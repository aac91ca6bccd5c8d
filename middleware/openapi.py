"""The OpenAPI 3.1 description of the gateway's own APIs, served at ``GET /openapi.json``.

What the gateway answers itself, never forwarding: the consent API under ``{base}/Consent``
(:mod:`middleware.consent.api`), the audit trail's AuditEvent API
(:mod:`middleware.audit.http`, its paths in :mod:`middleware.audit.openapi_paths`), the ledger
(:mod:`middleware.ledger.http`), health, readiness and metrics, the SMART configuration, the
development issuer's key set when it is on, and this document. The FHIR API it proxies is
described by the upstream's CapabilityStatement (``{base}/metadata``), not here.

Every status an operation can answer is listed, with its body: errors are FHIR
OperationOutcomes (:func:`~middleware.fhir.outcome.render_error`). A 500 is listed nowhere:
no client input may cause one, and the schemathesis suite
(``tests/fuzz/test_openapi_schemathesis.py``) refuses any answer the document does not
describe. ``tests/fuzz/test_openapi_routes.py`` keeps the paths equal to the routes the app
serves.
"""

from __future__ import annotations

from typing import Any, Final

from middleware import __version__
from middleware.audit.openapi_paths import AUDIT_SCHEMAS, audit_paths
from middleware.auth.wellknown import smart_paths

__all__ = ["OPENAPI_PATH", "openapi_document"]

#: Where the gateway serves this document.
OPENAPI_PATH: Final = "/openapi.json"

_DESCRIPTION: Final = (
    "What the gateway answers itself, never forwarding: the patient consent API, the "
    "transparency ledger, health, readiness and metrics, the SMART configuration. The FHIR "
    "API it proxies is described by the upstream-derived CapabilityStatement at {base}/metadata."
)
_FHIR: Final = "application/fhir+json"
_TEXT: Final = "text/plain"
_JSON: Final = "application/json"
_REASONS: Final = {
    400: "Bad request: path, query, headers or body refused",
    401: "No valid bearer token (WWW-Authenticate carries the RFC 6750 challenge)",
    403: "The token may not do this",
    404: "Not found (or not visible to this caller)",
    405: "Method not allowed here (Allow names the methods)",
    406: "Only FHIR JSON is answered (Accept, _format)",
    408: "The body did not arrive within body_timeout",
    409: "Conflict with the current state (a revoked consent)",
    412: "If-Match names another version",
    413: "The body is larger than max_request_bytes",
    415: "The body is not FHIR JSON, or is content-encoded",
    422: "The Consent cannot be enforced (OperationOutcome lists every problem)",
    503: "The ledger, a store or the token issuer's keys are unavailable (Retry-After)",
}
_READ_ERRORS: Final = (400, 401, 403, 404, 405, 406, 503)
_WRITE_ERRORS: Final = (*_READ_ERRORS, 408, 409, 412, 413, 415, 422)
_LEDGER_ERRORS: Final = (400, 404, 405, 503)


def openapi_document(base_path: str, *, development_issuer: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a gateway whose FHIR base path is ``base_path`` (``""``
    for the root); ``development_issuer`` adds ``/auth/jwks``. Pure: a new dict per call."""
    base = base_path.rstrip("/")
    paths: dict[str, Any] = {
        f"{base}/Consent": {
            "get": _op(
                "search",
                "The patient's consents",
                200,
                "Bundle",
                _READ_ERRORS,
                params=[
                    _query("patient", True, "Patient/{id}"),
                    _query("status", False, "comma-separated statuses"),
                ],
            ),
            "post": _op(
                "create",
                "Create a consent (the id is assigned)",
                201,
                "Consent",
                _WRITE_ERRORS,
                body="Consent",
            ),
        },
        f"{base}/Consent/$explain": {
            "post": _op(
                "explain",
                "The decision and its trace for a principal, purpose and resource",
                200,
                "Explanation",
                _WRITE_ERRORS,
                body="ExplainInput",
                media=(_FHIR, _JSON),
            ),
        },
        f"{base}/Consent/$register-key": {
            "post": _op(
                "register-key",
                "Register or rotate the patient's consent-signing Ed25519 key (Parameters: "
                "patient, publicKey; a rotation also replaces, the version it replaces)",
                201,
                "Parameters",
                _WRITE_ERRORS,
                body="Parameters",
                also={200: "Parameters"},
            ),
        },
        f"{base}/Consent/{{id}}": {
            "parameters": [_path("id", "Consent id (FHIR id)", _ID)],
            "get": _op("read", "The current version", 200, "Consent", _READ_ERRORS),
            "put": _op(
                "update",
                "Update, or create with this id (If-Match optional)",
                200,
                "Consent",
                _WRITE_ERRORS,
                body="Consent",
                also={201: "Consent"},
            ),
        },
        f"{base}/Consent/{{id}}/$revoke": {
            "parameters": [_path("id", "Consent id (FHIR id)", _ID)],
            "post": _op(
                "revoke",
                "Record the current version as inactive",
                200,
                "Consent",
                _WRITE_ERRORS,
                body="Parameters",
                body_required=False,
            ),
        },
        f"{base}/Consent/{{id}}/_history": {
            "parameters": [_path("id", "Consent id (FHIR id)", _ID)],
            "get": _op("history", "Every version", 200, "Bundle", _READ_ERRORS),
        },
        f"{base}/Consent/{{id}}/_history/{{vid}}": {
            "parameters": [
                _path("id", "Consent id (FHIR id)", _ID),
                _path("vid", "Version id", {"type": "string", "pattern": "^[0-9]{1,12}$"}),
            ],
            "get": _op("vread", "One version", 200, "Consent", _READ_ERRORS),
        },
        "/ledger/checkpoint": {
            "get": _ledger(
                "The latest signed checkpoint (C2SP tlog-checkpoint); with a witness quorum,"
                " the newest one that quorum cosigned, its cosignatures appended",
                _TEXT,
                None,
            ),
        },
        "/ledger/proof/inclusion": {
            "get": _ledger(
                "RFC 9162 inclusion proof (hashes only)",
                _JSON,
                "InclusionProof",
                params=[_number("index", True), _number("size", False)],
            ),
        },
        "/ledger/proof/consistency": {
            "get": _ledger(
                "RFC 9162 consistency proof",
                _JSON,
                "ConsistencyProof",
                params=[_number("from", True), _number("to", False)],
            ),
        },
        "/ledger/entries": {
            "get": _ledger(
                "Leaves [start, end), at most 1,000 (an auditor's token)",
                _JSON,
                "Entries",
                params=[_number("start", True), _number("end", False)],
                secured=True,
            ),
        },
        "/ledger/receipt/{index}": {
            "get": _ledger(
                "C2SP tlog-proof of one entry with its leaf (a token that may read it)",
                _TEXT,
                None,
                params=[{**_number("index", True), "in": "path"}, _number("size", False)],
                secured=True,
            ),
        },
        "/healthz": {"get": _plain("Liveness", {200: ("Health", _JSON)})},
        "/readyz": {
            "get": _plain(
                "Readiness: the stores, the ledger's commits and the upstream",
                {200: ("Ready", _JSON), 503: ("Ready", _JSON)},
            ),
        },
        "/metrics": {
            "get": _plain(
                "Prometheus text, to the clients metrics_clients/metrics_token allow",
                {
                    200: (None, _TEXT),
                    401: ("OperationOutcome", _FHIR),
                    403: ("OperationOutcome", _FHIR),
                },
            ),
        },
        OPENAPI_PATH: {"get": _plain("This document", {200: ("Document", _JSON)})},
    }
    paths.update(audit_paths(base))
    for path in sorted(smart_paths(base)):
        paths[path] = {
            "get": _plain(
                "SMART App Launch configuration",
                {200: ("Document", _JSON), 404: ("OperationOutcome", _FHIR)},
            ),
        }
    if development_issuer:
        paths["/auth/jwks"] = {
            "get": _plain(
                "The development issuer's public keys (JWK Set)", {200: ("Document", _JSON)}
            ),
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Consentry gateway: its own APIs",
            "version": __version__,
            "description": _DESCRIPTION,
        },
        "paths": paths,
        "components": {"schemas": {**_schemas(), **AUDIT_SCHEMAS}, "securitySchemes": _SECURITY},
    }


_ID: Final = {"type": "string", "pattern": "^[A-Za-z0-9\\-.]{1,64}$"}
_REFERENCE: Final = {"type": "object", "properties": {"reference": {"type": "string"}}}
#: R4 and R5 Consent.status codes together (the parser checks each version's own set).
_CONSENT_STATUSES: Final = frozenset(
    {
        "draft",
        "proposed",
        "active",
        "rejected",
        "inactive",
        "entered-in-error",
        "not-done",
        "unknown",
    }
)
_SECURITY: Final = {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: str | None, *media: str) -> dict[str, Any]:
    return {m: {"schema": _ref(schema) if schema else {"type": "string"}} for m in media}


def _errors(statuses: tuple[int, ...]) -> dict[str, Any]:
    return {
        str(s): {"description": _REASONS[s], "content": _content("OperationOutcome", _FHIR)}
        for s in sorted(statuses)
    }


def _op(
    operation_id: str,
    summary: str,
    status: int,
    schema: str,
    errors: tuple[int, ...],
    *,
    params: list[dict[str, Any]] | None = None,
    body: str | None = None,
    body_required: bool = True,
    also: dict[int, str] | None = None,
    media: tuple[str, ...] = (_FHIR,),
) -> dict[str, Any]:
    """A consent API operation (a bearer token always): its answer, the OperationOutcome of
    each error."""
    responses = {str(status): {"description": "OK", "content": _content(schema, *media)}}
    for other, other_schema in (also or {}).items():
        responses[str(other)] = {"description": "Created", "content": _content(other_schema, _FHIR)}
    operation: dict[str, Any] = {
        "operationId": f"consent-{operation_id}",
        "summary": summary,
        "responses": {**responses, **_errors(errors)},
        "security": [{"bearer": []}],
    }
    if params:
        operation["parameters"] = params
    if body:
        operation["requestBody"] = {"required": body_required, "content": _content(body, _FHIR)}
    return operation


def _ledger(
    summary: str,
    media: str,
    schema: str | None,
    *,
    params: list[dict[str, Any]] | None = None,
    secured: bool = False,
) -> dict[str, Any]:
    errors = (*_LEDGER_ERRORS, 401, 403) if secured else _LEDGER_ERRORS
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": _content(schema, media)},
            **_errors(errors),
        },
    }
    if secured:
        operation["security"] = [{"bearer": []}]
    if params:
        operation["parameters"] = params
    return operation


def _plain(summary: str, answers: dict[int, tuple[str | None, str]]) -> dict[str, Any]:
    return {
        "summary": summary,
        "responses": {
            str(status): {
                "description": _REASONS.get(status, "OK"),
                "content": _content(schema, media),
            }
            for status, (schema, media) in answers.items()
        },
    }


def _query(name: str, required: bool, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": {"type": "string"},
    }


def _path(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _number(name: str, required: bool) -> dict[str, Any]:
    """A ledger index or size: a non-negative decimal integer of at most 19 digits."""
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": {"type": "integer", "minimum": 0, "maximum": 10**19 - 1},
    }


def _resource(resource_type: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"const": resource_type}},
    }


def _schemas() -> dict[str, Any]:
    hashes = {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}
    size = {"type": "integer", "minimum": 0}
    return {
        "OperationOutcome": {
            **_resource("OperationOutcome"),
            "required": ["resourceType", "issue"],
            "properties": {
                "resourceType": {"const": "OperationOutcome"},
                "issue": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["severity", "code"],
                        "properties": {
                            "severity": {"type": "string"},
                            "code": {"type": "string"},
                            "diagnostics": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Consent": {
            **_resource("Consent"),
            "description": "FHIR R4/R4B or R5 Consent (docs/consent-api.md); the elements the "
            "gateway enforces are named, any other FHIR element may appear",
            "properties": {
                "resourceType": {"const": "Consent"},
                "id": _ID,
                "status": {"enum": sorted(_CONSENT_STATUSES)},
                "decision": {"enum": ["permit", "deny"]},
                "subject": _REFERENCE,
                "patient": _REFERENCE,
                "provision": {"type": ["object", "array"]},
            },
        },
        "Bundle": _resource("Bundle"),
        "Parameters": _resource("Parameters"),
        "ExplainInput": {
            "description": "A Parameters resource, or plain JSON with principal, action, "
            "purpose and resource (docs/consent-api.md)",
            "type": "object",
        },
        "Explanation": {
            "description": "Parameters when asked with Parameters, else plain JSON",
            "type": "object",
        },
        "InclusionProof": {
            "type": "object",
            "required": ["index", "size", "leaf_hash", "hashes", "checkpoint"],
            "properties": {
                "index": size,
                "size": size,
                "leaf_hash": {"type": "string"},
                "hashes": hashes,
                "checkpoint": {"type": "string"},
            },
        },
        "ConsistencyProof": {
            "type": "object",
            "required": ["from", "to", "hashes", "checkpoint"],
            "properties": {
                "from": size,
                "to": size,
                "hashes": hashes,
                "checkpoint": {"type": "string"},
            },
        },
        "Entries": {
            "type": "object",
            "required": ["start", "end", "size", "entries"],
            "properties": {
                "start": size,
                "end": size,
                "size": size,
                "entries": {"type": "array", "items": {"type": "object"}},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "version"],
            "properties": {"status": {"const": "ok"}, "version": {"type": "string"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"enum": ["ready", "unavailable"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "Document": {"type": "object"},
    }
