"""The compliance dashboard's pages (``/compliance/...``): the overview with its charts and the
ledger's status here; audit search (:mod:`.compliance_search`), reports and downloads
(:mod:`.compliance_reports`) and break-the-glass review (:mod:`.compliance_review`) beside.

Every number a page shows comes from the gateway's own APIs called as the signed-in auditor
(``GatewayApi``): the overview from ``GET {base}/AuditEvent/$overview``
(:mod:`middleware.audit.oversight_http`), the ledger's status from ``GET /ledger/checkpoint``
(a C2SP signed note: origin, tree size, root hash, then one signature line per signer; the
log's own key and any witness cosignature). Each of those reads is recorded by the API that
answers it; the pages hold no rule and no data of their own.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from middleware.web import compliance_reports, compliance_review, compliance_search
from middleware.web.charts_svg import AFTER_HOURS, BREAK_GLASS, BUSINESS, columns, rows
from middleware.web.compliance_view import api_params, auditor, day_bounds, failed, field, show_time
from middleware.web.deps import WebDeps
from middleware.web.render import page
from middleware.web.text import t

__all__ = ["overview_context", "parse_checkpoint", "routes"]

#: The text key of each bucket unit of an overview.
_UNITS: Final = {
    "day": "compliance.unit.day",
    "week": "compliance.unit.week",
    "month": "compliance.unit.month",
}


def routes(deps: WebDeps) -> list[BaseRoute]:
    """Every route of the dashboard (sign-in and sign-out are ``middleware.web.signin``'s)."""
    base = deps.settings.base_path

    async def overview(request: Request) -> Response:
        session = await auditor(request)
        first, last = field(request, "from"), field(request, "to")
        try:
            params = day_bounds(first, last)
        except ValueError:
            params, problem = [], t("compliance.problem.date")
        else:
            problem = ""
        status, data, _ = await deps.api.get(
            session, f"{base}/AuditEvent/$overview", api_params(params)
        )
        if status != 200 or not isinstance(data, dict):
            return failed(request, status, session)
        context = {"session": session, "problem": problem, "first": first, "last": last}
        context.update(overview_context(data))
        return page(request, "compliance/overview.html", context)

    async def ledger(request: Request) -> Response:
        session = await auditor(request)
        status, data, _ = await deps.api.get(session, "/ledger/checkpoint")
        if status == 404:  # nothing signed yet
            note = None
        elif status != 200 or not isinstance(data, bytes):
            return failed(request, status, session)
        else:
            note = parse_checkpoint(data.decode("utf-8", "replace"))
        context = {"session": session, "title": t("compliance.ledger.title"), "note": note}
        return page(request, "compliance/ledger.html", context)

    return [
        Route("/compliance/", overview, methods=["GET"]),
        Route("/compliance/ledger", ledger, methods=["GET"]),
        *compliance_search.routes(deps),
        *compliance_reports.routes(deps),
        *compliance_review.routes(deps),
    ]


def overview_context(data: dict[str, Any]) -> dict[str, Any]:
    """What ``compliance/overview.html`` shows of an ``$overview`` answer: the totals, the
    two charts and the rows of their tables."""
    buckets = [b for b in data.get("buckets", []) if isinstance(b, dict)]
    labels = [str(b.get("label", "")) for b in buckets]
    series = [
        (t("compliance.chart.business"), BUSINESS, [int(b["business"]) for b in buckets]),
        (t("compliance.chart.after_hours"), AFTER_HOURS, [int(b["after_hours"]) for b in buckets]),
        (t("compliance.chart.break_glass"), BREAK_GLASS, [int(b["break_glass"]) for b in buckets]),
    ]
    users = [
        (str(u.get("agent", "")), int(u.get("accesses", 0)))
        for u in data.get("users", [])
        if isinstance(u, dict)
    ]
    unit = str(data.get("unit", "day"))
    return {
        "title": t("compliance.overview.title"),
        "totals": data.get("totals", {}),
        "since": show_time(data.get("since_us")),
        "until": show_time(data.get("until_us")),
        "window": str(data.get("after_hours_window", "")),
        "truncated": bool(data.get("truncated")),
        "unit": t(_UNITS.get(unit, "compliance.unit.day")),
        "series": [(name, colour) for name, colour, _ in series],
        "activity": columns(labels, series),
        "activity_rows": [
            (label, *(values[i] for _, _, values in series)) for i, label in enumerate(labels)
        ],
        "people": rows(users),
        "people_rows": users,
    }


def parse_checkpoint(text: str) -> dict[str, Any] | None:
    """The parts of a C2SP signed checkpoint note (origin, size, root hash, extension lines,
    and the names of its signers in order: the first is the log's own key, any further one a
    witness's cosignature); None when ``text`` is not one."""
    body, sep, signatures = text.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) < 3 or not lines[1].isdigit():
        return None
    signers = [
        line[2:].split(" ", 1)[0]
        for line in signatures.split("\n")
        if line.startswith("\u2014 ") and " " in line[2:]
    ]
    return {
        "origin": lines[0],
        "size": int(lines[1]),
        "root": lines[2],
        "extensions": lines[3:],
        "signers": signers,
    }
