"""Pages out: Jinja2 templates (autoescape on everywhere) and the security headers.

:func:`page` renders a template of ``templates/`` with the text catalog ``t``, the area
(``portal`` or ``compliance``, from the path), the session's CSRF token (``csrf``) and the
signed-in ``session`` when the context has one. :class:`SecurityHeaders` (ASGI middleware
round the whole web app) puts :data:`SECURITY_HEADERS` on every web answer, redirects, static
files and errors included: a strict Content-Security-Policy with no inline script or style
(CSP Level 3), no framing, no MIME sniffing, no referrer sent to another origin, and
``Cache-Control: no-store`` (pages hold health data; static files excepted).

``Referrer-Policy`` is ``same-origin`` rather than ``no-referrer``: under ``no-referrer``
browsers send ``Origin: null`` on form posts (Fetch Standard, "serializing a request
origin"), and the CSRF check needs the real origin; ``same-origin`` still sends nothing to any
other origin.
"""

from __future__ import annotations

from typing import Any, Final

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from middleware.types import ASGIApp, Message, Receive, Scope, Send
from middleware.web.api import calling_for
from middleware.web.text import t

__all__ = ["CSP", "SECURITY_HEADERS", "SecurityHeaders", "area_of", "page", "render_text"]

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
_NO_STORE: Final = "no-store"
_STATIC_CACHE: Final = "public, max-age=300"

_env = Environment(
    loader=PackageLoader("middleware.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
_env.globals["t"] = t


def area_of(path: str) -> str:
    """``portal``, ``compliance`` or ``auth`` (the development sign-in) from a request path."""
    if path.startswith("/compliance"):
        return "compliance"
    if path.startswith("/auth/"):
        return "auth"
    return "portal"


def render_text(template: str, context: dict[str, Any]) -> str:
    """``template`` rendered with ``context`` (plus ``t``); for pages and tests."""
    return _env.get_template(template).render(context)


def page(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """The HTML answer of ``template`` (module docstring)."""
    values: dict[str, Any] = {"session": None, "csrf": "", "path": request.url.path}
    values["area"] = area_of(request.url.path)
    values.update(context or {})
    session = values["session"]
    if session is not None and not values["csrf"]:
        values["csrf"] = session.csrf
    response = HTMLResponse(render_text(template, values), status_code=status, headers=headers)
    response.headers.update(SECURITY_HEADERS)
    response.headers["cache-control"] = _NO_STORE
    return response


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` and ``Cache-Control`` on every answer of
    ``app`` (a header the app set itself is replaced, never doubled); the request's client
    address passed on to the API calls its pages make (:func:`~middleware.web.api.calling_for`)."""

    def __init__(self, app: ASGIApp, *, static_prefix: str) -> None:
        self.app = app
        self._static = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        calling_for(scope)
        static = str(scope.get("path", "")).startswith(self._static)
        cache = _STATIC_CACHE if static else _NO_STORE
        extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        extra.append((b"cache-control", cache.encode()))
        names = {k for k, _ in extra}

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, send_secured)
