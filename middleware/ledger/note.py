"""C2SP signed notes (https://c2sp.org/signed-note), without any crypto.

A signed note is UTF-8 text ending in a newline, a blank line, then one or more lines
``— <key name> <base64(4-byte key ID || signature)>`` (em dash U+2014, single spaces). This
module formats and strictly parses that text, computes key IDs and verifier-key strings, and
applies the spec's verification *policy*; checking an individual signature is delegated to a
:class:`NoteVerifier` (``middleware.ledger.signing.Verifier`` for Ed25519), so no crypto library
is imported here.

Strictness, beyond the spec's MUSTs: base64 must be canonical (RFC 4648 §4 with padding, no
stray bits), a note carries at most :data:`MAX_SIGNATURES` signatures (the spec requires
accepting at least 16), and a verifier key's hex key ID must be 8 lowercase digits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from middleware.ledger.errors import MalformedError, VerificationError

__all__ = [
    "ED25519_KEY_SIZE",
    "MAX_SIGNATURES",
    "SIG_TYPE_ED25519",
    "NoteSignature",
    "NoteVerifier",
    "SignedNote",
    "VerifierKey",
    "b64decode_strict",
    "check_key_name",
    "check_note_text",
    "format_note",
    "key_id",
    "parse_note",
    "parse_vkey",
    "verify_signatures",
]

#: Ed25519 signature type byte in key IDs and verifier keys (C2SP signed-note, "Signature types").
SIG_TYPE_ED25519 = 0x01
ED25519_KEY_SIZE = 32
MAX_SIGNATURES = 100
_DASH = "\u2014 "  # em dash, space: the start of every signature line
_HEX_KEY_ID = re.compile(r"[0-9a-f]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # below U+0020, newline excepted
#: Unicode whitespace: ``\s`` of a str pattern is ``str.isspace`` (both Py_UNICODE_ISSPACE;
#: a test compares every code point), searched in C rather than a generator per character.
_SPACE = re.compile(r"\s")


class NoteVerifier(Protocol):
    """Checks signatures by one key, named by ``name`` and the uint32 ``key_id``."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` (without the key ID) signs ``message``; never raises."""
        ...


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes after the key ID."""

    name: str
    key_id: int
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not 0 <= self.key_id < 2**32:
            raise MalformedError("a key ID is a uint32")
        if not self.signature:
            raise MalformedError("empty signature")

    def line(self) -> str:
        """The signature line, newline included."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_DASH}{self.name} {base64.b64encode(blob).decode('ascii')}\n"


@dataclass(frozen=True, slots=True)
class SignedNote:
    """A parsed note: the signed ``text`` (final newline included) and its signatures.

    Parsing says nothing about trust: the text MUST be ignored until
    :func:`verify_signatures` has accepted it.
    """

    text: str
    signatures: tuple[NoteSignature, ...]

    @property
    def message(self) -> bytes:
        """The bytes every signature covers: the UTF-8 text, final newline included."""
        return self.text.encode("utf-8")

    def format(self) -> str:
        return format_note(self.text, self.signatures)


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A public key as a note verifier names it: ``<name>+<hex key ID>+<base64(type||key)>``.

    Only Ed25519 (type ``0x01``, 32-byte key) is supported.
    """

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.public_key) != ED25519_KEY_SIZE:
            raise MalformedError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes")

    @property
    def key_id(self) -> int:
        return key_id(self.name, SIG_TYPE_ED25519, self.public_key)

    def vkey(self) -> str:
        material = base64.b64encode(bytes([SIG_TYPE_ED25519]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id:08x}+{material}"


def key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || sig_type || public_key)[:4]`` as a big-endian uint32.

    The key ID recommended by C2SP signed-note ("Signatures"), required for Ed25519.
    """
    check_key_name(name)
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key)
    return int.from_bytes(digest.digest()[:4], "big")


def parse_vkey(vkey: str) -> VerifierKey:
    """Parse a verifier key string; its key ID must match the one computed from it."""
    name, _, rest = vkey.partition("+")
    hex_id, _, material = rest.partition("+")  # base64 may itself contain '+'
    if not _HEX_KEY_ID.fullmatch(hex_id):
        raise MalformedError("a verifier key's ID is 8 lowercase hex digits")
    raw = b64decode_strict(material)
    if not raw or raw[0] != SIG_TYPE_ED25519:
        raise MalformedError("unsupported verifier key type (only Ed25519, 0x01)")
    key = VerifierKey(name, raw[1:])
    if key.key_id != int(hex_id, 16):
        raise MalformedError("the verifier key's ID does not match its name and key")
    return key


def check_key_name(name: str) -> str:
    """Return ``name`` if it is a valid key name: non-empty, no Unicode space, no ``+``,
    no control character (C2SP signed-note, "Format")."""
    if not name or "+" in name or _CONTROL.search(name) or _SPACE.search(name):
        raise MalformedError("a key name is non-empty, without spaces, '+' or control characters")
    _utf8(name)
    return name


def check_note_text(text: str) -> str:
    """Return ``text`` if it can be the text of a note: valid UTF-8, ending in a newline, no
    control character other than newline."""
    if not text.endswith("\n"):
        raise MalformedError("note text must end with a newline")
    _check_controls(text)
    _utf8(text)
    return text


def format_note(text: str, signatures: Iterable[NoteSignature]) -> str:
    """The signed note: ``text``, a blank line, then one line per signature (at least one)."""
    lines = [s.line() for s in signatures]
    if not 1 <= len(lines) <= MAX_SIGNATURES:
        raise MalformedError(f"a note carries 1 to {MAX_SIGNATURES} signatures")
    return check_note_text(text) + "\n" + "".join(lines)


def parse_note(note: str | bytes) -> SignedNote:
    """Split a signed note into text and signatures; raises :class:`MalformedError`.

    The text ends at the last blank line (the text itself may contain blank lines). After it
    come 1 to :data:`MAX_SIGNATURES` well-formed signature lines and nothing else.
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedError("a signed note is UTF-8") from None
    _check_controls(note)
    _utf8(note)
    cut = note.rfind("\n\n")
    if cut < 0:
        raise MalformedError("no blank line before the signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    if not block.endswith("\n"):
        raise MalformedError("the signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(f"more than {MAX_SIGNATURES} signatures")
    return SignedNote(text, tuple(_parse_signature_line(line) for line in lines))


def verify_signatures(
    note: SignedNote, verifiers: Iterable[NoteVerifier]
) -> tuple[NoteSignature, ...]:
    """Apply the C2SP signed-note policy and return the signatures that verified.

    A signature whose (name, key ID) matches no verifier is ignored. One that matches a
    verifier must verify, or the whole note is rejected; so is a match with more than one
    verifier (ambiguous). With no verified signature (no verifiers at all included) the note
    is rejected. Every rejection is a :class:`VerificationError`.
    """
    known: dict[tuple[str, int], list[NoteVerifier]] = {}
    for verifier in verifiers:
        known.setdefault((verifier.name, verifier.key_id), []).append(verifier)
    message = note.message
    verified: list[NoteSignature] = []
    for sig in note.signatures:
        matches = known.get((sig.name, sig.key_id), [])
        label = f"{sig.name}+{sig.key_id:08x}"
        if len(matches) > 1:
            raise VerificationError(f"ambiguous verifier key {label}")
        if not matches:
            continue
        if not matches[0].verify(message, sig.signature):
            raise VerificationError(f"invalid signature by known key {label}")
        if sig not in verified:
            verified.append(sig)
    if not verified:
        raise VerificationError("no signature by a known key")
    return tuple(verified)


def b64decode_strict(text: str) -> bytes:
    """Decode standard, padded, canonical base64 (RFC 4648 §4); anything else is malformed."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise MalformedError("invalid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedError("non-canonical base64")
    return raw


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_DASH):
        raise MalformedError("a signature line starts with an em dash (U+2014) and a space")
    parts = line[len(_DASH) :].split(" ")
    if len(parts) != 2:
        raise MalformedError("a signature line is: em dash, space, key name, space, base64")
    name, blob = parts
    raw = b64decode_strict(blob)
    if len(raw) < 5:
        raise MalformedError("a signature is a 4-byte key ID and at least one byte")
    return NoteSignature(check_key_name(name), int.from_bytes(raw[:4], "big"), raw[4:])


def _check_controls(text: str) -> None:
    if _CONTROL.search(text):
        raise MalformedError("control characters other than newline are not allowed")


def _utf8(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise MalformedError("text is not valid UTF-8") from None
