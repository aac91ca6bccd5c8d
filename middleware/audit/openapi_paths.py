"""The OpenAPI 3.1 paths of the AuditEvent API (:mod:`middleware.audit.http`), merged into the
gateway's document by :mod:`middleware.openapi`. Every status each operation can answer is
listed; errors are FHIR OperationOutcomes. The bulk export's status and file URLs are handed
out by the kick-off (``Content-Location``, the manifest), as FHIR Bulk Data has it, and are
described with it rather than as paths of their own."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["AUDIT_SCHEMAS", "audit_paths"]

_FHIR: Final = "application/fhir+json"
_REASONS: Final = {
    400: "Bad request: an unknown or malformed parameter, a bad cursor",
    401: "No valid bearer token (WWW-Authenticate carries the RFC 6750 challenge)",
    403: "Not an auditor, nor the patient the events are about",
    404: "No such event (or not visible to this caller)",
    406: "Not a format this operation answers (Accept, _format)",
    408: "The body did not arrive within body_timeout",
    413: "The body is larger than max_request_bytes",
    422: "Too costly: more rows than the operation serves (narrow it, or use the CLI)",
    429: "Too many exports running (Retry-After)",
    503: "The ledger cannot record this access, or a store is unavailable (Retry-After)",
}
_SEARCH_PARAMS: Final = (
    ("date", "[eq|ge|gt|le|lt]dateTime; repeatable"),
    ("patient", "Patient/{id} or {id}"),
    ("agent", "Type/id or issuer#subject"),
    ("entity", "Type/id"),
    ("type", "system|code, or rest / a DICOM code"),
    ("subtype", "a restful-interaction code"),
    ("action", "C R U D E"),
    ("outcome", "0 4 8 12"),
    ("purpose", "system|code or code"),
    ("_sort", "one of date, agent, patient, type, action, outcome, client; - for descending"),
    ("_count", "page size"),
    ("_cursor", "the next link's cursor"),
)

#: Schemas the paths refer to, beside the document's own.
AUDIT_SCHEMAS: Final[dict[str, Any]] = {
    "AuditEvent": {
        "type": "object",
        "required": ["resourceType", "id"],
        "properties": {"resourceType": {"const": "AuditEvent"}, "id": {"type": "string"}},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    outcome = {_FHIR: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}}
    return {str(s): {"description": _REASONS[s], "content": outcome} for s in statuses}


def _ok(schema: str | None, *media: str, status: int = 200) -> dict[str, Any]:
    body = {"$ref": f"#/components/schemas/{schema}"} if schema else {"type": "string"}
    return {str(status): {"description": "OK", "content": {m: {"schema": body} for m in media}}}


def _query(name: str, description: str) -> dict[str, Any]:
    schema = {"type": "string"}
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _operation(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, "security": [{"bearer": []}], **extra}


def audit_paths(base: str) -> dict[str, Any]:
    """The AuditEvent API's paths under the FHIR base path ``base``."""
    search = [_query(name, text) for name, text in _SEARCH_PARAMS]
    searched = {**_ok("Bundle", _FHIR), **_errors(400, 401, 403, 406, 503)}
    kick_off = _operation(
        "FHIR Bulk Data kick-off (Prefer: respond-async); 202 with the status URL in "
        "Content-Location, whose manifest lists NDJSON files",
        {
            "202": {"description": "Accepted: the status URL is in Content-Location"},
            **_errors(400, 401, 403, 406, 429, 503),
        },
        parameters=[
            _query("_since", "an instant"),
            _query("_type", "AuditEvent"),
            _query("_outputFormat", "application/fhir+ndjson"),
        ],
    )
    return {
        f"{base}/AuditEvent": {
            "get": _operation("IHE ITI-81 search of the audit trail", searched, parameters=search)
        },
        f"{base}/AuditEvent/_search": {
            "post": _operation(
                "IHE ITI-81 search, parameters in a form body",
                {**searched, **_errors(408, 413)},
                requestBody={
                    "required": False,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": {"type": "object"}}
                    },
                },
            )
        },
        f"{base}/AuditEvent/$export": {"get": kick_off},
        f"{base}/$export": {"get": kick_off},
        f"{base}/AuditEvent/{{id}}": {
            "get": _operation(
                "One event: <ledger index>-<n>",
                {**_ok("AuditEvent", _FHIR), **_errors(400, 401, 403, 404, 406, 503)},
                parameters=[
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
        **_oversight_paths(base),
        f"{base}/Patient/{{id}}/$accounting": {
            "get": _operation(
                "The HIPAA accounting of disclosures (45 CFR 164.528) of one patient",
                {
                    **_ok("Bundle", _FHIR),
                    "200": {
                        "description": "OK: a FHIR document Bundle, CSV, PDF or NDJSON",
                        "content": {
                            _FHIR: {"schema": {"$ref": "#/components/schemas/Bundle"}},
                            "text/csv": {"schema": {"type": "string"}},
                            "application/pdf": {"schema": {"type": "string"}},
                            "application/fhir+ndjson": {"schema": {"type": "string"}},
                            # _proofs=true: the consentry-audit-export/v1 NDJSON
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 401, 403, 404, 406, 422, 503),
                },
                parameters=[
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    _query("_format", "json, csv, pdf or ndjson"),
                    _query(
                        "_proofs",
                        "true: the verifiable export (consentry-audit-export/v1) as csv or "
                        "ndjson, for auditors only; 422 too-costly past its row cap",
                    ),
                ],
            )
        },
    }


def _oversight_paths(base: str) -> dict[str, Any]:
    """The compliance reviewer's operations (:mod:`middleware.audit.oversight_http`)."""
    json_ok = {"200": {"description": "OK", "content": {"application/json": {}}}}
    dates = _query("date", "[ge|le|gt|lt|eq]dateTime; repeatable")
    files = {"200": {"description": "OK: the report", "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/x-ndjson": {"schema": {"type": "string"}},
        "application/pdf": {"schema": {"type": "string"}},
    }}}  # fmt: skip
    patient_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        f"{base}/AuditEvent/$overview": {
            "get": _operation(
                "Accesses of a period at a glance (per day, per user, after hours, "
                "break-the-glass, awaiting review); auditors only",
                {**json_ok, **_errors(400, 401, 403, 503)},
                parameters=[dates],
            )
        },
        f"{base}/AuditEvent/$review": {
            "get": _operation(
                "Break-the-glass accesses awaiting review, and the latest reviews",
                {**json_ok, **_errors(400, 401, 403, 503)},
            ),
            "post": _operation(
                "Record the review of a break-the-glass access on the ledger (form: entry, "
                "note); the reviewer is the token's user",
                {
                    "201": {"description": "Recorded", "content": {"application/json": {}}},
                    **_errors(400, 401, 403, 404, 408, 413, 503),
                    "409": {"description": "Already reviewed"},
                },
                requestBody={
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": {"type": "object"}}
                    },
                },
            ),
        },
        f"{base}/AuditEvent/$date-range": {
            "get": _operation(
                "The date-range report, sortable on any column (CSV, NDJSON or PDF)",
                {**files, **_errors(400, 401, 403, 503), "422": {"description": "Too many rows"}},
                parameters=[
                    dates,
                    _query("_sort", "[-]column"),
                    _query("_format", "csv, ndjson, pdf"),
                ],
            )
        },
        f"{base}/Patient/{{id}}/$access-report": {
            "get": _operation(
                "A patient's access report: who read or changed the record (CSV, PDF, NDJSON)",
                {
                    **files,
                    **_errors(400, 401, 403, 404, 503),
                    "422": {"description": "Too many rows"},
                },
                parameters=[patient_id, dates, _query("_format", "csv, pdf, ndjson")],
            )
        },
    }
