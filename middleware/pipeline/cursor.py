"""Opaque paging cursors: upstream paging links never reach the client (enforcement issue).

An upstream ``Bundle.link`` (``next``, ``previous``, ...) names the upstream server, its paging
state and often the query itself. :func:`rewrite_links` replaces each with a gateway URL
carrying a *cursor*: the upstream link sealed by :func:`middleware.ledger.signing.seal`
(XSalsa20-Poly1305, so the client can neither read nor change it) together with an expiry and a
*binding* to who asked and why:

    plaintext = version (1 byte) || expires_at (8 bytes, big-endian seconds) || binding (32)
                || upstream link (UTF-8)
    binding   = SHA-256("consentry/cursor/v1" 0x00 || principal || purposes || query digest)
                (each field length-prefixed; purposes sorted and deduplicated)
    token     = base64url(sealed), no padding (RFC 4648 §5)

:meth:`CursorCodec.redeem` gives the link back only to the same principal, for the same
purposes of use and the same client query (:func:`query_digest`), before the expiry, under a
current or previous key. Every refusal raises the same :class:`~middleware.errors.BadRequest`
(400, ``invalid``) with the same text, "invalid or expired cursor": a 400 tells the client to
start the search again, and one answer for every cause reveals nothing about which check failed.

A redeemed cursor is only a *place* in a search: the pipeline checks the page request again
(identity, consent, search guards) and filters the page as it filtered the first one. The link
is returned exactly as it was issued; the caller checks it lies on the upstream base before
following it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from middleware.errors import BadRequest, SettingsError
from middleware.ledger.signing import BOX_KEY_SIZE, seal, unseal

__all__ = [
    "CURSOR_PARAM",
    "PAGING_RELATIONS",
    "CursorCodec",
    "query_digest",
    "rewrite_links",
    "split_cursor",
]

#: The query parameter of a gateway paging URL that carries the cursor.
CURSOR_PARAM: Final = "_cursor"
#: ``Bundle.link.relation`` values replaced by cursors (FHIR R4 http.html#paging; IANA link
#: relations, compared case-insensitively per RFC 8288 §2.1.1). Any other relation is dropped.
PAGING_RELATIONS: Final = frozenset({"first", "previous", "prev", "next", "last"})

_VERSION: Final = 1
_BINDING_DOMAIN: Final = b"consentry/cursor/v1\x00"
_QUERY_DOMAIN: Final = b"consentry/query/v1\x00"
_HEADER: Final = 1 + 8 + 32
_MAX_TOKEN_CHARS: Final = 8192
_TOKEN_CHARS: Final = re.compile(r"[A-Za-z0-9_-]+")
_REFUSED: Final = "invalid or expired cursor"
_MAX_DEPTH: Final = 16


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def query_digest(resource_type: str | None, params: Sequence[tuple[str, str]]) -> bytes:
    """SHA-256 of a canonical form of a client's search: the resource type (``None`` for a
    system search) and its decoded ``(name, value)`` pairs sorted, duplicates kept.

    Pass the client's own parameters, never the upstream's; on a page request, pass them
    without :data:`CURSOR_PARAM` (see :func:`split_cursor`). Two queries that differ only in
    parameter order have the same digest; any other difference gives another.
    """
    parts = [_QUERY_DOMAIN, _field((resource_type or "").encode("utf-8"))]
    pairs = sorted(params)
    parts.append(len(pairs).to_bytes(4, "big"))
    for name, value in pairs:
        parts += [_field(name.encode("utf-8")), _field(value.encode("utf-8"))]
    return hashlib.sha256(b"".join(parts)).digest()


def split_cursor(params: Sequence[tuple[str, str]]) -> tuple[str | None, list[tuple[str, str]]]:
    """The cursor of a page request (``None`` if it has none) and the other parameters, in
    order. More than one cursor is refused like any bad cursor."""
    tokens = [value for name, value in params if name == CURSOR_PARAM]
    if len(tokens) > 1:
        raise BadRequest(_REFUSED)
    rest = [(name, value) for name, value in params if name != CURSOR_PARAM]
    return (tokens[0] if tokens else None), rest


def _binding(principal: str, purpose: tuple[str, ...], digest: bytes) -> bytes:
    purposes = sorted(set(purpose))
    parts = [_BINDING_DOMAIN, _field(principal.encode("utf-8")), len(purposes).to_bytes(4, "big")]
    parts += [_field(p.encode("utf-8")) for p in purposes]
    parts.append(_field(digest))
    return hashlib.sha256(b"".join(parts)).digest()


class CursorCodec:
    """Issues and redeems cursors under ``key``; ``previous_keys`` are still accepted by
    :meth:`redeem` (key rotation: add the new key as ``key``, keep the old one as a previous
    key for at least ``ttl_seconds``, then drop it). Keys are 32-byte secret-box keys
    (:func:`middleware.ledger.signing.new_box_key`); a bad key or ttl raises
    :class:`SettingsError`. Keys are secret and never shown in ``repr``."""

    __slots__ = ("_keys", "ttl_seconds")

    def __init__(
        self, key: bytes, ttl_seconds: int, *, previous_keys: Sequence[bytes] = ()
    ) -> None:
        keys = (key, *previous_keys)
        if any(not isinstance(k, bytes) or len(k) != BOX_KEY_SIZE for k in keys):
            raise SettingsError(f"a cursor key is {BOX_KEY_SIZE} bytes")
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
            raise SettingsError("the cursor lifetime is a positive number of seconds")
        self._keys = keys
        self.ttl_seconds = ttl_seconds

    def __repr__(self) -> str:
        return f"CursorCodec(keys={len(self._keys)}, ttl_seconds={self.ttl_seconds})"

    def issue(
        self,
        upstream_link: str,
        *,
        principal: str,
        purpose: tuple[str, ...],
        query_digest: bytes,
        now: float,
    ) -> str:
        """A token for ``upstream_link`` that :meth:`redeem` accepts with the same binding
        until ``now + ttl_seconds`` (seconds since the epoch, from the injected clock)."""
        expires_at = math.floor(now) + self.ttl_seconds
        plaintext = b"".join(
            [
                bytes([_VERSION]),
                expires_at.to_bytes(8, "big"),
                _binding(principal, purpose, query_digest),
                upstream_link.encode("utf-8"),
            ]
        )
        sealed = seal(self._keys[0], plaintext)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def redeem(
        self,
        token: str,
        *,
        principal: str,
        purpose: tuple[str, ...],
        query_digest: bytes,
        now: float,
    ) -> str:
        """The upstream link ``token`` was issued for. Raises :class:`BadRequest` ("invalid or
        expired cursor", the same for every cause) when the token is not one of ours or was
        changed in any character, or was issued for another principal, purpose or query, or
        has expired (``now`` at or after its expiry)."""
        plaintext = self._open(token)
        if plaintext is None or len(plaintext) < _HEADER or plaintext[0] != _VERSION:
            raise BadRequest(_REFUSED)
        expires_at = int.from_bytes(plaintext[1:9], "big")
        expected = _binding(principal, purpose, query_digest)
        if not hmac.compare_digest(plaintext[9:_HEADER], expected) or now >= expires_at:
            raise BadRequest(_REFUSED)
        try:
            return plaintext[_HEADER:].decode("utf-8")
        except UnicodeDecodeError:  # sealed by us, so unreachable short of a bug
            raise BadRequest(_REFUSED) from None

    def _open(self, token: str) -> bytes | None:
        if (
            not isinstance(token, str)
            or len(token) > _MAX_TOKEN_CHARS
            or not _TOKEN_CHARS.fullmatch(token)
        ):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        # Only the canonical spelling: unused trailing bits must not give a second token.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return None
        for key in self._keys:
            plaintext = unseal(key, raw)
            if plaintext is not None:
                return plaintext
        return None


def rewrite_links(
    bundle: dict[str, Any],
    make_cursor_url: Callable[[str], str],
    *,
    self_url: str | None,
) -> None:
    """Replace the upstream paging links of ``bundle`` (decoded JSON, changed in place).

    Each link whose relation is in :data:`PAGING_RELATIONS` becomes ``{"relation", "url":
    make_cursor_url(upstream url)}`` (its ``id`` and extensions are dropped); the ``self`` link
    becomes ``self_url``, the client's own request URL given by the caller, or is dropped when
    it is ``None``; every other link, and any malformed one, is dropped. Bundles nested in
    entries (a search inside a batch answer) lose all their links: paging is offered only for
    the answer's own Bundle. Run this on the upstream answer before base-URL rewriting, so the
    cursor holds the upstream URL.
    """
    kept: list[dict[str, Any]] = []
    links = bundle.get("link")
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, dict):
            continue
        relation, url = link.get("relation"), link.get("url")
        if (
            isinstance(relation, str)
            and relation.lower() in PAGING_RELATIONS
            and isinstance(url, str)
            and url
        ):
            kept.append({"relation": relation, "url": make_cursor_url(url)})
    if self_url is not None:
        kept.insert(0, {"relation": "self", "url": self_url})
    if kept:
        bundle["link"] = kept
    else:
        bundle.pop("link", None)
    _drop_nested_links(bundle, 0)


def _drop_nested_links(bundle: dict[str, Any], depth: int) -> None:
    entries = bundle.get("entry")
    if depth >= _MAX_DEPTH or not isinstance(entries, list):
        return
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
            resource.pop("link", None)
            _drop_nested_links(resource, depth + 1)
