"""The key file's data secret: written by every new file, read back, carried over unchanged by a
rotation, and for files of earlier versions (no ``data:`` line) the seed, so the keys derived
before the line existed stay the same. Derived keys are checked against BLAKE2b computed here
(RFC 7693 keyed, personalised), not against ``derive_box_key``'s own output."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.errors import SettingsError
from middleware.ledger.errors import MalformedError
from middleware.ledger.keyfile import (
    LedgerKey,
    generate_ledger_key,
    load_or_create_ledger_key,
    parse_ledger_key,
    read_ledger_key,
)
from middleware.ledger.signing import SigningKey, derive_box_key

ORIGIN = "gw.example/fhir/ledger"
KEY = SigningKey.from_seed(ORIGIN, bytes(range(32)))
SUCCESSOR = SigningKey.from_seed(ORIGIN, bytes(range(32, 64)))
SECRET = bytes(range(100, 132))


def blake(root: bytes, purpose: str) -> bytes:
    """The derivation as documented: BLAKE2b-256 keyed with the root, personalised."""
    return hashlib.blake2b(
        b"consentry/derive/v1", digest_size=32, key=root, person=purpose.encode()
    ).digest()


def data_line(secret: bytes) -> str:
    return f"data: {base64.b64encode(secret).decode()}"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"{KEY.skey()}\n", KEY.seed),
        (f"{KEY.skey()}\norigin: {ORIGIN}\n", KEY.seed),
        (f"{KEY.skey()}\norigin: {ORIGIN}\n{data_line(SECRET)}\n", SECRET),
    ],
    ids=["key-only", "key-origin", "key-origin-data"],
)
def test_the_data_secret_of_a_file(text: str, secret: bytes) -> None:
    ledger_key = parse_ledger_key(text)
    assert ledger_key.data_secret == secret
    assert derive_box_key(ledger_key.data_secret, "evidence") == blake(secret, "evidence")


@pytest.mark.parametrize(
    "extra",
    [
        "data: not base64!",
        data_line(bytes(31)),
        data_line(bytes(33)),
        f"secret: {base64.b64encode(SECRET).decode()}",
        f"{data_line(SECRET)}\n{data_line(SECRET)}",
    ],
    ids=["not-base64", "short", "long", "other-label", "two-lines"],
)
def test_a_malformed_data_line_is_refused(extra: str) -> None:
    with pytest.raises(MalformedError):
        parse_ledger_key(f"{KEY.skey()}\norigin: {ORIGIN}\n{extra}\n")


def test_a_secret_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(MalformedError):
        LedgerKey(KEY, ORIGIN, secret=bytes(31))
    with pytest.raises(MalformedError):
        derive_box_key(bytes(31), "evidence")


def test_a_signing_key_stands_for_its_seed() -> None:
    """What the gateway derived before the data secret existed is what it derives now from a
    file of that time."""
    for purpose in ("evidence", "pseudonyms", "outbox", "ids", "idempotency"):
        assert derive_box_key(KEY, purpose) == blake(KEY.seed, purpose)
        assert derive_box_key(LedgerKey(KEY, ORIGIN).data_secret, purpose) == blake(
            KEY.seed, purpose
        )


@pytest.mark.parametrize(
    "current",
    [LedgerKey(KEY, ORIGIN), LedgerKey(KEY, ORIGIN, secret=SECRET)],
    ids=["earlier-version-file", "file-with-data-secret"],
)
def test_a_rotation_carries_the_data_secret_over(current: LedgerKey) -> None:
    successor = parse_ledger_key(current.succeeded_by(SUCCESSOR, ORIGIN).text())
    assert successor.key.vkey() == SUCCESSOR.vkey()
    assert successor.secret is not None  # named on the line from now on
    assert blake(successor.data_secret, "evidence") == blake(current.data_secret, "evidence")
    # ...and the successor's seed is not what anything derives from.
    assert successor.data_secret != SUCCESSOR.seed


@pytest.mark.parametrize("how", ["generate", "load-or-create"])
def test_a_new_file_gets_a_random_data_secret(tmp_path: Path, how: str) -> None:
    made: list[LedgerKey] = []
    for n in range(2):
        path = tmp_path / f"ledger-{n}.key"
        if how == "generate":
            made.append(generate_ledger_key(path, ORIGIN))
        else:
            made.append(load_or_create_ledger_key(path, configured="", default=ORIGIN))
        assert read_ledger_key(path) == made[-1]
        assert made[-1].secret is not None
        assert made[-1].data_secret != made[-1].key.seed
        assert path.read_text().splitlines()[2].startswith("data: ")
    assert made[0].data_secret != made[1].data_secret


def test_an_earlier_version_file_keeps_its_secret_with_a_configured_origin(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.key"
    path.write_text(f"{KEY.skey()}\n")
    loaded = load_or_create_ledger_key(path, configured=ORIGIN, default="other.example/x")
    assert (loaded.origin, loaded.data_secret) == (ORIGIN, KEY.seed)


def test_an_unreadable_data_line_stops_the_gateway(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    path.write_text(f"{KEY.skey()}\norigin: {ORIGIN}\ndata: ???\n")
    with pytest.raises(SettingsError, match="does not hold a signing key"):
        read_ledger_key(path)


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_the_file_round_trips(seed: bytes, secret: bytes) -> None:
    ledger_key = LedgerKey(SigningKey.from_seed(ORIGIN, seed), ORIGIN, secret=secret)
    assert parse_ledger_key(ledger_key.text()) == ledger_key
    assert parse_ledger_key(ledger_key.text()).data_secret == secret
