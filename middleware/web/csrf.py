"""Cross-site request forgery: every POST of a web page is checked twice.

1. The form carries a hidden ``csrf`` field equal to the session's own random token
   (the synchronizer token pattern, OWASP CSRF Prevention Cheat Sheet), compared in constant
   time. Another site cannot read it: the session cookie is HttpOnly and SameSite=Strict, and
   pages are never framed (``frame-ancestors 'none'``).
2. The request's ``Origin`` header (or, without one, ``Referer``) is the gateway's own origin
   (Fetch Standard: browsers send ``Origin`` on every POST). A POST with neither is refused:
   fail closed.

A refusal raises :class:`Refused` (403), which the web app renders as its error page.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request

from middleware.web.session import WebSession

__all__ = ["FIELD", "Refused", "check", "check_origin", "checked_form", "origin_of"]

#: The hidden form field holding the session's CSRF token.
FIELD: Final = "csrf"
#: A form of the pages is small; a larger body is refused before it is parsed.
MAX_FIELDS: Final = 200


class Refused(Exception):
    """A state-changing request the pages refuse (403 page); ``reason`` is for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower-cased (RFC 6454 §6.1 serialization); empty
    for a URL without both."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_origin(headers: Mapping[str, str], own_origin: str) -> None:
    """Refuse unless ``Origin`` (else ``Referer``) names ``own_origin``."""
    origin = headers.get("origin")
    if origin is None:
        referer = headers.get("referer")
        if referer is None:
            raise Refused("no Origin or Referer")
        origin = origin_of(referer)
    if not own_origin or origin.lower() != own_origin:
        raise Refused("foreign origin")


def check(form: FormData | Mapping[str, object], session: WebSession) -> None:
    """Refuse unless ``form``'s ``csrf`` field equals ``session.csrf``."""
    sent = form.get(FIELD)
    if not isinstance(sent, str) or not session.csrf:
        raise Refused("no CSRF token")
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise Refused("wrong CSRF token")


async def checked_form(request: Request, session: WebSession) -> FormData:
    """The request's form after both checks (the origin first, before the body is read)."""
    check_origin(request.headers, request.app.state.deps.origin)
    form = await request.form(max_files=0, max_fields=MAX_FIELDS)
    check(form, session)
    return form
