"""A caller that has not proved who it is costs nothing durable: its body is never read, its
refusal is never a ledger entry (counted in /metrics, logged in aggregate), its address has a
budget checked before any token work; a verified caller has a rate of its own (429 with
Retry-After); a body that does not arrive in time is 408."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.identity import Identity
from middleware.logging import configure_logging
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import FakeClock
from tests.app.consenting import auth_settings

SIXTEEN_MIB = 16 * 1024 * 1024
CLIENT = ("203.0.113.7", 50000)


class CountingVerifier:
    """The gateway's own verifier, counting the calls made to it (token work)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    async def verify(self, authorization: str | None) -> Identity:
        self.calls += 1
        identity: Identity = await self.inner.verify(authorization)
        return identity

    def proved(self, authorization: str | None) -> bool:
        return bool(self.inner.proved(authorization))


@pytest.fixture
def log() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("info", stream)
    return stream


def lines(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in found if line["event"] == event]


@pytest.fixture
def app(make_app: Callable[..., Gateway], dev_key_file: Path) -> Gateway:
    return make_app(auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out")


async def post_without_reading(
    app: Gateway, path: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], int]:
    """POST whose body (announced, 16 MiB) is offered chunk by chunk; returns the status, the
    response headers and how many times the app asked for a chunk."""
    asked = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": b"[" * 65536, "more_body": True}

    messages: list[Any] = []

    async def send(message: Any) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path.decode(),
        "raw_path": path,
        "query_string": b"",
        "headers": [(b"host", b"gateway.test"), *headers],
        "client": CLIENT,
        "server": ("gateway.test", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), asked


@pytest.mark.parametrize(
    "credentials",
    [[], [(b"authorization", b"Bearer not.a.token")]],
    ids=["no-token", "bad-token"],
)
@pytest.mark.parametrize(
    ("path", "length"),
    [
        (b"/fhir", [(b"content-length", str(SIXTEEN_MIB).encode())]),
        (b"/fhir/Patient", [(b"transfer-encoding", b"chunked")]),
    ],
    ids=["batch-16MiB", "create-chunked"],
)
async def test_a_401_never_reads_the_body(
    app: Gateway,
    store: MemoryLogStore,
    credentials: list[tuple[bytes, bytes]],
    path: bytes,
    length: list[tuple[bytes, bytes]],
) -> None:
    """The attack: 16 concurrent 16 MiB bodies of '[' posted without a token were read whole
    and decoded before the 401 (98 -> 874 MB resident, the event loop busy for seconds). Now
    the token is checked first: not one chunk is asked for, the connection is closed rather
    than drained, and the ledger does not grow."""
    before = await store.size()
    headers = [(b"content-type", b"application/fhir+json"), *length, *credentials]
    status, answer, asked = await post_without_reading(app, path, headers)
    assert status == 401
    assert asked == 0
    assert answer[b"connection"] == b"close"
    assert await store.size() == before


async def test_unauthenticated_requests_add_no_ledger_entry(
    app: Gateway, store: MemoryLogStore, router: respx.Router, log: io.StringIO, clock: FakeClock
) -> None:
    """The attack: every 401 was a ledger entry carrying up to 16 KiB of its query (2,000
    requests = 49 MB of append-only log). Now 40 refused requests of every pre-authentication
    kind (no token, a bad token, a path trick, an over-long query) add no entry, write no
    per-request log line, and are counted in /metrics; one aggregate line a minute says how
    many there were, naming no path or query."""
    catch_all = router.route().respond(200, json={"resourceType": "Patient"})
    before = await store.size()
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        statuses = []
        for i in range(10):
            long_query = "name=" + "x" * 17_000 + f"&n={i}"
            statuses += [
                (await http.get(f"/fhir/Patient?name=secret-{i}")).status_code,
                (
                    await http.get("/fhir/Patient", headers={"authorization": "Bearer x.y.z"})
                ).status_code,
                (await http.get("/fhir/Patient//secret")).status_code,
                (await http.get(f"/fhir/Patient?{long_query}")).status_code,
            ]
        assert sorted(set(statuses)) == [400, 401, 414]
        assert await store.size() == before
        assert not catch_all.called
        assert lines(log, "request") == []
        assert lines(log, "unauthenticated requests refused") == []
        clock.now += 61
        assert (await http.get("/fhir/Patient")).status_code == 401
    metrics = app.metrics.render().decode()
    (summary,) = lines(log, "unauthenticated requests refused")
    assert summary["count"] == 41
    assert summary["reason"] == "path-rejected:10,too-large:10,unauthenticated:21"
    assert summary["seconds"] == 61.0
    assert "secret" not in log.getvalue()
    assert 'consentry_refusals_total{reason="unauthenticated"} 21' in metrics
    assert await store.size() == before


async def test_an_address_out_of_budget_is_refused_before_any_token_work(
    app: Gateway, store: MemoryLogStore, clock: FakeClock
) -> None:
    """A flood of bad tokens from one address: each failed verification spends one of the
    address's 50 (default) tokens; after that the address is answered 429 with Retry-After
    without the verifier being called, and nothing reaches the ledger. The budget refills
    (5 a second by default)."""
    assert app.proxy.enforcement is not None
    counting = CountingVerifier(app.proxy.enforcement.verifier)
    app.proxy.enforcement.verifier = counting
    before = await store.size()
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    bad = {"authorization": "Bearer not.a.token"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        answers = [await http.get("/fhir/Patient", headers=bad) for _ in range(60)]
        assert [a.status_code for a in answers] == [401] * 50 + [429] * 10
        assert counting.calls == 50
        assert answers[-1].headers["retry-after"] == "1"
        assert answers[-1].json()["issue"][0]["code"] == "throttled"
        other = httpx.ASGITransport(app=app, client=("198.51.100.9", 40000))
        async with httpx.AsyncClient(transport=other, base_url="http://gateway.test") as second:
            assert (await second.get("/fhir/Patient", headers=bad)).status_code == 401
        clock.now += 0.2  # one token back
        assert (await http.get("/fhir/Patient", headers=bad)).status_code == 401
        assert (await http.get("/fhir/Patient", headers=bad)).status_code == 429
    assert await store.size() == before


async def test_bad_tokens_from_an_address_never_refuse_a_verified_token_from_it(
    app: Gateway,
    store: MemoryLogStore,
    router: respx.Router,
    system_bearer: dict[str, str],
) -> None:
    """The attack: the address budget was checked before the token for every request, so 50
    bad tokens sent through a NAT, an egress proxy or a load balancer got every legitimate
    client behind that address a 429. Now a token that verified before (and has not expired)
    is let past its address's budget (which guards verification work only) and verified as
    ever, while the bad tokens from the same address stay refused 429 without token work."""
    router.get("/Patient/1").respond(200, json={"resourceType": "Patient", "id": "1"})
    assert app.proxy.enforcement is not None
    counting = CountingVerifier(app.proxy.enforcement.verifier)
    app.proxy.enforcement.verifier = counting
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    bad = {"authorization": "Bearer not.a.token"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        assert (await http.get("/fhir/Patient/1", headers=system_bearer)).status_code == 200
        answers = [await http.get("/fhir/Patient", headers=bad) for _ in range(51)]
        assert [a.status_code for a in answers] == [401] * 50 + [429]
        calls = counting.calls
        for _ in range(3):
            assert (await http.get("/fhir/Patient/1", headers=system_bearer)).status_code == 200
        assert counting.calls == calls + 3  # verified each time, never taken on trust
        assert (await http.get("/fhir/Patient", headers=bad)).status_code == 429
        assert counting.calls == calls + 3  # the bad token: refused before any token work


async def test_ipv6_addresses_share_a_budget_per_64(app: Gateway) -> None:
    """The attack: one IPv6 subscriber holds a whole /64 and can send each bad token from a
    fresh address, each with a fresh budget. Now the budget is its /64's: a neighbour in the
    same /64 is refused 429 once it is spent; another /64 keeps its own."""
    bad = {"authorization": "Bearer not.a.token"}

    async def status(host: str) -> int:
        transport = httpx.ASGITransport(app=app, client=(host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            return (await c.get("/fhir/Patient", headers=bad)).status_code

    spent = [await status(f"2001:db8:0:1::{i:x}") for i in range(1, 51)]
    assert spent == [401] * 50
    assert await status("2001:db8:0:1:ffff::1") == 429
    assert await status("2001:db8:0:2::1") == 401


async def test_a_verified_callers_refusal_is_recorded_when_its_address_budget_is_spent(
    app: Gateway, store: MemoryLogStore, router: respx.Router, system_bearer: dict[str, str]
) -> None:
    """The attack: a refusal made before identification (a path trick) re-identified its
    caller through the address budget, so once others' bad tokens had spent that budget a
    verified caller's refused request got its 400 and no ledger entry. Now it is identified
    from its verified token and recorded."""
    router.get("/Patient/1").respond(200, json={"resourceType": "Patient", "id": "1"})
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    bad = {"authorization": "Bearer not.a.token"}
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        assert (await http.get("/fhir/Patient/1", headers=system_bearer)).status_code == 200
        for _ in range(50):
            await http.get("/fhir/Patient", headers=bad)
        assert (await http.get("/fhir/Patient", headers=bad)).status_code == 429
        before = await store.size()
        trick = await http.get("/fhir/Patient//secret", headers=system_bearer)
        assert trick.status_code == 400
        assert await store.size() > before


async def test_a_verified_caller_over_its_rate_gets_429_with_retry_after(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    store: MemoryLogStore,
    clock: FakeClock,
) -> None:
    """One principal (the system token) limited to 2 requests at once and 1 a second: the
    third is 429 with Retry-After, is not forwarded and is not a ledger entry (the limit
    bounds the ledger's growth too); a second later it passes again."""
    route = router.get("/Patient/1").respond(200, json={"resourceType": "Patient", "id": "1"})
    async with make_client(rate_limit_per_principal=1.0, rate_limit_per_principal_burst=2) as c:
        assert (await c.get("/fhir/Patient/1")).status_code == 200
        assert (await c.get("/fhir/Patient/1")).status_code == 200
        size = await store.size()
        refused = await c.get("/fhir/Patient/1")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert route.call_count == 2
        assert await store.size() == size
        clock.now += 1
        assert (await c.get("/fhir/Patient/1")).status_code == 200


async def test_a_refusal_of_a_caller_over_its_rate_is_its_429_never_an_unrecorded_4xx(
    make_client: Callable[..., httpx.AsyncClient],
    router: respx.Router,
    store: MemoryLogStore,
) -> None:
    """The defect: a verified caller over its own rate sent a path trick; identifying it for
    the record ran into the rate limit, so it got its 400 and no ledger entry. Now the answer
    is the 429 (which, like every 429, is not recorded: the limit bounds the ledger too)."""
    router.get("/Patient/1").respond(200, json={"resourceType": "Patient", "id": "1"})
    async with make_client(rate_limit_per_principal=1.0, rate_limit_per_principal_burst=1) as c:
        assert (await c.get("/fhir/Patient/1")).status_code == 200
        size = await store.size()
        trick = await c.get("/fhir/Patient//secret")
        assert trick.status_code == 429
        assert trick.headers["retry-after"] == "1"
        assert await store.size() == size


@pytest.mark.parametrize("path", ["/fhir/Patient", "/fhir/Consent"], ids=["proxy", "consent-api"])
async def test_a_body_that_does_not_arrive_in_time_is_408(
    make_app: Callable[..., Gateway], dev_key_file: Path, system_bearer: dict[str, str], path: str
) -> None:
    """The attack: a client that sends its headers and then drips (or withholds) its body held
    a request open for as long as it liked. The body must be whole within body_timeout."""
    app = make_app(
        auth=auth_settings(dev_key_file), consent_jurisdiction="opt-out", body_timeout=0.05
    )
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        return {"type": "http.disconnect"}

    messages: list[Any] = []

    async def send(message: Any) -> None:
        messages.append(message)

    token = system_bearer["authorization"].encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"gateway.test"),
            (b"authorization", token),
            (b"content-type", b"application/fhir+json"),
            (b"content-length", b"100"),
        ],
        "client": CLIENT,
        "server": ("gateway.test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    start = next(m for m in messages if m["type"] == "http.response.start")
    assert start["status"] == 408
    if path == "/fhir/Patient":  # the consent API leaves the connection to the server
        assert dict(start["headers"])[b"connection"] == b"close"
