"""Who may scrape /metrics: allowed networks, or the bearer token; the peer's own address."""

from __future__ import annotations

import pytest

from middleware.errors import Forbidden, Unauthorized
from middleware.ops.scrape import DEFAULT_METRICS_CLIENTS, ScrapeAccess, parse_networks

TOKEN = "0123456789abcdef-token"


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 peer on a dual-stack socket
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("gateway.test", False),  # not an address: never allowed by address
        (None, False),
    ],
    ids=str,
)
def test_the_default_lets_only_loopback_in(peer: str | None, allowed: bool) -> None:
    access = ScrapeAccess.from_settings(DEFAULT_METRICS_CLIENTS, "")
    if allowed:
        access.check(peer, None)
    else:
        with pytest.raises(Forbidden):
            access.check(peer, None)


def test_a_token_lets_any_address_in_and_a_wrong_one_none() -> None:
    access = ScrapeAccess.from_settings("", TOKEN)
    access.check("198.51.100.1", f"Bearer {TOKEN}")
    access.check("198.51.100.1", f"bearer {TOKEN}")
    for authorization in (None, f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer"):
        with pytest.raises(Unauthorized):
            access.check("198.51.100.1", authorization)


def test_no_networks_and_no_token_lets_nobody_in() -> None:
    with pytest.raises(Forbidden):
        ScrapeAccess.from_settings("", "").check("127.0.0.1", None)


def test_networks_are_parsed_and_a_bad_one_named() -> None:
    assert [str(n) for n in parse_networks(" 10.0.0.0/8, ::1 ,192.0.2.7")] == [
        "10.0.0.0/8",
        "::1/128",
        "192.0.2.7/32",
    ]
    with pytest.raises(ValueError, match="'localhost'"):
        parse_networks("127.0.0.1,localhost")
