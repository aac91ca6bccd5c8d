"""Which authorization server the pages sign in with, and its endpoints.

The first issuer configured with both an ``authorization_endpoint`` and a ``token_endpoint``;
else, with the development issuer on, the gateway's own development endpoints
(:mod:`middleware.web.devsignin`); else the endpoints the first issuer publishes in its
``.well-known/smart-configuration`` (SMART App Launch 2.x "Conformance"), used only when it
offers PKCE with S256 and both endpoints are on the issuer's own scheme, read once per process.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from middleware.web.deps import WebDeps

__all__ = ["Server", "authorization_server"]


@dataclass(frozen=True, slots=True)
class Server:
    """Where to send the browser (``authorize``) and redeem the code (``token``);
    ``in_process``: the development token endpoint, called through the gateway itself."""

    authorize: str
    token: str
    in_process: bool


async def authorization_server(deps: WebDeps) -> Server | None:
    """Where to sign in: the first issuer configured with both endpoints; else the
    development endpoints when that issuer is on; else the endpoints the first issuer
    publishes in its ``.well-known/smart-configuration`` (SMART App Launch 2.x
    "Conformance"), read once per process when they check out."""
    for issuer in deps.settings.auth.issuers:
        if issuer.authorization_endpoint and issuer.token_endpoint:
            return Server(issuer.authorization_endpoint, issuer.token_endpoint, False)
    if deps.dev is not None:
        return Server(f"{deps.root}/auth/authorize", "/auth/token", True)
    if not deps.settings.auth.issuers:
        return None
    issuer_url = deps.settings.auth.issuers[0].issuer
    found = deps.discovered.get(issuer_url)
    if found is None:
        endpoints = await _discover(deps, issuer_url)
        if endpoints is None:
            return None
        deps.discovered[issuer_url] = found = endpoints
    return Server(found[0], found[1], False)


async def _discover(deps: WebDeps, issuer: str) -> tuple[str, str] | None:
    """The (authorization, token) endpoints of ``issuer``'s SMART configuration, when it
    offers the authorization code grant with PKCE S256 on the issuer's own scheme."""
    url = f"{issuer.rstrip('/')}/.well-known/smart-configuration"
    try:
        answer = await deps.token_client.get(url, headers={"accept": "application/json"})
        document = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    authorize, token = document.get("authorization_endpoint"), document.get("token_endpoint")
    methods = document.get("code_challenge_methods_supported")
    scheme = issuer.split(":", 1)[0]
    if not (isinstance(authorize, str) and isinstance(token, str)):
        return None
    if not (isinstance(methods, list) and "S256" in methods):
        return None
    if not all(u.startswith(f"{scheme}://") for u in (authorize, token)):
        return None
    return authorize, token
