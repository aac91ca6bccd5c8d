"""Bearer token verification: ``Authorization`` header in, :class:`Identity` or 401 out.

:meth:`TokenVerifier.verify` checks, in this order, and refuses at the first failure with
:class:`~middleware.errors.Unauthorized` carrying an RFC 6750 §3 challenge:

1. the header is ``Bearer <b64token>`` (RFC 6750 §2.1); absent: a bare ``Bearer`` challenge
   (§3.1: no error code when no credentials were sent); malformed: ``invalid_request``;
2. the token is a compact JWS whose ``alg`` is RS256, ES256 or EdDSA
   (:func:`~middleware.auth.jose.parse_compact`, *before any key is looked up*);
3. ``iss`` names a configured issuer, which also allows this ``alg``;
4. ``kid`` names a key of that issuer's JWK Set (after at most one rotation reload);
5. the signature verifies with that key;
6. ``exp`` is present and not passed, ``nbf`` and ``iat`` are not in the future (RFC 7519
   §4.1.4-6, each with ``leeway`` seconds for clock skew), ``aud`` contains one of the
   issuer's audiences (§4.1.3), ``sub`` is present (SMART 2.x; RFC 9068 §2.2);
7. the SMART claims read into an :class:`Identity`
   (:func:`~middleware.auth.identity.identity_from_claims`).

Failures 2-7 answer ``invalid_token``. A key source that cannot be read raises
:class:`~middleware.errors.ServiceUnavailable`. The token itself is never logged or echoed.

A verified token is remembered (bounded LRU, keyed by the exact token text) for at most
:data:`CACHE_SECONDS` and never past its own ``exp``/before its ``nbf``: the same token on
every request of a session is verified once, not once per request (signature checking was a
quarter of the gateway's CPU per read). The cost: a key withdrawn from an issuer's JWK Set
stops tokens it signed within ``CACHE_SECONDS``, not at once.

Revocation (:mod:`middleware.auth.revocation`): with a ``revocations`` list, every request's
token, cached or not, is checked against it after step 7; a revoked one is forgotten by the
cache and answered ``invalid_token`` ("the token has been revoked"); the list is asked with
``iat - leeway`` (clock skew, :mod:`middleware.auth.revocation`); a list that cannot tell
raises :class:`~middleware.errors.ServiceUnavailable` (fail closed).
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from joserfc.jwk import Key

from middleware.auth.identity import ClaimError, Identity, IdentityRules, identity_from_claims
from middleware.auth.jose import ALGORITHMS, JoseError, parse_compact, verify_signature
from middleware.auth.jwks import JwksUnavailable
from middleware.auth.revocation import RevocationList
from middleware.errors import ServiceUnavailable, Unauthorized
from middleware.logging import get_logger

__all__ = [
    "DEFAULT_LEEWAY",
    "IssuerConfig",
    "KeySource",
    "TokenVerifier",
    "bearer_challenge",
    "check_claims",
]

#: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
DEFAULT_LEEWAY: Final = 30.0
#: Longest a verified token is taken from the cache without checking its signature again.
CACHE_SECONDS: Final = 60.0
#: Verified tokens remembered at once (least recently used forgotten first).
CACHE_ENTRIES: Final = 10_000
# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token (the scheme is case-insensitive).
_BEARER: Final = re.compile(r"(?i:bearer) +(?P<token>[A-Za-z0-9\-._~+/]+=*)")
# RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no '"' and no '\').
_UNSAFE_IN_QUOTES: Final = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


class KeySource(Protocol):
    """Where an issuer's verification keys come from (:class:`~middleware.auth.jwks.JwksCache`,
    :class:`~middleware.auth.jwks.StaticJwks`)."""

    async def find(self, kid: str, alg: str) -> Key | None:
        """The key named ``kid`` that fits ``alg``, or None; may raise ``JwksUnavailable``."""
        ...


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted issuer: its keys, the audiences its tokens must name (at least one of), and
    the algorithms it may use (a non-empty subset of RS256, ES256, EdDSA)."""

    keys: KeySource
    audiences: frozenset[str]
    algorithms: frozenset[str] = ALGORITHMS

    def __post_init__(self) -> None:
        if not self.audiences:
            raise ValueError("an issuer needs at least one audience")
        if not self.algorithms or not self.algorithms <= ALGORITHMS:
            raise ValueError(f"algorithms must be a non-empty subset of {sorted(ALGORITHMS)}")


class _Refused(Exception):
    def __init__(self, reason: str, error: str = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class TokenVerifier:
    """Verifies SMART bearer tokens against ``issuers`` (keyed by exact ``iss`` value).

    ``clock`` gives seconds since the epoch (token times are wall-clock times).
    """

    def __init__(
        self,
        issuers: Mapping[str, IssuerConfig],
        *,
        rules: IdentityRules | None = None,
        leeway: float = DEFAULT_LEEWAY,
        clock: Callable[[], float] = time.time,
        realm: str | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self._issuers = dict(issuers)
        self._rules = rules or IdentityRules()
        self._leeway = leeway
        self._clock = clock
        self._realm = realm
        self._revocations = revocations
        self._log = get_logger("consentry.auth")
        # token -> (identity, usable from, usable until, iat): see the module docstring.
        self._verified: OrderedDict[str, tuple[Identity, float, float, float | None]] = (
            OrderedDict()
        )
        # token -> until when it stays proved (its expiry): see :meth:`proved`.
        self._proved: OrderedDict[str, float] = OrderedDict()

    def proved(self, authorization: str | None) -> bool:
        """Whether :meth:`verify` accepted this exact ``authorization`` before and the token
        it carries has not expired since. Does no signature, key or claim work, so a caller
        may ask it before any admission budget: only a valid token gets here, and
        :meth:`verify` still decides (a token whose key was withdrawn is refused then)."""
        if authorization is None:
            return False
        until = self._proved.get(authorization.strip())
        return until is not None and self._clock() < until

    async def verify(self, authorization: str | None) -> Identity:
        """The :class:`Identity` the ``Authorization`` header value proves; raises
        :class:`Unauthorized` (401) or :class:`ServiceUnavailable` (503, keys unreadable)."""
        if authorization is None or not authorization.strip():
            raise Unauthorized("authentication required", www_authenticate=self._challenge())
        header = authorization.strip()
        now = self._clock()
        cached = self._verified.get(header)
        if cached is not None:
            identity, start, end, iat = cached
            if start <= now < end:
                self._verified.move_to_end(header)
                return await self._unrevoked(header, identity, iat)
            del self._verified[header]
        try:
            identity, nbf, iat = await self._verify(header)
        except _Refused as refused:
            self._log.info("bearer token refused", reason=refused.reason)
            raise Unauthorized(
                refused.reason,
                www_authenticate=self._challenge(refused.error, refused.reason),
            ) from None
        except JwksUnavailable as exc:
            self._log.warning("bearer token not verifiable", error=str(exc))
            raise ServiceUnavailable("the token issuer's signing keys are unavailable") from exc
        start = -math.inf if nbf is None else nbf - self._leeway
        end = min(identity.expires_at + self._leeway, now + CACHE_SECONDS)
        await self._unrevoked(header, identity, iat)
        self._verified[header] = (identity, start, end, iat)
        if len(self._verified) > CACHE_ENTRIES:
            self._verified.popitem(last=False)
        self._proved[header] = identity.expires_at + self._leeway
        self._proved.move_to_end(header)
        if len(self._proved) > CACHE_ENTRIES:
            self._proved.popitem(last=False)
        return identity

    async def _unrevoked(self, header: str, identity: Identity, iat: float | None) -> Identity:
        """``identity``, unless its token is revoked: then it is forgotten and refused."""
        if self._revocations is None:
            return identity
        # An iat up to leeway ahead of our clock is accepted (verify_claims), so the cutoff
        # gets the same margin: a fast issuer clock must not lift a subject's revocation.
        earliest = None if iat is None else iat - self._leeway
        if not await self._revocations.revoked(identity, earliest):
            return identity
        self._verified.pop(header, None)
        self._proved.pop(header, None)
        reason = "the token has been revoked"
        self._log.info("bearer token refused", reason=reason)
        raise Unauthorized(reason, www_authenticate=self._challenge("invalid_token", reason))

    async def _verify(self, authorization: str) -> tuple[Identity, float | None, float | None]:
        match = _BEARER.fullmatch(authorization)
        if match is None:
            raise _Refused("the Authorization header is not a bearer token", "invalid_request")
        try:
            jws = parse_compact(match["token"])
        except JoseError as exc:
            raise _Refused(str(exc)) from None
        issuer = jws.claims.get("iss")
        config = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if config is None:
            raise _Refused("the token's issuer is not trusted")
        if jws.alg not in config.algorithms:
            raise _Refused("the token's algorithm is not allowed for its issuer")
        if jws.kid is None:
            raise _Refused("the token names no signing key (kid)")
        key = await config.keys.find(jws.kid, jws.alg)
        if key is None:
            raise _Refused("the token's signing key is unknown")
        if not verify_signature(jws, key):
            raise _Refused("the token's signature is invalid")
        try:
            check_claims(
                jws.claims, audiences=config.audiences, now=self._clock(), leeway=self._leeway
            )
            identity = identity_from_claims(jws.claims, self._rules)
            return identity, _number(jws.claims, "nbf"), _number(jws.claims, "iat")
        except ClaimError as exc:
            raise _Refused(f"the token's claims are invalid: {exc}") from None

    def _challenge(self, error: str | None = None, description: str | None = None) -> str:
        return bearer_challenge(realm=self._realm, error=error, description=description)


def check_claims(
    claims: Mapping[str, Any], *, audiences: frozenset[str], now: float, leeway: float
) -> None:
    """Check the registered claims of a token whose signature is valid (RFC 7519 §4.1);
    raise :class:`ClaimError` naming the first failure."""
    exp = _number(claims, "exp", required=True)
    if exp is not None and now >= exp + leeway:
        raise ClaimError("the token has expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise ClaimError("the token is not valid yet")
    iat = _number(claims, "iat")
    if iat is not None and now + leeway < iat:
        raise ClaimError("the token was issued in the future")
    aud = claims.get("aud")
    named = [aud] if isinstance(aud, str) else aud
    if not isinstance(named, list) or not all(isinstance(a, str) for a in named):
        raise ClaimError("aud: expected a string or a list of strings")
    if audiences.isdisjoint(named):
        raise ClaimError("the token is not meant for this server (aud)")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise ClaimError("sub: expected a non-empty string")


def bearer_challenge(
    *, realm: str | None = None, error: str | None = None, description: str | None = None
) -> str:
    """A ``WWW-Authenticate`` value for the Bearer scheme (RFC 6750 §3), ASCII only."""
    params = [
        f'{name}="{_UNSAFE_IN_QUOTES.sub("?", value)}"'
        for name, value in (("realm", realm), ("error", error), ("error_description", description))
        if value
    ]
    return "Bearer " + ", ".join(params) if params else "Bearer"


def _number(claims: Mapping[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClaimError(f"{name}: expected a NumericDate")
    try:
        return float(value)
    except OverflowError:
        raise ClaimError(f"{name}: NumericDate out of range") from None
