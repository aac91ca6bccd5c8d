"""The rules about where a connection comes from read the TCP peer, never an address a
trusted proxy forwarded (middleware.forwarded): ``/metrics``'s ``metrics_clients`` and the
development sign-in's loopback rule. The gateway is wrapped as ``consentry serve`` wraps it
when ``forwarded_allow_ips`` lists a proxy (here 10.0.0.5, the peer of every request).

Red before: uvicorn's proxy-header rewrite replaced the ASGI ``client`` with the forwarded
value, so a client behind the proxy sending ``X-Forwarded-For: 127.0.0.1`` read ``/metrics``
(loopback by default) and was handed development sign-in tokens.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from middleware.app import Gateway
from middleware.forwarded import ForwardedFor
from tests.app.consenting import auth_settings
from tests.app.web_signin import ORIGIN, SAME_ORIGIN

PROXY = "10.0.0.5"
SPOOFED = {"x-forwarded-for": "127.0.0.1"}


def _behind_proxy(app: Gateway) -> httpx.AsyncClient:
    wrapped = ForwardedFor(app, [ipaddress.ip_network(PROXY)])
    transport = httpx.ASGITransport(app=wrapped, client=(PROXY, 50000))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)


async def test_a_forwarded_loopback_address_does_not_open_metrics(
    make_app: Callable[..., Gateway],
) -> None:
    app = make_app()  # metrics_clients: its loopback default
    async with _behind_proxy(app) as client:
        assert (await client.get("/metrics", headers=SPOOFED)).status_code == 403
    local = httpx.ASGITransport(app=ForwardedFor(app, []), client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=local, base_url=ORIGIN) as client:
        assert (await client.get("/metrics")).status_code == 200


async def test_a_forwarded_loopback_address_gets_no_development_sign_in(
    make_app: Callable[..., Gateway], dev_key_file: Path
) -> None:
    app = make_app(auth=auth_settings(dev_key_file))
    async with _behind_proxy(app) as web:
        start = await web.get("/portal/signin/start", headers=SPOOFED)
        query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
        assert (await web.get("/auth/authorize", params=query, headers=SPOOFED)).status_code == 403
        posted = await web.post(
            "/auth/authorize",
            data={**query, "who": "patient", "patient": "p1"},
            headers={**SAME_ORIGIN, **SPOOFED},
        )
        assert posted.status_code == 403
        assert "location" not in posted.headers
