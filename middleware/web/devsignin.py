"""The development authorization endpoint's page: ``/auth/authorize`` and ``/auth/token``.

Served only when the development issuer is on (``routes`` returns nothing otherwise, and the
gateway does not route the paths). ``GET /auth/authorize`` checks the request
(:meth:`~middleware.auth.devauthorize.DevAuthorizer.request`) and shows a page, clearly
labelled development-only, where one types a patient id or picks "auditor"; its ``POST``
(same-origin only) issues a code and redirects to the ``redirect_uri`` with it and the
``state``. ``POST /auth/token`` is the token endpoint (JSON, RFC 6749 §5).

It mints only the pages' own sign-in tokens (client ``consentry-web``, each area's callback
and scopes: :class:`~middleware.auth.devauthorize.DevAuthorizer`), and only for a client
connecting from a loopback address (the TCP peer's, even behind a trusted proxy), so a
development gateway reachable on a network hands no tokens to the network. The ``auth``
setting ``dev_signin_remote`` lifts the loopback rule (a development gateway in a container,
reached through its port mapping).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from middleware.auth.devauthorize import DevAuthorizer, OAuthError
from middleware.forwarded import peer_host
from middleware.web.csrf import check_origin
from middleware.web.deps import WebDeps
from middleware.web.render import page
from middleware.web.text import t

__all__ = ["DEV_PATHS", "routes"]

DEV_PATHS: Final = frozenset({"/auth/authorize", "/auth/token"})
_FIELDS: Final = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "aud",
)


def routes(deps: WebDeps) -> list[BaseRoute]:
    """The development endpoints, or none when the development issuer is off."""
    dev = deps.dev
    if dev is None:
        return []

    remote = deps.settings.auth.dev_signin_remote

    async def authorize_page(request: Request) -> Response:
        if not (remote or _loopback(request)):
            return _refused(request, _REMOTE, status=403)
        params = {k: request.query_params.get(k, "") for k in _FIELDS}
        return _form(request, dev, params)

    async def authorize_post(request: Request) -> Response:
        if not (remote or _loopback(request)):
            return _refused(request, _REMOTE, status=403)
        check_origin(request.headers, deps.origin)
        form = await request.form(max_files=0, max_fields=50)
        params = {k: str(form.get(k, "")) for k in _FIELDS}
        try:
            checked = dev.request(params)
        except OAuthError as exc:
            return _refused(request, exc)
        auditor = form.get("who") == "auditor"
        patient = str(form.get("patient", "")).strip()
        try:
            code = dev.grant(checked, patient=patient or None, auditor=auditor)
        except OAuthError as exc:
            if exc.error == "access_denied":
                return _refused(request, exc)
            return _form(request, dev, params, problem=t("dev.problem.patient"), status=400)
        query = urlencode({"code": code, "state": checked.state})
        return RedirectResponse(f"{checked.redirect_uri}?{query}", status_code=303)

    async def token(request: Request) -> Response:
        try:
            if not (remote or _loopback(request)):
                raise _REMOTE
            form = await request.form(max_files=0, max_fields=50)
            answer = dev.exchange({k: str(v) for k, v in form.items()})
        except OAuthError as exc:
            return JSONResponse(
                {"error": exc.error, "error_description": exc.description},
                status_code=403 if exc is _REMOTE else 400,
                headers={"cache-control": "no-store"},
            )
        return JSONResponse(answer, headers={"cache-control": "no-store", "pragma": "no-cache"})

    return [
        Route("/auth/authorize", authorize_page, methods=["GET"]),
        Route("/auth/authorize", authorize_post, methods=["POST"]),
        Route("/auth/token", token, methods=["POST"]),
    ]


def _form(
    request: Request,
    dev: DevAuthorizer,
    params: dict[str, str],
    *,
    problem: str = "",
    status: int = 200,
) -> Response:
    try:
        checked = dev.request(params)
    except OAuthError as exc:
        return _refused(request, exc)
    context: dict[str, Any] = {
        "title": t("dev.title"),
        "auditor": checked.auditor,
        "fields": [(k, v) for k, v in params.items() if v],
        "problem": problem,
    }
    return page(request, "signin/dev_authorize.html", context, status=status)


_REMOTE: Final = OAuthError(
    "access_denied", "the development sign-in answers only on this machine (loopback)"
)


def _loopback(request: Request) -> bool:
    """Whether the connection comes from a loopback address (127.0.0.0/8, ::1, or an
    IPv4-mapped loopback); an unknown or unparsable client is not. The TCP peer's address,
    never one a trusted proxy forwarded (middleware.forwarded)."""
    host = peer_host(request.scope) or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _refused(request: Request, exc: OAuthError, *, status: int = 400) -> Response:
    # Never redirect a request that failed its checks: its redirect_uri may be anyone's.
    context = {
        "title": t("dev.refused.title"),
        "lines": [t("dev.refused.text"), exc.description],
        "link": "",
        "link_text": "",
    }
    return page(request, "message.html", context, status=status)
