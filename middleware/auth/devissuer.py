"""A local token issuer for tests and demos: permissive by nature, so off unless asked for.

:class:`UnsafeDevelopmentIssuer` mints SMART access tokens (RFC 9068 ``at+jwt``) signed with an
Ed25519 (``EdDSA``) or P-256 (``ES256``) key and publishes the public half as a JWK Set, so a
:class:`~middleware.auth.verify.TokenVerifier` can trust it like any other issuer. Anyone who can
run it can claim to be anyone: it refuses to exist unless ``enabled=True`` is passed, and it logs
a warning each time it is constructed (STYLE habit 6: name the unsafe, warn when used).

Keys live in a file as a private JWK (RFC 7517), created with mode 0600 when missing.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import joserfc.errors
from joserfc.jwk import ECKey, Key, OKPKey, import_key

from middleware.auth.identity import V3_ACT_REASON
from middleware.auth.jose import key_fits, sign_compact
from middleware.logging import get_logger

__all__ = [
    "DEV_ALGORITHMS",
    "IssuerDisabled",
    "UnsafeDevelopmentIssuer",
    "generate_key",
    "load_or_create_key",
]

#: The algorithms the development issuer signs with.
DEV_ALGORITHMS: Final = ("EdDSA", "ES256")
_ALG_OF: Final = {"OKP": "EdDSA", "EC": "ES256"}


class IssuerDisabled(RuntimeError):
    """The development issuer was not explicitly enabled."""


def generate_key(algorithm: str = "EdDSA") -> Key:
    """A fresh private signing key for ``algorithm``, its ``kid`` the RFC 7638 thumbprint."""
    if algorithm == "EdDSA":
        return OKPKey.generate_key("Ed25519", private=True, auto_kid=True)
    if algorithm == "ES256":
        return ECKey.generate_key("P-256", private=True, auto_kid=True)
    raise ValueError(f"the development issuer signs with {' or '.join(DEV_ALGORITHMS)}")


def load_or_create_key(path: Path, algorithm: str = "EdDSA") -> Key:
    """The private JWK stored at ``path``; when there is none, a new ``algorithm`` key is
    generated and written there (mode 0600, never overwriting). Raises ``ValueError``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        key = generate_key(algorithm)
        text = json.dumps(key.as_dict(private=True), indent=2) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return key
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the development key file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kty") not in _ALG_OF:
        raise ValueError(f"{path}: expected a private OKP (Ed25519) or EC (P-256) JWK")
    try:
        key = import_key(data, data["kty"])
    except (joserfc.errors.JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: not a valid private JWK") from exc
    key.ensure_kid()
    return key


class UnsafeDevelopmentIssuer:
    """Mints tokens as ``issuer`` with ``key`` (generated when None). Raises
    :class:`IssuerDisabled` unless ``enabled is True``; ``clock`` is seconds since the epoch."""

    def __init__(
        self,
        issuer: str,
        *,
        enabled: bool = False,
        key: Key | None = None,
        algorithm: str = "EdDSA",
        purpose_claim: str = "purpose_of_use",
        roles_claim: str = "roles",
        organization_claim: str = "organization",
        clock: Callable[[], float] = time.time,
    ) -> None:
        _require_enabled(enabled)
        key = key if key is not None else generate_key(algorithm)
        alg = _ALG_OF.get(key.key_type, "")
        if not key.is_private or not key_fits(alg, key):
            raise ValueError("the development key must be a private Ed25519 or P-256 key")
        key.ensure_kid()
        self.issuer = issuer
        self.algorithm = alg
        self._key = key
        self._purpose_claim = purpose_claim
        self._roles_claim = roles_claim
        self._organization_claim = organization_claim
        self._clock = clock
        get_logger("consentry.auth").warning(
            "development token issuer enabled",
            reason="anyone with this issuer's key can mint tokens; never use it in production",
        )

    @classmethod
    def from_key_file(
        cls, path: Path, issuer: str, *, enabled: bool = False, algorithm: str = "EdDSA"
    ) -> UnsafeDevelopmentIssuer:
        """An issuer whose key is kept in ``path`` (see :func:`load_or_create_key`); the file
        is not touched unless ``enabled is True``."""
        _require_enabled(enabled)
        return cls(issuer, enabled=enabled, key=load_or_create_key(path, algorithm))

    @property
    def kid(self) -> str:
        return str(self._key.kid)

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set to serve (and to give the verifier); no private members."""
        public = dict(self._key.as_dict(private=False))
        public.update({"use": "sig", "alg": self.algorithm, "kid": self.kid})
        return {"keys": [public]}

    def issue(
        self,
        sub: str,
        *,
        scopes: str | Iterable[str],
        audience: str | Iterable[str],
        patient: str | None = None,
        fhir_user: str | None = None,
        purpose_of_use: Iterable[str | tuple[str, str]] = (),
        roles: Iterable[str] = (),
        ttl: int = 3600,
        client_id: str = "consentry-dev",
        organization: str | None = None,
    ) -> str:
        """A signed access token for ``sub``. ``purpose_of_use`` items are codes (v3
        ActReason), ``system|code`` strings or ``(system, code)`` pairs; ``organization`` goes
        in the organization claim."""
        if not sub or ttl <= 0:
            raise ValueError("a token needs a subject and a positive ttl")
        now = int(self._clock())
        scope = scopes if isinstance(scopes, str) else " ".join(scopes)
        aud = audience if isinstance(audience, str) else list(audience)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
            "client_id": client_id,
            "scope": scope,
        }
        if patient is not None:
            claims["patient"] = patient
        if fhir_user is not None:
            claims["fhirUser"] = fhir_user
        purposes = [_coding(p) for p in purpose_of_use]
        if purposes:
            claims[self._purpose_claim] = purposes
        role_list = sorted(set(roles))
        if role_list:
            claims[self._roles_claim] = role_list
        if organization is not None:
            claims[self._organization_claim] = organization
        header = {"alg": self.algorithm, "typ": "at+jwt", "kid": self.kid}
        return sign_compact(header, claims, self._key)


def _require_enabled(enabled: bool) -> None:
    if enabled is not True:
        raise IssuerDisabled(
            "the development token issuer is off; pass enabled=True (development only)"
        )


def _coding(value: str | tuple[str, str]) -> dict[str, str]:
    if isinstance(value, tuple):
        system, code = value
    elif "|" in value:
        system, _, code = value.rpartition("|")
    else:
        system, code = V3_ACT_REASON, value
    if not system or not code:
        raise ValueError("a purpose of use is a code, system|code or (system, code)")
    return {"system": system, "code": code}
