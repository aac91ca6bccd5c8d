"""What a page does with an API's answer it did not want: one place for every page.

:func:`expect` returns the body of an answer whose status is one the page expects; otherwise
it raises what the web app turns into a page: 401 (the token expired or was revoked) ->
:class:`~middleware.web.session.SignInRequired`; 404 and 410 -> the generic not-found page
(the same for "missing" and "someone else's"); 403 -> :class:`Refused`-like 403 page; 4xx ->
400 page; anything else -> :class:`Unavailable` (503, "try again later"). The API's own
OperationOutcome is never shown: it is for programs, and may name codes a patient does not
need.
"""

from __future__ import annotations

import re
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request

from middleware.web.api import Answer
from middleware.web.session import Kind, SignInRequired

__all__ = ["FHIR_ID", "Unavailable", "expect", "path_id"]

#: A FHIR resource id (FHIR R4 §2.24.0.1 "id": 1 to 64 of these characters), and not only
#: dots: ``.`` and ``..`` are dot segments (RFC 3986 §5.2.4) that the HTTP client removes, so
#: ``Consent/..`` would reach ``{base}`` itself (a search, or a create).
FHIR_ID: Final = re.compile(r"(?!\.+$)[A-Za-z0-9\-.]{1,64}")


class Unavailable(Exception):
    """The API could not answer (5xx, or an answer the page cannot read): 503 page."""


def expect(answer: Answer, kind: Kind, *statuses: int) -> Any:
    """``answer``'s body when its status is in ``statuses`` (200 when none given)."""
    status, body, _headers = answer
    if status in (statuses or (200,)):
        return body
    if status == 401:
        raise SignInRequired(kind)
    if status in (404, 410):
        raise HTTPException(404)
    if status == 403:
        raise HTTPException(403)
    if 400 <= status < 500:
        raise HTTPException(400)
    raise Unavailable(str(status))


def path_id(request: Request, name: str) -> str:
    """The path parameter ``name`` if it is a FHIR id; else the not-found page (an id that
    cannot exist is not sent to any API)."""
    value = str(request.path_params[name])
    if not FHIR_ID.fullmatch(value):
        raise HTTPException(404)
    return value
