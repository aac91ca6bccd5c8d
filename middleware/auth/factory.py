"""Wiring: :class:`AuthSettings` in, a ready :class:`TokenVerifier` (and dev issuer) out.

The only place that turns settings into key sources. ``create_app`` calls
:func:`build_dev_issuer` first (it is None unless the settings enable it by name), then
:func:`build_verifier` with the shared ``httpx.AsyncClient`` for JWKS URLs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from middleware.auth.devissuer import UnsafeDevelopmentIssuer, generate_key, load_or_create_key
from middleware.auth.jwks import JwksCache, StaticJwks
from middleware.auth.revocation import RevocationList
from middleware.auth.settings import AuthSettings
from middleware.auth.verify import IssuerConfig, KeySource, TokenVerifier

__all__ = ["build_dev_issuer", "build_verifier"]


def build_dev_issuer(
    settings: AuthSettings, *, clock: Callable[[], float] = time.time
) -> UnsafeDevelopmentIssuer | None:
    """The development issuer when ``settings.dev_issuer_enabled``, else None. Its key comes
    from ``dev_issuer_key_file`` (created when missing) or is generated per process."""
    if not settings.dev_issuer_enabled:
        return None
    path = settings.dev_issuer_key_file
    algorithm = settings.dev_issuer_algorithm
    key = load_or_create_key(path, algorithm) if path else generate_key(algorithm)
    return UnsafeDevelopmentIssuer(
        settings.dev_issuer_url,
        enabled=True,
        key=key,
        purpose_claim=settings.purpose_claim,
        roles_claim=settings.roles_claim,
        organization_claim=settings.organization_claim,
        clock=clock,
    )


def build_verifier(
    settings: AuthSettings,
    *,
    client: httpx.AsyncClient | None = None,
    dev_issuer: UnsafeDevelopmentIssuer | None = None,
    gateway_base: str = "",
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    revocations: RevocationList | None = None,
) -> TokenVerifier:
    """A verifier trusting every configured issuer, plus ``dev_issuer`` when given;
    ``gateway_base`` is the public FHIR base an absolute ``fhirUser`` may be under.
    ``clock`` is wall-clock seconds (token times), ``monotonic`` ages the JWKS caches;
    ``revocations``: the tokens an administrator withdrew (auth.revocation; None: none)."""
    issuers: dict[str, IssuerConfig] = {}
    for issuer in settings.issuers:
        keys: KeySource = JwksCache(
            issuer.jwks_file if issuer.jwks_file is not None else str(issuer.jwks_url),
            client=client,
            ttl=settings.jwks_ttl,
            refresh_interval=settings.jwks_refresh_interval,
            max_stale=settings.jwks_max_stale,
            clock=monotonic,
        )
        issuers[issuer.issuer] = IssuerConfig(
            keys, frozenset(issuer.audiences), frozenset(issuer.algorithms)
        )
    if dev_issuer is not None:
        issuers[dev_issuer.issuer] = IssuerConfig(
            StaticJwks(dev_issuer.jwks()),
            frozenset(settings.audiences),
            frozenset({dev_issuer.algorithm}),
        )
    return TokenVerifier(
        issuers,
        rules=settings.identity_rules(gateway_base),
        leeway=settings.leeway,
        clock=clock,
        realm=settings.realm or None,
        revocations=revocations,
    )
