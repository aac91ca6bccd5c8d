"""The patient portal's pages (``/portal/...``), over the Consent API and the audit API only.

Every call goes through :class:`~middleware.web.api.GatewayApi` with the patient's own token,
so the APIs pin every read and change to that patient (docs/web.md).
"""

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
    """The portal's routes."""
    del deps

    async def home(request: Request) -> Response:
        session = await require(request, "patient")
        return page(
            request, "portal/home.html", {"title": t("portal.home.title"), "session": session}
        )

    return [Route("/portal/", home, methods=["GET"])]
