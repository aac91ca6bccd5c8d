"""The patient portal's pages (``/portal/...``), over the Consent API and the audit API only.

Every call goes through :class:`~middleware.web.api.GatewayApi` with the patient's own token,
so the APIs pin every read and change to that patient: a consent id of another patient in a
URL is answered 404 by the Consent API, and the page shows the same generic not-found page as
for an id that does not exist. This module: the home page ("my consents") and one consent's
page (its description and its changes, each with its ledger receipt). Creating, changing and
revoking: :mod:`middleware.web.portal_edit`; who looked at the record:
:mod:`middleware.web.portal_access`; receipts: :mod:`middleware.web.portal_receipts`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from middleware.consent.records import LEDGER_EXTENSION
from middleware.web import portal_access, portal_edit, portal_receipts
from middleware.web.calls import expect, path_id
from middleware.web.deps import WebDeps
from middleware.web.describe import describe
from middleware.web.render import page
from middleware.web.session import require
from middleware.web.text import t

__all__ = ["consent_card", "ledger_index", "routes"]

_RECEIPT_INDEX: Final = re.compile(r"/ledger/receipt/(\d{1,19})$")


def routes(deps: WebDeps) -> list[BaseRoute]:
    """The portal's routes."""
    base = deps.settings.base_path

    async def home(request: Request) -> Response:
        session = await require(request, "patient")
        answer = await deps.api.get(session, f"{base}/Consent", {"patient": session.subject})
        bundle = expect(answer, "patient")
        consents = [
            consent_card(entry.get("resource") or {})
            for entry in _entries(bundle)
            if (entry.get("resource") or {}).get("resourceType") == "Consent"
        ]
        # Consents in force first, then the newest
        consents.sort(
            key=lambda c: (c["active"], -1 if c["index"] is None else c["index"]), reverse=True
        )
        context = {"title": t("portal.home.title"), "session": session, "consents": consents}
        return page(request, "portal/home.html", context)

    async def consent(request: Request) -> Response:
        session = await require(request, "patient")
        consent_id = _consent_id(request)
        current = expect(await deps.api.get(session, f"{base}/Consent/{consent_id}"), "patient")
        history = expect(
            await deps.api.get(session, f"{base}/Consent/{consent_id}/_history"), "patient"
        )
        versions = [consent_card(e.get("resource") or {}) for e in _entries(history)]
        context = {
            "title": t("portal.consent.title"),
            "session": session,
            "consent": consent_card(current),
            "versions": versions,
        }
        return page(request, "portal/consent.html", context)

    return [
        Route("/portal/", home, methods=["GET"]),
        *portal_edit.routes(deps),  # before the {consent_id} route: /portal/consents/new
        *portal_access.routes(deps),
        *portal_receipts.routes(deps),
        Route("/portal/consents/{consent_id}", consent, methods=["GET"]),
    ]


def _consent_id(request: Request) -> str:
    return path_id(request, "consent_id")


def _entries(bundle: Any) -> list[Mapping[str, Any]]:
    if not isinstance(bundle, Mapping):
        return []
    return [e for e in bundle.get("entry") or [] if isinstance(e, Mapping)]


def ledger_index(resource: Mapping[str, Any]) -> int | None:
    """The ledger index of a Consent version, from its receipt extension (``meta``)."""
    meta = resource.get("meta")
    for ext in (meta.get("extension") or []) if isinstance(meta, Mapping) else []:
        if isinstance(ext, Mapping) and ext.get("url") == LEDGER_EXTENSION:
            found = _RECEIPT_INDEX.search(str(ext.get("valueUrl", "")))
            if found:
                return int(found.group(1))
    return None


def consent_card(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What the pages show of one Consent version."""
    meta = resource.get("meta") if isinstance(resource.get("meta"), Mapping) else {}
    assert isinstance(meta, Mapping)
    status = str(resource.get("status", ""))
    return {
        "id": str(resource.get("id", "")),
        "status": status,
        "active": status == "active",
        "version": str(meta.get("versionId", "")),
        "updated": str(meta.get("lastUpdated", ""))[:16].replace("T", " "),
        "index": ledger_index(resource),
        "sentences": describe(resource),
    }
