"""C2SP signed-note text: key IDs, verifier keys, strict parsing, and the verification policy.

No crypto here: the policy is exercised with stand-in verifiers that accept or refuse.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.note import (
    MAX_SIGNATURES,
    NoteSignature,
    SignedNote,
    VerifierKey,
    format_note,
    key_id,
    parse_note,
    parse_vkey,
    verify_signatures,
)

from .vectors import (
    ENOCH_SIG,
    ENOCH_VKEY,
    NOTE,
    PETER_SIG,
    PETER_VKEY,
    SUMDB_VKEY,
    TEXT,
)

# --- key IDs and verifier keys ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("vkey", "name", "expected_id"),
    [
        pytest.param(PETER_VKEY, "PeterNeumann", 0xC74F20A3, id="PeterNeumann"),
        pytest.param(ENOCH_VKEY, "EnochRoot", 0xAF0CFE78, id="EnochRoot"),
        pytest.param(SUMDB_VKEY, "sum.golang.org", 0x033DE0AE, id="sum.golang.org"),
    ],
)
def test_key_id_is_the_spec_formula_and_matches_published_keys(
    vkey: str, name: str, expected_id: int
) -> None:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian (C2SP signed-note)."""
    public_key = base64.b64decode(vkey.split("+", 2)[2])[1:]
    assert key_id(name, 0x01, public_key) == expected_id
    parsed = parse_vkey(vkey)
    assert (parsed.name, parsed.key_id, parsed.public_key) == (name, expected_id, public_key)
    assert parsed.vkey() == vkey


def _mangled(vkey: str) -> list[str]:
    """Every proper substring and every one-byte increment, as golang.org/x/mod's test does."""
    subs = {vkey[i:j] for i in range(len(vkey) + 1) for j in range(i + 1, len(vkey) + 1)}
    bumps = {vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :] for i in range(len(vkey))}
    return sorted((subs | bumps) - {vkey})


def test_every_mangling_of_a_verifier_key_is_rejected() -> None:
    for bad in _mangled(PETER_VKEY):
        with pytest.raises(MalformedError):
            parse_vkey(bad)


@pytest.mark.parametrize(
    "vkey",
    [
        # From golang.org/x/mod note_test.go: right key ID for the wrong key material.
        pytest.param(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
            id="wrong-length-key",
        ),
        pytest.param(
            "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            id="unknown-algorithm",
        ),
        pytest.param(PETER_VKEY.replace("c74f20a3", "C74F20A3"), id="uppercase-key-id"),
        pytest.param(PETER_VKEY.replace("c74f20a3", "c74f20a"), id="short-key-id"),
        pytest.param("Peter+Neumann" + PETER_VKEY[12:], id="plus-in-name"),
        pytest.param(PETER_VKEY[:-1] + "X", id="other-key-same-id"),
    ],
)
def test_malformed_verifier_keys(vkey: str) -> None:
    with pytest.raises(MalformedError):
        parse_vkey(vkey)


@pytest.mark.parametrize(
    "name",
    ["", "a+b", "a b", "a\u00a0b", "a\u2003b", "tab\there", "nl\n", "bell\x07"],
    ids=["empty", "plus", "space", "nbsp", "em-space", "tab", "newline", "control"],
)
def test_invalid_key_names(name: str) -> None:
    with pytest.raises(MalformedError):
        VerifierKey(name, bytes(32))


# --- parsing ---------------------------------------------------------------------------------


def test_parse_published_note() -> None:
    note = parse_note(NOTE)
    assert note.text == TEXT
    assert [(s.name, s.key_id, len(s.signature)) for s in note.signatures] == [
        ("PeterNeumann", 0xC74F20A3, 64)
    ]
    assert note.format() == NOTE
    assert parse_note(NOTE.encode()) == note


def test_text_may_contain_blank_lines_the_last_one_separates() -> None:
    note = parse_note("a\n\nb\n\n" + PETER_SIG)
    assert note.text == "a\n\nb\n"


MALFORMED = [
    # golang.org/x/mod sumdb/note TestOpen "badMsgs".
    pytest.param(TEXT, id="no-signature-block"),
    pytest.param(TEXT + "\n", id="no-signatures"),
    pytest.param(TEXT + "\n" + PETER_SIG[:-1], id="missing-final-newline"),
    pytest.param("\x01" + NOTE, id="control-character"),
    pytest.param(b"\xff" + NOTE.encode(), id="invalid-utf8"),
    pytest.param(TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"), id="space-in-name"),
    pytest.param(NOTE + "Unexpected line.\n", id="unexpected-line"),
    # Ours.
    pytest.param(TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1), id="too-many-signatures"),
    pytest.param(NOTE + "\n", id="trailing-blank-line"),
    pytest.param(NOTE.replace("\u2014", "\u2013"), id="en-dash"),
    pytest.param(NOTE.replace("\u2014", "-"), id="hyphen"),
    pytest.param(NOTE.replace("\u2014 ", "\u2014"), id="no-space-after-dash"),
    pytest.param(NOTE.replace("\u2014 ", "\u2014  "), id="two-spaces-after-dash"),
    pytest.param(NOTE.replace("Neumann ", "Neumann  "), id="two-spaces-before-signature"),
    pytest.param(NOTE.replace("AM=\n", "AM= \n"), id="trailing-space"),
    pytest.param(NOTE.replace("AM=\n", "AN=\n"), id="non-canonical-base64"),
    pytest.param(NOTE.replace("AM=\n", "AM\n"), id="missing-padding"),
    pytest.param(NOTE.replace("x08go/", "x08go!"), id="non-base64-character"),
    pytest.param(TEXT + "\n\u2014 PeterNeumann AAAAAA==\n", id="signature-without-bytes"),
    pytest.param(NOTE.replace("PeterNeumann", "Peter+Neumann"), id="plus-in-name"),
    pytest.param(NOTE.replace("\n", "\r\n"), id="crlf"),
    pytest.param("\n" + PETER_SIG, id="no-text-newline"),
]


@pytest.mark.parametrize("note", MALFORMED)
def test_malformed_notes_are_rejected(note: str | bytes) -> None:
    with pytest.raises(MalformedError):
        parse_note(note)


def test_sixteen_signatures_are_accepted() -> None:
    """C2SP signed-note: verifiers MUST accept at least 16 signatures."""
    assert len(parse_note(TEXT + "\n" + PETER_SIG * 16).signatures) == 16


names = st.text(
    st.characters(min_codepoint=0x21, exclude_characters="+", exclude_categories=["Cc", "Cs"]),
    min_size=1,
)
signatures = st.builds(
    NoteSignature,
    name=names.filter(lambda n: not any(c.isspace() for c in n)),
    key_id=st.integers(0, 2**32 - 1),
    signature=st.binary(min_size=1, max_size=80),
)
texts = st.text(st.characters(exclude_categories=["Cc", "Cs"]) | st.just("\n")).map(
    lambda t: t + "\n"
)


@given(texts, st.lists(signatures, min_size=1, max_size=MAX_SIGNATURES))
def test_format_then_parse_is_identity(text: str, sigs: list[NoteSignature]) -> None:
    formatted = format_note(text, sigs)
    assert parse_note(formatted) == SignedNote(text, tuple(sigs))


@pytest.mark.parametrize(
    ("text", "sigs"),
    [
        pytest.param("no newline", 1, id="text-without-final-newline"),
        pytest.param("tab\there\n", 1, id="control-character"),
        pytest.param("ok\n", 0, id="no-signature"),
        pytest.param("lone \ud800 surrogate\n", 1, id="not-utf8"),
    ],
)
def test_format_refuses_what_parse_would_reject(text: str, sigs: int) -> None:
    with pytest.raises(MalformedError):
        format_note(text, [NoteSignature("k", 1, b"s")] * sigs)


# --- verification policy (C2SP signed-note, "Signatures") ------------------------------------


@dataclass(frozen=True)
class Stub:
    """A verifier that accepts or refuses every signature."""

    name: str
    key_id: int
    accepts: bool = True

    def verify(self, message: bytes, signature: bytes) -> bool:
        return self.accepts


PETER, ENOCH = Stub("PeterNeumann", 0xC74F20A3), Stub("EnochRoot", 0xAF0CFE78)
BOTH = parse_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG)

POLICY = [
    pytest.param([PETER], ["PeterNeumann"], id="known-key-verifies"),
    pytest.param([PETER, ENOCH], ["PeterNeumann", "EnochRoot"], id="both-known"),
    pytest.param([Stub("PeterNeumann", 1), ENOCH], ["EnochRoot"], id="same-name-other-id-ignored"),
    pytest.param(
        [Stub("Peter", 0xC74F20A3), ENOCH], ["EnochRoot"], id="same-id-other-name-ignored"
    ),
    pytest.param([PETER, Stub("EnochRoot", 0xAF0CFE78, accepts=False)], None, id="known-key-bad"),
    pytest.param([Stub("Other", 7)], None, id="only-unknown-keys"),
    pytest.param([], None, id="no-verifiers"),
    pytest.param([PETER, PETER], None, id="ambiguous-verifiers"),
    pytest.param([ENOCH, ENOCH, PETER], None, id="ambiguous-even-if-another-verifies"),
]


@pytest.mark.parametrize(("verifiers", "verified"), POLICY)
def test_verification_policy(verifiers: list[Stub], verified: list[str] | None) -> None:
    if verified is None:
        with pytest.raises(VerificationError):
            verify_signatures(BOTH, verifiers)
    else:
        assert [s.name for s in verify_signatures(BOTH, verifiers)] == verified


def test_repeated_signature_lines_count_once() -> None:
    note = parse_note(TEXT + "\n" + PETER_SIG * 3)
    assert len(verify_signatures(note, [PETER])) == 1


def test_a_blank_line_between_signatures_moves_the_first_into_the_text() -> None:
    """The text ends at the *last* blank line, so the note stays well-formed, but the first
    signature is now signed text, and the note no longer verifies under its key."""
    note = parse_note(TEXT + "\n" + PETER_SIG + "\n" + ENOCH_SIG)
    assert note.text == TEXT + "\n" + PETER_SIG
    assert [s.name for s in note.signatures] == ["EnochRoot"]
    with pytest.raises(VerificationError):
        verify_signatures(note, [PETER])
