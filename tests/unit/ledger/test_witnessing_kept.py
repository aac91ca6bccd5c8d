"""The witnessed checkpoint kept in the log's store (``Witnessing(kept=...)``,
:mod:`middleware.ledger.publication`), on memory, one SQLite file and one PostgreSQL schema:

- a restarted gateway publishes what the store holds at once, its witnesses down (it answered
  503 until a round got a quorum again, forever with the witnesses down);
- two gateways on one store, the store keeping what they write, publish the same checkpoint
  and never go backwards, also when both got a quorum for one size (the first kept wins: each
  published its own before) and while a quorum's note is being kept (it is published only
  once kept); while a write fails, the replica that got the quorum is ahead
  (test_witnessing_kept_faults);
- a kept note that does not verify (a bad or future-dated cosignature, too few, a root or size
  the log did not sign, another log signature, rubbish) is not published, counted once under
  its reason code and logged; a forged larger row does not stop a replica publishing its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from middleware.ledger.checkpoint import Checkpoint, parse_checkpoint
from middleware.ledger.note import parse_note
from middleware.ledger.quorum import FUTURE_SKEW
from middleware.ledger.signing import SigningKey
from middleware.ledger.witnessing import Witnessing
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLog, MemoryLogStore
from tests.contract.backends import POSTGRES, Backend, make_backend
from tests.contract.helpers import KEY, ORIGIN, SIGN, entry
from tests.unit.ledger.test_witnessing import W1, W2, Handler, cosigning, endpoint, router

NOW = 1_700_000_000
STRANGER = SigningKey.from_seed(ORIGIN, bytes([7]) * 32)


def _down(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


DOWN: dict[str, Handler] = {"w1.test": _down, "w2.test": _down}


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    made = await make_backend(request.param, tmp_path)
    yield made
    await made.cleanup()


@asynccontextmanager
async def gateway(
    store: LogStore, handlers: dict[str, Handler], quorum: int = 2
) -> AsyncIterator[Witnessing]:
    """A replica's witnessing task (not started) on ``store``, keeping what is witnessed there."""

    async def opened() -> LogStore:
        return store

    async with router(handlers, []) as client:
        witnessing = Witnessing(
            opened,
            [endpoint(W1), endpoint(W2)],
            quorum=quorum,
            client=client,
            clock=lambda: NOW,
            kept=opened,
            log_key=KEY.verifier(),
        )
        try:
            yield witnessing
        finally:
            await witnessing.aclose()


def witnesses(held: dict[str, int], at: int = NOW) -> dict[str, Handler]:
    """Both witnesses, cosigning at ``at``; ``held``: what each holds, shared by replicas."""
    return {"w1.test": cosigning(W1, held, at=at), "w2.test": cosigning(W2, held, at=at)}


async def grow(store: LogStore, size: int) -> None:
    have = await store.size()
    await store.append([entry(n) for n in range(have, size)], sign=SIGN)


def size_of(note: str | None) -> int:
    assert note is not None
    return parse_checkpoint(parse_note(note).text).size


async def test_a_restarted_gateway_publishes_the_kept_checkpoint_at_once_witnesses_down(
    backend: Backend,
) -> None:
    first = await backend.open()
    await grow(first, 3)
    async with gateway(first, witnesses({})) as before:
        await before.submit_latest()
        note = await before.published()
    await first.close()
    assert size_of(note) == 3
    again = await backend.open()  # the restart: a new store, a new task, witnesses down
    try:
        async with gateway(again, DOWN) as after:
            assert await after.published() == note  # before any round
            assert after.published_size == 3
            await after.submit_latest()  # no witness answers: still published
            assert await after.published() == note
            assert after.failures == {"unreachable": 2}
    finally:
        await again.close()


async def test_two_gateways_on_one_store_publish_the_same_and_never_go_backwards(
    backend: Backend,
) -> None:
    one, two = await backend.open(), await backend.open()
    held: dict[str, int] = {}
    seen: list[int] = []
    try:
        async with gateway(one, witnesses(held)) as a, gateway(two, witnesses(held)) as b:
            for size, (writer, rounds) in zip((2, 4, 7, 9), [(one, a), (two, b)] * 2, strict=True):
                await grow(writer, size)
                await rounds.submit_latest()
                for replica in (a, b, a, b):
                    seen.append(size_of(await replica.published()))
                assert await a.published() == await b.published()
    finally:
        await one.close()
        await two.close()
    assert seen == sorted(seen)
    assert seen[-1] == 9


async def test_two_quorums_for_one_size_publish_the_first_kept_on_both(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    held: dict[str, int] = {}
    try:
        await grow(one, 5)
        # The same witnesses, dated apart: each replica's quorum note differs by its lines.
        async with (
            gateway(one, witnesses(held, NOW - 10)) as a,
            gateway(two, witnesses(held, NOW - 5)) as b,
        ):
            await a.submit_latest()
            await b.submit_latest()
            assert b.cosigned == 2  # b got its own quorum for size 5 ...
            first = await a.published()
            assert await b.published() == first  # ... and publishes the one kept first
            kept = await two.witnessed()
            assert kept == (5, first)
    finally:
        await one.close()
        await two.close()


async def _forgeries(store: MemoryLogStore) -> dict[str, tuple[int, str]]:
    """Rows a hand-edited store could hold, by the reason each is refused for."""
    logged = await store.checkpoint(3)
    assert logged is not None
    text = parse_note(logged.note).text

    def lines(body: str, at: int = NOW) -> str:
        return W1.cosign(body, at).line() + W2.cosign(body, at).line()

    good = logged.note + lines(text)
    forged = KEY.sign_checkpoint(Checkpoint(ORIGIN, 3, bytes(32)))  # a root the log never had
    stranger = STRANGER.sign_checkpoint(parse_checkpoint(text))  # the text, another signature
    return {
        "kept-cosignature": (3, logged.note + W1.cosign("other\n", NOW).line() + lines(text)),
        "kept-quorum": (3, logged.note + W1.cosign(text, NOW).line()),
        "kept-not-logged": (3, forged + lines(parse_note(forged).text)),
        "kept-log-signature": (3, stranger + lines(text)),
        "kept-size": (8, good),
        "kept-malformed": (3, "rubbish"),
        "kept-future": (3, logged.note + lines(text, NOW + FUTURE_SKEW + 1)),
    }


@pytest.mark.parametrize(
    "reason",
    [
        "kept-cosignature",
        "kept-quorum",
        "kept-not-logged",
        "kept-log-signature",
        "kept-size",
        "kept-malformed",
        "kept-future",
    ],
)
async def test_a_kept_note_that_does_not_verify_is_not_published(reason: str) -> None:
    store = await MemoryLogStore.open()
    await grow(store, 3)
    await grow(store, 5)  # the log went on: what is kept is not its latest
    size, note = (await _forgeries(store))[reason]
    store.log.witnessed[size] = note  # the store takes what it is given (the DBA's edit)
    with capture_logs() as logs:
        async with gateway(store, DOWN) as replica:
            assert await replica.published() is None
            assert await replica.published() is None  # refused once, not on every call
            failures = replica.failures
    code = "kept-cosignature" if reason == "kept-future" else reason
    assert failures == {code: 1}
    refused = [e for e in logs if e["event"] == "kept witnessed checkpoint refused"]
    assert [(e["reason"], e["size"]) for e in refused] == [(code, size)]


async def test_a_forged_row_on_a_sql_store_is_not_published(backend: Backend) -> None:
    store = await backend.open()
    try:
        await grow(store, 3)
        logged = await store.checkpoint(3)
        assert logged is not None
        text = parse_note(logged.note).text
        bad = logged.note + W1.cosign("other\n", NOW).line() + W2.cosign(text, NOW).line()
        assert await store.keep_witnessed(bad)  # the store does not check; publishing does
        async with gateway(store, DOWN) as replica:
            assert await replica.published() is None
            assert replica.failures == {"kept-cosignature": 1}
    finally:
        await store.close()


async def test_a_forged_larger_row_does_not_stop_a_replica_publishing_its_own() -> None:
    store = await MemoryLogStore.open()
    await grow(store, 3)
    forged = KEY.sign_checkpoint(Checkpoint(ORIGIN, 50, bytes(32)))
    text = parse_note(forged).text
    assert await store.keep_witnessed(forged + W1.cosign(text, NOW).line())
    logged = await store.checkpoint(3)
    assert logged is not None
    async with gateway(store, witnesses({})) as replica:
        await replica.submit_latest()
        note = await replica.published()
        assert note is not None
        assert note.startswith(logged.note)  # its own quorum's note
        assert replica.failures == {"kept-not-logged": 1}


class SlowKeeper(MemoryLogStore):
    """Keeps a witnessed checkpoint only once ``go`` is set (a commit under way)."""

    def __init__(self, log: MemoryLog) -> None:
        super().__init__(log)
        self.go = asyncio.Event()
        self.keeping = asyncio.Event()

    async def keep_witnessed(self, note: str) -> bool:
        self.keeping.set()
        await self.go.wait()
        return await super().keep_witnessed(note)


async def test_a_quorum_is_published_only_once_kept_so_no_replica_is_ahead() -> None:
    """While replica A's keep is under way, A publishes what is kept, as B does: had A
    published its new note first, a client asking A then B would see B's go backwards."""
    log = MemoryLog()
    slow, other = SlowKeeper(log), await MemoryLogStore.open(log)
    held: dict[str, int] = {}
    async with gateway(slow, witnesses(held)) as a, gateway(other, witnesses(held)) as b:
        await grow(slow, 2)
        slow.go.set()
        await a.submit_latest()
        old = await a.published()
        slow.go.clear()
        await grow(slow, 4)
        slow.keeping.clear()
        round_ = asyncio.create_task(a.submit_latest())
        await slow.keeping.wait()  # a quorum for 4, being kept
        assert [await a.published(), await b.published()] == [old, old]
        slow.go.set()
        await round_
        new = await a.published()
        assert size_of(new) == 4
        assert await b.published() == new
