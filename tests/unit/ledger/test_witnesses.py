"""The log side of C2SP tlog-witness: the ``witnesses`` setting, the ``add-checkpoint`` request
body, the 409 answer's size, and appending cosignatures to a note."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from middleware.errors import SettingsError
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import MalformedError
from middleware.ledger.note import parse_note
from middleware.ledger.signing import Cosigner, SigningKey
from middleware.ledger.witnesses import (
    WitnessEndpoint,
    add_checkpoint_body,
    add_checkpoint_url,
    conflict_size,
    parse_witnesses,
    with_cosignatures,
)
from middleware.settings import load_settings

W1 = Cosigner.from_skey(Cosigner.generate("w1.example").skey())
W2 = Cosigner.generate("w2.example")
LOG = SigningKey.generate("log.example/ledger")


def _entry(cosigner: Cosigner, url: str = "http://127.0.0.1:9/w") -> dict[str, str]:
    return {"name": cosigner.name, "url": url, "vkey": cosigner.vkey()}


# -- the setting ---------------------------------------------------------------------------------


def test_settings_read_witnesses_from_toml_tables_and_env_json() -> None:
    env = {
        "CONSENTRY_UPSTREAM": "http://up.example/fhir",
        "CONSENTRY_WITNESSES": json.dumps([_entry(W1), _entry(W2)]),
        "CONSENTRY_WITNESS_QUORUM": "2",
    }
    settings = load_settings(env=env)
    assert [w.name for w in settings.witnesses] == ["w1.example", "w2.example"]
    assert settings.witness_quorum == 2
    assert settings.witnesses[0].key.public_key == W1.witness_key.public_key


@pytest.mark.parametrize(
    ("witnesses", "quorum", "problem"),
    [
        ([], 1, "witness_quorum: expected 0..0"),
        ([_entry(W1)], 2, "witness_quorum: expected 0..1"),
        ([_entry(W1)], -1, "witness_quorum"),
        ([{**_entry(W1), "name": "w2.example"}], 0, "its vkey names"),
        ([_entry(W1, "ftp://w.example")], 0, "absolute http"),
        ([_entry(W1, "http://w.example/?q=1")], 0, "no query"),
        ([_entry(W1), _entry(W1)], 0, "named once"),
        ([{**_entry(W1), "extra": "x"}], 0, "exactly name, url and vkey"),
        ([{**_entry(W1), "vkey": LOG.vkey()}], 0, "type 0x04"),
        ("w1", 0, "a list of tables"),
        (
            [
                _entry(Cosigner("a.example", b"\x07" * 32)),
                _entry(Cosigner("b.example", b"\x07" * 32)),
            ],
            2,
            "its own public key",
        ),
    ],
    ids=[
        "quorum-without-witnesses",
        "quorum-above-witnesses",
        "negative-quorum",
        "name-not-the-keys",
        "not-http",
        "query",
        "twice",
        "unknown-field",
        "log-key-not-witness-key",
        "not-a-list",
        "one-key-two-names",
    ],
)
def test_bad_witness_settings_are_refused(witnesses: object, quorum: int, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        load_settings(
            overrides={
                "upstream": "http://up.example/fhir",
                "witnesses": witnesses,
                "witness_quorum": quorum,
            }
        )


def test_witness_timeout_is_bounded() -> None:
    with pytest.raises(SettingsError, match="witness_timeout_seconds"):
        load_settings(overrides={"upstream": "http://u.example", "witness_timeout_seconds": 0})


def test_parse_witnesses_accepts_parsed_endpoints() -> None:
    parsed = parse_witnesses([_entry(W1)])
    assert parse_witnesses(parsed) is parsed


# -- the request and the answers -------------------------------------------------------------


def test_add_checkpoint_body_is_old_size_proof_lines_blank_line_note() -> None:
    """tlog-witness "add-checkpoint": ``old N``, one base64 line per proof hash, a blank line,
    then the checkpoint note, byte for byte."""
    note = LOG.sign_checkpoint(Checkpoint("log.example/ledger", 5, bytes(range(32))))
    proof = [b"\x01" * 32, b"\x02" * 32]
    body = add_checkpoint_body(3, proof, note).decode()
    expected = "old 3\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof) + "\n" + note
    assert body == expected
    assert add_checkpoint_body(0, [], note).decode() == "old 0\n\n" + note


def test_add_checkpoint_url_appends_the_endpoint_once() -> None:
    endpoint = WitnessEndpoint("w1.example", "http://h.example/w/", W1.vkey())
    assert add_checkpoint_url(endpoint) == "http://h.example/w/add-checkpoint"


@pytest.mark.parametrize(
    ("body", "size"),
    [(b"0\n", 0), (b"17\n", 17), (b"18446744073709551615\n", 2**64 - 1)],
    ids=["zero", "small", "max"],
)
def test_conflict_size_reads_the_witness_size(body: bytes, size: int) -> None:
    assert conflict_size(body) == size


@pytest.mark.parametrize(
    "body",
    [b"", b"17", b"017\n", b"-1\n", b"18446744073709551616\n", b"1 \n", b"\xff\n", b"1\n2\n"],
    ids=["empty", "no-newline", "leading-zero", "negative", "too-big", "space", "bytes", "two"],
)
def test_conflict_size_refuses_anything_else(body: bytes) -> None:
    with pytest.raises(MalformedError):
        conflict_size(body)


def test_with_cosignatures_appends_each_line_once_after_the_logs() -> None:
    checkpoint = Checkpoint("log.example/ledger", 5, bytes(range(32)))
    note = LOG.sign_checkpoint(checkpoint)
    one = W1.cosign(checkpoint.body(), 100).note_signature()
    two = W2.cosign(checkpoint.body(), 101).note_signature()
    merged = with_cosignatures(note, [one, two, one])
    parsed = parse_note(merged)
    assert parsed.text == checkpoint.body()
    assert parsed.signatures[1:] == (one, two)
    assert merged.startswith(note)  # the log's note is a prefix: its signature line first
    assert with_cosignatures(merged, [two]) == merged


def test_settings_read_witness_tables_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "consentry.toml"
    config.write_text(
        'upstream = "http://up.example/fhir"\nwitness_quorum = 1\n\n[[witnesses]]\n'
        f'name = "w1.example"\nurl = "https://w1.example/w"\nvkey = "{W1.vkey()}"\n',
        encoding="utf-8",
    )
    settings = load_settings(config_file=config)
    assert settings.witnesses == (WitnessEndpoint("w1.example", "https://w1.example/w", W1.vkey()),)
