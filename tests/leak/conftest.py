"""Fixtures of the leak tests: the seeded setting of :mod:`tests.leak.world`, closed after
each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.leak.world import World, open_world

OpenWorld = Callable[..., Awaitable[World]]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """The development issuer's key, shared by every gateway of one test."""
    return tmp_path / "dev-issuer.jwk"


@pytest.fixture(params=["mock", "native", "aiohttp"])
def upstream_mode(request: pytest.FixtureRequest) -> str:
    """Every leak test runs three times: the upstream reached through ``httpx.MockTransport``,
    and over real HTTP with each of the gateway's HTTP/1.1 clients, ``native`` (the default)
    and ``aiohttp`` (:mod:`tests.served_upstream`)."""
    mode: str = request.param
    return mode


@pytest.fixture
async def make_world(key_file: Path, upstream_mode: str) -> AsyncIterator[OpenWorld]:
    """Opens further settings (other gateway keys, other settings); all closed at the end."""
    opened: list[World] = []

    async def make(**overrides: Any) -> World:
        if upstream_mode != "mock":
            overrides.setdefault("served", upstream_mode)
        world = await open_world(key_file, **overrides)
        opened.append(world)
        return world

    yield make
    for world in opened:
        await world.http.aclose()
        await world.gateway.aclose()


@pytest.fixture
async def world(make_world: OpenWorld) -> World:
    """The setting: p1 denies Practitioner/dr, p2 has no consent, opt-out jurisdiction."""
    return await make_world()
