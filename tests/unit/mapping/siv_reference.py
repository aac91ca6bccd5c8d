"""An independent reference of the SIV construction and the opaque client-id format, written
from their documentation (``middleware/ledger/signing.py``, ``middleware/mapping/ids.py``) with
``hashlib`` BLAKE2b, ``cryptography``'s ChaCha20 and a from-scratch HChaCha20, never calling
the code under test: known answers are checked against this, not against our own output.

XChaCha20 (draft-irtf-cfrg-xchacha-03 §2.3): HChaCha20 of the key and the nonce's first 16
bytes gives a subkey; ChaCha20 (RFC 8439) under it with nonce ``0^4 || nonce[16:24]``. The
IETF XChaCha20-Poly1305 AEAD's ciphertext is that keystream from block counter 1 (block 0
keys Poly1305, RFC 8439 §2.8).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."
_MASK = 0xFFFFFFFF


def _rotl(value: int, count: int) -> int:
    return ((value << count) & _MASK) | (value >> (32 - count))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    """The ChaCha quarter round (RFC 8439 §2.1) on state words ``a, b, c, d``."""
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha-03 §2.2): 20 rounds, no final addition, words
    0..3 and 12..15 of the state."""
    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    state += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        for a, b, c, d in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15)):
            _quarter(state, a, b, c, d)
        for a, b, c, d in ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
            _quarter(state, a, b, c, d)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def xchacha20_stream(key: bytes, nonce24: bytes, size: int, counter: int = 1) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    full_nonce = struct.pack("<I", counter) + bytes(4) + nonce24[16:24]
    encryptor = Cipher(algorithms.ChaCha20(subkey, full_nonce), mode=None).encryptor()
    return encryptor.update(bytes(size))


def siv_encrypt(key: bytes, plaintext: bytes, associated: Sequence[bytes] = ()) -> bytes:
    """As documented: keys are BLAKE2b-256 of ``key`` personalised ``consentry/siv/mk`` and
    ``consentry/siv/ek``; the tag is BLAKE2b-128 keyed with the MAC key, personalised
    ``consentry/siv/v1``, over the count of associated parts then each part and the plaintext
    with an 8-byte big-endian length prefix; ciphertext = plaintext XOR XChaCha20 keystream
    (nonce ``tag || 0^8``)."""
    mac_key = hashlib.blake2b(key=key, digest_size=32, person=b"consentry/siv/mk").digest()
    stream_key = hashlib.blake2b(key=key, digest_size=32, person=b"consentry/siv/ek").digest()
    mac = hashlib.blake2b(key=mac_key, digest_size=16, person=b"consentry/siv/v1")
    mac.update(len(associated).to_bytes(8, "big"))
    for part in (*associated, plaintext):
        mac.update(len(part).to_bytes(8, "big") + part)
    tag = mac.digest()
    stream = xchacha20_stream(stream_key, tag + bytes(8), len(plaintext))
    return tag + bytes(p ^ s for p, s in zip(plaintext, stream, strict=True))


def pack(local_id: str) -> bytes:
    """The documented packing: a lowercase UUID is header sextet 0 and its 128 bits (17
    bytes); otherwise a length sextet and one sextet per character, zero-padded to 17 bytes
    (up to 21 characters) or 32 bytes (up to 41)."""
    hexdigits = local_id.replace("-", "")
    if len(local_id) == 36 and local_id.count("-") == 4 and hexdigits == hexdigits.lower():
        bits = "000000" + format(int(hexdigits, 16), "0128b")
        size = 17
    else:
        bits = format(len(local_id), "06b") + "".join(
            format(ALPHABET.index(c), "06b") for c in local_id
        )
        size = 17 if len(local_id) <= 21 else 32
    bits = bits.ljust(8 * size, "0")
    return int(bits, 2).to_bytes(size, "big")


def client_id(key: bytes, upstream: str, resource_type: str, local_id: str) -> str:
    """The documented opaque client id: base64 (``+/`` as ``-.``) of the SIV of the packed
    local id, associated data ``consentry/ids/v1``, the type, the upstream."""
    associated = (b"consentry/ids/v1", resource_type.encode(), upstream.encode())
    sealed = siv_encrypt(key, pack(local_id), associated)
    return base64.b64encode(sealed).decode().replace("+", "-").replace("/", ".")
