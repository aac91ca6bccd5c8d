"""Ed25519 signing and verification of C2SP signed notes: the only module importing pynacl.

Keys follow C2SP signed-note (https://c2sp.org/signed-note), "Ed25519 signatures": RFC 8032
Ed25519 over the note text, key ID ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``. Verifier
keys are ``<name>+<hex key ID>+<base64(0x01 || public key)>``; signing keys can be written in the
``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`` form of golang.org/x/mod/sumdb/note,
which tools of that ecosystem read.

A witness cosigns checkpoints with a :class:`Cosigner` (C2SP tlog-cosignature, Ed25519
``cosignature/v1``, key type 0x04; formats in :mod:`middleware.ledger.cosignature`); a
:class:`CosignatureVerifier` checks one witness's cosignatures. Its secret key is written
``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x04 || seed)>``, the note-key form with the
cosignature type byte, so a witness key file is never mistaken for a log's signing key.

Ed25519 is deterministic, so signing the same text with the same key always yields the same
note, byte for byte. Third-party exceptions stop here: callers see only ledger errors.

:func:`seal` and :func:`unseal` are libsodium's ``crypto_secretbox`` (XSalsa20-Poly1305,
authenticated encryption with a random 24-byte nonce) for short-lived gateway tokens such as
paging cursors: the sealed bytes are ``nonce || MAC || ciphertext``; they hide the plaintext and
any change to them, or another key, makes :func:`unseal` answer ``None``.

:func:`siv_encrypt` and :func:`siv_decrypt` are deterministic authenticated encryption for
short identifiers that must be stable (the same input always gives the same bytes, so clients
can compare them): AES-SIV (RFC 5297) through ``cryptography``'s ``AESSIV``, AES-256-SIV under a
64-byte key derived from the caller's 32-byte key (keyed BLAKE2b-512, RFC 7693, personalised
``consentry/siv/v2``). Sealed bytes are RFC 5297's output ``V (16) || C``: the synthetic IV
then the ciphertext (16 bytes of overhead); equal plaintexts are all they reveal.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import nacl.bindings
import nacl.exceptions
import nacl.secret
import nacl.signing
import nacl.utils
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from middleware.ledger.checkpoint import Checkpoint, parse_checkpoint
from middleware.ledger.cosignature import (
    SIG_TYPE_COSIGNATURE_V1,
    Cosignature,
    WitnessKey,
    cosigned_message,
    parse_witness_vkey,
)
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.note import (
    SIG_TYPE_ED25519,
    NoteSignature,
    NoteVerifier,
    SignedNote,
    VerifierKey,
    b64decode_strict,
    check_key_name,
    check_note_text,
    format_note,
    parse_note,
    parse_vkey,
    verify_signatures,
)

__all__ = [
    "BOX_KEY_SIZE",
    "CosignatureVerifier",
    "Cosigner",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "SIV_TAG_SIZE",
    "SigningKey",
    "Verifier",
    "derive_box_key",
    "evidence_key",
    "evidence_keyer",
    "keyed_digest",
    "new_box_key",
    "seal",
    "seal_once",
    "siv_decrypt",
    "siv_encrypt",
    "unseal",
    "unseal_once",
    "verify_checkpoint",
    "verify_detached",
    "verify_note",
]

SEED_SIZE = 32
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
_SKEY_PREFIX = "PRIVATE+KEY+"
#: A secret-box key is 32 bytes (libsodium ``crypto_secretbox_KEYBYTES``).
BOX_KEY_SIZE = nacl.secret.SecretBox.KEY_SIZE
#: The synthetic IV of :func:`siv_encrypt`: 128 bits, RFC 5297's size.
SIV_TAG_SIZE = 16
# Domain separation (BLAKE2b personalisation, 16 bytes): the AES-SIV key is derived from the
# caller's key under its own label, so the same 32 bytes used elsewhere never key AES directly.
_SIV_KEY_LABEL: bytes = b"consentry/siv/v2"
_EVIDENCE_KEY: bytes = b"consentry/evkey1"
_ZERO_NONCE: bytes = bytes(nacl.bindings.crypto_secretbox_NONCEBYTES)


class _HasKeyId(Protocol):
    @property
    def key_id(self) -> int: ...


_S = TypeVar("_S", bound=_HasKeyId)


def _parse_skey(
    skey: str, sig_type: int, make: Callable[[str, bytes], _S], what: str, wrong_type: str
) -> _S:
    """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(type || seed)>`` into ``make(name, seed)``:
    the type byte must be ``sig_type`` and the written ID the one the name and seed give.
    ``what`` (the key's kind) and ``wrong_type`` word the errors."""
    if not skey.startswith(_SKEY_PREFIX):
        raise MalformedError(f"a {what} starts with PRIVATE+KEY+")
    name, _, rest = skey[len(_SKEY_PREFIX) :].partition("+")
    hex_id, _, material = rest.partition("+")
    raw = b64decode_strict(material)
    if len(raw) != 1 + SEED_SIZE or raw[0] != sig_type:
        raise MalformedError(wrong_type)
    key = make(name, raw[1:])
    if hex_id != f"{key.key_id:08x}":
        raise MalformedError(f"the {what}'s ID does not match its name and key")
    return key


def _format_skey(name: str, key_id: int, sig_type: int, seed: bytes) -> str:
    """The secret key string :func:`_parse_skey` reads."""
    material = base64.b64encode(bytes([sig_type]) + seed).decode("ascii")
    return f"{_SKEY_PREFIX}{name}+{key_id:08x}+{material}"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 note-signing key: a key name and a 32-byte RFC 8032 seed.

    Validated on construction (invalid name or seed raises :class:`MalformedError`). The seed
    is secret: it is left out of ``repr`` and must never be logged.
    """

    name: str
    seed: bytes = field(repr=False)
    _key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_SIZE:
            raise MalformedError(f"an Ed25519 seed is {SEED_SIZE} bytes")
        object.__setattr__(self, "_key", nacl.signing.SigningKey(self.seed))

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        """A fresh key from the operating system's CSPRNG (via libsodium)."""
        return cls(name, bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> SigningKey:
        return cls(name, seed)

    @classmethod
    def from_skey(cls, skey: str) -> SigningKey:
        """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``; the ID must match."""
        return _parse_skey(
            skey,
            SIG_TYPE_ED25519,
            cls,
            "signing key",
            "unsupported signing key type (only Ed25519, 0x01)",
        )

    def skey(self) -> str:
        """The secret key string (see :meth:`from_skey`). Handle it as the secret it is."""
        return _format_skey(self.name, self.key_id, SIG_TYPE_ED25519, self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    @property
    def verifier_key(self) -> VerifierKey:
        return VerifierKey(self.name, self.public_key)

    @property
    def key_id(self) -> int:
        return self.verifier_key.key_id

    def vkey(self) -> str:
        """The public verifier key string to publish: ``<name>+<hex id>+<base64>``."""
        return self.verifier_key.vkey()

    def verifier(self) -> Verifier:
        return Verifier(self.verifier_key)

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``message``."""
        return bytes(self._key.sign(message).signature)

    def sign_note(self, body: str | bytes) -> str:
        """A signed note holding ``body`` (note text ending in a newline) and one signature."""
        if isinstance(body, bytes):
            try:
                body = body.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedError("note text is UTF-8") from None
        text = check_note_text(body)
        signature = NoteSignature(self.name, self.key_id, self.sign(text.encode("utf-8")))
        return format_note(text, [signature])

    def sign_checkpoint(self, checkpoint: Checkpoint) -> str:
        """The checkpoint as a signed note (C2SP tlog-checkpoint)."""
        return self.sign_note(checkpoint.body())


class _PublicKey(Protocol):
    """What a verifier needs of a public key (:class:`VerifierKey`, :class:`WitnessKey`)."""

    @property
    def name(self) -> str: ...
    @property
    def key_id(self) -> int: ...
    @property
    def public_key(self) -> bytes: ...
    def vkey(self) -> str: ...


_K = TypeVar("_K", bound=_PublicKey)


class _Ed25519Verifier(Generic[_K]):
    """One public key and its nacl verify key: what :class:`Verifier` and
    :class:`CosignatureVerifier` share (they differ only in the key's type byte)."""

    __slots__ = ("_key", "_verify_key")

    def __init__(self, key: _K) -> None:
        self._key = key
        self._verify_key = nacl.signing.VerifyKey(key.public_key)

    @property
    def name(self) -> str:
        return self._key.name

    @property
    def key_id(self) -> int:
        return self._key.key_id

    @property
    def key(self) -> _K:
        return self._key

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is a valid Ed25519 signature of ``message``; never raises."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            self._verify_key.verify(message, signature)
        except nacl.exceptions.BadSignatureError:
            return False
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._key.vkey()!r})"


class Verifier(_Ed25519Verifier[VerifierKey]):
    """Verifies Ed25519 note signatures by one key; a :class:`NoteVerifier`."""

    __slots__ = ()

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse a verifier key string (``<name>+<hex id>+<base64(0x01 || key)>``)."""
        return cls(parse_vkey(vkey))


class Cosigner:
    """A witness's Ed25519 ``cosignature/v1`` key (C2SP tlog-cosignature): a name and a seed.

    The seed is secret (left out of ``repr``). The key ID uses type 0x04, so the same seed
    under the same name never produces a valid *note* signature line and vice versa.
    """

    __slots__ = ("_key", "_name")

    def __init__(self, name: str, seed: bytes) -> None:
        check_key_name(name)
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise MalformedError(f"an Ed25519 seed is {SEED_SIZE} bytes")
        self._name = name
        self._key = nacl.signing.SigningKey(seed)

    @classmethod
    def generate(cls, name: str) -> Cosigner:
        """A fresh witness key from the operating system's CSPRNG (via libsodium)."""
        return cls(name, bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_skey(cls, skey: str) -> Cosigner:
        """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(0x04 || seed)>``; the ID must match."""
        return _parse_skey(
            skey.strip(),
            SIG_TYPE_COSIGNATURE_V1,
            cls,
            "witness key",
            "not a cosignature/v1 witness key (type 0x04)",
        )

    def skey(self) -> str:
        """The secret key string (see :meth:`from_skey`). Handle it as the secret it is."""
        return _format_skey(self._name, self.key_id, SIG_TYPE_COSIGNATURE_V1, bytes(self._key))

    @property
    def name(self) -> str:
        return self._name

    @property
    def witness_key(self) -> WitnessKey:
        return WitnessKey(self._name, bytes(self._key.verify_key))

    @property
    def key_id(self) -> int:
        return self.witness_key.key_id

    def vkey(self) -> str:
        """The public witness key to give logs and clients: ``<name>+<hex id>+<base64>``."""
        return self.witness_key.vkey()

    def cosign(self, body: str, timestamp: int) -> Cosignature:
        """Cosign the checkpoint ``body`` (note text) as of the POSIX ``timestamp``."""
        message = cosigned_message(body, timestamp)
        signature = bytes(self._key.sign(message).signature)
        return Cosignature(self._name, self.key_id, timestamp, signature)

    def __repr__(self) -> str:
        return f"Cosigner({self.vkey()!r})"


class CosignatureVerifier(_Ed25519Verifier[WitnessKey]):
    """Checks one witness's ``cosignature/v1`` signatures; a :class:`NoteVerifier` whose
    ``verify`` takes the cosigned message (``cosignature.cosigned_message``) and the bare
    64-byte signature, for ``cosignature.verify_cosignatures``."""

    __slots__ = ()

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        return cls(parse_witness_vkey(vkey))


def verify_note(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> SignedNote:
    """Parse and verify a signed note; return its text with the signatures that verified.

    Policy (C2SP signed-note): unknown keys are ignored, a known key's bad signature rejects
    the note, and so does the absence of any verified signature. Raises
    :class:`MalformedError` for a malformed note and :class:`VerificationError` otherwise.
    """
    parsed = parse_note(note)
    return SignedNote(parsed.text, verify_signatures(parsed, verifiers))


def verify_checkpoint(
    note: str | bytes, verifiers: Iterable[NoteVerifier], *, origin: str | None = None
) -> Checkpoint:
    """Verify a signed checkpoint note, then parse its body (never the other way round).

    With ``origin``, the checkpoint must name that log (C2SP tlog-checkpoint: clients know
    which log they expect).
    """
    checkpoint = parse_checkpoint(verify_note(note, verifiers).text)
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(
            "checkpoint is for another log", expected=origin, computed=checkpoint.origin
        )
    return checkpoint


def verify_detached(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid RFC 8032 Ed25519 signature of ``message`` under the
    32-byte ``public_key``. Wrong lengths, a key that is not a curve point and a bad signature
    are all False: a detached signature either verifies or it does not, never raises."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True


def derive_box_key(secret: SigningKey | bytes, purpose: str) -> bytes:
    """A 32-byte secret-box key derived from a 32-byte data ``secret`` for one ``purpose``
    (BLAKE2b keyed with the secret, personalised per purpose, RFC 7693): every replica holding
    the same ledger key file derives the same key (paging cursors sealed by one replica open on
    another), and a derived key reveals nothing of the secret. ``purpose`` is a short ASCII
    label.

    The gateway passes its key file's data secret
    (:attr:`middleware.ledger.keyfile.LedgerKey.data_secret`), which ``consentry keys rotate``
    carries over unchanged, so what is stored under a derived key (wrapped evidence keys,
    pseudonym lookups, outbox MACs, mapped ids) outlives a signing-key rotation. A
    :class:`SigningKey` stands for its seed: the data secret of a key file that names none
    (written by earlier versions), so the keys derived before the data secret existed stay the
    same. A secret of the wrong size raises :class:`MalformedError`."""
    root = secret.seed if isinstance(secret, SigningKey) else secret
    if not isinstance(root, bytes) or len(root) != BOX_KEY_SIZE:
        raise MalformedError(f"a data secret is {BOX_KEY_SIZE} bytes")
    label = purpose.encode("ascii")
    if not 0 < len(label) <= 16:
        raise MalformedError("a key purpose is 1..16 ASCII characters")
    return hashlib.blake2b(
        b"consentry/derive/v1", digest_size=BOX_KEY_SIZE, key=root, person=label
    ).digest()


def keyed_digest(key: bytes, parts: Sequence[bytes]) -> bytes:
    """HMAC-SHA256 (RFC 2104) under the 32-byte ``key`` of the length-prefixed ``parts`` (the
    count, then each part's 8-byte big-endian length and bytes: an unambiguous vector, so
    ``("ab", "c")`` and ``("a", "bc")`` differ). Without ``key`` nobody computes or predicts it;
    use a key of its own per purpose (:func:`derive_box_key`). Compare results with
    :func:`hmac.compare_digest`. A key of the wrong size raises :class:`MalformedError`."""
    if not isinstance(key, bytes) or len(key) != BOX_KEY_SIZE:
        raise MalformedError(f"a digest key is {BOX_KEY_SIZE} bytes")
    mac = hmac.new(key, len(parts).to_bytes(8, "big"), hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "big"))
        mac.update(part)
    return mac.digest()


def evidence_key(patient_key: bytes, salt: bytes) -> bytes:
    """The secret-box key of one audit entry's evidence: BLAKE2b-256 keyed with the patient's
    32-byte evidence key (RFC 7693 keyed mode, a PRF), personalised for this purpose, over the
    entry's ``salt`` (32 random bytes). Each entry's evidence is sealed under a key of its own,
    so an export can hand a verifier the key of one entry without the patient's key (which
    opens every other entry of that patient); deleting the patient's key leaves every entry
    key underivable (the crypto-shred). A key of the wrong size raises MalformedError."""
    if not isinstance(patient_key, bytes) or len(patient_key) != BOX_KEY_SIZE:
        raise MalformedError(f"an evidence key is {BOX_KEY_SIZE} bytes")
    return hashlib.blake2b(
        salt, digest_size=BOX_KEY_SIZE, key=patient_key, person=_EVIDENCE_KEY
    ).digest()


def evidence_keyer(patient_key: bytes) -> Callable[[bytes], bytes]:
    """``salt -> evidence_key(patient_key, salt)``, for many entries of one patient (an
    export's). The BLAKE2b state keyed with ``patient_key`` (the key is a whole first block,
    RFC 7693 §3.3) is made once and copied per salt, which saves a compression and the
    argument checks per entry: half of :func:`evidence_key`'s cost. Same keys (a property
    test compares them); a key of the wrong size raises MalformedError here, once."""
    if not isinstance(patient_key, bytes) or len(patient_key) != BOX_KEY_SIZE:
        raise MalformedError(f"an evidence key is {BOX_KEY_SIZE} bytes")
    copy = hashlib.blake2b(digest_size=BOX_KEY_SIZE, key=patient_key, person=_EVIDENCE_KEY).copy

    def key_of(salt: bytes) -> bytes:
        state = copy()
        state.update(salt)
        return state.digest()

    return key_of


def seal_once(key: bytes, plaintext: bytes) -> bytes:
    """``MAC (16) || ciphertext``: ``plaintext`` under XSalsa20-Poly1305 (libsodium
    ``crypto_secretbox_easy``) with the all-zero nonce, for a ``key`` that seals this one
    message only (an :func:`evidence_key`: fresh per entry). libsodium's rule is that a nonce
    never repeats under one key; a key used for one message cannot repeat one, so the nonce
    need not be random nor stored (24 bytes and a CSPRNG call saved per entry). Sealing the
    same plaintext again under the same key gives the same bytes, which reveals nothing more.
    A key of the wrong size raises :class:`MalformedError`."""
    _check_box_key(key)
    return bytes(nacl.bindings.crypto_secretbox_easy(plaintext, _ZERO_NONCE, key))


def unseal_once(key: bytes, sealed: bytes) -> bytes | None:
    """The plaintext :func:`seal_once` sealed under ``key``; ``None`` when ``sealed`` was not
    sealed under this key, was changed in any byte, or is too short. Never raises for any
    ``sealed``; a key of the wrong size raises :class:`MalformedError`."""
    _check_box_key(key)
    # The classic crypto_secretbox_open (PyNaCl prepends the 16 zero bytes it wants to the
    # MAC and ciphertext, the _easy layout) opens the same bytes as crypto_secretbox_open_easy
    # with less of PyNaCl's Python around it (one check instead of two): 1.6 against 2.1 µs.
    try:
        return nacl.bindings.crypto_secretbox_open(sealed, _ZERO_NONCE, key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None


def new_box_key() -> bytes:
    """A fresh 32-byte secret-box key from the operating system's CSPRNG (via libsodium)."""
    return bytes(nacl.utils.random(BOX_KEY_SIZE))


def _check_box_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != BOX_KEY_SIZE:
        raise MalformedError(f"a secret-box key is {BOX_KEY_SIZE} bytes")


def _box(key: bytes) -> nacl.secret.SecretBox:
    _check_box_key(key)
    return nacl.secret.SecretBox(key)


def seal(key: bytes, plaintext: bytes) -> bytes:
    """``plaintext`` encrypted and authenticated under the 32-byte ``key`` (XSalsa20-Poly1305,
    a fresh random nonce each call, so sealing the same plaintext twice gives different bytes).

    A key of the wrong size raises :class:`MalformedError` (a configuration fault, not input).
    """
    return bytes(_box(key).encrypt(plaintext))


def unseal(key: bytes, token: bytes) -> bytes | None:
    """The plaintext :func:`seal` sealed under ``key``; ``None`` when ``token`` was not sealed
    under this key, was changed in any byte, or is too short. Never raises for any ``token``;
    a key of the wrong size raises :class:`MalformedError` as in :func:`seal`."""
    box = _box(key)
    try:
        return bytes(box.decrypt(token))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None


def siv_encrypt(key: bytes, plaintext: bytes, associated: Sequence[bytes] = ()) -> bytes:
    """``V || C``: ``plaintext`` under the 32-byte ``key``, bound to ``associated``.

    Deterministic: the same key, plaintext and associated data always give the same bytes, and
    different ones give unrelated bytes. AES-256-SIV (RFC 5297 §2.6) with ``associated`` as its
    header vector (each part authenticated apart, an unambiguous vector by S2V) under the key of
    :func:`_siv_cipher`. A key of the wrong size raises :class:`MalformedError`.
    """
    return _siv_cipher(key).encrypt(plaintext, list(associated))


def siv_decrypt(key: bytes, sealed: bytes, associated: Sequence[bytes] = ()) -> bytes | None:
    """The plaintext :func:`siv_encrypt` sealed under ``key`` with the same ``associated``;
    ``None`` when ``sealed`` is too short, was changed in any bit, or was sealed under another
    key or other associated data. Never raises for any ``sealed`` (RFC 5297 §2.7: the
    synthetic IV is recomputed and compared by ``cryptography``); a key of the wrong size raises
    :class:`MalformedError`."""
    cipher = _siv_cipher(key)
    if len(sealed) < SIV_TAG_SIZE:
        return None
    try:
        return cipher.decrypt(sealed, list(associated))
    except InvalidTag:
        return None


@functools.lru_cache(maxsize=16)  # every id of a Bundle uses the same key
def _siv_cipher(key: bytes) -> AESSIV:
    """AES-256-SIV keyed with BLAKE2b-512 of ``key`` personalised ``consentry/siv/v2`` (RFC
    5297's K1 for S2V is its first 32 bytes, K2 for CTR the last 32)."""
    if not isinstance(key, bytes) or len(key) != BOX_KEY_SIZE:
        raise MalformedError(f"an SIV key is {BOX_KEY_SIZE} bytes")
    return AESSIV(hashlib.blake2b(key=key, person=_SIV_KEY_LABEL).digest())
