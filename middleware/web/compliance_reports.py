"""The dashboard's reports (``GET /compliance/reports``) and their downloads
(``GET /compliance/download``): the accounting of disclosures, the patient access report and
the date-range report, each as the API renders it.

================  ==========================================  ===========================
report            API (``middleware.audit``)                  formats
================  ==========================================  ===========================
accounting        ``GET {base}/Patient/<id>/$accounting``     PDF, CSV+, NDJSON+
access            ``GET {base}/Patient/<id>/$access-report``  PDF, CSV, NDJSON
date-range        ``GET {base}/AuditEvent/$date-range``       CSV, NDJSON, PDF
================  ==========================================  ===========================

+ The accounting's CSV and NDJSON are the verifiable export (``_proofs=true``,
``consentry-audit-export/v1``: every disclosure with its inclusion proof against one signed
checkpoint), which ``consentry audit verify-export`` checks offline; the dashboard is for
auditors, who alone may have it.

A download is the API's answer passed through: the page calls the API with the auditor's
token (held server-side in the sealed session cookie; never in a URL or the page), and
answers the API's bytes and media type unchanged, as an attachment (the accounting's FHIR
JSON Bundle is left to the API itself: the page's API client decodes JSON answers). The API
records the access before it answers, so a download is on the ledger before its first byte
reaches the browser. Fields are checked before anything is asked (a patient id is a FHIR id,
a format one the report has, a day a date); the API checks them again.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from middleware.audit.reports import DATE_RANGE_COLUMNS
from middleware.web.compliance_view import ID, api_params, auditor, day_bounds, failed, field
from middleware.web.deps import WebDeps
from middleware.web.render import page
from middleware.web.text import t

__all__ = ["FORMATS", "FORMAT_TEXT", "download_request", "routes"]

#: The formats each report is offered in (the API's ``_format`` values), default first.
FORMATS: Final = {
    "accounting": ("pdf", "csv", "ndjson"),
    "access": ("pdf", "csv", "ndjson"),
    "date-range": ("csv", "ndjson", "pdf"),
}
#: The text key naming each format on the form.
FORMAT_TEXT: Final = {
    "pdf": "compliance.format.pdf",
    "csv": "compliance.format.csv",
    "ndjson": "compliance.format.ndjson",
}
_SUFFIX: Final = {"pdf": "pdf", "csv": "csv", "ndjson": "ndjson"}
#: The accounting's formats served as the verifiable export (``$accounting?_proofs=true``).
_PROVEN: Final = frozenset({"csv", "ndjson"})


def download_request(values: dict[str, str], base: str) -> tuple[str, list[tuple[str, str]]]:
    """The API path and parameters of the download ``values`` ask for; ValueError (with the
    text key of the problem) when a field is missing or malformed."""
    report, wanted = values.get("report", ""), values.get("format", "")
    if report not in FORMATS or wanted not in FORMATS[report]:
        raise ValueError("compliance.problem.report")
    params: list[tuple[str, str]] = [("_format", wanted)]
    if report == "date-range":
        sort = values.get("sort", "recorded_us")
        if sort.removeprefix("-") not in DATE_RANGE_COLUMNS:
            raise ValueError("compliance.problem.report")
        try:
            params += day_bounds(values.get("from", ""), values.get("to", ""))
        except ValueError:
            raise ValueError("compliance.problem.date") from None
        return f"{base}/AuditEvent/$date-range", [*params, ("_sort", sort)]
    patient = values.get("patient", "").removeprefix("Patient/")
    if not ID.fullmatch(patient):
        raise ValueError("compliance.problem.patient")
    if report == "accounting":
        if wanted in _PROVEN:  # the file an auditor can verify, not a plain listing
            params.append(("_proofs", "true"))
        return f"{base}/Patient/{patient}/$accounting", params
    try:
        params += day_bounds(values.get("from", ""), values.get("to", ""))
    except ValueError:
        raise ValueError("compliance.problem.date") from None
    return f"{base}/Patient/{patient}/$access-report", params


def routes(deps: WebDeps) -> list[BaseRoute]:
    """``GET /compliance/reports`` and ``GET /compliance/download``."""
    base = deps.settings.base_path

    def context(request: Request, problem: str = "") -> dict[str, Any]:
        return {
            "title": t("compliance.reports.title"),
            "formats": FORMATS,
            "format_text": FORMAT_TEXT,
            "columns": DATE_RANGE_COLUMNS,
            "problem": problem,
        }

    async def reports(request: Request) -> Response:
        session = await auditor(request)
        return page(request, "compliance/reports.html", {**context(request), "session": session})

    async def download(request: Request) -> Response:
        session = await auditor(request)
        names = ("report", "format", "patient", "from", "to", "sort")
        values = {name: field(request, name) for name in names}
        try:
            path, params = download_request(values, base)
        except ValueError as problem:
            shown = {**context(request, t(str(problem))), "session": session}
            return page(request, "compliance/reports.html", shown, status=400)
        status, data, headers = await deps.api.get(session, path, api_params(params))
        if status != 200 or not isinstance(data, bytes):
            return failed(request, status, session)
        name = f"{values['report']}.{_SUFFIX[values['format']]}"
        return Response(
            data,
            media_type=headers.get("content-type", "application/octet-stream"),
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    return [
        Route("/compliance/reports", reports, methods=["GET"]),
        Route("/compliance/download", download, methods=["GET"]),
    ]
