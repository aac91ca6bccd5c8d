"""tlog-witness ``add-checkpoint``: every status the spec prescribes and the state the witness
keeps (a real SQLite state file; real Ed25519 keys). Evidence: ``test_evidence``; races and a
failing state file: ``test_races``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.cosignature import parse_cosignature_lines, verify_cosignatures
from middleware.ledger.merkle import consistency_proof, leaf_hash, root
from middleware.ledger.note import SignedNote, parse_note
from middleware.ledger.signing import CosignatureVerifier, Cosigner, SigningKey
from middleware.witness.protocol import (
    MAX_BODY_BYTES,
    SIZE_CONTENT_TYPE,
    LogConfig,
    format_submission,
)
from middleware.witness.service import Witness
from middleware.witness.state import WitnessState

ORIGIN = "consentry.example/ledger"
LOG = SigningKey.from_seed(ORIGIN, bytes(range(32)))
IMPOSTOR = SigningKey.from_seed(ORIGIN, bytes([7]) * 32)
OTHER = SigningKey.from_seed("other.example/log", bytes([8]) * 32)
WITNESS = Cosigner("witness.example/w1", bytes([5]) * 32)
T = 1_800_000_000
HASHES = [leaf_hash(f"leaf {n}".encode()) for n in range(16)]
FORKED = [*HASHES[:2], leaf_hash(b"forked"), *HASHES[3:]]


def note(size: int, *, key: SigningKey = LOG, leaves: list[bytes] = HASHES, ext: str = "") -> str:
    extensions = (ext,) if ext else ()
    return key.sign_checkpoint(Checkpoint(key.name, size, root(leaves[:size]), extensions))


def body(old: int, new: int, *, key: SigningKey = LOG, ext: str = "") -> bytes:
    proof = consistency_proof(HASHES, old, new) if 0 < old < new else []
    return format_submission(old, proof, note(new, key=key, ext=ext))


@dataclass
class Setup:
    witness: Witness
    state: WitnessState


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    state = WitnessState(tmp_path / "witness.db")
    logs = {ORIGIN: LogConfig(ORIGIN, (LOG.verifier(),))}
    yield Setup(Witness(logs, state, WITNESS, clock=lambda: T), state)
    state.close()


async def _accept(setup: Setup, old: int, new: int) -> None:
    answer = await setup.witness.add_checkpoint(body(old, new))
    assert answer.status == 200, answer.body


# --- success ---------------------------------------------------------------------------------


async def test_the_first_checkpoint_is_cosigned_and_remembered(setup: Setup) -> None:
    answer = await setup.witness.add_checkpoint(body(0, 4))
    assert answer.status == 200
    checkpoint = note(4)
    lines = parse_cosignature_lines(answer.body, checkpoint.split("\n\n")[0] + "\n")
    witnessed = checkpoint + "".join(line.line() for line in lines)
    verifier = CosignatureVerifier(WITNESS.witness_key)
    assert verify_cosignatures(witnessed, [verifier], 1) == {WITNESS.name}
    assert lines[0].signature[:8] == T.to_bytes(8, "big")
    state = setup.state.get(ORIGIN)
    assert (state.size, state.root_hash, state.note) == (4, root(HASHES[:4]), checkpoint)


async def test_an_extension_with_a_valid_proof_is_cosigned(setup: Setup) -> None:
    await _accept(setup, 0, 4)
    await _accept(setup, 4, 11)
    await _accept(setup, 11, 11)  # the same checkpoint again: cosigned again
    assert setup.state.get(ORIGIN).size == 11


async def test_extension_lines_are_cosigned_with_the_body(setup: Setup) -> None:
    answer = await setup.witness.add_checkpoint(body(0, 3, ext="gateway/v1 extra"))
    assert answer.status == 200
    text = note(3, ext="gateway/v1 extra")
    witnessed = text + answer.body
    verifier = CosignatureVerifier(WITNESS.witness_key)
    assert verify_cosignatures(witnessed, [verifier], 1) == {WITNESS.name}


async def test_state_survives_reopening_the_file(setup: Setup, tmp_path: Path) -> None:
    await _accept(setup, 0, 5)
    again = WitnessState(tmp_path / "witness.db")
    try:
        assert again.get(ORIGIN).size == 5
    finally:
        again.close()


# --- refusals (one row per status of tlog-witness) --------------------------------------------


def _with_bad_signature() -> bytes:
    text = note(4)
    head, sig = text.rsplit(" ", 1)
    flipped = ("A" if sig[10] != "A" else "B").join((sig[:10], sig[11:]))
    return format_submission(0, [], f"{head} {flipped}")


REFUSALS: list[tuple[str, int, int, Callable[[], bytes], int, str | None]] = [
    # (id, accepted before: old, new) then the request and the status (and 409's size body)
    ("unknown-log", 0, 0, lambda: format_submission(0, [], note(3, key=OTHER)), 404, None),
    ("signed-by-another-key", 0, 0, lambda: body(0, 4, key=IMPOSTOR), 403, None),
    ("bad-signature", 0, 0, _with_bad_signature, 403, None),
    ("old-above-new", 0, 4, lambda: format_submission(6, [], note(5)), 400, None),
    ("old-not-remembered", 0, 4, lambda: body(5, 8), 409, "4\n"),
    ("old-zero-after-cosigning", 0, 4, lambda: body(0, 8), 409, "4\n"),
    ("rollback-old-is-new", 0, 8, lambda: body(4, 4), 409, "8\n"),
    ("rollback-old-remembered", 0, 8, lambda: format_submission(8, [], note(4)), 400, None),
    (
        "bad-proof",
        0,
        4,
        lambda: format_submission(4, consistency_proof(HASHES, 3, 8), note(8)),
        422,
        None,
    ),
    ("proof-from-empty", 0, 0, lambda: format_submission(0, [HASHES[0]], note(4)), 422, None),
    (
        "fork-bigger",
        0,
        4,
        lambda: format_submission(4, consistency_proof(FORKED, 4, 8), note(8, leaves=FORKED)),
        422,
        None,
    ),
    ("fork-same-size", 0, 8, lambda: format_submission(8, [], note(8, leaves=FORKED)), 409, None),
    ("proof-at-same-size", 0, 8, lambda: format_submission(8, [HASHES[0]], note(8)), 422, None),
]


@pytest.mark.parametrize(
    ("before_old", "before_new", "request_body", "status", "size_body"),
    [pytest.param(*row[1:], id=row[0]) for row in REFUSALS],
)
async def test_refusals(
    setup: Setup,
    before_old: int,
    before_new: int,
    request_body: Callable[[], bytes],
    status: int,
    size_body: str | None,
) -> None:
    if before_new:
        await _accept(setup, before_old, before_new)
    remembered = setup.state.get(ORIGIN)
    answer = await setup.witness.add_checkpoint(request_body())
    assert answer.status == status, answer.body
    if size_body is not None:
        assert (answer.body, answer.content_type) == (size_body, SIZE_CONTENT_TYPE)
    else:
        assert answer.content_type != SIZE_CONTENT_TYPE
        assert not answer.body.startswith("\u2014")
    assert setup.state.get(ORIGIN) == remembered  # a refusal never moves the state


async def test_client_mistakes_are_not_evidence(setup: Setup) -> None:
    proof = [HASHES[0]]
    assert (await setup.witness.add_checkpoint(format_submission(0, proof, note(4)))).status == 422
    await _accept(setup, 0, 4)
    assert (await setup.witness.add_checkpoint(format_submission(4, proof, note(4)))).status == 422
    assert (await setup.witness.add_checkpoint(body(5, 8))).status == 409
    assert (await setup.witness.add_checkpoint(body(0, 4, key=IMPOSTOR))).status == 403
    assert setup.state.forks(ORIGIN) == []


MALFORMED = [
    (b"", "empty"),
    (b"garbage", "garbage"),
    (b"old 0\n" + note(4).encode(), "no-blank-line"),
    (b"old 01\n\n" + note(4).encode(), "leading-zero"),
    (b"new 0\n\n" + note(4).encode(), "not-old"),
    (b"old -1\n\n" + note(4).encode(), "negative"),
    (b"old 99999999999999999999\n\n" + note(4).encode(), "above-uint64"),
    (b"old 0\nnot base64!\n\n" + note(4).encode(), "bad-base64"),
    (b"old 0\nAAAA\n\n" + note(4).encode(), "short-hash"),
    (b"old 0\n" + b"".join([b"A" * 43 + b"=\n"] * 64) + b"\n" + note(4).encode(), "64-lines"),
    (b"old 0\n\n\xff\xfe", "not-utf8"),
    (b"old 0\n\n" + note(4).encode().replace(b"\xe2\x80\x94", b"--"), "no-em-dash"),
    (b"old 0\n\n" + note(4).encode().rstrip(b"\n"), "unterminated"),
    (b"old 0\n\n" + LOG.sign_note(f"{ORIGIN}\n4\n").encode(), "two-line-checkpoint"),
    (b"old 0\n\n" + LOG.sign_note(f"{ORIGIN}\n04\nAAAA\n").encode(), "bad-size"),
]


@pytest.mark.parametrize("request_body", [m[0] for m in MALFORMED], ids=[m[1] for m in MALFORMED])
async def test_malformed_bodies_are_400(setup: Setup, request_body: bytes) -> None:
    answer = await setup.witness.add_checkpoint(request_body)
    assert answer.status == 400, answer.body


async def test_a_body_above_the_limit_is_413(setup: Setup) -> None:
    answer = await setup.witness.add_checkpoint(b"old 0\n" + b"x" * MAX_BODY_BYTES)
    assert answer.status == 413


def test_a_signed_note_round_trips_its_format() -> None:
    """The witness stores ``note.format()``: the note as the log signed it, byte for byte."""
    parsed: SignedNote = parse_note(note(4))
    assert parsed.format() == note(4)
