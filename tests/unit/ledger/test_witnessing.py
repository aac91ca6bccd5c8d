"""The witnessing task's client side, against witnesses answered by ``httpx.MockTransport``
handlers: what it sends, which answers it keeps, how it counts what it does not, and what it
publishes. The real witness (``consentry witness serve``) is in
``tests/integration/test_witness_attacks.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from structlog.testing import capture_logs

from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.note import parse_note
from middleware.ledger.quorum import FUTURE_SKEW
from middleware.ledger.signing import Cosigner
from middleware.ledger.tree import MerkleLevels, hash_leaves
from middleware.ledger.witnesses import WitnessEndpoint
from middleware.ledger.witnessing import Witnessing
from middleware.witness.protocol import parse_submission
from tests.unit.ledger.logs import Log, base

W1 = Cosigner.generate("w1.test")
W2 = Cosigner.generate("w2.test")
IMPOSTOR = Cosigner.generate("w1.test")  # w1's name, another key
Handler = Callable[[httpx.Request], httpx.Response]


class Source:
    """``log`` read as the store: its latest note, its leaf hashes; counts the reads."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.reads = 0

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        self.reads += 1
        note = self.log.notes[-1]
        checkpoint = parse_checkpoint(parse_note(note).text)
        return StoredCheckpoint(checkpoint.size, checkpoint.root_hash, note)

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return hash_leaves(self.log.leaves[start:end])


def endpoint(cosigner: Cosigner) -> WitnessEndpoint:
    return WitnessEndpoint(cosigner.name, f"http://{cosigner.name}", cosigner.vkey())


def cosigning(
    signer: Cosigner, held: dict[str, int] | None = None, *, at: int = 1_700_000_000
) -> Handler:
    """A witness that cosigns whatever arrives (as ``signer``) once ``old`` is the size it
    holds (``held``, by name; 0 at first), else answers 409 with that size; its
    cosignatures are dated ``at``."""
    sizes = held if held is not None else {}

    def handle(request: httpx.Request) -> httpx.Response:
        submission = parse_submission(request.content)
        size = sizes.get(signer.name, 0)
        if submission.old_size != size:
            return httpx.Response(409, content=f"{size}\n".encode())
        text = submission.note.text
        sizes[signer.name] = parse_checkpoint(text).size
        return httpx.Response(200, content=signer.cosign(text, at).line().encode())

    return handle


def router(handlers: dict[str, Handler], seen: list[httpx.Request]) -> httpx.AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handlers[request.url.host](request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def run(
    log: Log,
    handlers: dict[str, Handler],
    quorum: int,
    *,
    rounds: int = 1,
    clock: Callable[[], float] = time.time,
) -> tuple[Witnessing, list[httpx.Request]]:
    source = Source(log)

    async def open_source() -> Source:
        return source

    seen: list[httpx.Request] = []
    async with router(handlers, seen) as client:
        witnesses = [endpoint(W1 if "w1" in h else W2) for h in handlers]
        witnessing = Witnessing(open_source, witnesses, quorum=quorum, client=client, clock=clock)
        for _ in range(rounds):
            await witnessing.submit_latest()
        await witnessing.aclose()
    return witnessing, seen


async def test_a_quorum_publishes_the_note_with_every_cosignature() -> None:
    log = base()
    done, seen = await run(log, {"w1.test": cosigning(W1), "w2.test": cosigning(W2)}, 2)
    note = await done.published()
    assert note is not None
    assert note.startswith(log.notes[-1])  # the log's note, then the cosignature lines
    assert sorted(s.name for s in parse_note(note).signatures[1:]) == ["w1.test", "w2.test"]
    assert done.published_size == 16
    assert [r.url.path for r in seen] == ["/add-checkpoint"] * 2
    assert all(r.content.startswith(b"old 0\n\n") for r in seen)


NOW = 1_700_000_000


async def test_a_cosignature_dated_too_far_ahead_is_refused() -> None:
    """A witness whose clock runs fast: its line dated more than FUTURE_SKEW after ours is
    refused (bad-cosignature), not published (verifiers reject a note carrying it; it was
    kept before); the other witness's line alone makes the quorum of 1."""
    fast = cosigning(W1, at=NOW + FUTURE_SKEW + 1)
    done, _ = await run(
        base(), {"w1.test": fast, "w2.test": cosigning(W2, at=NOW)}, 1, clock=lambda: NOW
    )
    assert done.failures == {"bad-cosignature": 1}
    note = await done.published()
    assert note is not None
    assert [s.name for s in parse_note(note).signatures[1:]] == ["w2.test"]


async def test_a_cosignature_dated_within_the_skew_is_kept() -> None:
    done, _ = await run(
        base(), {"w1.test": cosigning(W1, at=NOW + FUTURE_SKEW)}, 1, clock=lambda: NOW
    )
    assert done.failures == {}
    assert await done.published() is not None


async def test_a_witness_already_cosigned_is_not_asked_again_for_that_size() -> None:
    done, seen = await run(base(), {"w1.test": cosigning(W1)}, 1, rounds=3)
    assert len(seen) == 1
    assert await done.published() is not None


async def test_after_a_409_the_proof_starts_at_the_size_the_witness_holds() -> None:
    """The witness cosigned 8 before (a restart forgot it): 409 naming 8, then a request
    from 8 with the RFC 9162 proof from 8 to 16."""
    log = base()
    done, seen = await run(log, {"w1.test": cosigning(W1, {"w1.test": 8})}, 1)
    assert await done.published() is not None
    assert done.failures == {}
    first, second = (parse_submission(r.content) for r in seen)
    assert (first.old_size, second.old_size) == (0, 8)
    tree = MerkleLevels(hash_leaves(log.leaves))
    assert list(second.proof) == tree.consistency_proof(8, 16)


def _answer(status: int, body: bytes = b"") -> Handler:
    return lambda _request: httpx.Response(status, content=body)


def _unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def _slow_forever(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _impostor(request: httpx.Request) -> httpx.Response:
    text = parse_submission(request.content).note.text
    return httpx.Response(200, content=IMPOSTOR.cosign(text, 1).line().encode())


def _garbled(request: httpx.Request) -> httpx.Response:
    text = parse_submission(request.content).note.text
    line = W1.cosign(text + "x\n", 1).line()  # a valid signature of another text
    return httpx.Response(200, content=line.encode())


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (_unreachable, "unreachable"),
        (_slow_forever, "unreachable"),
        (_answer(500), "status-500"),
        (_answer(422), "status-422"),
        (_answer(403), "status-403"),
        (_answer(404), "status-404"),
        (_answer(409, b"not a size"), "conflict"),
        (_answer(409, b"0\n"), "conflict"),
        (_answer(200, b"no lines"), "bad-cosignature"),
        (_answer(200, b"\xff\xfe"), "bad-cosignature"),
        (_impostor, "bad-cosignature"),
        (_garbled, "bad-cosignature"),
    ],
    ids=[
        "unreachable",
        "timeout",
        "500",
        "422-bad-proof",
        "403-bad-signature",
        "404-unknown-log",
        "409-without-size",
        "409-same-size-fork",
        "200-not-lines",
        "200-not-utf8",
        "200-another-key",
        "200-invalid-signature",
    ],
)
async def test_a_witness_that_does_not_cosign_is_counted_and_nothing_is_published(
    handler: Handler, reason: str
) -> None:
    done, _ = await run(base(), {"w1.test": handler, "w2.test": cosigning(W2)}, 2)
    assert await done.published() is None
    assert done.failures == {reason: 1}
    assert done.cosigned == 1  # w2's


async def test_without_a_quorum_nothing_is_published() -> None:
    done, _ = await run(base(), {"w1.test": cosigning(W1)}, 0)
    assert await done.published() is None
    assert done.cosigned == 1


async def test_the_background_task_coalesces_and_stops_cleanly() -> None:
    """Rounds run each interval and on wake; each reads only the latest checkpoint; a
    witness that cosigned it is not asked again; aclose ends the task."""
    source = Source(base())

    async def open_source() -> Source:
        return source

    seen: list[httpx.Request] = []
    async with router({"w1.test": cosigning(W1)}, seen) as client:
        witnessing = Witnessing(open_source, [endpoint(W1)], quorum=1, client=client, interval=0.01)
        witnessing.start()
        for _ in range(50):
            if source.reads >= 3:
                break
            await asyncio.sleep(0.01)
        witnessing.wake()
        await witnessing.aclose()
    assert source.reads >= 3
    assert len(seen) == 1
    assert await witnessing.published() is not None


def test_a_quorum_above_the_witnesses_is_refused() -> None:
    async def never() -> Source:
        raise AssertionError

    with pytest.raises(ValueError, match="quorum"):
        Witnessing(never, [endpoint(W1)], quorum=2)


async def test_a_failing_witness_is_logged_once_then_once_more_when_it_recovers() -> None:
    """One warning when a witness starts failing, not one a round; an info line when it
    cosigns again. The lines name the witness and a reason, nothing from the log."""
    log = base()
    source = Source(log)
    answers = iter([_answer(500), _answer(500), _answer(500), cosigning(W1)])

    async def open_source() -> Source:
        return source

    def handle(request: httpx.Request) -> httpx.Response:
        return next(answers)(request)

    with capture_logs() as lines:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
            witnessing = Witnessing(open_source, [endpoint(W1)], quorum=1, client=client)
            for _ in range(4):
                await witnessing.submit_latest()
            await witnessing.aclose()
    events = [(line["event"], line.get("reason")) for line in lines]
    assert events == [("witness did not cosign", "status-500"), ("witness cosigns again", None)]
    assert witnessing.failures == {"status-500": 3}
    assert all(set(line) <= {"event", "log_level", "witness", "reason"} for line in lines)
