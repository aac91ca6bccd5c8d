"""Request bodies by framing: an HTTP/1.x request that announces no body (no Content-Length,
no Transfer-Encoding: RFC 9112 §6.3) is not read at all; any other request is read as before."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import respx

from middleware.app import Gateway
from tests.app.consenting import auth_settings


def _app(make_app: Callable[..., Gateway], dev_key_file: Path) -> Gateway:
    return make_app(consent_jurisdiction="opt-out", auth=auth_settings(dev_key_file))


async def _call(
    app: Gateway, bearer: dict[str, str], *, version: str, extra: list[tuple[bytes, bytes]]
) -> tuple[int, int]:
    """(status, how many times the app called receive) for GET /fhir/Patient/1 whose body,
    if read, is ``{}``."""
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"{}" if extra else b"", "more_body": False}

    messages: list[Any] = []

    async def send(message: Any) -> None:
        messages.append(message)

    headers = [(b"host", b"gateway.test"), (b"authorization", bearer["authorization"].encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": version,
        "method": "GET",
        "scheme": "http",
        "path": "/fhir/Patient/1",
        "raw_path": b"/fhir/Patient/1",
        "query_string": b"",
        "headers": headers + extra,
        "client": ("203.0.113.7", 50000),
        "server": ("gateway.test", 80),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, calls


@pytest.mark.parametrize(
    ("version", "extra", "status", "reads"),
    [
        # HTTP/1.x, nothing announced: no body, receive never called
        ("1.1", [], 200, 0),
        ("1.0", [], 200, 0),
        ("1.1", [(b"content-length", b"0")], 200, 0),
        # announced: read, and a GET body is refused as before
        ("1.1", [(b"content-length", b"2")], 400, 1),
        ("1.1", [(b"transfer-encoding", b"chunked")], 400, 1),
        # HTTP/2 frames bodies without those headers: always read
        ("2", [], 200, 1),
    ],
    ids=["http1.1-none", "http1.0-none", "length-0", "length-2", "chunked", "http2"],
)
async def test_body_read_only_when_the_framing_allows_one(
    make_app: Callable[..., Gateway],
    dev_key_file: Path,
    system_bearer: dict[str, str],
    router: respx.Router,
    version: str,
    extra: list[tuple[bytes, bytes]],
    status: int,
    reads: int,
) -> None:
    router.get("/Patient/1").respond(200, json={"resourceType": "Patient", "id": "1"})
    app = _app(make_app, dev_key_file)
    assert await _call(app, system_bearer, version=version, extra=extra) == (status, reads)
