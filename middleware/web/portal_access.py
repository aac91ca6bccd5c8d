""" "Who looked at my record": the patient's audit trail, through the audit API.

``GET /portal/access`` asks ``{base}/AuditEvent?patient=<me>&_sort=-date&_count=50`` with the
patient's own token (the API pins a patient token to its own record and records the search
itself), optionally filtered by date (``from``/``to`` days -> ``date=ge``/``date=le``) and by
who (``agent``). One page at a time: "older" follows the API's sealed ``_cursor`` with the same
filters, so a page costs one indexed search whatever the trail's length. Rows:
:mod:`middleware.web.access_rows`.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from middleware.web.access_rows import rows
from middleware.web.calls import expect
from middleware.web.deps import WebDeps
from middleware.web.render import page
from middleware.web.session import require
from middleware.web.text import t

__all__ = ["PAGE_SIZE", "routes"]

PAGE_SIZE: Final = 50
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_AGENT: Final = re.compile(r"[A-Za-z]{1,40}/[A-Za-z0-9\-.]{1,64}|[!-~]{1,200}")


def routes(deps: WebDeps) -> list[BaseRoute]:
    """``GET /portal/access``."""
    base = deps.settings.base_path

    async def access(request: Request) -> Response:
        session = await require(request, "patient")
        query = request.query_params
        start, end = query.get("from", "").strip(), query.get("to", "").strip()
        agent = query.get("who", "").strip()
        problems = []
        if (start and not _DAY.fullmatch(start)) or (end and not _DAY.fullmatch(end)):
            problems.append(t("access.problem.date"))
        if agent and not _AGENT.fullmatch(agent):
            problems.append(t("access.problem.who"))
        filters = {"from": start, "to": end, "who": agent}
        found = []
        older = ""
        if not problems:
            params: list[tuple[str, str | int | float | bool | None]] = [
                ("patient", session.subject),
                ("_sort", "-date"),
                ("_count", str(PAGE_SIZE)),
            ]
            params += [("date", f"ge{start}")] if start else []
            params += [("date", f"le{end}")] if end else []
            params += [("agent", agent)] if agent else []
            cursor = query.get("cursor", "")
            if cursor and len(cursor) < 2000:
                params.append(("_cursor", cursor))
            bundle = expect(await deps.api.get(session, f"{base}/AuditEvent", params), "patient")
            found = rows(bundle, session.subject)
            next_cursor = _next_cursor(bundle)
            if next_cursor:
                kept = {k: v for k, v in filters.items() if v}
                older = "/portal/access?" + urlencode({**kept, "cursor": next_cursor})
        context = {
            "title": t("access.title"),
            "session": session,
            "rows": found,
            "filters": filters,
            "problems": problems,
            "older": older,
            "first_page": not query.get("cursor"),
        }
        return page(request, "portal/access.html", context, status=400 if problems else 200)

    return [Route("/portal/access", access, methods=["GET"])]


def _next_cursor(bundle: object) -> str:
    if not isinstance(bundle, dict):
        return ""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            values = parse_qs(urlsplit(str(link.get("url", ""))).query).get("_cursor")
            return values[0] if values else ""
    return ""
