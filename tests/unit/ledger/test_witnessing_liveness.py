"""One witness cannot stop publication for the others, and replicas do not raise false alarms.

A witness that drips its answer, sends an endless body or floods valid lines is cut off (one
overall timeout per request, :data:`MAX_ANSWER` bytes, one line kept); a round publishes as
soon as a quorum cosigned, a late answer adds its line afterwards. A 409 naming a size above
ours is another replica's doing (``behind``), a rollback only when the store stays below it;
two roots for one size are logged and counted as ``fork``. Witnesses are
``httpx.MockTransport`` handlers (see ``test_witnessing.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from structlog.testing import capture_logs

from middleware.ledger.note import parse_note
from middleware.ledger.witnessing import MAX_ANSWER, Witnessing
from middleware.witness.protocol import parse_submission
from tests.unit.ledger.logs import Log, base, sign
from tests.unit.ledger.test_witnessing import W1, W2, Handler, Source, cosigning, endpoint

#: Guards each test against the old behaviour (waiting forever) instead of hanging the suite.
DEADLINE = 5.0


class At(Source):
    """``log`` as one replica reads it: only its first ``count`` checkpoints."""

    def __init__(self, log: Log, count: int) -> None:
        super().__init__(Log(log.leaves, log.notes[:count]))
        self.full = log

    def show(self, count: int) -> None:
        self.log = Log(self.full.leaves, self.full.notes[:count])


def witnessing(
    source: Source, handlers: dict[str, Handler], quorum: int, timeout: float = 10.0
) -> tuple[Witnessing, httpx.AsyncClient]:
    async def open_source() -> Source:
        return source

    async def handle(request: httpx.Request) -> httpx.Response:
        answer = handlers[request.url.host](request)
        return await answer if asyncio.iscoroutine(answer) else answer

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    names = sorted(handlers)
    witnesses = [endpoint(W1 if "w1" in name else W2) for name in names]
    return Witnessing(open_source, witnesses, quorum=quorum, client=client, timeout=timeout), client


def _drip(_request: httpx.Request) -> httpx.Response:
    """Headers at once, then one byte every 50 ms, forever: no single read ever times out."""

    async def body() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.05)
            yield b"x"

    return httpx.Response(200, content=body())


def _endless(_request: httpx.Request) -> httpx.Response:
    """An answer without end, 1 MiB at a time."""

    async def body() -> AsyncIterator[bytes]:
        while True:
            yield bytes(1 << 20)
            await asyncio.sleep(0)

    return httpx.Response(200, content=body())


def _lines(count: int) -> Handler:
    """``count`` valid cosignature lines by w1, each with its own timestamp."""

    def handle(request: httpx.Request) -> httpx.Response:
        text = parse_submission(request.content).note.text
        lines = "".join(W1.cosign(text, 1_700_000_000 + n).line() for n in range(count))
        return httpx.Response(200, content=lines.encode())

    return handle


def _slow(delay: float, then: Handler) -> Handler:
    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return then(request)

    return handle  # type: ignore[return-value]


async def _eventually(check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds (at most :data:`DEADLINE` seconds)."""
    for _ in range(int(DEADLINE / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not within the deadline")


def _names(note: str | None) -> list[str]:
    assert note is not None
    return sorted(s.name for s in parse_note(note).signatures[1:])


# -- one witness cannot hold up the others -------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "reason"),
    [(_drip, "timeout"), (_endless, "too-large"), (_lines(99), "too-large")],
    ids=["drip-feed", "endless-body", "99-valid-lines"],
)
async def test_a_hostile_witness_is_cut_off_and_the_others_publish(
    handler: Handler, reason: str
) -> None:
    """Quorum 1 of 2: w2 cosigns at once; w1 misbehaves. The round still publishes, and
    w1's request ends within the overall timeout (per-read timeouts never fire on a drip)."""
    done, client = witnessing(
        Source(base()), {"w1.test": handler, "w2.test": cosigning(W2)}, 1, 0.3
    )
    async with client:
        async with asyncio.timeout(DEADLINE):
            await done.submit_latest()
            assert _names(await done.published()) == ["w2.test"]
            await _eventually(lambda: done.failures != {})
        await done.aclose()
    assert done.failures == {reason: 1}


def test_99_lines_are_past_the_cap() -> None:
    """The premise of the case above: 99 lines cannot fit in an answer we read."""
    assert len(W1.cosign("x\n", 1).line().encode()) * 99 > MAX_ANSWER


async def test_one_line_is_kept_per_witness() -> None:
    """w1 answers 20 valid lines (under the cap): its first is kept, once."""
    log = base()
    done, client = witnessing(Source(log), {"w1.test": _lines(20), "w2.test": cosigning(W2)}, 2)
    async with client:
        await done.submit_latest()
        await done.aclose()
    assert _names(await done.published()) == ["w1.test", "w2.test"]
    assert done.failures == {}


async def test_a_quorum_publishes_without_waiting_for_the_slowest_and_late_lines_join() -> None:
    done, client = witnessing(
        Source(base()), {"w1.test": _slow(0.6, cosigning(W1)), "w2.test": cosigning(W2)}, 1
    )
    async with client:
        started = time.monotonic()
        await done.submit_latest()
        assert time.monotonic() - started < 0.4
        assert _names(await done.published()) == ["w2.test"]
        for _ in range(int(DEADLINE / 0.02)):  # the late line joins the publication
            if len(_names(await done.published())) == 2:
                break
            await asyncio.sleep(0.02)
        await done.aclose()
    assert _names(await done.published()) == ["w1.test", "w2.test"]


async def test_aclose_cancels_requests_under_way() -> None:
    done, client = witnessing(Source(base()), {"w1.test": _drip, "w2.test": cosigning(W2)}, 1)
    async with client:
        await done.submit_latest()
        async with asyncio.timeout(DEADLINE):
            await done.aclose()
    assert done.failures == {}


# -- several replicas on one witness -------------------------------------------------------------


async def test_a_replica_behind_another_is_quiet_and_catches_up() -> None:
    """Replica A cosigns 16; B read 12 a moment earlier and gets 409 naming 16: not a
    failure, no warning. B's next round, at 16, publishes."""
    log = base()
    held: dict[str, int] = {}
    witness = cosigning(W1, held)
    a, a_client = witnessing(At(log, len(log.notes)), {"w1.test": witness}, 1)
    b_source = At(log, len(log.notes) - 1)
    b, b_client = witnessing(b_source, {"w1.test": witness}, 1)
    async with a_client, b_client:
        await a.submit_latest()
        with capture_logs() as lines:
            await b.submit_latest()
        assert (b.failures, b.behind, lines, await b.published()) == ({}, 1, [], None)
        b_source.show(len(log.notes))
        await b.submit_latest()
        await a.aclose()
        await b.aclose()
    assert b.published_size == a.published_size == 16
    assert b.failures == {}


async def test_a_witness_still_ahead_a_round_later_is_the_rollback_alarm() -> None:
    """The witness holds 20, the store stays at 16: quiet once, then ``witness-ahead``."""
    done, client = witnessing(
        Source(base()),
        {"w1.test": lambda _r: httpx.Response(409, content=b"20\n"), "w2.test": cosigning(W2)},
        2,
    )
    async with client:
        await done.submit_latest()
        assert done.failures == {}
        with capture_logs() as lines:
            await done.submit_latest()
        await done.aclose()
    assert done.failures == {"witness-ahead": 1}
    assert [(line["event"], line["reason"]) for line in lines] == [
        ("witness did not cosign", "witness-ahead")
    ]


async def test_an_older_checkpoint_is_never_published_after_a_newer_one() -> None:
    """Published at 16 (w1); the next read gives 12 (a lagging replica's view) and w2, who
    had not cosigned, cosigns 12: the publication stays at 16."""
    log = base()
    answers = iter([httpx.Response(500), None])

    def w2(request: httpx.Request) -> httpx.Response:
        return next(answers) or cosigning(W2)(request)

    source = At(log, len(log.notes))
    done, client = witnessing(source, {"w1.test": cosigning(W1), "w2.test": w2}, 1)
    async with client:
        await done.submit_latest()
        assert done.published_size == 16
        source.show(len(log.notes) - 1)
        await done.submit_latest()
        await done.aclose()
    assert done.cosigned == 2  # w1 at 16, w2 at 12
    assert done.published_size == 16
    assert _names(await done.published()) == ["w1.test"]


async def test_two_roots_for_one_size_are_logged_and_counted_as_a_fork() -> None:
    log = base()
    source = Source(log)
    done, client = witnessing(source, {"w1.test": cosigning(W1)}, 1)
    async with client:
        await done.submit_latest()
        source.log = Log(log.leaves, [*log.notes, sign(16, bytes(32))])
        with capture_logs() as lines:
            await done.submit_latest()
            await done.submit_latest()
        await done.aclose()
    assert done.failures == {"fork": 2}
    assert lines == [
        {
            "event": "the store returned two roots for one checkpoint size",
            "size": 16,
            "log_level": "error",
        }
    ]
