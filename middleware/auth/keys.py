"""A JWK Set (RFC 7517 §5) read into the verification keys we accept, and why others were not.

:func:`parse_jwks` is pure: fetching the document is :mod:`middleware.auth.jwks`'s job. A key
is kept only when it can verify one of :data:`~middleware.auth.jose.ALGORITHMS`:

* ``kty`` RSA with a modulus of at least 2048 bits (NIST SP 800-131A; RFC 7518 §3.3),
  EC on P-256, or OKP on Ed25519 (RFC 8037 §2);
* ``use``, when present, is ``sig``; ``key_ops``, when present, includes ``verify``
  (RFC 7517 §4.2, §4.3); ``alg``, when present, is one we accept and fits the key (§4.4);
* it has a ``kid`` (tokens name their key; we never guess) and no private members (a
  published private key is a misconfiguration we refuse to build on).

Every other key is ignored and the reason listed; nothing in a reason is key material.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import joserfc.errors
from joserfc.jwk import Key, import_key

from middleware.auth.jose import ALGORITHMS, JoseError, b64url_decode, key_fits

__all__ = ["MAX_KEYS", "InvalidJwks", "KeyTable", "parse_jwks"]

#: Keys read from one document at most; the rest are ignored (bounds the work per refresh).
MAX_KEYS: Final = 64
_MIN_RSA_BITS: Final = 2048
_CURVES: Final = {"EC": "P-256", "OKP": "Ed25519"}
# RFC 7518 §6.2.2, §6.3.2 and RFC 8037 §2: members only a private key has.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class InvalidJwks(ValueError):
    """The document is not a JWK Set at all (not an object with a ``keys`` array)."""


@dataclass(frozen=True, slots=True)
class KeyTable:
    """Verification keys by ``kid``, and the reasons some keys of the document were ignored."""

    keys: Mapping[str, tuple[Key, ...]] = field(default_factory=lambda: MappingProxyType({}))
    ignored: tuple[str, ...] = ()

    def find(self, kid: str, alg: str) -> Key | None:
        """The one key named ``kid`` that fits ``alg``; None when there is none or several
        (RFC 7517 §4.5 lets kids repeat across key types; within one alg it is ambiguous)."""
        fitting = [key for key in self.keys.get(kid, ()) if key_fits(alg, key)]
        return fitting[0] if len(fitting) == 1 else None


def parse_jwks(document: Any) -> KeyTable:
    """Read a JWK Set; raise :class:`InvalidJwks` only when it is not a JWK Set at all."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise InvalidJwks("not a JWK Set: expected an object with a 'keys' array")
    keys: dict[str, list[Key]] = {}
    ignored: list[str] = []
    for index, data in enumerate(document["keys"]):
        if index >= MAX_KEYS:
            ignored.append(f"keys beyond the first {MAX_KEYS} ignored")
            break
        key, reason = _read_key(data)
        if key is None:
            label = data.get("kid") if isinstance(data, Mapping) else None
            name = f"key {index}" + (f" (kid {label!r})" if isinstance(label, str) else "")
            ignored.append(f"{name}: {reason}")
        else:
            keys.setdefault(str(key.kid), []).append(key)
    frozen = {kid: tuple(found) for kid, found in keys.items()}
    return KeyTable(MappingProxyType(frozen), tuple(ignored))


def _read_key(data: Any) -> tuple[Key | None, str]:
    if not isinstance(data, Mapping):
        return None, "not a JSON object"
    kty = data.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        return None, "key type is not RSA, EC or OKP"
    if "use" in data and data["use"] != "sig":
        return None, "use is not 'sig'"
    ops = data.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None, "key_ops does not include 'verify'"
    if "alg" in data and data["alg"] not in ALGORITHMS:
        return None, "alg is not RS256, ES256 or EdDSA"
    if not isinstance(data.get("kid"), str) or not data["kid"]:
        return None, "no kid"
    if _PRIVATE_MEMBERS & data.keys():
        return None, "holds private key members"
    if kty in _CURVES and data.get("crv") != _CURVES[kty]:
        return None, f"{kty} keys must be on {_CURVES[kty]}"
    if kty == "RSA" and _modulus_bits(data.get("n")) < _MIN_RSA_BITS:
        # Checked before import: joserfc would only warn about a short modulus.
        return None, f"RSA modulus shorter than {_MIN_RSA_BITS} bits"
    try:
        key = import_key(dict(data), kty)
    except (joserfc.errors.JoseError, ValueError, TypeError, KeyError):
        return None, "not a valid JWK"
    if not any(key_fits(alg, key) for alg in ALGORITHMS):
        return None, "alg does not fit the key"
    return key, ""


def _modulus_bits(n: Any) -> int:
    if not isinstance(n, str):
        return 0
    try:
        return int.from_bytes(b64url_decode(n), "big").bit_length()
    except JoseError:
        return 0
