"""The compliance area's fallback home page: who is signed in (the dashboard's own pages,
``middleware.web.compliance``, are routed before this and take ``/compliance/`` when they
serve it)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from middleware.web.deps import WebDeps
from middleware.web.render import page
from middleware.web.session import require
from middleware.web.text import t

__all__ = ["routes"]


def routes(deps: WebDeps) -> list[BaseRoute]:
    """``GET /compliance/``: the signed-in auditor."""
    del deps

    async def compliance_home(request: Request) -> Response:
        session = await require(request, "auditor")
        return page(request, "home.html", {"title": t("compliance.home.title"), "session": session})

    return [Route("/compliance/", compliance_home, methods=["GET"])]
