"""The dashboard's break-the-glass review (``/compliance/review``): the emergency accesses
awaiting review, and a form on each to mark it reviewed with a note.

``GET`` lists ``GET {base}/AuditEvent/$review`` (awaiting, and the latest reviewed). ``POST``
(the session's CSRF token and the gateway's own ``Origin``: ``middleware.web.csrf``) sends
``entry`` and ``note`` to ``POST {base}/AuditEvent/$review``, which records the review as a
ledger entry naming the access, the reviewer (from the auditor's token, not from the form) and
the note (:mod:`middleware.audit.reviews`), and answers only once that entry is durable; the
page then redirects (303) to the list saying which ledger entry holds the review. A note
that is empty or too long, or an access already reviewed, is shown on the list again.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from middleware.audit.reviews import MAX_NOTE
from middleware.web.compliance_view import auditor, failed, field, show_time
from middleware.web.csrf import checked_form
from middleware.web.deps import WebDeps
from middleware.web.render import page
from middleware.web.session import WebSession
from middleware.web.text import t

__all__ = ["routes"]


def routes(deps: WebDeps) -> list[BaseRoute]:
    """``GET`` and ``POST /compliance/review``."""
    path = f"{deps.settings.base_path}/AuditEvent/$review"

    async def listing(
        request: Request, session: WebSession, *, problem: str = "", status: int = 200
    ) -> Response:
        answer, data, _ = await deps.api.get(session, path)
        if answer != 200 or not isinstance(data, dict):
            return failed(request, answer, session)
        done = field(request, "recorded")
        context: dict[str, Any] = {
            "session": session,
            "title": t("compliance.review.title"),
            "awaiting": [_shown(item) for item in data.get("awaiting", [])],
            "reviewed": [_shown(item) for item in data.get("reviewed", [])],
            "problem": problem,
            "recorded": done if done.isdigit() else "",
            "max_note": MAX_NOTE,
        }
        return page(request, "compliance/review.html", context, status=status)

    async def show(request: Request) -> Response:
        return await listing(request, await auditor(request))

    async def record(request: Request) -> Response:
        session = await auditor(request)
        form = await checked_form(request, session)
        entry, note = str(form.get("entry", "")), str(form.get("note", "")).strip()
        if not entry.isdigit():
            return await listing(
                request, session, problem=t("compliance.review.problem.entry"), status=400
            )
        if not note or len(note) > MAX_NOTE:
            problem = t("compliance.review.problem.note", most=MAX_NOTE)
            return await listing(request, session, problem=problem, status=400)
        status, data, _ = await deps.api.post(session, path, form={"entry": entry, "note": note})
        if status == 201 and isinstance(data, dict):
            return RedirectResponse(f"/compliance/review?recorded={int(data['review'])}", 303)
        if status == 409:
            problem = t("compliance.review.problem.done")
            return await listing(request, session, problem=problem, status=409)
        if status == 403:  # the access is the auditor's own: someone else reviews it
            problem = t("compliance.review.problem.own")
            return await listing(request, session, problem=problem, status=403)
        if status in (400, 404):
            problem = t("compliance.review.problem.entry")
            return await listing(request, session, problem=problem, status=400)
        return failed(request, status, session)

    return [
        Route("/compliance/review", show, methods=["GET"]),
        Route("/compliance/review", record, methods=["POST"]),
    ]


def _shown(item: Any) -> dict[str, str]:
    """The cells of one queue or review item of the API's answer."""
    if not isinstance(item, dict):
        return {}
    return {
        "entry": str(item.get("entry", "")),
        "time": show_time(item.get("recorded", "")),
        "agent": str(item.get("agent") or ""),
        "patient": str(item.get("patient") or ""),
        "what": ", ".join(str(x) for x in item.get("resource_types", [])),
        "action": str(item.get("action") or ""),
        "result": str(item.get("result") or ""),
        "purposes": ", ".join(str(x).rpartition("|")[2] for x in item.get("purposes", [])),
        "reviewer": str(item.get("reviewer") or ""),
        "note": str(item.get("note") or ""),
        "review": str(item.get("review", "")),
    }
