"""The OpenAPI document the gateway serves describes exactly the APIs it answers itself.

Checked both ways through the app: every documented path and method reaches its own handler
(never the gateway's generic not-found, never a 405 or 500), with a status the document lists;
every route of the gateway's own (management and ledger) app that is reachable, and every
consent API operation, is documented. A route added without its description, or a described
path the gateway no longer serves, fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from middleware.app import Gateway
from middleware.consent.operations import HANDLERS
from middleware.fhir.outcome import FHIR_JSON
from middleware.openapi import OPENAPI_PATH, openapi_document
from tests.fuzz.gateway import BASE, bearers, make_gateway

_SAMPLE = {"id": "c1", "vid": "1", "index": "0"}
_GENERIC_NOT_FOUND = {"not found", "no such ledger resource", "not a consent API path"}


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    return make_gateway(tmp_path / "dev-issuer.jwk")


async def _ask(app: Gateway, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        return await client.request(method, path, headers=headers)


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: _SAMPLE[m[1]], path)


def _diagnostics(response: httpx.Response) -> str:
    if not response.headers.get("content-type", "").startswith("application/fhir+json"):
        return ""
    issues: list[dict[str, Any]] = response.json().get("issue", [])
    return str(issues[0].get("diagnostics", "")) if issues else ""


async def test_the_gateway_serves_its_document(gateway: Gateway) -> None:
    """``GET /openapi.json`` answers the document for this gateway's base path, with the
    development issuer's key set since that issuer is on."""
    response = await _ask(gateway, "GET", OPENAPI_PATH, {})
    assert response.status_code == 200
    assert response.json() == openapi_document(BASE, development_issuer=True)
    assert response.json()["openapi"].startswith("3.1.")
    assert "/auth/jwks" not in openapi_document(BASE)["paths"]


async def test_every_documented_operation_reaches_its_handler(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Each documented path and method, with and without a token: answered by its own
    handler (not the gateway's generic 404, not 405), with a status the document lists."""
    document = openapi_document(BASE, development_issuer=True)
    tokens = bearers(tmp_path / "dev-issuer.jwk")
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for headers in ({}, {"authorization": tokens["admin"], "content-type": FHIR_JSON}):
                response = await _ask(gateway, method.upper(), _concrete(path), headers)
                where = (method, path, response.status_code, _diagnostics(response))
                assert str(response.status_code) in operation["responses"], where
                assert response.status_code != 405, where
                assert _diagnostics(response) not in _GENERIC_NOT_FOUND, where
                checked += 1
    assert checked >= 2 * 19


async def test_every_route_the_gateway_answers_itself_is_documented(gateway: Gateway) -> None:
    """The management app's routes that the gateway dispatches to it (a catch-all aside) and
    every consent API operation appear in the document."""
    paths = openapi_document(BASE, development_issuer=True)["paths"]
    for route in gateway.management.routes:
        assert isinstance(route, Route)
        if route.path == "/ledger/{rest:path}":
            continue  # the ledger API's own 404 for anything else under /ledger/
        response = await _ask(gateway, "GET", _concrete(route.path), {})
        if _diagnostics(response) == "not found" and response.status_code == 404:
            continue  # not dispatched on this gateway (/auth/jwks without a dev issuer)
        assert route.path in paths, route.path
    operations = {
        op["operationId"] for item in paths.values() for op in item.values() if "operationId" in op
    }
    assert {f"consent-{name}" for name in HANDLERS} <= operations
