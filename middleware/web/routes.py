"""The web app: every ``/portal/``, ``/compliance/`` and ``/static/web/`` path (and the
development sign-in's ``/auth/authorize``, ``/auth/token`` when that is on).

:func:`build_web` wires :class:`~middleware.web.deps.WebDeps` once and builds one Starlette app
from each page module's ``routes(deps)``, wrapped in
:class:`~middleware.web.render.SecurityHeaders`. Errors become pages here, in one place: a page
that needs a session and has none (:class:`~middleware.web.session.SignInRequired`) is a 303 to
its area's sign-in; a refused form (:class:`~middleware.web.csrf.Refused`) a 403 page; an
unknown path or anything a page does not find (``HTTPException(404)``) the generic not-found
page, the same whether the thing is missing or someone else's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from middleware.auth.devauthorize import DevAuthorizer, DevClient
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.auth.smart import gateway_root
from middleware.ledger.signing import derive_box_key
from middleware.logging import get_logger
from middleware.proxy.enforcement import TokenCheck
from middleware.settings import Settings
from middleware.types import ASGIApp, Receive, Scope, Send
from middleware.web import compliance, devsignin, home, portal, signin
from middleware.web.api import GatewayApi
from middleware.web.calls import Unavailable
from middleware.web.csrf import Refused, origin_of
from middleware.web.deps import WebDeps
from middleware.web.render import SecurityHeaders, page
from middleware.web.session import SIGNIN_PATHS, SessionCodec, SignInRequired
from middleware.web.text import t

__all__ = ["STATIC_PREFIX", "WebApp", "build_web", "web_serves"]

STATIC_PREFIX: Final = "/static/web"
_PREFIXES: Final = ("/portal", "/compliance", STATIC_PREFIX + "/")


def web_serves(path: str, *, development: bool) -> bool:
    """Whether ``path`` belongs to the web app (the development endpoints only when on)."""
    if development and path in devsignin.DEV_PATHS:
        return True
    return any(path == p or path.startswith(p + "/") for p in ("/portal", "/compliance")) or (
        path.startswith(_PREFIXES[2])
    )


class WebApp:
    """The web pages' ASGI app and what it must close (the in-process API client)."""

    def __init__(self, app: ASGIApp, deps: WebDeps) -> None:
        self._app = app
        self.deps = deps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    async def aclose(self) -> None:
        await self.deps.api.aclose()
        await self.deps.token_client.aclose()


def build_web(
    gateway: ASGIApp,
    settings: Settings,
    *,
    secret: bytes,
    verifier: TokenCheck,
    dev_issuer: UnsafeDevelopmentIssuer | None,
    clock: Callable[[], float] = time.time,
    token_transport: httpx.AsyncBaseTransport | None = None,
) -> WebApp:
    """The web app over ``gateway`` (the gateway's own ASGI app, called in-process). ``secret``
    is the ledger key file's data secret (the cookie keys derive from it); ``verifier`` the
    gateway's token verifier; ``token_transport`` replaces the network for an external
    token endpoint (tests)."""
    root = gateway_root(settings.gateway_base_url, settings.base_path)
    origin = origin_of(root)
    dev = None
    if dev_issuer is not None:
        audiences = settings.auth.audiences
        audience = audiences[0] if audiences else settings.gateway_base_url
        dev = DevAuthorizer(
            dev_issuer,
            origin=origin,
            client_id=signin.CLIENT_ID,
            redirects={
                f"{root}{prefix}/callback": DevClient(signin.SCOPES[kind], kind == "auditor")
                for kind, prefix in signin.AREAS.items()
            },
            audience=audience,
            auditor_role=settings.audit_role,
            clock=clock,
        )
    deps = WebDeps(
        settings=settings,
        api=GatewayApi(gateway, root),
        sessions=SessionCodec(
            derive_box_key(secret, "web-session"), secure=root.startswith("https:"), clock=clock
        ),
        signin_key=derive_box_key(secret, "web-signin"),
        verifier=verifier,
        origin=origin,
        root=root,
        clock=clock,
        dev=dev,
        token_client=httpx.AsyncClient(
            transport=token_transport, timeout=httpx.Timeout(settings.read_timeout)
        ),
    )
    routes = [
        Route("/portal", _to_slash, methods=["GET"]),
        Route("/compliance", _to_slash, methods=["GET"]),
        *signin.routes(deps),
        *devsignin.routes(deps),
        *portal.routes(deps),
        *compliance.routes(deps),
        *home.routes(deps),
        Mount(STATIC_PREFIX, StaticFiles(packages=[("middleware.web", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            SignInRequired: _signin_required,
            Refused: _refused,
            HTTPException: _http_error,
            Unavailable: _unavailable,
        },
    )
    app.state.deps = deps
    return WebApp(SecurityHeaders(app, static_prefix=STATIC_PREFIX + "/"), deps)


async def _to_slash(request: Request) -> Response:
    return RedirectResponse(request.url.path + "/", status_code=308)


async def _signin_required(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse(SIGNIN_PATHS[exc.kind], status_code=303)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    get_logger("consentry.web").warning("form refused", reason=exc.reason)
    context = {
        "title": t("error.refused.title"),
        "lines": [t("error.refused.text")],
        "link": "",
        "link_text": "",
    }
    return page(request, "message.html", context, status=403)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        title, text = t("error.not_found.title"), t("error.not_found.text")
    elif status == 403:
        title, text = t("error.forbidden.title"), t("error.forbidden.text")
    elif status == 405:
        title, text = t("error.method.title"), t("error.method.text")
    else:
        status = status if 400 <= status < 500 else 400
        title, text = t("error.bad_request.title"), t("error.bad_request.text")
    context = {"title": title, "lines": [text], "link": "", "link_text": ""}
    return page(request, "message.html", context, status=status)


async def _unavailable(request: Request, exc: Exception) -> Response:
    get_logger("consentry.web").warning("api unavailable", status=str(exc))
    context = {
        "title": t("error.unavailable.title"),
        "lines": [t("error.unavailable.text")],
        "link": "",
        "link_text": "",
    }
    return page(request, "message.html", context, status=503, headers={"retry-after": "5"})
