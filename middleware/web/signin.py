"""Sign-in and sign-out of both areas: SMART App Launch 2.x standalone launch with PKCE.

``GET /<area>/signin`` shows a sign-in button; ``GET /<area>/signin/start`` sends the browser
to the authorization server's ``authorization_endpoint`` with ``response_type=code``, the
area's scopes, ``aud`` (the FHIR base), a random ``state`` and an S256 ``code_challenge``
(RFC 7636); the state and the code verifier wait in a sealed cookie that lives ten minutes
(``SameSite=Lax``: the authorization server's redirect back is a cross-site navigation).
``GET /<area>/callback`` refuses a ``state`` that is not the cookie's (RFC 6749 §10.12), then
redeems the code with the verifier at the ``token_endpoint``, checks the access token with the
gateway's own verifier (the APIs will check it again on every call), and keeps it in the
session cookie (:mod:`middleware.web.session`). A patient's token must carry a launch patient;
an auditor's the audit role. ``POST /<area>/signout`` (CSRF-checked) clears the cookie.

The authorization server is the first configured issuer with an ``authorization_endpoint``;
with none and the development issuer on, the gateway's own development endpoints
(:mod:`middleware.web.devsignin`); else the endpoints the first issuer publishes in its
``.well-known/smart-configuration``.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Final
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from middleware.auth.devauthorize import pkce_challenge
from middleware.errors import GatewayError
from middleware.ledger.signing import seal, unseal
from middleware.web.authserver import Server, authorization_server
from middleware.web.csrf import checked_form
from middleware.web.deps import WebDeps
from middleware.web.render import page
from middleware.web.session import SIGNIN_PATHS, Kind, WebSession, cookie_name, require
from middleware.web.text import t

__all__ = ["AREAS", "CLIENT_ID", "SCOPES", "STATE_COOKIE", "routes"]

#: The OAuth client id the pages sign in as (a public client, RFC 6749 §2.1).
CLIENT_ID: Final = "consentry-web"
#: Each area's path prefix.
AREAS: Final[dict[Kind, str]] = {"patient": "/portal", "auditor": "/compliance"}
#: What each area asks for: a patient's own Consent and audit trail; an auditor's audit trail.
SCOPES: Final[dict[Kind, str]] = {
    "patient": "openid fhirUser launch/patient patient/Consent.cruds patient/AuditEvent.rs",
    "auditor": "openid fhirUser user/AuditEvent.rs",
}
STATE_COOKIE: Final = "consentry_signin"
STATE_TTL: Final = 600.0


def routes(deps: WebDeps) -> list[BaseRoute]:
    """The sign-in, callback and sign-out routes of both areas."""
    out: list[BaseRoute] = []
    for kind, prefix in AREAS.items():
        out += [
            Route(f"{prefix}/signin", _signin_page(deps, kind), methods=["GET"]),
            Route(f"{prefix}/signin/start", _start(deps, kind), methods=["GET"]),
            Route(f"{prefix}/callback", _callback(deps, kind), methods=["GET"]),
            Route(f"{prefix}/signout", _signout(deps, kind), methods=["POST"]),
        ]
    return out


def _title(kind: Kind) -> str:
    return t("signin.portal.title") if kind == "patient" else t("signin.compliance.title")


def _signin_page(deps: WebDeps, kind: Kind) -> Any:
    async def endpoint(request: Request, problem: str = "", status: int = 200) -> Response:
        context = {
            "title": _title(kind),
            "intro": t("signin.portal.intro")
            if kind == "patient"
            else t("signin.compliance.intro"),
            "start": f"{AREAS[kind]}/signin/start",
            "problem": problem or _problem(request.query_params.get("problem", "")),
        }
        return page(request, "signin/signin.html", context, status=status)

    return endpoint


_PROBLEMS: Final = {
    "expired": "signin.problem.expired",
    "failed": "signin.problem.failed",
    "not-patient": "signin.problem.not_patient",
    "not-auditor": "signin.problem.not_auditor",
    "no-server": "signin.problem.no_server",
}


def _problem(code: str) -> str:
    key = _PROBLEMS.get(code)
    return t(key) if key else ""


def _again(kind: Kind, problem: str) -> Response:
    return RedirectResponse(f"{SIGNIN_PATHS[kind]}?problem={problem}", status_code=303)


def _start(deps: WebDeps, kind: Kind) -> Any:
    async def endpoint(_request: Request) -> Response:
        server = await authorization_server(deps)
        if server is None:
            return _again(kind, "no-server")
        state = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": CLIENT_ID,
                "redirect_uri": _redirect_uri(deps, kind),
                "scope": SCOPES[kind],
                "state": state,
                "aud": deps.settings.gateway_base_url,
                "code_challenge": pkce_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in server.authorize else "?"
        response = RedirectResponse(f"{server.authorize}{separator}{query}", status_code=303)
        pending = {
            "kind": kind,
            "state": state,
            "verifier": verifier,
            "expires": deps.clock() + STATE_TTL,
        }
        sealed = seal(deps.signin_key, json.dumps(pending).encode()).hex()
        response.set_cookie(
            _state_cookie(deps),
            sealed,
            max_age=int(STATE_TTL),
            path="/",
            secure=deps.sessions.secure,
            httponly=True,
            samesite="lax",
        )
        return response

    return endpoint


def _state_cookie(deps: WebDeps) -> str:
    """The sign-in state cookie's name: ``__Host-`` prefixed over https, like the session's."""
    return cookie_name(STATE_COOKIE, secure=deps.sessions.secure)


def _redirect_uri(deps: WebDeps, kind: Kind) -> str:
    return f"{deps.root}{AREAS[kind]}/callback"


def _pending(deps: WebDeps, request: Request, kind: Kind) -> dict[str, Any] | None:
    raw = request.cookies.get(_state_cookie(deps), "")
    try:
        opened = unseal(deps.signin_key, bytes.fromhex(raw)) if 0 < len(raw) < 2000 else None
        data = json.loads(opened) if opened is not None else None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") != kind:
        return None
    expires = data.get("expires")
    if not isinstance(expires, int | float) or expires <= deps.clock():
        return None
    if not isinstance(data.get("state"), str) or not isinstance(data.get("verifier"), str):
        return None
    return data


def _callback(deps: WebDeps, kind: Kind) -> Any:
    async def endpoint(request: Request) -> Response:
        pending = _pending(deps, request, kind)
        code = request.query_params.get("code", "")
        state = request.query_params.get("state", "")
        server = await authorization_server(deps)
        if pending is None or server is None:
            return _cleared(deps, _again(kind, "expired"))
        if not secrets.compare_digest(state.encode(), str(pending["state"]).encode()) or not code:
            return _cleared(deps, _again(kind, "failed"))
        token = await _redeem(deps, server, kind, code, str(pending["verifier"]))
        if token is None:
            return _cleared(deps, _again(kind, "failed"))
        try:
            identity = await deps.verifier.verify(f"Bearer {token}")
        except GatewayError:
            return _cleared(deps, _again(kind, "failed"))
        if kind == "patient":
            if identity.patient is None:
                return _cleared(deps, _again(kind, "not-patient"))
            subject = f"Patient/{identity.patient}"
        else:
            if deps.settings.audit_role not in identity.roles:
                return _cleared(deps, _again(kind, "not-auditor"))
            subject = identity.fhir_user or identity.subject
        session = WebSession(
            kind=kind,
            token=token,
            subject=subject,
            csrf=secrets.token_urlsafe(32),
            expires=identity.expires_at,
        )
        # A page, not a redirect: the browser's next request starts on this site, so the
        # SameSite=Strict session cookie goes with it even after a cross-site sign-in.
        context = {"title": t("signin.done.title"), "next": AREAS[kind] + "/"}
        response = page(request, "signin/continue.html", context)
        try:
            deps.sessions.set_cookie(response, session)
        except ValueError:
            return _cleared(deps, _again(kind, "failed"))
        return _cleared(deps, response)

    return endpoint


async def _redeem(
    deps: WebDeps, server: Server, kind: Kind, code: str, verifier: str
) -> str | None:
    """The access token the token endpoint gives for ``code``, or None (refused, broken)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _redirect_uri(deps, kind),
        "client_id": CLIENT_ID,
        "code_verifier": verifier,
    }
    try:
        if server.in_process:
            status, body, _ = await deps.api.post(None, server.token, form=form)
        else:
            answer = await deps.token_client.post(server.token, data=form)
            status, body = answer.status_code, answer.json()
    except (httpx.HTTPError, ValueError):
        return None
    if status != 200 or not isinstance(body, dict):
        return None
    token = body.get("access_token")
    return token if isinstance(token, str) and token else None


def _cleared(deps: WebDeps, response: Response) -> Response:
    """``response`` deleting the sign-in state cookie (spent, whatever the outcome)."""
    response.delete_cookie(
        _state_cookie(deps), path="/", secure=deps.sessions.secure, httponly=True, samesite="lax"
    )
    return response


def _signout(deps: WebDeps, kind: Kind) -> Any:
    async def endpoint(request: Request) -> Response:
        session = await require(request, kind)
        await checked_form(request, session)
        response = RedirectResponse(SIGNIN_PATHS[kind], status_code=303)
        deps.sessions.clear_cookie(response, kind)
        return response

    return endpoint
