"""Resource ids across upstreams: the ids clients see instead of each upstream's own.

An :class:`IdResolver` turns an upstream's ``(upstream, resource type, local id)`` into the id a
client sees, and a client's id back. Its contract, for every implementation:

- :meth:`~IdResolver.to_client` is a function: the same input gives the same client id (clients
  compare and cache ids), different inputs give different ids, and every answer is a valid
  FHIR id (R4 datatypes.html#id: ``[A-Za-z0-9\\-.]{1,64}``). An id the resolver cannot carry
  raises :class:`UntranslatableId` (422) naming the bound, never echoing the id.
- :meth:`~IdResolver.to_upstream` inverts it exactly, for the same resource type. Any client id
  the resolver did not issue for that type (made up, changed in one character, issued under
  another key, issued for another type) raises :class:`~middleware.errors.NotFound` with the
  text "not found": the same answer for every cause, so a refusal tells the client nothing.

:class:`OpaqueResolver` is the default: stateless, reversible and opaque. A client id is the
deterministic authenticated encryption (:func:`~middleware.ledger.signing.siv_encrypt`,
AES-SIV of RFC 5297 with a 128-bit synthetic IV) of the packed local id, with the format
version, the resource type and the upstream's name as associated data::

    plaintext = packed local id, 17 or 32 bytes (below)
    sealed    = tag (16) || ciphertext            33 or 48 bytes
    client id = base64 of sealed, alphabet A-Z a-z 0-9 - .  (RFC 4648 §4 with '+/' as '-.')
                44 or 64 characters, no padding (33 and 48 are multiples of 3)

The local id is packed six bits per character (a FHIR id's 64 characters are exactly the
alphabet above): a header sextet holding its length ``n``, then ``n`` sextets, zero-padded to
17 bytes when ``n <= 21`` and to 32 bytes when ``n <= 41``. A lowercase UUID (the common
server id) is header ``0`` and its 128 bits: 17 bytes. So a client id is **44 characters** for a
UUID or a local id of at most 21 characters, **64 characters** for one of 22 to 41, and a local
id of 42 or more characters (FHIR allows 64) cannot be carried: :class:`UntranslatableId`
(422); use a table resolver (:mod:`middleware.mapping.ids_table`) for such an upstream. The
length is all a client id reveals (besides equality): whether the local id is longer than 21
characters.

The upstream is not written in the plaintext: it is bound as associated data and found on the
way back by trying each configured upstream (a few AES-SIV computations). Reordering, adding or
removing upstreams therefore never changes an id nor sends one to the wrong upstream, and
renaming an upstream makes its old ids "not found". The key is
``derive_box_key(ledger key, "ids")`` (:func:`~middleware.ledger.signing.derive_box_key`): every
replica sharing the ledger key issues the same ids; a new ledger key changes every id.

The SIV changed once before any deployment, from keyed BLAKE2b with XChaCha20 to AES-SIV
(``cryptography``; about twice as fast, measured in docs/performance.md): every id changed with
it, and ids of the earlier construction are "not found" like any other id this code did not
issue.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final, Protocol

from middleware.errors import NotFound, UnprocessableEntity
from middleware.ledger.signing import BOX_KEY_SIZE, siv_decrypt, siv_encrypt

__all__ = [
    "CLIENT_ID_LENGTHS",
    "FHIR_ID",
    "MAX_LOCAL_ID",
    "RESOURCE_TYPE",
    "IdResolver",
    "OpaqueResolver",
    "UntranslatableId",
    "not_ours",
]

#: The FHIR ``id`` datatype (R4 datatypes.html#id).
FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
#: A resource type name as it may appear in a reference (R4 or R5, checked by shape only).
RESOURCE_TYPE: Final = re.compile(r"[A-Z][A-Za-z]{0,63}")
#: The longest local id :class:`OpaqueResolver` carries (a lowercase UUID always fits).
MAX_LOCAL_ID: Final = 41
#: The lengths of every client id :class:`OpaqueResolver` issues.
CLIENT_ID_LENGTHS: Final = (44, 64)

_VERSION: Final = b"consentry/ids/v1"
_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."
_TO_ID: Final = bytes.maketrans(b"+/", b"-.")
_FROM_ID: Final = bytes.maketrans(b"-.", b"+/")
_SHORT: Final = 17  # plaintext bytes: header sextet + 128 bits, or + 21 sextets (136 bits)
_LONG: Final = 32  # header sextet + 41 sextets (256 bits)
_SHORT_CHARS: Final = 21
_SHORT_B64: Final = 24  # base64 characters whose decoding covers _SHORT bytes (18 bytes)
_LONG_B64: Final = 44  # ... and _LONG bytes (33 bytes)
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NOT_FOUND: Final = "not found"


class IdResolver(Protocol):
    """Maps upstream ids to client ids and back (see the module docstring for the contract)."""

    def to_client(self, upstream: str, resource_type: str, local_id: str) -> str:
        """The client id of ``resource_type/local_id`` on ``upstream``; raises
        :class:`UntranslatableId` (422) for an id the resolver cannot carry."""
        ...

    def to_upstream(self, resource_type: str, client_id: str) -> tuple[str, str]:
        """``(upstream, local id)`` of a client id of ``resource_type``; raises
        :class:`~middleware.errors.NotFound` ("not found") for any id it did not issue."""
        ...


class UntranslatableId(UnprocessableEntity):
    """An upstream id has no client id (too long for the opaque format, not a FHIR id, or not
    in an exhaustive table). 422: the answer cannot be given faithfully. The message names the
    upstream, the type and the reason, never the id."""


def not_ours() -> NotFound:
    """The one refusal of :meth:`IdResolver.to_upstream`, whatever the cause."""
    return NotFound(_NOT_FOUND)


#: Issued client ids remembered by :class:`OpaqueResolver` (least recently issued forgotten).
_ISSUED_CACHE = 65_536


class OpaqueResolver:
    """The stateless default :class:`IdResolver` (format in the module docstring).

    ``key`` is 32 bytes (``derive_box_key(ledger key, "ids")``); ``upstreams`` are the names
    of every upstream whose ids it issues. Both are checked here; a bad one raises ValueError.
    """

    __slots__ = ("_associated", "_issued", "_key", "_upstreams")

    def __init__(self, key: bytes, upstreams: Iterable[str]) -> None:
        if not isinstance(key, bytes) or len(key) != BOX_KEY_SIZE:
            raise ValueError(f"the id key is {BOX_KEY_SIZE} bytes")
        self._key = key
        self._upstreams = tuple(dict.fromkeys(upstreams))
        if not self._upstreams or not all(isinstance(u, str) and u for u in self._upstreams):
            raise ValueError("the opaque id resolver needs the names of its upstreams")
        # Ids are deterministic, so issued ones can be remembered: an answer names the same
        # resource several times (id, fullUrl, references), a searchset the same patient in
        # every entry. Bounded; forgetting only costs recomputing.
        self._issued: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        #: The associated data of the (upstream, type) pairs already checked.
        self._associated: dict[tuple[str, str], tuple[bytes, bytes, bytes]] = {}

    def __repr__(self) -> str:
        return f"OpaqueResolver(upstreams={self._upstreams!r})"

    @property
    def upstreams(self) -> tuple[str, ...]:
        return self._upstreams

    def to_client(self, upstream: str, resource_type: str, local_id: str) -> str:
        key = (upstream, resource_type, local_id)
        issued = self._issued.get(key)
        if issued is not None:
            return issued
        issued = self._issue(upstream, resource_type, local_id)
        self._issued[key] = issued
        if len(self._issued) > _ISSUED_CACHE:
            self._issued.popitem(last=False)
        return issued

    def _issue(self, upstream: str, resource_type: str, local_id: str) -> str:
        associated = self._associated.get((upstream, resource_type))
        if associated is None:
            if upstream not in self._upstreams:
                raise ValueError(f"upstream {upstream!r} is not one of this resolver's")
            if not RESOURCE_TYPE.fullmatch(resource_type):
                raise ValueError(f"{resource_type!r} is not a resource type")
            associated = _ad(upstream, resource_type)
            if len(self._associated) < _ISSUED_CACHE:  # bounded, though types are few
                self._associated[(upstream, resource_type)] = associated
        sealed = siv_encrypt(self._key, pack(upstream, resource_type, local_id), associated)
        return base64.b64encode(sealed).translate(_TO_ID).decode("ascii")

    def to_upstream(self, resource_type: str, client_id: str) -> tuple[str, str]:
        if len(client_id) not in CLIENT_ID_LENGTHS or not FHIR_ID.fullmatch(client_id):
            raise not_ours()
        try:
            sealed = base64.b64decode(client_id.encode("ascii").translate(_FROM_ID), validate=True)
        except (binascii.Error, ValueError):  # pragma: no cover - the checks above exclude it
            raise not_ours() from None
        for upstream in self._upstreams:
            plaintext = siv_decrypt(self._key, sealed, _ad(upstream, resource_type))
            if plaintext is not None:
                local = unpack(plaintext)
                if local is None:  # pragma: no cover - only this code seals under the key
                    break
                return upstream, local
        raise not_ours()


def pack(upstream: str, resource_type: str, local_id: str) -> bytes:
    """The 17- or 32-byte plaintext of ``local_id`` (see the module docstring); raises
    :class:`UntranslatableId` when it is not a FHIR id or longer than :data:`MAX_LOCAL_ID`."""
    if not isinstance(local_id, str) or not FHIR_ID.fullmatch(local_id):
        raise UntranslatableId(
            f"a {resource_type} id of upstream {upstream} is not a valid FHIR id; "
            "it cannot be given to clients"
        )
    if _UUID.fullmatch(local_id):
        return (int(local_id.replace("-", ""), 16) << 2).to_bytes(_SHORT, "big")
    count = len(local_id)
    if count > MAX_LOCAL_ID:
        raise UntranslatableId(
            f"a {resource_type} id of upstream {upstream} is longer than {MAX_LOCAL_ID} "
            "characters, the longest the opaque id resolver carries; configure a table "
            "resolver for this upstream"
        )
    # The sextets are base64's (the alphabet is base64's with '+/' as '-.'): decoding the
    # header character and the id, zero-padded ('A') to whole 4-character groups, packs them.
    size, chars = (_SHORT, _SHORT_B64) if count <= _SHORT_CHARS else (_LONG, _LONG_B64)
    text = (_ALPHABET[count] + local_id).ljust(chars, "A").encode("ascii").translate(_FROM_ID)
    return binascii.a2b_base64(text, strict_mode=True)[:size]


def unpack(plaintext: bytes) -> str | None:
    """The local id :func:`pack` packed; ``None`` for bytes it cannot have produced."""
    size = len(plaintext)
    if size not in (_SHORT, _LONG):
        return None
    bits = 8 * size
    value = int.from_bytes(plaintext, "big")
    count = value >> (bits - 6)
    if count == 0:
        if size != _SHORT or value & 0b11:
            return None
        digits = f"{value >> 2:032x}"
        return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))
    if count > MAX_LOCAL_ID or (size == _SHORT) != (count <= _SHORT_CHARS):
        return None
    padding = bits - 6 * (count + 1)
    if value & ((1 << padding) - 1):
        return None
    value >>= padding
    return "".join(_ALPHABET[(value >> 6 * i) & 63] for i in reversed(range(count)))


def _ad(upstream: str, resource_type: str) -> tuple[bytes, bytes, bytes]:
    return (_VERSION, resource_type.encode("ascii"), upstream.encode("utf-8"))
