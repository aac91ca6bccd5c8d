"""``forwarded_allow_ips`` (middleware.serving, middleware.forwarded): through a real
``consentry serve``, a request whose TCP peer is a listed proxy has the client address its
``X-Forwarded-For`` names (the rightmost entry that is not a listed proxy), only when that
parses as an IP address; from a peer not listed, or with the setting empty (the default), the
header is ignored, so a client cannot claim another address. ``/metrics``'s address rule reads
the TCP peer whatever the header says.

The address the gateway settled on is observed through the unauthenticated rate limit (a
burst of 1, next to no refill): a bad token is answered 401 while its client address has
budget, then 429. Every request here comes from 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from middleware.errors import SettingsError
from middleware.forwarded import client_address
from middleware.settings import load_settings
from tests.support import free_port
from tests.support.peers import stop_process

CLIENT = "203.0.113.7"
OTHER = "198.51.100.9"


@contextmanager
def _serving(tmp_path: Path, forwarded_allow_ips: str) -> Iterator[str]:
    """``consentry serve`` on a memory store with these trusted proxies; its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "CONSENTRY_METRICS_CLIENTS": CLIENT,
        "CONSENTRY_FORWARDED_ALLOW_IPS": forwarded_allow_ips,
        "CONSENTRY_RATE_LIMIT_UNAUTHENTICATED_BURST": "1",
        "CONSENTRY_RATE_LIMIT_UNAUTHENTICATED": "0.001",
    }
    argv = [sys.executable, "-m", "middleware.cli", "serve", "--store", "memory:"]
    argv += ["--upstream", "http://127.0.0.1:9/fhir", "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        stop_process(serve)


def _headers(forwarded_for: list[str]) -> list[tuple[str, str]]:
    return [("x-forwarded-for", value) for value in forwarded_for]


def _bad_token(url: str, forwarded_for: list[str]) -> int:
    headers = [("authorization", "Bearer not-a-token"), *_headers(forwarded_for)]
    return httpx.get(f"{url}/fhir/Patient", headers=headers).status_code


#: (trusted proxies, [(X-Forwarded-For header lines, status of a bad token)]), in order in one
#: gateway: 401 when the address the gateway settled on still had budget, 429 when a request
#: before had spent it (the same client).
CASES = [
    # The peer (127.0.0.1) is a trusted proxy: the client is the header's address.
    (
        "127.0.0.1",
        [
            ([CLIENT], 401),
            ([CLIENT], 429),
            ([], 401),  # the peer itself
            # A client behind the proxy sends its own header; the proxy appends the address
            # it saw (HAProxy's option forwardfor: another header line): the rightmost counts.
            ([CLIENT, OTHER], 401),
            ([OTHER], 429),
            ([f"{CLIENT}, 198.51.100.10"], 401),
            (["198.51.100.10"], 429),
            # Not an IP address: the peer's, never a key of the client's choosing. Red before:
            # each was a client address of its own (rotating it bypassed the limit).
            (["h0"], 429),
            (["h1"], 429),
            (["z" * 6000], 429),
            ([f"{CLIENT}, not-an-address"], 429),
            ([""], 429),
        ],
    ),
    # Two trusted hops: the rightmost address that is not a trusted proxy.
    ("127.0.0.0/8, 10.0.0.0/8", [([f"{CLIENT}, 10.1.2.3"], 401), ([CLIENT], 429)]),
    # The peer is no trusted proxy: the header is the client's own claim, ignored.
    ("", [([CLIENT], 401), ([OTHER], 429)]),
    ("10.0.0.0/8", [([CLIENT], 401), ([OTHER], 429)]),
]


@pytest.mark.parametrize(
    ("trusted", "requests"),
    CASES,
    ids=["trusted-proxy", "proxy-chain", "default-trusts-no-proxy", "untrusted-peer"],
)
def test_the_client_address_comes_from_a_trusted_proxy_only(
    trusted: str, requests: list[tuple[list[str], int]], tmp_path: Path
) -> None:
    with _serving(tmp_path, trusted) as url:
        assert [_bad_token(url, lines) for lines, _ in requests] == [s for _, s in requests]


def test_a_forwarded_address_never_opens_metrics(tmp_path: Path) -> None:
    """``metrics_clients`` lists only 203.0.113.7; a trusted proxy forwarding it does not
    open ``/metrics`` (the TCP peer, 127.0.0.1, is checked). Red before: 200."""
    with _serving(tmp_path, "127.0.0.1") as url:
        for lines in ([CLIENT], [f"{OTHER}, {CLIENT}"], []):
            assert httpx.get(f"{url}/metrics", headers=_headers(lines)).status_code == 403


#: (X-Forwarded-For value, trusted proxies, the client it names or None: the peer stays).
ADDRESSES = [
    (CLIENT, ("127.0.0.1/32",), CLIENT),
    (f"{CLIENT}, {OTHER}", ("127.0.0.1/32",), OTHER),
    (f"{CLIENT}, 10.1.2.3", ("10.0.0.0/8",), CLIENT),
    ("10.9.9.9, 10.1.2.3", ("10.0.0.0/8",), "10.9.9.9"),  # all trusted: the leftmost
    (" 2001:DB8::1 ", ("127.0.0.1/32",), "2001:db8::1"),
    ("", ("127.0.0.1/32",), None),
    ("h0", ("127.0.0.1/32",), None),
    (f"{CLIENT}, h0", ("127.0.0.1/32",), None),
    (f"h0, {CLIENT}", ("127.0.0.1/32",), CLIENT),  # left of the client: never read
    (f"{CLIENT}:8080", ("127.0.0.1/32",), None),
    ("z" * 6000, ("127.0.0.1/32",), None),
    (f"{CLIENT},", ("127.0.0.1/32",), None),
]


@pytest.mark.parametrize(
    ("forwarded_for", "trusted", "named"),
    ADDRESSES,
    ids=[
        "one",
        "rightmost",
        "past-a-trusted-hop",
        "all-trusted",
        "ipv6-normalised",
        "empty",
        "name",
        "name-rightmost",
        "name-left-of-client",
        "with-port",
        "long-junk",
        "empty-entry",
    ],
)
def test_which_forwarded_address_is_the_client(
    forwarded_for: str, trusted: tuple[str, ...], named: str | None
) -> None:
    networks = tuple(ipaddress.ip_network(network) for network in trusted)
    assert client_address(forwarded_for, networks) == named


def test_a_proxy_that_is_no_address_is_refused() -> None:
    with pytest.raises(SettingsError, match="forwarded_allow_ips: 'haproxy'"):
        load_settings(env={"CONSENTRY_FORWARDED_ALLOW_IPS": "10.0.0.2, haproxy"})
