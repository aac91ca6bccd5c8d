"""C2SP tlog-cosignature (Ed25519 ``cosignature/v1``): layout from the spec's example, signatures
checked against an independent Ed25519 (OpenSSL through ``cryptography``), quorum policy,
round-trips and tampering."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.cosignature import (
    MAX_TIMESTAMP,
    Cosignature,
    WitnessKey,
    cosigned_message,
    parse_cosignature,
    parse_cosignature_lines,
    parse_witness_vkey,
    verify_cosignatures,
)
from middleware.ledger.errors import LedgerError, MalformedError, VerificationError
from middleware.ledger.note import NoteSignature, parse_note
from middleware.ledger.signing import (
    CosignatureVerifier,
    Cosigner,
    SigningKey,
    verify_checkpoint,
)

# The example of C2SP tlog-cosignature ("Format" and "Ed25519 signed message").
SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_COSIGNATURE = (
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJ"
    "sX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
SPEC_MESSAGE = (
    "cosignature/v1\ntime 1679315147\n"
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
# RFC 8032 §7.1, TEST 1: secret key and public key.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

LOG = SigningKey.from_seed("consentry.example/ledger", bytes(range(32)))
W1 = Cosigner("witness.example/w1", RFC8032_SEED)
W2 = Cosigner("witness.example/w2", bytes(range(1, 33)))
W3 = Cosigner("witness.example/w3", bytes(range(2, 34)))
BODY = Checkpoint("consentry.example/ledger", 5, hashlib.sha256(b"root").digest()).body()
T = 1_800_000_000


def _witnessed(*cosigners: Cosigner, timestamp: int = T) -> str:
    return LOG.sign_note(BODY) + "".join(c.cosign(BODY, timestamp).line() for c in cosigners)


def _verifiers(*cosigners: Cosigner) -> list[CosignatureVerifier]:
    return [CosignatureVerifier(c.witness_key) for c in cosigners]


# --- known answers ---------------------------------------------------------------------------


def test_the_spec_example_line_carries_its_key_id_and_the_time_of_the_spec_message() -> None:
    """tlog-cosignature's example line is key ID || u64 BE timestamp || 64-byte signature, and
    its timestamp is the ``time 1679315147`` of the spec's signed-message example."""
    (line,) = parse_note(SPEC_BODY + "\n" + SPEC_COSIGNATURE).signatures
    cosignature = parse_cosignature(line)
    assert cosignature.name == "witness.example.com/w1"
    assert cosignature.key_id == 0x8D66CF3F
    assert cosignature.timestamp == 1679315147
    assert cosigned_message(SPEC_BODY, cosignature.timestamp) == SPEC_MESSAGE.encode()
    assert cosignature.line() == SPEC_COSIGNATURE


def test_key_id_and_vkey_follow_the_spec_formula_with_type_0x04() -> None:
    name = "witness.example/w1"
    digest = hashlib.sha256(name.encode() + b"\n\x04" + RFC8032_PUBLIC).digest()
    assert W1.witness_key.public_key == RFC8032_PUBLIC
    assert W1.key_id == int.from_bytes(digest[:4], "big")
    material = base64.b64encode(b"\x04" + RFC8032_PUBLIC).decode()
    assert W1.vkey() == f"{name}+{digest[:4].hex()}+{material}"
    assert parse_witness_vkey(W1.vkey()) == W1.witness_key


def test_a_cosignature_is_the_independent_ed25519_signature_of_the_cosigned_message() -> None:
    """OpenSSL's Ed25519 (deterministic, RFC 8032) signs the spec-formatted message to the very
    bytes the cosigner produced, and the line's payload is key ID || timestamp || signature."""
    expected = Ed25519PrivateKey.from_private_bytes(RFC8032_SEED).sign(
        f"cosignature/v1\ntime {T}\n{BODY}".encode()
    )
    cosignature = W1.cosign(BODY, T)
    assert cosignature.signature == expected
    blob = base64.b64decode(cosignature.line().split(" ")[2])
    assert blob == W1.key_id.to_bytes(4, "big") + T.to_bytes(8, "big") + expected


def test_the_secret_key_round_trips_and_says_its_type() -> None:
    skey = W1.skey()
    assert skey.startswith("PRIVATE+KEY+witness.example/w1+")
    assert base64.b64decode(skey.rsplit("+", 1)[1])[0] == 0x04
    assert Cosigner.from_skey(skey).vkey() == W1.vkey()
    with pytest.raises(MalformedError):
        Cosigner.from_skey(LOG.skey())  # a log's note key (0x01) is not a witness key
    with pytest.raises(MalformedError):
        SigningKey.from_skey(skey)
    assert "PRIVATE" not in repr(W1)


# --- the quorum policy -------------------------------------------------------------------------


def test_quorum_met_returns_the_witnesses_that_cosigned() -> None:
    note = _witnessed(W1, W2)
    assert verify_checkpoint(note, [LOG.verifier()]).size == 5  # the log's line still verifies
    assert verify_cosignatures(note, _verifiers(W1, W2, W3), 2) == {W1.name, W2.name}


@pytest.mark.parametrize(
    ("cosigners", "configured", "quorum"),
    [
        ((W1,), (W1, W2), 2),
        ((), (W1,), 1),
        ((W3,), (W1, W2), 1),  # an unknown witness's line counts for nothing
    ],
    ids=["one-short", "none", "unknown-witness"],
)
def test_too_few_cosignatures_fail(
    cosigners: tuple[Cosigner, ...], configured: tuple[Cosigner, ...], quorum: int
) -> None:
    with pytest.raises(VerificationError) as info:
        verify_cosignatures(_witnessed(*cosigners), _verifiers(*configured), quorum)
    assert info.value.expected == quorum


def test_a_witness_counts_once_however_many_lines_it_adds() -> None:
    note = LOG.sign_note(BODY) + W1.cosign(BODY, T).line() + W1.cosign(BODY, T + 1).line()
    with pytest.raises(VerificationError):
        verify_cosignatures(note, _verifiers(W1, W2), 2)
    assert verify_cosignatures(note, _verifiers(W1, W2), 1) == {W1.name}


@pytest.mark.parametrize("quorum", [0, -1, 3], ids=["zero", "negative", "above-witnesses"])
def test_a_quorum_outside_1_to_n_is_a_configuration_error(quorum: int) -> None:
    with pytest.raises(MalformedError):
        verify_cosignatures(_witnessed(W1, W2), _verifiers(W1, W2), quorum)


def test_the_same_witness_configured_twice_is_refused() -> None:
    with pytest.raises(MalformedError):
        verify_cosignatures(_witnessed(W1), _verifiers(W1, W1), 1)


def test_a_cosignature_on_another_checkpoint_is_rejected() -> None:
    other = Checkpoint("consentry.example/ledger", 6, hashlib.sha256(b"x").digest()).body()
    note = LOG.sign_note(BODY) + W1.cosign(other, T).line()
    with pytest.raises(VerificationError):
        verify_cosignatures(note, _verifiers(W1), 1)


def test_a_note_signature_by_the_witness_key_is_not_a_cosignature() -> None:
    """Key type separation: the witness's seed signing the plain note (type 0x01 key ID) makes
    a line no cosignature verifier matches."""
    as_note_key = SigningKey.from_seed(W1.name, RFC8032_SEED)
    note = LOG.sign_note(BODY) + parse_note(as_note_key.sign_note(BODY)).signatures[0].line()
    with pytest.raises(VerificationError):
        verify_cosignatures(note, _verifiers(W1), 1)


def test_a_future_timestamp_is_rejected_when_asked() -> None:
    note = _witnessed(W1, timestamp=T + 3600)
    assert verify_cosignatures(note, _verifiers(W1), 1, not_after=T + 3600) == {W1.name}
    with pytest.raises(VerificationError):
        verify_cosignatures(note, _verifiers(W1), 1, not_after=T)


def test_a_changed_timestamp_breaks_the_signature() -> None:
    good = W1.cosign(BODY, T)
    moved = Cosignature(good.name, good.key_id, T + 1, good.signature)
    with pytest.raises(VerificationError):
        verify_cosignatures(LOG.sign_note(BODY) + moved.line(), _verifiers(W1), 1)


def test_a_malformed_payload_from_a_known_witness_rejects_the_note() -> None:
    short = NoteSignature(W1.name, W1.key_id, bytes(71))
    with pytest.raises(VerificationError):
        verify_cosignatures(LOG.sign_note(BODY) + short.line(), _verifiers(W1), 1)


@pytest.mark.parametrize("timestamp", [-1, MAX_TIMESTAMP + 1], ids=["negative", "above-2**63-1"])
def test_timestamps_outside_the_spec_range_are_malformed(timestamp: int) -> None:
    with pytest.raises(MalformedError):
        W1.cosign(BODY, timestamp)


def test_a_witness_answer_parses_by_appending_it_to_the_checkpoint() -> None:
    answer = W1.cosign(BODY, T).line() + W2.cosign(BODY, T).line()
    lines = parse_cosignature_lines(answer, BODY)
    assert [line.name for line in lines] == [W1.name, W2.name]
    for bad in ("", "garbage\n", answer.rstrip("\n")):
        with pytest.raises(MalformedError):
            parse_cosignature_lines(bad, BODY)


@pytest.mark.parametrize(
    "vkey",
    [
        W1.witness_key.vkey().replace("+", "+0", 1),
        LOG.vkey(),  # a note key (type 0x01)
        f"{W1.name}+{W1.key_id:08x}+" + base64.b64encode(b"\x04" + bytes(31)).decode(),
        f"other+{W1.key_id:08x}+" + W1.vkey().rsplit("+", 1)[1],
    ],
    ids=["bad-id-digits", "note-key", "short-key", "id-mismatch"],
)
def test_bad_witness_vkeys_are_malformed(vkey: str) -> None:
    with pytest.raises(MalformedError):
        parse_witness_vkey(vkey)


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(timestamp=st.integers(0, MAX_TIMESTAMP), size=st.integers(0, 2**64 - 1))
def test_cosign_then_verify_round_trips(timestamp: int, size: int) -> None:
    body = Checkpoint("consentry.example/ledger", size, bytes(32)).body()
    cosignature = W2.cosign(body, timestamp)
    (line,) = parse_note(body + "\n" + cosignature.line()).signatures
    assert parse_cosignature(line) == cosignature
    note = LOG.sign_note(body) + cosignature.line()
    assert verify_cosignatures(note, _verifiers(W2), 1) == {W2.name}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_flipping_any_byte_of_a_cosignature_line_breaks_it(data: st.DataObject) -> None:
    line = W1.cosign(BODY, T).line()
    blob = bytearray(base64.b64decode(line.split(" ")[2]))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    tampered = f"\u2014 {W1.name} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(LedgerError):
        verify_cosignatures(LOG.sign_note(BODY) + tampered, _verifiers(W1), 1)


def test_witness_key_validates_on_construction() -> None:
    with pytest.raises(MalformedError):
        WitnessKey("w", bytes(31))
    with pytest.raises(MalformedError):
        WitnessKey("bad name", bytes(32))
