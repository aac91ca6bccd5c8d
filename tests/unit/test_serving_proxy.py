"""``forwarded_allow_ips`` (middleware.serving): through a real ``consentry serve``, a request
whose TCP peer is a listed proxy has the client address its ``X-Forwarded-For`` names (the
rightmost entry that is not a listed proxy); from a peer not listed, or with the setting
empty (the default), the header is ignored, so a client cannot claim another address.

The address the gateway settled on is observed through ``metrics_clients``: only the
documentation address 203.0.113.7 may read ``/metrics`` without a token, and every request
here comes from 127.0.0.1.
"""

from __future__ import annotations

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
from middleware.settings import load_settings
from tests.support import free_port
from tests.support.peers import stop_process

CLIENT = "203.0.113.7"


@contextmanager
def _serving(tmp_path: Path, forwarded_allow_ips: str) -> Iterator[str]:
    """``consentry serve`` on a memory store with these trusted proxies; its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "CONSENTRY_METRICS_CLIENTS": CLIENT,
        "CONSENTRY_FORWARDED_ALLOW_IPS": forwarded_allow_ips,
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


def _metrics(url: str, forwarded_for: list[str]) -> int:
    headers = [("x-forwarded-for", value) for value in forwarded_for]
    return httpx.get(f"{url}/metrics", headers=headers).status_code


#: (trusted proxies, [(X-Forwarded-For header lines, /metrics status)]): 200 when the gateway
#: took the client to be 203.0.113.7, 403 when it took it to be someone else.
CASES = [
    # The peer (127.0.0.1) is a trusted proxy: the client is the header's address.
    (
        "127.0.0.1",
        [
            ([CLIENT], 200),
            ([], 403),
            # A client behind the proxy sends its own header; the proxy appends the address
            # it saw (HAProxy's option forwardfor: another header line): the rightmost counts.
            ([CLIENT, "198.51.100.9"], 403),
            ([f"{CLIENT}, 198.51.100.9"], 403),
        ],
    ),
    # Two trusted hops: the rightmost address that is not a trusted proxy.
    ("127.0.0.0/8, 10.0.0.0/8", [([f"{CLIENT}, 10.1.2.3"], 200)]),
    # The peer is no trusted proxy: the header is the client's own claim, ignored.
    ("", [([CLIENT], 403)]),
    ("10.0.0.0/8", [([CLIENT], 403)]),
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
        assert [_metrics(url, lines) for lines, _ in requests] == [s for _, s in requests]


def test_a_proxy_that_is_no_address_is_refused() -> None:
    with pytest.raises(SettingsError, match="forwarded_allow_ips: 'haproxy'"):
        load_settings(env={"CONSENTRY_FORWARDED_ALLOW_IPS": "10.0.0.2, haproxy"})
