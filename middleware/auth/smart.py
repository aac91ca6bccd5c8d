"""What the gateway tells SMART clients about authorization: the authorization server it trusts.

Two documents say it, both built here from the ``[auth]`` settings (pure: nothing is fetched):

- ``/.well-known/smart-configuration`` (SMART App Launch 2.x, "Conformance", served at the FHIR
  base and at the root): :func:`smart_configuration`;
- the ``oauth-uris`` extension of ``CapabilityStatement.rest.security``
  (http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris, SMART 1.0, still read
  by clients such as Python's ``fhirclient``): :func:`oauth_uris`.

Which server is advertised (:func:`authorization_server`): the first ``[[auth.issuers]]``
entry with a ``token_endpoint``; else the development issuer when it is on (it mints tokens
with ``consentry token issue`` and has no OAuth endpoints, so none is advertised); else the
first configured issuer. With no issuer at all there is nothing to advertise (``None``).

The ``capabilities`` are the server's (as configured) plus what the gateway itself enforces:
SMART v1 and v2 scopes (``permission-v1``, ``permission-v2``) in patient, user and system
context (``permission-patient``, ``permission-user``; system scopes need no capability code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from middleware.auth.settings import AuthSettings

__all__ = [
    "OAUTH_URIS",
    "AuthorizationServer",
    "authorization_server",
    "gateway_root",
    "oauth_uris",
    "smart_configuration",
]

#: The SMART 1.0 CapabilityStatement extension naming the OAuth endpoints.
OAUTH_URIS: Final = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
#: Capabilities the gateway provides whatever the authorization server (module docstring).
_GATEWAY_CAPABILITIES: Final = (
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)
#: Scope forms the gateway enforces (``middleware.auth.scopes``), offered when the server's own
#: list is not configured: every resource type, each context, v2 letters and v1 names.
_GATEWAY_SCOPES: Final = tuple(
    f"{context}/*.{permissions}"
    for context in ("patient", "user", "system")
    for permissions in ("cruds", "rs", "read", "write")
)


@dataclass(frozen=True, slots=True)
class AuthorizationServer:
    """The authorization server the gateway advertises (module docstring). ``development``:
    it is the development issuer (no OAuth endpoints)."""

    issuer: str
    jwks_uri: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    grant_types: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    development: bool = False


def gateway_root(gateway_base_url: str, base_path: str) -> str:
    """The gateway's public root URL: ``gateway_base_url`` (the FHIR base clients see) without
    its trailing ``base_path``; management paths such as ``/auth/jwks`` are served there."""
    base = gateway_base_url.rstrip("/")
    suffix = base_path.rstrip("/")
    return base[: len(base) - len(suffix)] if suffix and base.endswith(suffix) else base


def authorization_server(
    settings: AuthSettings, *, gateway_root: str
) -> AuthorizationServer | None:
    """The server to advertise; ``gateway_root`` is the gateway's public root URL (where the
    development issuer's ``/auth/jwks`` is served). ``None`` when no issuer is configured."""
    extra = (settings.break_glass_scope,) if settings.break_glass_scope else ()
    chosen = next((i for i in settings.issuers if i.token_endpoint), None)
    if chosen is None and settings.dev_issuer_enabled:
        return AuthorizationServer(
            issuer=settings.dev_issuer_url,
            jwks_uri=f"{gateway_root.rstrip('/')}/auth/jwks",
            scopes=_GATEWAY_SCOPES + extra,
            development=True,
        )
    if chosen is None and settings.issuers:
        chosen = settings.issuers[0]
    if chosen is None:
        return None
    grant_types = chosen.grant_types
    if not grant_types and chosen.token_endpoint:
        # The usual grant of each kind of deployment; configure grant_types to say otherwise.
        grant_types = (
            ("authorization_code",) if chosen.authorization_endpoint else ("client_credentials",)
        )
    return AuthorizationServer(
        issuer=chosen.issuer,
        jwks_uri=chosen.jwks_url,
        authorization_endpoint=chosen.authorization_endpoint,
        token_endpoint=chosen.token_endpoint,
        grant_types=grant_types,
        capabilities=chosen.capabilities,
        scopes=(chosen.scopes_supported or _GATEWAY_SCOPES) + extra,
    )


def smart_configuration(server: AuthorizationServer) -> dict[str, Any]:
    """The ``/.well-known/smart-configuration`` document of ``server`` (SMART App Launch 2.x
    "Conformance": ``token_endpoint``, ``grant_types_supported``, ``capabilities`` and
    ``code_challenge_methods_supported`` are required there; an endpoint the server does not
    have is left out rather than invented, and a development issuer says so)."""
    document: dict[str, Any] = {"issuer": server.issuer}
    if server.jwks_uri:
        document["jwks_uri"] = server.jwks_uri
    if server.authorization_endpoint:
        document["authorization_endpoint"] = server.authorization_endpoint
    if server.token_endpoint:
        document["token_endpoint"] = server.token_endpoint
    document["grant_types_supported"] = list(server.grant_types)
    document["scopes_supported"] = list(server.scopes)
    if server.authorization_endpoint:
        document["response_types_supported"] = ["code"]
        # SMART 2.x: PKCE S256 is required of the server, "plain" must not be offered.
        document["code_challenge_methods_supported"] = ["S256"]
    else:
        document["code_challenge_methods_supported"] = []
    document["capabilities"] = list(dict.fromkeys((*server.capabilities, *_GATEWAY_CAPABILITIES)))
    if server.development:
        document["description"] = (
            "Development issuer: tokens are minted with `consentry token issue`; "
            "it has no authorization or token endpoint. Never use it in production."
        )
    elif not server.token_endpoint:
        document["description"] = (
            "The configured issuer's authorization and token endpoints are not configured "
            "on this gateway (auth.issuers[].token_endpoint)."
        )
    return document


def oauth_uris(server: AuthorizationServer | None) -> dict[str, Any] | None:
    """The ``oauth-uris`` extension for ``CapabilityStatement.rest.security``, or ``None``
    when the server has no token endpoint to name."""
    if server is None or not server.token_endpoint:
        return None
    parts = [{"url": "token", "valueUri": server.token_endpoint}]
    if server.authorization_endpoint:
        parts.append({"url": "authorize", "valueUri": server.authorization_endpoint})
    return {"url": OAUTH_URIS, "extension": parts}
