"""Session fixtures: the real upstream, the gateway in front of it, the carebundle loaded
through the gateway once, and a client on each side.

The gateway enforces consent on every request but ``GET /metadata``, so the gateway side
sends a backend-service token (``system/*.cruds``, minted by the gateway's development issuer,
:meth:`~tests.support.GatewayServer.system_bearer`). The gateway runs under the
``opt-out`` jurisdiction, so with no consent on file such a caller may see and write
everything, and the pass-through tests still compare the gateway with the upstream answer for
answer; records whose patient cannot be determined stay denied (the default). Its ledger is a SQLite file in the gateway's working directory, so
that ``consentry ledger verify`` can check it offline.

A peer that cannot start (no node or npm, install failure, no /healthz) raises
:class:`~tests.support.PeerError` in the fixture, so every test using it errors: these
tests fail rather than skip when their upstream is missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.sides import Sides
from tests.support import GatewayServer, UpstreamServer, load_carebundle

_FHIR_JSON = {"accept": "application/fhir+json"}


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="session")
def gateway(upstream: UpstreamServer) -> Iterator[GatewayServer]:
    with GatewayServer(
        upstream.base_url,
        store="sqlite:consentry.db",
        consent_jurisdiction="opt-out",
    ) as server:
        yield server


@pytest.fixture(scope="session")
def sides(upstream: UpstreamServer, gateway: GatewayServer) -> Iterator[Sides]:
    system = gateway.system_bearer()
    with (
        httpx.Client(headers={**_FHIR_JSON, **system}, timeout=30.0) as via,
        httpx.Client(headers=_FHIR_JSON, timeout=30.0) as direct,
    ):
        yield Sides(via, direct, gateway.base_url, upstream.base_url, system["authorization"])


@pytest.fixture(scope="session")
def carebundle(gateway: GatewayServer, sides: Sides) -> dict[str, list[str]]:
    """Patient id -> ``Type/id`` of everything its transaction created (through the gateway,
    with a system token)."""
    return load_carebundle(gateway, sides.gateway)


@pytest.fixture(scope="session")
def patient_id(carebundle: dict[str, list[str]]) -> str:
    """A carebundle patient that the tests only read (writes make their own resources)."""
    return next(iter(carebundle))


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """A plain FHIR JSON client for a module's calls to the gateway (it sends its own
    tokens); a module that tags its calls defines its own."""
    with httpx.Client(headers=_FHIR_JSON, timeout=60.0) as client:
        yield client
