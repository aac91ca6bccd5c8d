"""What the compliance dashboard's pages share: the signed-in auditor, the answer of an API
call that did not work, the form fields every page reads, and times in words.

Pages never decide who may see what: each API call carries the auditor's own token and the
API decides (``middleware.audit.access``). A 401 means the token expired: the auditor is
sent to sign in again. A 403 says the account may not use the dashboard; any other failure
is shown as a page that names no detail (the API's OperationOutcome is not echoed: its
diagnostics are for programs).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from middleware.web.api import Params
from middleware.web.calls import FHIR_ID
from middleware.web.render import page
from middleware.web.session import SignInRequired, WebSession, require
from middleware.web.text import t

__all__ = [
    "ID",
    "api_params",
    "auditor",
    "day_bounds",
    "failed",
    "field",
    "show_time",
]

#: A FHIR id (R4 §2.24.0.1): what a patient field of a dashboard form may hold; never only
#: dots (:data:`middleware.web.calls.FHIR_ID`: a dot segment would leave ``Patient/<id>``).
ID: Final = FHIR_ID
_MOST: Final = 200


async def auditor(request: Request) -> WebSession:
    """The signed-in auditor's session, or :class:`SignInRequired` (303 to the sign-in)."""
    return await require(request, "auditor")


def failed(request: Request, status: int, session: WebSession) -> Response:
    """The page for an API answer of ``status`` that was not a success (module docstring)."""
    if status == 401:
        raise SignInRequired("auditor")
    if status == 403:
        key, shown = "compliance.failed.forbidden", 403
    elif status == 404:
        key, shown = "compliance.failed.not_found", 404
    elif status in (400, 422):
        key, shown = "compliance.failed.bad", 400
    else:
        key, shown = "compliance.failed.unavailable", 503
    context = {
        "title": t("compliance.failed.title"),
        "lines": [t(key)],
        "link": "/compliance/",
        "link_text": t("compliance.failed.back"),
        "session": session,
    }
    return page(request, "message.html", context, status=shown)


def api_params(pairs: Sequence[tuple[str, str]]) -> Params:
    """``pairs`` as the API client's query parameters (in their order, repeats kept)."""
    out: list[tuple[str, str | int | float | bool | None]] = list(pairs)
    return out


def field(request: Request, name: str) -> str:
    """The query parameter ``name``, stripped, at most 200 characters ("" when absent)."""
    return request.query_params.get(name, "").strip()[:_MOST]


def day_bounds(first: str, last: str) -> list[tuple[str, str]]:
    """The ``date`` parameters of the API for the days ``first`` to ``last`` (each
    ``YYYY-MM-DD`` or empty, inclusive); ValueError for a day that is not a date."""
    params: list[tuple[str, str]] = []
    if first:
        params.append(("date", "ge" + date.fromisoformat(first).isoformat()))
    if last:
        params.append(("date", "le" + date.fromisoformat(last).isoformat()))
    return params


def show_time(value: object) -> str:
    """An instant (RFC 3339 text, or microseconds since the epoch) as ``YYYY-MM-DD HH:MM
    UTC``; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value / 1_000_000, UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            return value
    else:
        return ""
    return moment.strftime("%Y-%m-%d %H:%M UTC")
