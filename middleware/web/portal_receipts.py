"""Receipts in the portal: see, download and check the ledger receipt of a change.

``GET /portal/receipts/<index>`` reads the receipt from ``/ledger/receipt/<index>`` with the
patient's token (the ledger API serves it only for the patient's own entries; any other index
is the generic not-found page) and shows its index, time and checkpoint;
``.../download`` gives the receipt file; ``.../check`` checks it
(:mod:`middleware.web.receipt_check`). ``/portal/receipts/check`` checks a receipt the patient
pastes or uploads (CSRF-checked POST).
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from middleware.web.calls import expect
from middleware.web.csrf import check, check_origin
from middleware.web.deps import WebDeps
from middleware.web.receipt_check import check_text, read_receipt
from middleware.web.render import page
from middleware.web.session import WebSession, require
from middleware.web.text import t

__all__ = ["routes"]

#: A receipt is a few kilobytes (a proof of 64 hashes and a checkpoint); more is not one.
MAX_RECEIPT: Final = 16_384


def routes(deps: WebDeps) -> list[BaseRoute]:
    """The receipt routes."""

    async def fetch(request: Request, session: WebSession) -> tuple[int, str]:
        raw = str(request.path_params["index"])
        if not raw.isdigit() or len(raw) > 19:
            raise HTTPException(404)
        answer = await deps.api.get(session, f"/ledger/receipt/{raw}")
        if answer[0] == 403:  # another patient's entry: the same page as a missing one
            raise HTTPException(404)
        body = expect(answer, "patient")
        if not isinstance(body, bytes):
            raise HTTPException(404)
        return int(raw), body.decode("utf-8", "replace")

    async def receipt_page(request: Request, *, checked: bool) -> Response:
        """One receipt, read; with ``checked`` also checked against the ledger."""
        session = await require(request, "patient")
        index, text = await fetch(request, session)
        if checked:
            read, findings = await check_text(deps.api, text)
        else:
            read, findings = read_receipt(text), None
        context = {
            "title": t("receipt.title", index=index),
            "session": session,
            "index": index,
            "read": read,
            "findings": findings,
        }
        return page(request, "portal/receipt.html", context)

    async def show(request: Request) -> Response:
        return await receipt_page(request, checked=False)

    async def download(request: Request) -> Response:
        session = await require(request, "patient")
        index, text = await fetch(request, session)
        disposition = f'attachment; filename="consentry-receipt-{index}.txt"'
        return Response(
            text,
            media_type="text/plain; charset=utf-8",
            headers={"content-disposition": disposition},
        )

    async def check_one(request: Request) -> Response:
        return await receipt_page(request, checked=True)

    async def check_form(request: Request) -> Response:
        session = await require(request, "patient")
        context = {"title": t("receipt.check.title"), "session": session, "findings": None}
        if request.method == "POST":
            check_origin(request.headers, deps.origin)
            # The context manager closes the uploaded file's spool whatever happens.
            async with request.form(max_files=1, max_fields=5, max_part_size=MAX_RECEIPT) as form:
                check(form, session)
                text = str(form.get("receipt", "") or "")
                upload = form.get("file")
                if isinstance(upload, UploadFile) and upload.filename:
                    data = await upload.read(MAX_RECEIPT + 1)
                    text = data.decode("utf-8", "replace") if len(data) <= MAX_RECEIPT else ""
            read, findings = await check_text(deps.api, text[:MAX_RECEIPT])
            context.update(read=read, findings=findings)
        return page(request, "portal/check.html", context)

    return [
        Route("/portal/receipts/check", check_form, methods=["GET", "POST"]),
        Route("/portal/receipts/{index}", show, methods=["GET"]),
        Route("/portal/receipts/{index}/download", download, methods=["GET"]),
        Route("/portal/receipts/{index}/check", check_one, methods=["GET"]),
    ]
