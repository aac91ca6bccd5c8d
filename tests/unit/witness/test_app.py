"""The witness's HTTP edge: routing, the body limit and the body deadline (driven through
``httpx.ASGITransport``; the service behind it is the real one on a temporary state file)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from middleware.ledger.signing import Cosigner
from middleware.witness.app import create_witness_app
from middleware.witness.protocol import MAX_BODY_BYTES, LogConfig
from middleware.witness.service import Witness
from middleware.witness.state import WitnessState
from tests.unit.witness.test_protocol import LOG, ORIGIN, body


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    state = WitnessState(tmp_path / "w.db")
    witness = Witness(
        {ORIGIN: LogConfig(ORIGIN, (LOG.verifier(),))}, state, Cosigner("w", bytes(32))
    )
    app = create_witness_app(witness, body_timeout=0.2)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://witness"
    ) as http:
        yield http
    state.close()


async def test_a_checkpoint_is_cosigned_over_http(client: httpx.AsyncClient) -> None:
    answer = await client.post("/add-checkpoint", content=body(0, 3))
    assert answer.status_code == 200
    assert answer.text.startswith("\u2014 w ")
    assert answer.headers["content-type"].startswith("text/plain")


async def test_a_409_says_the_size_in_its_own_content_type(client: httpx.AsyncClient) -> None:
    await client.post("/add-checkpoint", content=body(0, 3))
    answer = await client.post("/add-checkpoint", content=body(0, 5))
    assert (answer.status_code, answer.text) == (409, "3\n")
    assert answer.headers["content-type"] == "text/x.tlog.size"


async def test_a_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 1024 + 2):
            yield b"x" * 1024

    assert (await client.post("/add-checkpoint", content=chunks())).status_code == 413


async def test_a_body_that_does_not_arrive_in_time_is_408(client: httpx.AsyncClient) -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b"old 0\n"
        await asyncio.sleep(1.0)
        yield b"\n"

    assert (await client.post("/add-checkpoint", content=slow())).status_code == 408


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/add-checkpoint", 405), ("GET", "/", 404), ("GET", "/healthz", 200)],
    ids=["get-add-checkpoint", "root", "healthz"],
)
async def test_routes(client: httpx.AsyncClient, method: str, path: str, status: int) -> None:
    assert (await client.request(method, path)).status_code == status
