"""Helpers of the web page tests: a gateway client with the development issuer on, and
signing in to an area through the real flow (start, development authorize page, callback)."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs, urlsplit

import httpx

ORIGIN: Final = "http://gateway.test"
SAME_ORIGIN: Final = {"origin": ORIGIN}


async def sign_in(client: httpx.AsyncClient, kind: str, patient: str = "p1") -> str:
    """Sign ``client`` in to the portal (``kind="patient"``, as ``patient``) or the dashboard
    (``kind="auditor"``); returns the CSRF token of the new session, read from its home page."""
    area = "/portal" if kind == "patient" else "/compliance"
    start = await client.get(f"{area}/signin/start")
    assert start.status_code == 303, start.text
    target = urlsplit(start.headers["location"])
    assert target.path == "/auth/authorize"
    params = {k: v[0] for k, v in parse_qs(target.query).items()}
    form = {**params, "who": kind}
    if kind == "patient":
        form["patient"] = patient
    granted = await client.post("/auth/authorize", data=form, headers=SAME_ORIGIN)
    assert granted.status_code == 303, granted.text
    back = urlsplit(granted.headers["location"])
    done = await client.get(f"{back.path}?{back.query}")
    assert done.status_code == 200, done.text
    home = await client.get(f"{area}/")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)


def csrf_of(html: str) -> str:
    """The value of the first hidden ``csrf`` field of a page."""
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]
