"""Authentication settings: trusted issuers, claim names, and the development issuer switch.

:meth:`AuthSettings.from_mapping` validates a mapping (the ``[auth]`` table of the TOML file)
once, at start, and raises one :class:`~middleware.errors.SettingsError` naming every problem,
like :func:`middleware.settings.load_settings`. Example::

    [auth]
    audiences = ["https://gateway.example/fhir"]
    purpose_claim = "extensions.ihe_iua.purpose_of_use"
    roles_claim = "realm_access.roles"
    organization_claim = "organization"
    break_glass_scope = "consentry/break-glass"

    [[auth.issuers]]
    issuer = "https://idp.example/realms/clinic"
    jwks_url = "https://idp.example/realms/clinic/protocol/openid-connect/certs"
    algorithms = ["RS256"]
    authorization_endpoint = "https://idp.example/realms/clinic/protocol/openid-connect/auth"
    token_endpoint = "https://idp.example/realms/clinic/protocol/openid-connect/token"
    capabilities = ["launch-standalone", "client-public", "context-standalone-patient"]

An issuer without ``audiences`` uses the top-level ``audiences`` (normally the gateway's own
FHIR base URL). ``dev_issuer_enabled`` turns on :class:`UnsafeDevelopmentIssuer`; it is off by
default and must be switched on by name.

An issuer's ``authorization_endpoint``, ``token_endpoint``, ``grant_types``, ``capabilities``
and ``scopes_supported`` are what the gateway advertises to SMART clients about it
(:mod:`middleware.auth.smart`): they change no verification. A ``token_endpoint`` is needed
for an ``authorization_endpoint``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from middleware.auth.devissuer import DEV_ALGORITHMS
from middleware.auth.identity import V3_ACT_REASON, IdentityRules
from middleware.auth.jose import ALGORITHMS
from middleware.errors import SettingsError

__all__ = ["STANDARD_CLAIMS", "AuthSettings", "IssuerSettings"]

_MAX_LEEWAY: Final = 300.0
#: Claims the gateway reads as what they are (RFC 7519 §4.1, SMART on FHIR, RFC 8693 ``azp``,
#: the issuer's ``jti``, ``scope``, ``client_id``): ``purpose_claim``, ``roles_claim``,
#: ``organization_claim`` and ``membership_claim`` may not name one, or a caller's subject,
#: say, would be read as their organization.
STANDARD_CLAIMS: Final = frozenset(
    {
        "iss", "sub", "aud", "exp", "nbf", "iat", "jti",
        "scope", "client_id", "azp", "patient", "fhirUser",
    }
)  # fmt: skip
_ISSUER_KEYS: Final = frozenset(
    {
        "issuer",
        "jwks_file",
        "jwks_url",
        "audiences",
        "algorithms",
        "authorization_endpoint",
        "token_endpoint",
        "grant_types",
        "capabilities",
        "scopes_supported",
    }
)


@dataclass(frozen=True, slots=True)
class IssuerSettings:
    """One trusted issuer: its ``iss`` value, where its JWK Set is (exactly one of a file or
    an http(s) URL), the audiences its tokens must name, the algorithms it may use."""

    issuer: str
    audiences: tuple[str, ...]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = tuple(sorted(ALGORITHMS))
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    grant_types: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    scopes_supported: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Validated authentication settings (see the module docstring)."""

    issuers: tuple[IssuerSettings, ...] = ()
    audiences: tuple[str, ...] = ()
    leeway: float = 30.0
    jwks_ttl: float = 300.0
    jwks_refresh_interval: float = 30.0
    jwks_max_stale: float = 3600.0
    purpose_claim: str = "purpose_of_use"
    purpose_system: str = V3_ACT_REASON
    roles_claim: str = "roles"
    organization_claim: str = "organization"
    membership_claim: str = ""
    break_glass_scope: str = ""
    break_glass_roles: tuple[str, ...] = ()
    dev_issuer_enabled: bool = False
    dev_issuer_url: str = ""
    dev_issuer_key_file: Path | None = None
    dev_issuer_algorithm: str = "EdDSA"
    dev_signin_remote: bool = False
    realm: str = ""
    fhir_user_bases: tuple[str, ...] = ()

    def identity_rules(self, gateway_base: str = "") -> IdentityRules:
        """The claim-reading rules these settings describe; an absolute ``fhirUser`` must be
        under ``gateway_base`` (the gateway's public FHIR base) or one of
        ``fhir_user_bases``."""
        bases = (gateway_base, *self.fhir_user_bases)
        return IdentityRules(
            purpose_claim=self.purpose_claim,
            purpose_system=self.purpose_system,
            roles_claim=self.roles_claim,
            organization_claim=self.organization_claim,
            membership_claim=self.membership_claim,
            break_glass_scopes=frozenset({self.break_glass_scope} - {""}),
            break_glass_roles=frozenset(self.break_glass_roles),
            fhir_user_bases=frozenset(b.rstrip("/") for b in bases if b),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "auth") -> AuthSettings:
        """Validate ``data`` and build :class:`AuthSettings`; raise :class:`SettingsError`
        listing every unknown key and bad value at once."""
        check = _Checker(where)
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                check.problem(key, "unknown setting")
        values: dict[str, Any] = {}
        for name in ("leeway", "jwks_ttl", "jwks_refresh_interval", "jwks_max_stale"):
            if name in data:
                values[name] = check.number(name, data[name])
        for name in ("purpose_claim", "purpose_system", "roles_claim", "organization_claim"):
            if name in data:
                values[name] = check.text(name, data[name], empty=False)
        for name in ("break_glass_scope", "dev_issuer_url", "realm", "membership_claim"):
            if name in data:
                values[name] = check.text(name, data[name], empty=True)
        for name in ("audiences", "break_glass_roles"):
            if name in data:
                values[name] = check.texts(name, data[name])
        if "fhir_user_bases" in data:
            bases = check.texts("fhir_user_bases", data["fhir_user_bases"])
            values["fhir_user_bases"] = tuple(
                check.base("fhir_user_bases", base).rstrip("/") for base in bases
            )
        if "dev_issuer_enabled" in data:
            values["dev_issuer_enabled"] = check.flag(
                "dev_issuer_enabled", data["dev_issuer_enabled"]
            )
        if "dev_signin_remote" in data:
            values["dev_signin_remote"] = check.flag("dev_signin_remote", data["dev_signin_remote"])
        if "dev_issuer_key_file" in data:
            path = check.text("dev_issuer_key_file", data["dev_issuer_key_file"], empty=False)
            values["dev_issuer_key_file"] = Path(path) if path else None
        if "dev_issuer_algorithm" in data:
            values["dev_issuer_algorithm"] = check.text(
                "dev_issuer_algorithm", data["dev_issuer_algorithm"], empty=False
            )
        issuers = data.get("issuers", [])
        if not isinstance(issuers, list):
            check.problem("issuers", "expected an array of tables")
            issuers = []
        defaults = values.get("audiences", ())
        values["issuers"] = tuple(
            found
            for index, item in enumerate(issuers)
            if (found := _issuer(check, f"issuers[{index}]", item, defaults)) is not None
        )
        settings = cls(**values)
        _check_whole(check, settings)
        check.raise_if_any()
        return settings


def _issuer(
    check: _Checker, name: str, item: Any, default_audiences: tuple[str, ...]
) -> IssuerSettings | None:
    if not isinstance(item, Mapping):
        check.problem(name, "expected a table")
        return None
    for key in item:
        if key not in _ISSUER_KEYS:
            check.problem(f"{name}.{key}", "unknown setting")
    issuer = check.url(f"{name}.issuer", item.get("issuer"))
    jwks_url = item.get("jwks_url")
    jwks_file = item.get("jwks_file")
    if (jwks_url is None) == (jwks_file is None):
        check.problem(name, "give exactly one of jwks_file and jwks_url")
    if jwks_url is not None:
        jwks_url = check.url(f"{name}.jwks_url", jwks_url)
    if jwks_file is not None:
        jwks_file = check.text(f"{name}.jwks_file", jwks_file, empty=False)
    audiences = check.texts(f"{name}.audiences", item.get("audiences", list(default_audiences)))
    if not audiences:
        check.problem(f"{name}.audiences", "required (here or as auth.audiences)")
    algorithms = check.texts(f"{name}.algorithms", item.get("algorithms", sorted(ALGORITHMS)))
    if not algorithms or not set(algorithms) <= ALGORITHMS:
        check.problem(f"{name}.algorithms", f"expected a non-empty subset of {sorted(ALGORITHMS)}")
    endpoints = {
        key: check.url(f"{name}.{key}", item[key])
        for key in ("authorization_endpoint", "token_endpoint")
        if key in item
    }
    if "authorization_endpoint" in endpoints and "token_endpoint" not in endpoints:
        check.problem(f"{name}.token_endpoint", "required with an authorization_endpoint")
    advertised = {
        key: check.texts(f"{name}.{key}", item[key])
        for key in ("grant_types", "capabilities", "scopes_supported")
        if key in item
    }
    return IssuerSettings(
        issuer=issuer,
        audiences=audiences,
        jwks_file=Path(jwks_file) if jwks_file else None,
        jwks_url=jwks_url or None,
        algorithms=algorithms,
        authorization_endpoint=endpoints.get("authorization_endpoint") or None,
        token_endpoint=endpoints.get("token_endpoint") or None,
        **advertised,
    )


def _check_whole(check: _Checker, settings: AuthSettings) -> None:
    if not 0 <= settings.leeway <= _MAX_LEEWAY:
        check.problem("leeway", f"expected 0..{_MAX_LEEWAY:g} seconds")
    if settings.jwks_ttl <= 0 or settings.jwks_refresh_interval <= 0:
        check.problem("jwks_ttl", "jwks_ttl and jwks_refresh_interval must be positive")
    if settings.jwks_max_stale < 0:
        check.problem("jwks_max_stale", "must not be negative")
    names = [issuer.issuer for issuer in settings.issuers]
    if settings.dev_issuer_enabled:
        names.append(settings.dev_issuer_url)
        check.url("dev_issuer_url", settings.dev_issuer_url)
        if not settings.audiences:
            check.problem("audiences", "required when the development issuer is enabled")
        if settings.dev_issuer_algorithm not in DEV_ALGORITHMS:
            check.problem("dev_issuer_algorithm", f"expected one of {', '.join(DEV_ALGORITHMS)}")
    for issuer in sorted({n for n in names if n and names.count(n) > 1}):
        check.problem("issuers", f"issuer {issuer!r} is configured more than once")
    claims = {
        "purpose_claim": settings.purpose_claim,
        "roles_claim": settings.roles_claim,
        "organization_claim": settings.organization_claim,
    }
    if settings.membership_claim:  # empty: no claim read
        claims["membership_claim"] = settings.membership_claim
    for name, claim in claims.items():
        if claim in STANDARD_CLAIMS:
            check.problem(name, f"{claim!r} is a standard claim the gateway reads as itself")
        elif list(claims.values()).count(claim) > 1:
            check.problem(name, f"{claim!r} is also another of the configured claims")


class _Checker:
    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[str] = []

    def problem(self, name: str, text: str) -> None:
        self.problems.append(f"{self.where}.{name}: {text}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(self.problems))

    def number(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(name, f"expected a number, got {value!r}")
            return 0.0
        if not math.isfinite(value):
            # TOML has nan and inf: a cache or leeway of either is no bound at all.
            self.problem(name, f"expected a finite number, got {value!r}")
            return 0.0
        return float(value)

    def flag(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.problem(name, f"expected a boolean, got {value!r}")
            return False
        return value

    def text(self, name: str, value: Any, *, empty: bool) -> str:
        if not isinstance(value, str) or (not empty and not value):
            self.problem(name, "expected a non-empty string" if not empty else "expected a string")
            return ""
        return value

    def texts(self, name: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(name, "expected an array of non-empty strings")
            return ()
        return tuple(dict.fromkeys(value))

    def base(self, name: str, value: Any) -> str:
        """An absolute http(s) FHIR base URL: no query, fragment, user information,
        percent-encoding or dot segments."""
        url = self.url(name, value)
        parts = urlsplit(url)
        segments = parts.path.split("/")
        if url and (
            parts.query or "@" in parts.netloc or "%" in url or "." in segments or ".." in segments
        ):
            self.problem(name, f"{url!r}: expected a plain FHIR base URL")
        return url

    def url(self, name: str, value: Any) -> str:
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            self.problem(name, "expected an absolute http(s) URL")
            return ""
        if parts.fragment:
            self.problem(name, "must not have a fragment")
        return str(value)
