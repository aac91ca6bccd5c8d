"""Ed25519 signed notes and checkpoints: published known answers, policy, and tampering."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import LedgerError, MalformedError, VerificationError
from middleware.ledger.merkle import EMPTY_ROOT
from middleware.ledger.signing import (
    SigningKey,
    Verifier,
    keyed_digest,
    verify_checkpoint,
    verify_note,
)

from .vectors import (
    ENOCH_SIG,
    ENOCH_VKEY,
    NOTE,
    PETER_SIG,
    PETER_SKEY,
    PETER_VKEY,
    SUMDB_CHECKPOINT,
    SUMDB_VKEY,
    TEXT,
)

PETER = Verifier.from_vkey(PETER_VKEY)
ENOCH = Verifier.from_vkey(ENOCH_VKEY)
SUMDB = Verifier.from_vkey(SUMDB_VKEY)
KEY = SigningKey.from_seed("consentry.example/ledger", bytes(range(32)))

# --- known answers ---------------------------------------------------------------------------


def test_signing_reproduces_the_published_note_byte_for_byte() -> None:
    """Ed25519 is deterministic: same key and text, same note as golang.org/x/mod."""
    key = SigningKey.from_skey(PETER_SKEY)
    assert key.vkey() == PETER_VKEY
    assert key.key_id == 0xC74F20A3
    assert key.skey() == PETER_SKEY
    assert key.sign_note(TEXT) == NOTE
    assert key.sign_note(TEXT.encode()) == NOTE


def test_published_note_verifies() -> None:
    note = verify_note(NOTE, [PETER])
    assert note.text == TEXT
    assert [s.name for s in note.signatures] == ["PeterNeumann"]


def test_published_sumdb_checkpoint_verifies() -> None:
    checkpoint = verify_checkpoint(SUMDB_CHECKPOINT, [SUMDB], origin="go.sum database tree")
    assert (checkpoint.origin, checkpoint.size) == ("go.sum database tree", 30055305)
    assert checkpoint.root_hash.hex() == (
        "9977e045c2746c6d23dc23dd2b08065ad5330546d7ebbb1a64646616e2461ac3"
    )


def test_checkpoint_for_another_origin_is_rejected() -> None:
    with pytest.raises(VerificationError) as caught:
        verify_checkpoint(SUMDB_CHECKPOINT, [SUMDB], origin="consentry.example/ledger")
    assert caught.value.expected == "consentry.example/ledger"
    assert caught.value.computed == "go.sum database tree"


# --- the signed-note policy with real signatures (cases of golang.org/x/mod TestOpen) ---------

TWO = TEXT + "\n" + PETER_SIG + ENOCH_SIG
CORRUPT_PETER = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
CORRUPT_ENOCH = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]


@pytest.mark.parametrize(
    ("note", "verifiers", "verified"),
    [
        pytest.param(TWO, [PETER], ["PeterNeumann"], id="one-known-one-unknown"),
        pytest.param(TWO, [PETER, ENOCH], ["PeterNeumann", "EnochRoot"], id="both-known"),
        pytest.param(TWO, [], None, id="no-known-key"),
        pytest.param(TEXT + "\n" + CORRUPT_PETER, [PETER], None, id="known-key-bad-signature"),
        pytest.param(
            TEXT + "\n" + PETER_SIG + CORRUPT_ENOCH, [PETER, ENOCH], None, id="one-bad-of-two"
        ),
        pytest.param(
            TEXT + "\n" + PETER_SIG * 2 + ENOCH_SIG * 2 + CORRUPT_ENOCH,
            [PETER],
            ["PeterNeumann"],
            id="bad-signature-by-unknown-key-ignored",
        ),
        pytest.param(
            NOTE.replace("cryptography", "cryptographY"), [PETER], None, id="tampered-text"
        ),
        pytest.param(NOTE, [SUMDB], None, id="other-key"),
    ],
)
def test_verify_note(note: str, verifiers: list[Verifier], verified: list[str] | None) -> None:
    if verified is None:
        with pytest.raises(VerificationError):
            verify_note(note, verifiers)
    else:
        assert [s.name for s in verify_note(note, verifiers).signatures] == verified


def test_verify_checkpoint_checks_signatures_before_parsing_the_body() -> None:
    with pytest.raises(VerificationError):
        verify_checkpoint(NOTE, [])  # not a checkpoint, but unsigned is what is reported
    with pytest.raises(MalformedError):
        verify_checkpoint(NOTE, [PETER])  # signed, but not a checkpoint


# --- our own keys ----------------------------------------------------------------------------


@settings(max_examples=50)
@given(
    size=st.integers(0, 2**64 - 1),
    root_hash=st.binary(min_size=32, max_size=32),
)
def test_signed_checkpoint_round_trips(size: int, root_hash: bytes) -> None:
    checkpoint = Checkpoint(KEY.name, size, root_hash)
    note = KEY.sign_checkpoint(checkpoint)
    assert verify_checkpoint(note, [Verifier.from_vkey(KEY.vkey())], origin=KEY.name) == checkpoint


@settings(max_examples=200)
@given(st.data())
def test_changing_any_byte_of_a_signed_checkpoint_breaks_it(data: st.DataObject) -> None:
    note = bytearray(KEY.sign_checkpoint(Checkpoint(KEY.name, 42, EMPTY_ROOT)).encode())
    at = data.draw(st.integers(0, len(note) - 1), label="offset")
    note[at] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(LedgerError):
        verify_checkpoint(bytes(note), [KEY.verifier()])


def test_generated_keys_are_distinct_and_work() -> None:
    a, b = SigningKey.generate("log.example/a"), SigningKey.generate("log.example/a")
    assert a.seed != b.seed
    assert a.key_id != b.key_id
    note = a.sign_note("hello\n")
    assert verify_note(note, [b.verifier(), a.verifier()]).text == "hello\n"
    with pytest.raises(VerificationError):  # same name, other key ID: unknown, ignored
        verify_note(note, [b.verifier()])


def test_seed_is_not_in_repr() -> None:
    assert bytes(range(32)).hex() not in repr(KEY)
    assert repr(bytes(range(32))) not in repr(KEY)


@pytest.mark.parametrize(
    ("name", "seed"),
    [
        pytest.param("", bytes(32), id="empty-name"),
        pytest.param("a+b", bytes(32), id="plus-in-name"),
        pytest.param("a b", bytes(32), id="space-in-name"),
        pytest.param("log", bytes(31), id="short-seed"),
        pytest.param("log", bytes(33), id="long-seed"),
    ],
)
def test_invalid_signing_keys(name: str, seed: bytes) -> None:
    with pytest.raises(MalformedError):
        SigningKey(name, seed)


@pytest.mark.parametrize(
    "skey",
    [
        pytest.param(PETER_SKEY.replace("PRIVATE+KEY+", ""), id="no-prefix"),
        pytest.param(PETER_SKEY.replace("c74f20a3", "c74f20a4"), id="wrong-key-id"),
        pytest.param(PETER_SKEY.replace("+AYEK", "+AoEK"), id="unknown-type"),
        pytest.param(PETER_SKEY[:-4], id="truncated"),
    ],
)
def test_malformed_signing_key_strings(skey: str) -> None:
    with pytest.raises(MalformedError):
        SigningKey.from_skey(skey)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("no final newline", id="no-final-newline"),
        pytest.param(b"\xff\n", id="not-utf8"),
        pytest.param("tab\there\n", id="control-character"),
    ],
)
def test_sign_note_refuses_invalid_text(body: str | bytes) -> None:
    with pytest.raises(MalformedError):
        KEY.sign_note(body)


def test_verifier_refuses_signatures_of_the_wrong_length() -> None:
    signature = KEY.sign(b"m")
    verifier = KEY.verifier()
    assert verifier.verify(b"m", signature)
    assert not verifier.verify(b"m", signature[:-1])
    assert not verifier.verify(b"m", signature + b"\x00")
    assert not verifier.verify(b"n", signature)


# -- keyed_digest ------------------------------------------------------------------------------

# Computed with OpenSSL, not with this code: printf '\0\0\0\0\0\0\0\2\0\0\0\0\0\0\0\1a'
# '\0\0\0\0\0\0\0\2bc' | openssl dgst -sha256 -mac HMAC -macopt hexkey:000102...1e1f
_KEYED_DIGEST_ANSWER = "5dee9bd48131b9848b102ce0db165a7a3dd418ff4e60b180e8cdebae5339645a"


def test_keyed_digest_is_hmac_sha256_of_the_length_prefixed_parts() -> None:
    assert keyed_digest(bytes(range(32)), [b"a", b"bc"]).hex() == _KEYED_DIGEST_ANSWER


def test_keyed_digest_separates_parts_and_keys() -> None:
    """Moving a byte from one part to the next, or another key, gives another digest: a caller
    binding cannot be shifted into the key it is joined with."""
    key = bytes(range(32))
    assert keyed_digest(key, [b"ab", b"c"]) != keyed_digest(key, [b"a", b"bc"])
    assert keyed_digest(key, [b"abc"]) != keyed_digest(key, [b"abc", b""])
    assert keyed_digest(bytes(32), [b"a", b"bc"]) != keyed_digest(key, [b"a", b"bc"])


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)], ids=["empty", "short", "long"])
def test_keyed_digest_refuses_a_key_of_the_wrong_size(key: bytes) -> None:
    with pytest.raises(MalformedError):
        keyed_digest(key, [b"x"])
