"""JWS compact serialization, strictly: parse, verify and sign with three algorithms only.

The one module that drives joserfc's algorithm models (RFC 7515 §7.1 compact form, RFC 7518
§3.3 RS256 and §3.4 ES256, RFC 8037 §3.1 EdDSA). We parse the compact form ourselves so that
every rule is ours and visible here:

* exactly three base64url segments in canonical, unpadded form (RFC 7515 §2, §C): a
  segment that decodes to the same bytes as another spelling is refused, so no signature or
  payload has two spellings;
* header and payload are JSON objects with no duplicate member names (RFC 7515 §5.2,
  RFC 7519 §7.2 step 4), UTF-8 only;
* ``alg`` is one of :data:`ALGORITHMS`; ``none`` and every HMAC ``HS*`` fail here, before any
  key is looked up, so "HS256 keyed with the RSA public key" can never be tried (RFC 8725
  §2.1, §3.1);
* ``crit`` and ``b64`` (RFC 7515 §4.1.11, RFC 7797) are refused: we implement no extension;
  ``jku``, ``jwk``, ``x5u`` and ``x5c`` are ignored: keys come from configuration only.

EdDSA is pinned to Ed25519 (RFC 8037 §3.1 also names Ed448). RFC 9864 deprecates the
polymorphic ``EdDSA`` name because it leaves the curve open, and joserfc's model warns about
that; our own small model closes it (it is exactly RFC 9864's ``Ed25519``), so nothing warns.
Third-party errors are translated here into :class:`JoseError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import joserfc.errors
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc.jwa import ESAlgorithm, JWSAlgModel, RSAAlgorithm
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from middleware.fhir.limits import depth

__all__ = [
    "ALGORITHMS",
    "CompactJws",
    "JoseError",
    "MAX_TOKEN_JSON_DEPTH",
    "MAX_TOKEN_LENGTH",
    "b64url_decode",
    "b64url_encode",
    "key_fits",
    "parse_compact",
    "sign_compact",
    "verify_signature",
]

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*")
#: Bytes we read before giving up on a token (a header is tiny; claims are a few KiB).
MAX_TOKEN_LENGTH: Final = 16 * 1024
#: Deepest JSON a token's header or claims may nest: claims are shallow (SMART's
#: ``fhirContext`` and RFC 9396 ``authorization_details`` stay under 6); measured before
#: decoding, since the payload is read before the signature is checked.
MAX_TOKEN_JSON_DEPTH: Final = 32
_REFUSED_HEADERS: Final = frozenset({"crit", "b64"})
#: RFC 8725 §3.11 explicit typing: an access token is typed as such, as a JWT, or not at all.
_ACCEPTED_TYP: Final = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})


class JoseError(ValueError):
    """The token is not an acceptable JWS; the message is safe to show (no token content)."""


class _Ed25519(JWSAlgModel):
    """RFC 8037 §3.1 "EdDSA", restricted to the Ed25519 curve (see the module docstring)."""

    name = "EdDSA"
    description = "EdDSA over Ed25519 (RFC 8037)"
    key_type = "OKP"

    def check_key(self, key: OKPKey) -> None:
        super().check_key(key)
        if key.curve_name != "Ed25519":
            raise joserfc.errors.InvalidKeyCurveError("EdDSA here means Ed25519 only")

    def sign(self, msg: bytes, key: OKPKey) -> bytes:
        private = key.get_op_key("sign")
        if not isinstance(private, Ed25519PrivateKey):
            raise joserfc.errors.InvalidKeyTypeError("EdDSA here means Ed25519 only")
        return private.sign(msg)

    def verify(self, msg: bytes, sig: bytes, key: OKPKey) -> bool:
        public = key.get_op_key("verify")
        if not isinstance(public, Ed25519PublicKey):
            return False
        try:
            public.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


_MODELS: Final[Mapping[str, JWSAlgModel]] = {
    "RS256": RSAAlgorithm(256),
    "ES256": ESAlgorithm("ES256", "P-256", 256),
    "EdDSA": _Ed25519(),
}
#: The only JWS algorithms the gateway accepts (the issue's RS256, ES256, EdDSA).
ALGORITHMS: Final = frozenset(_MODELS)


@dataclass(frozen=True, slots=True)
class CompactJws:
    """A parsed, *unverified* JWS: protected header, claims, and the exact signed bytes."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header["alg"])

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) and kid else None


def parse_compact(token: str) -> CompactJws:
    """Parse a JWS compact serialization whose payload is a JSON claims set; raise
    :class:`JoseError` for any deviation listed in the module docstring."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise JoseError("the token is too long")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("not a JWS in compact serialization")
    raw_header, raw_claims, signature = (b64url_decode(part) for part in parts)
    header = _json_object(raw_header, "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise JoseError("the token's algorithm is not allowed")
    if _REFUSED_HEADERS & header.keys():
        raise JoseError("the token uses a JWS extension we do not implement")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
        raise JoseError("the token is not typed as a JWT access token")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JoseError("the token's key id is not a string")
    claims = _json_object(raw_claims, "payload")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    return CompactJws(header, claims, signing_input, signature)


def key_fits(alg: str, key: Key) -> bool:
    """True when ``key`` may verify ``alg``: RS256 needs RSA, ES256 EC P-256, EdDSA OKP
    Ed25519, and a key's own ``use``/``alg``, when present, must agree (RFC 7517 §4.2, §4.4)."""
    model = _MODELS.get(alg)
    if model is None or not isinstance(key, RSAKey | ECKey | OKPKey):
        return False
    try:
        model.check_key(key)
    except (joserfc.errors.JoseError, ValueError):
        return False
    return True


def verify_signature(jws: CompactJws, key: Key) -> bool:
    """True when ``jws``'s signature is valid for ``key`` under ``jws.alg``."""
    if not key_fits(jws.alg, key):
        return False
    try:
        return bool(_MODELS[jws.alg].verify(jws.signing_input, jws.signature, key))
    except (joserfc.errors.JoseError, ValueError):
        return False


def sign_compact(header: Mapping[str, Any], claims: Mapping[str, Any] | bytes, key: Key) -> str:
    """Sign ``claims`` (a JSON object, or raw payload bytes) with ``key`` under
    ``header["alg"]``; return the compact serialization."""
    alg = header.get("alg")
    if not isinstance(alg, str) or not key_fits(alg, key) or not key.is_private:
        raise JoseError("the key cannot sign with this algorithm")
    payload = claims if isinstance(claims, bytes) else _json_bytes(claims)
    signing_input = f"{b64url_encode(_json_bytes(header))}.{b64url_encode(payload)}"
    signature = _MODELS[alg].sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{b64url_encode(signature)}"


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode canonical unpadded base64url; anything else raises :class:`JoseError`."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise JoseError("not a JWS in compact serialization")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JoseError("not a JWS in compact serialization") from exc
    if b64url_encode(data) != segment:  # non-zero trailing bits: a second spelling
        raise JoseError("not a JWS in compact serialization")
    return data


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    if depth(data, MAX_TOKEN_JSON_DEPTH) > MAX_TOKEN_JSON_DEPTH:
        raise JoseError(f"the token's {what} nests too deep")
    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JoseError(f"the token's {what} is not a JSON object") from exc
    if not isinstance(value, dict):
        raise JoseError(f"the token's {what} is not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member name")
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 §6)")


def _json_bytes(value: Mapping[str, Any] | Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
