"""An independent reference of the SIV construction and the opaque client-id format, written
from their documentation (``middleware/ledger/signing.py``, ``middleware/mapping/ids.py``) and
RFC 5297 with ``hashlib`` BLAKE2b and ``cryptography``'s raw AES block and CMAC primitives,
never calling the code under test (nor ``cryptography``'s AES-SIV it wraps): known answers are
checked against this, not against our own output.

AES-SIV (RFC 5297 §2.4 S2V, §2.6 encryption): ``V = S2V(K1, AD1, ..., ADn, P)`` with AES-CMAC
(RFC 4493), then ``C = P XOR AES-CTR(K2, Q)`` where ``Q`` is ``V`` with bits 63 and 31 cleared.
The reference is checked against RFC 5297's appendix A.1 vector.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."
_BLOCK = 16
_RB = 0x87  # RFC 5297 §2.3 / RFC 4493: the constant of doubling in GF(2^128)


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _dbl(block: bytes) -> bytes:
    """RFC 5297 §2.3: multiplication by x in GF(2^128)."""
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value ^ _RB) & ((1 << 128) - 1)
    return value.to_bytes(_BLOCK, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def s2v(key: bytes, strings: Sequence[bytes]) -> bytes:
    """RFC 5297 §2.4: S2V of the header vector and the plaintext (its last element)."""
    d = _cmac(key, bytes(_BLOCK))
    for string in strings[:-1]:
        d = _xor(_dbl(d), _cmac(key, string))
    last = strings[-1]
    if len(last) >= _BLOCK:
        t = last[:-_BLOCK] + _xor(last[-_BLOCK:], d)
    else:
        padded = last + b"\x80" + bytes(_BLOCK - 1 - len(last))
        t = _xor(_dbl(d), padded)
    return _cmac(key, t)


def aes_siv(key: bytes, plaintext: bytes, associated: Sequence[bytes]) -> bytes:
    """RFC 5297 §2.6: ``V || C`` under ``key = K1 || K2``."""
    half = len(key) // 2
    v = s2v(key[:half], [*associated, plaintext])
    q = int.from_bytes(v, "big") & ~((1 << 63) | (1 << 31))
    counter = q.to_bytes(_BLOCK, "big")
    encryptor = Cipher(algorithms.AES(key[half:]), modes.CTR(counter)).encryptor()
    return v + encryptor.update(plaintext) + encryptor.finalize()


def siv_encrypt(key: bytes, plaintext: bytes, associated: Sequence[bytes] = ()) -> bytes:
    """As documented: AES-256-SIV under BLAKE2b-512 of ``key`` personalised
    ``consentry/siv/v2``, ``associated`` as the header vector."""
    siv_key = hashlib.blake2b(key=key, digest_size=64, person=b"consentry/siv/v2").digest()
    return aes_siv(siv_key, plaintext, associated)


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
