"""C2SP tlog-cosignature (https://c2sp.org/tlog-cosignature), Ed25519 ``cosignature/v1``, without
any crypto.

A cosignature is a witness's note signature on a checkpoint: the line
``— <witness name> base64(key ID || timestamp || signature)`` where

- the key ID is ``SHA-256(name || "\\n" || 0x04 || 32-byte Ed25519 public key)[:4]`` (type
  ``0x04``, so a witness key never collides with the log's ``0x01`` note keys);
- the timestamp is the POSIX time of cosigning, a big-endian u64 at most ``2**63 - 1``;
- the signature is RFC 8032 Ed25519 over ``"cosignature/v1\\ntime <T>\\n"`` followed by the whole
  checkpoint body (extension lines included, signature lines excluded).

A witness key is published as a vkey ``<name>+<hex key ID>+<base64(0x04 || public key)>``.

This module formats and strictly parses that, and applies a quorum policy
(:func:`verify_cosignatures`); checking one Ed25519 signature is delegated to a
:class:`~middleware.ledger.note.NoteVerifier` whose ``key_id`` is the witness's (type 0x04):
``middleware.ledger.signing.CosignatureVerifier``. The verifier is handed the *cosigned
message* (:func:`cosigned_message`), not the note text.

Semantics (tlog-cosignature, "Ed25519 signed message"): a cosignature states that, as of its
time, the largest consistent tree the witness has seen for the origin has that root. It says
nothing about extension lines.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.note import (
    ED25519_KEY_SIZE,
    NoteSignature,
    NoteVerifier,
    SignedNote,
    b64decode_strict,
    check_key_name,
    check_note_text,
    parse_note,
)

__all__ = [
    "COSIGNATURE_SIZE",
    "MAX_TIMESTAMP",
    "SIG_TYPE_COSIGNATURE_V1",
    "Cosignature",
    "WitnessKey",
    "cosigned_message",
    "cosignature_key_id",
    "parse_cosignature",
    "parse_cosignature_lines",
    "parse_witness_vkey",
    "verify_cosignatures",
]

#: Key ID type byte of an Ed25519 ``cosignature/v1`` key (C2SP tlog-cosignature, "Format").
SIG_TYPE_COSIGNATURE_V1 = 0x04
#: ``timestamped_signature``: an 8-byte timestamp and a 64-byte Ed25519 signature.
COSIGNATURE_SIZE = 8 + 64
#: "It MUST NOT exceed 2^63 - 1" (tlog-cosignature, "Format").
MAX_TIMESTAMP = 2**63 - 1
_HEADER = "cosignature/v1\n"


def cosignature_key_id(name: str, public_key: bytes) -> int:
    """``SHA-256(name || "\\n" || 0x04 || public_key)[:4]`` as a big-endian uint32."""
    check_key_name(name)
    if len(public_key) != ED25519_KEY_SIZE:
        raise MalformedError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes")
    material = name.encode("utf-8") + b"\n" + bytes([SIG_TYPE_COSIGNATURE_V1]) + public_key
    return int.from_bytes(hashlib.sha256(material).digest()[:4], "big")


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A witness's public key: its name and 32-byte Ed25519 key (validated on construction)."""

    name: str
    public_key: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.public_key, bytes) or len(self.public_key) != ED25519_KEY_SIZE:
            raise MalformedError(f"an Ed25519 public key is {ED25519_KEY_SIZE} bytes")

    @property
    def key_id(self) -> int:
        return cosignature_key_id(self.name, self.public_key)

    def vkey(self) -> str:
        """``<name>+<hex key ID>+<base64(0x04 || public key)>`` (C2SP signed-note vkeys)."""
        material = bytes([SIG_TYPE_COSIGNATURE_V1]) + self.public_key
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(material).decode('ascii')}"


def parse_witness_vkey(vkey: str) -> WitnessKey:
    """Parse a witness vkey (type 0x04); its key ID must match the one computed from it."""
    name, _, rest = vkey.strip().partition("+")
    hex_id, _, material = rest.partition("+")  # base64 may itself contain '+'
    if len(hex_id) != 8 or any(c not in "0123456789abcdef" for c in hex_id):
        raise MalformedError("a verifier key's ID is 8 lowercase hex digits")
    raw = b64decode_strict(material)
    if not raw or raw[0] != SIG_TYPE_COSIGNATURE_V1:
        raise MalformedError("not a cosignature/v1 witness key (type 0x04)")
    key = WitnessKey(name, raw[1:])
    if key.key_id != int(hex_id, 16):
        raise MalformedError("the witness key's ID does not match its name and key")
    return key


def cosigned_message(body: str, timestamp: int) -> bytes:
    """The bytes a ``cosignature/v1`` signs: header line, ``time <T>`` line, checkpoint body."""
    check_note_text(body)
    _check_timestamp(timestamp)
    return f"{_HEADER}time {timestamp}\n{body}".encode()


@dataclass(frozen=True, slots=True)
class Cosignature:
    """One parsed cosignature: witness name, key ID, timestamp and the Ed25519 signature."""

    name: str
    key_id: int
    timestamp: int
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not 0 <= self.key_id < 2**32:
            raise MalformedError("a key ID is a uint32")
        _check_timestamp(self.timestamp)
        if len(self.signature) != COSIGNATURE_SIZE - 8:
            raise MalformedError("an Ed25519 signature is 64 bytes")

    def note_signature(self) -> NoteSignature:
        """As a note signature: its payload is ``timestamp (8, big-endian) || signature``."""
        payload = self.timestamp.to_bytes(8, "big") + self.signature
        return NoteSignature(self.name, self.key_id, payload)

    def line(self) -> str:
        """The signature line ``— <name> base64(key ID || timestamp || signature)\\n``."""
        return self.note_signature().line()


def parse_cosignature(signature: NoteSignature) -> Cosignature:
    """Read a note signature as a cosignature; the payload must be exactly 72 bytes."""
    payload = signature.signature
    if len(payload) != COSIGNATURE_SIZE:
        raise MalformedError(f"a cosignature/v1 is {COSIGNATURE_SIZE} bytes after the key ID")
    return Cosignature(
        signature.name, signature.key_id, int.from_bytes(payload[:8], "big"), payload[8:]
    )


def parse_cosignature_lines(text: str, body: str) -> tuple[NoteSignature, ...]:
    """Parse a witness's ``add-checkpoint`` answer (one or more signature lines) by appending it
    to the checkpoint ``body``, as tlog-witness suggests; malformed text raises MalformedError."""
    if not text.endswith("\n") or not text.startswith("\u2014 "):
        raise MalformedError("a witness answers signature lines, each ending in a newline")
    return parse_note(check_note_text(body) + "\n" + text).signatures


def verify_cosignatures(
    note: str | bytes | SignedNote,
    witnesses: Iterable[NoteVerifier],
    quorum: int,
    *,
    not_after: int | None = None,
) -> frozenset[str]:
    """The names of the ``witnesses`` that validly cosigned the checkpoint in ``note``; raises
    :class:`VerificationError` unless at least ``quorum`` distinct witnesses did.

    Policy, as C2SP signed-note's for note signatures: a line whose (name, key ID) matches no
    witness is ignored (the log's own signature among them); a line matching a witness must be
    a well-formed, valid cosignature or the note is rejected (a witness key signing garbage is
    evidence, not noise). With ``not_after`` (a POSIX time), a cosignature dated later is
    rejected (tlog-cosignature: verifiers MAY reject future timestamps). The log's signature is
    not checked here: verify the checkpoint first (``signing.verify_checkpoint``). ``quorum``
    is at least 1 and at most the number of witnesses: an empty policy fails closed.
    """
    parsed = note if isinstance(note, SignedNote) else parse_note(note)
    known: dict[tuple[str, int], NoteVerifier] = {}
    for configured in witnesses:
        pair = (configured.name, configured.key_id)
        if pair in known:
            raise MalformedError(f"witness {configured.name}+{configured.key_id:08x} listed twice")
        known[pair] = configured
    if not 1 <= quorum <= len(known):
        raise MalformedError(f"a quorum is 1 to {len(known)} witnesses, not {quorum}")
    cosigned: set[str] = set()
    for line in parsed.signatures:
        witness = known.get((line.name, line.key_id))
        if witness is None:
            continue
        label = f"{line.name}+{line.key_id:08x}"
        try:
            cosignature = parse_cosignature(line)
        except MalformedError:
            raise VerificationError(f"malformed cosignature by witness {label}") from None
        if not_after is not None and cosignature.timestamp > not_after:
            raise VerificationError(
                f"cosignature by {label} is dated in the future",
                expected=not_after,
                computed=cosignature.timestamp,
            )
        message = cosigned_message(parsed.text, cosignature.timestamp)
        if not witness.verify(message, cosignature.signature):
            raise VerificationError(f"invalid cosignature by witness {label}")
        cosigned.add(line.name)
    if len(cosigned) < quorum:
        raise VerificationError(
            "too few witnesses cosigned", expected=quorum, computed=len(cosigned)
        )
    return frozenset(cosigned)


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise MalformedError("a cosignature timestamp is 0 to 2**63-1")
