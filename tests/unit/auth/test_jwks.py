"""The JWKS cache: file and URL sources, TTL, rotation on unknown kid (throttled), staleness."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from middleware.auth.jwks import MAX_JWKS_BYTES, JwksCache, JwksUnavailable, StaticJwks

from .tokens import ED, JWKS_URL, ROTATED, jwks


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Monotonic:
    return Monotonic()


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(assert_all_called=False)


@pytest.fixture
async def client(router: respx.Router) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as c:
        yield c


def url_cache(client: httpx.AsyncClient, clock: Monotonic, **kw: float) -> JwksCache:
    return JwksCache(JWKS_URL, client=client, clock=clock, **kw)


# --- URL source -------------------------------------------------------------------------------


async def test_keys_are_fetched_once_and_cached(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic
) -> None:
    route = router.get(JWKS_URL).respond(json=jwks(ED))
    cache = url_cache(client, clock)
    assert await cache.find("ed-1", "EdDSA") is not None
    assert await cache.find("ed-1", "EdDSA") is not None
    assert route.call_count == 1
    assert route.calls[0].request.headers["accept"].startswith("application/jwk-set+json")


async def test_unknown_kid_triggers_one_refetch_and_finds_the_rotated_key(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic
) -> None:
    route = router.get(JWKS_URL)
    route.side_effect = [
        httpx.Response(200, json=jwks(ED)),
        httpx.Response(200, json=jwks(ED, ROTATED)),
    ]
    cache = url_cache(client, clock, refresh_interval=30)
    assert await cache.find("ed-1", "EdDSA") is not None
    clock.now += 31
    assert await cache.find("ed-2", "EdDSA") is not None
    assert route.call_count == 2


async def test_refetches_for_unknown_kids_are_throttled(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic
) -> None:
    route = router.get(JWKS_URL).respond(json=jwks(ED))
    cache = url_cache(client, clock, refresh_interval=30)
    await cache.find("ed-1", "EdDSA")
    for _ in range(5):
        assert await cache.find("unknown", "EdDSA") is None
    assert route.call_count == 1  # the first load was under 30 s ago
    clock.now += 30
    for _ in range(5):
        assert await cache.find("unknown", "EdDSA") is None
    assert route.call_count == 2


async def test_concurrent_lookups_share_one_fetch(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic
) -> None:
    route = router.get(JWKS_URL).respond(json=jwks(ED, ROTATED))
    cache = url_cache(client, clock)
    found = await asyncio.gather(*(cache.find("ed-2", "EdDSA") for _ in range(20)))
    assert all(key is not None for key in found)
    assert route.call_count == 1


async def test_table_is_reloaded_after_its_ttl(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic
) -> None:
    route = router.get(JWKS_URL)
    route.side_effect = [
        httpx.Response(200, json=jwks(ED)),
        httpx.Response(200, json=jwks(ROTATED)),
    ]
    cache = url_cache(client, clock, ttl=300)
    assert await cache.find("ed-1", "EdDSA") is not None
    clock.now += 300
    assert await cache.find("ed-1", "EdDSA") is None  # retired by the issuer
    assert route.call_count == 2


async def test_failed_reload_keeps_the_stale_table_until_max_stale(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic
) -> None:
    route = router.get(JWKS_URL)
    route.side_effect = [httpx.Response(200, json=jwks(ED))] + [httpx.Response(503)] * 10
    cache = url_cache(client, clock, ttl=300, refresh_interval=30, max_stale=600)
    await cache.find("ed-1", "EdDSA")
    clock.now += 400
    with capture_logs() as logs:
        assert await cache.find("ed-1", "EdDSA") is not None
    assert logs[0]["event"] == "jwks reload failed"
    assert "503" in logs[0]["error"]
    clock.now += 501  # 901 s since the last good load > ttl + max_stale
    with pytest.raises(JwksUnavailable, match="stale"):
        await cache.find("ed-1", "EdDSA")


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(404),
        httpx.Response(200, content=b"not json"),
        httpx.Response(200, json={"no": "keys"}),
        httpx.Response(200, content=b" " * (MAX_JWKS_BYTES + 1)),
        httpx.Response(302, headers={"location": "https://elsewhere.test/jwks"}),
    ],
    ids=["404", "not-json", "not-a-jwk-set", "too-large", "redirect-not-followed"],
)
async def test_unusable_first_load_is_unavailable(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic, response: httpx.Response
) -> None:
    router.get(JWKS_URL).mock(return_value=response)
    with pytest.raises(JwksUnavailable):
        await url_cache(client, clock).find("ed-1", "EdDSA")


async def test_transport_errors_are_translated(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic
) -> None:
    router.get(JWKS_URL).mock(side_effect=httpx.ConnectError("refused"))
    cache = url_cache(client, clock)
    with capture_logs() as logs:
        assert not await cache.reload()
    assert logs[0]["error"] == "cannot fetch the JWKS: ConnectError"
    with pytest.raises(JwksUnavailable):
        await cache.find("ed-1", "EdDSA")


async def test_ignored_keys_are_logged(
    router: respx.Router, client: httpx.AsyncClient, clock: Monotonic
) -> None:
    document = jwks(ED)
    document["keys"].append({**document["keys"][0], "kid": "enc", "use": "enc"})
    router.get(JWKS_URL).respond(json=document)
    with capture_logs() as logs:
        assert await url_cache(client, clock).reload()
    assert logs == [
        {
            "event": "jwks keys ignored",
            "log_level": "info",
            "reason": "key 1 (kid 'enc'): use is not 'sig'",
        }
    ]


# --- file source, construction ----------------------------------------------------------------


async def test_file_source_rotates_when_the_file_changes(tmp_path: Path, clock: Monotonic) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(ED)))
    cache = JwksCache(path, clock=clock, refresh_interval=10)
    assert await cache.find("ed-1", "EdDSA") is not None
    path.write_text(json.dumps(jwks(ED, ROTATED)))
    assert await cache.find("ed-2", "EdDSA") is None  # throttled: loaded 0 s ago
    clock.now += 10
    assert await cache.find("ed-2", "EdDSA") is not None


async def test_missing_file_is_unavailable(tmp_path: Path, clock: Monotonic) -> None:
    with pytest.raises(JwksUnavailable, match="could not be loaded"):
        await JwksCache(tmp_path / "absent.json", clock=clock).find("ed-1", "EdDSA")


async def test_url_needs_a_client_and_a_scheme(client: httpx.AsyncClient) -> None:
    with pytest.raises(ValueError, match="AsyncClient"):
        JwksCache(JWKS_URL)
    with pytest.raises(ValueError, match="http"):
        JwksCache("file:///etc/jwks.json", client=client)


async def test_plain_http_is_allowed_but_logged(client: httpx.AsyncClient) -> None:
    with capture_logs() as logs:
        JwksCache("http://keycloak:8080/certs", client=client)
    assert logs[0]["event"] == "jwks fetched over plain http"
    assert logs[0]["log_level"] == "warning"


async def test_static_keys() -> None:
    keys = StaticJwks(jwks(ED))
    assert await keys.find("ed-1", "EdDSA") is not None
    assert await keys.find("ed-1", "ES256") is None
