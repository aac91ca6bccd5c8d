"""The trust policy file and key-event evidence: strict parsing, tree-size windows, rotation."""

from __future__ import annotations

import pytest

from middleware.ledger.errors import MalformedError
from middleware.ledger.keyevent import KeyEvent, parse_key_event
from middleware.ledger.signing import SigningKey
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy, parse_policy

ORIGIN = "gw.example/fhir/ledger"
OLD = SigningKey.from_seed(ORIGIN, bytes(32)).vkey()
NEW = SigningKey.from_seed(ORIGIN, bytes([1]) * 32).vkey()
OTHER = SigningKey.from_seed("other.example", bytes([2]) * 32).vkey()

POLICY = f"""
origin = "{ORIGIN}"

[[keys]]
vkey = "{OLD}"
not_before = 0
not_after = 10

[[keys]]
vkey = "{NEW}"
not_before = 11
"""


def test_policy_parses_and_formats_back_equal() -> None:
    policy = parse_policy(POLICY)
    assert policy.origin == ORIGIN
    assert policy.keys == (TrustedKey(OLD, 0, 10), TrustedKey(NEW, 11))
    assert parse_policy(format_policy(policy)) == policy


def test_origin_with_quotes_and_unicode_round_trips() -> None:
    policy = TrustPolicy('gw.example/"ledger"\\ü', (TrustedKey(OLD),))
    assert parse_policy(format_policy(policy)) == policy


@pytest.mark.parametrize(
    ("size", "old", "new"),
    [(0, True, False), (10, True, False), (11, False, True), (10**12, False, True)],
    ids=["first", "old-last", "new-first", "far"],
)
def test_windows_are_inclusive_tree_sizes(size: int, old: bool, new: bool) -> None:
    policy = parse_policy(POLICY)
    assert [k.covers(size) for k in policy.keys] == [old, new]


@pytest.mark.parametrize(
    "text",
    [
        # empty trusts nothing
        f'origin = "{ORIGIN}"\n',
        f'origin = "{ORIGIN}"\nkeys = []\n',
        # structure
        "not toml = = \n",
        f'[[keys]]\nvkey = "{OLD}"\n',
        f'origin = 5\n[[keys]]\nvkey = "{OLD}"\n',
        f'origin = "{ORIGIN}"\nextra = 1\n[[keys]]\nvkey = "{OLD}"\n',
        f'origin = "{ORIGIN}"\n[[keys]]\nvkey = "{OLD}"\nwitness = true\n',
        f'origin = "{ORIGIN}"\nkeys = ["{OLD}"]\n',
        # keys and windows
        f'origin = "{ORIGIN}"\n[[keys]]\nvkey = "not a key"\n',
        f'origin = "{ORIGIN}"\n[[keys]]\nvkey = "{OLD}"\n[[keys]]\nvkey = "{OLD}"\n',
        f'origin = "{ORIGIN}"\n[[keys]]\nvkey = "{OLD}"\nnot_before = 5\nnot_after = 4\n',
        f'origin = "{ORIGIN}"\n[[keys]]\nvkey = "{OLD}"\nnot_before = -1\n',
        f'origin = "{ORIGIN}"\n[[keys]]\nvkey = "{OLD}"\nnot_before = true\n',
        f'origin = "{ORIGIN}"\n[[keys]]\nvkey = "{OLD}"\nnot_after = "10"\n',
        f'origin = ""\n[[keys]]\nvkey = "{OLD}"\n',
    ],
    ids=[
        "no-keys",
        "empty-keys",
        "not-toml",
        "no-origin",
        "origin-not-string",
        "unknown-top-key",
        "unknown-key-field",
        "keys-not-tables",
        "bad-vkey",
        "duplicate-key",
        "window-reversed",
        "negative-size",
        "bool-size",
        "string-size",
        "empty-origin",
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(MalformedError):
        parse_policy(text)


def test_rotation_updates_windows_and_is_idempotent() -> None:
    start = TrustPolicy(ORIGIN, (TrustedKey(OLD),))
    once = start.rotated(OLD, 10, NEW, 11)
    assert once.keys == (TrustedKey(OLD, 0, 10), TrustedKey(NEW, 11))
    assert once.rotated(OLD, 10, NEW, 11) == once
    with pytest.raises(MalformedError, match="not in the trust policy"):
        start.rotated(OTHER, 10, NEW, 11)


def test_lookup_by_signature_line_name_and_key_id() -> None:
    policy = parse_policy(POLICY)
    key = SigningKey.from_seed(ORIGIN, bytes([1]) * 32)
    assert policy.lookup(ORIGIN, key.key_id) == TrustedKey(NEW, 11)
    assert policy.lookup("other", key.key_id) is None


# --- key-event evidence ----------------------------------------------------------------------


def test_key_event_round_trips_in_canonical_json() -> None:
    event = KeyEvent.at(ORIGIN, OLD, NEW, 41)
    assert (event.retired_not_after, event.successor_not_before) == (42, 43)
    assert event.placed_at(41)
    assert not event.placed_at(40)
    data = event.encode()
    assert data.startswith(b'{"origin":')
    assert parse_key_event(data) == event


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",
        b"[]",
        b'{"type":"other"}',
        KeyEvent.at(ORIGIN, OLD, NEW, 1).encode().replace(b'{"origin"', b'{ "origin"'),
        KeyEvent.at(ORIGIN, OLD, NEW, 1).encode().replace(b'"successor_not_before":3', b'"x":3'),
        KeyEvent.at(ORIGIN, OLD, NEW, 1).encode().replace(b":3,", b":4,"),
        KeyEvent.at(ORIGIN, OLD, NEW, 1).encode().replace(NEW.encode(), OLD.encode()),
        KeyEvent.at(ORIGIN, OLD, NEW, 1)
        .encode()
        .replace(b'"retired_not_after":2', b'"retired_not_after":"2"'),
    ],
    ids=[
        "not-ascii",
        "not-object",
        "wrong-type",
        "not-canonical",
        "unknown-field",
        "gap-between-windows",
        "succeeds-itself",
        "size-as-string",
    ],
)
def test_malformed_key_events_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_key_event(data)
