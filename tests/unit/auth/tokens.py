"""Keys, key sets and token minting shared by the auth tests.

Keys are generated once per test session (RSA generation is slow). ``mint`` signs with our own
:func:`~middleware.auth.jose.sign_compact`; ``mint_with_joserfc`` signs with joserfc's JWT API
so that verification is also checked against an independent signer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from middleware.auth.jose import sign_compact

NOW = 1_800_000_000.0
ISSUER = "https://idp.test/realms/clinic"
OTHER_ISSUER = "https://other-idp.test"
AUDIENCE = "https://gateway.test/fhir"
JWKS_URL = "https://idp.test/realms/clinic/certs"

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
ROTATED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-2"})
ALG_OF = {"rsa-1": "RS256", "ec-1": "ES256", "ed-1": "EdDSA", "ed-2": "EdDSA"}


def public_jwk(key: Key, **extra: Any) -> dict[str, Any]:
    """The public JWK of ``key`` as a JWK Set would publish it."""
    data = dict(key.as_dict(private=False))
    data.update({"use": "sig", "alg": ALG_OF[str(key.kid)]})
    data.update(extra)
    return data


def jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [public_jwk(key) for key in keys]}


JWKS = jwks(RSA, EC, ED)


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid claims set for ISSUER/AUDIENCE at NOW; ``None`` values remove a claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": AUDIENCE,
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "exp": int(NOW) + 300,
        "jti": "token-1",
        "client_id": "app-1",
        "scope": "launch/patient openid fhirUser patient/Observation.rs",
        "patient": "123",
        "fhirUser": f"{AUDIENCE}/Practitioner/9",  # under the gateway's own FHIR base
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Key = ED, *, header: dict[str, Any] | None = None, **overrides: Any) -> str:
    """A token signed by ``key`` with its algorithm and kid (header entries overridable)."""
    head = {"alg": ALG_OF[str(key.kid)], "typ": "at+jwt", "kid": key.kid}
    head.update(header or {})
    return sign_compact({k: v for k, v in head.items() if v is not None}, claims(**overrides), key)


def mint_with_joserfc(key: Key, **overrides: Any) -> str:
    """A token signed by joserfc's own JWT API (RS256 and ES256 only: its EdDSA warns)."""
    alg = ALG_OF[str(key.kid)]
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims(**overrides), key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], body: dict[str, Any], signature: bytes = b"") -> str:
    """A token with arbitrary header and signature bytes (for attacks)."""
    head = b64(json.dumps(header).encode())
    payload = b64(json.dumps(body).encode())
    return f"{head}.{payload}.{b64(signature)}"


def hs256_with_public_key(key: RSAKey) -> str:
    """The classic confusion attack: HS256, keyed with the RSA public key's PEM (RFC 8725 §2.1)."""
    secret = key.as_pem(private=False)
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    head = b64(json.dumps(header).encode())
    payload = b64(json.dumps(claims()).encode())
    mac = hmac.new(secret, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{b64(mac)}"
