"""App tests: the gateway driven through ``httpx.ASGITransport``, the upstream mocked with respx
through ``httpx.MockTransport`` (injected, never patched); with ``pytest --upstream=native``
(the default client) or ``--upstream=aiohttp`` the gateways made by ``make_app`` reach the same
respx routes over real HTTP with that client instead (:mod:`tests.served_upstream`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.signing import SigningKey
from middleware.proxy.upstream import Upstream
from middleware.settings import Settings, load_settings
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import AUDIENCE, DEV_ISSUER, Tokens, auth_settings
from tests.served_upstream import ServedUpstream

UPSTREAM = "http://upstream.test:8103/fhir"
GATEWAY = "http://gateway.test/fhir"


class FakeClock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WallClock:
    """Seconds since the epoch, starting now, moved by hand (consent periods, cursor expiry,
    break-the-glass sessions)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall() -> WallClock:
    return WallClock()


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False, base_url=UPSTREAM)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "upstream": UPSTREAM,
            "public_url": GATEWAY,
            "store": "memory:",
            "access_log": True,
            # app tests watch readiness change from one call to the next
            "ready_cache_seconds": 0,
        }
        values.update(overrides)
        return load_settings(overrides=values)

    return make


@pytest.fixture
def store() -> MemoryLogStore:
    return MemoryLogStore()


@pytest.fixture(scope="session")
def signer() -> SigningKey:
    return SigningKey.generate("gateway.test/fhir/ledger")


@pytest.fixture
def mock_upstream_only(request: pytest.FixtureRequest) -> None:
    """For a test about what only an injected transport can do (a library's own exception
    escaping it, its error class names): skipped over real HTTP (``--upstream=native`` or
    ``aiohttp``)."""
    if request.config.getoption("--upstream") != "mock":
        pytest.skip("needs the injected httpx transport")


@pytest.fixture
async def served() -> AsyncIterator[list[ServedUpstream]]:
    """The served upstreams ``make_app`` opened (``--upstream=native`` or ``aiohttp``), closed
    at the end."""
    opened: list[ServedUpstream] = []
    yield opened
    for upstream in opened:
        await upstream.aclose()


@pytest.fixture
def make_app(
    request: pytest.FixtureRequest,
    router: respx.Router,
    clock: FakeClock,
    store: MemoryLogStore,
    signer: SigningKey,
    make_settings: Callable[..., Settings],
    wall: WallClock,
    served: list[ServedUpstream],
) -> Callable[..., Gateway]:
    mode = request.config.getoption("--upstream")

    def make(**overrides: Any) -> Gateway:
        settings = make_settings(**overrides)
        upstream: httpx.AsyncBaseTransport | Upstream = httpx.MockTransport(router.async_handler)
        if mode != "mock":
            upstream = ServedUpstream(
                router.async_handler,
                settings.upstream,
                client=mode,
                pool_size=settings.upstream_pool_size,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
            )
            served.append(upstream)
        return create_app(
            settings,
            upstream=upstream,
            store=store,
            signer=signer,
            wall_clock=wall,
            clock=clock,
        )

    return make


@pytest.fixture
def dev_key_file(tmp_path: Path) -> Path:
    """Where the development issuer of the proxy tests keeps its key."""
    return tmp_path / "dev-issuer.jwk"


@pytest.fixture
def system_bearer(dev_key_file: Path) -> dict[str, str]:
    """A backend-service token (SMART ``system/*.cruds``) from the development issuer."""
    issuer = UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True)
    token = issuer.issue("ehr-backend", scopes="system/*.cruds", audience=AUDIENCE)
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def make_client(
    make_app: Callable[..., Gateway], dev_key_file: Path, system_bearer: dict[str, str]
) -> Callable[..., httpx.AsyncClient]:
    """A client of a gateway whose proxy tests run as a trusted EHR backend: the development
    issuer on, opt-out jurisdiction (no consent recorded means permit), and a system token
    sent with every request unless the test overrides ``auth`` or the header."""

    def make(**overrides: Any) -> httpx.AsyncClient:
        overrides.setdefault("consent_jurisdiction", "opt-out")
        headers = {}
        if "auth" not in overrides:
            overrides["auth"] = auth_settings(dev_key_file)
            headers = dict(system_bearer)
        app = make_app(**overrides)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        return httpx.AsyncClient(
            transport=transport, base_url="http://gateway.test", headers=headers
        )

    return make


@pytest.fixture
async def client(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


async def raw_asgi_request(
    app: Gateway, method: str, raw_path: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, bytes]:
    """Send one request with an exact, un-normalised path (clients such as httpx would clean up
    ``..`` and ``//`` before sending, hiding the attack); return (status, body)."""
    path, _, query = raw_path.partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": query,
        "headers": headers or [(b"host", b"gateway.test")],
        "client": ("203.0.113.7", 50000),
        "server": ("gateway.test", 80),
    }
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": b"", "more_body": False}

    messages: list[Any] = []

    async def send(message: Any) -> None:
        messages.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


# -- the consent API's callers (a development issuer's key per test, tokens minted from it) --


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "dev-issuer.jwk"


@pytest.fixture
def tokens(key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
def consents() -> MemoryConsentStore:
    return MemoryConsentStore()
