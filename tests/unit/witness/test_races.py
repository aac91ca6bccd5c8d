"""The witness against other processes on its state file, and a state file that fails.

Two ``Witness`` instances on one file stand for two processes (each its own connection and
its own lock), so only the state file's compare-and-swap keeps them consistent; a read hook
injects the other process's write between a witness's read and its answer (tlog-witness's
rollback race). A state file that fails is a 503, never a cosignature."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from middleware.ledger.merkle import root
from middleware.witness.protocol import SIZE_CONTENT_TYPE, LogConfig, LogState
from middleware.witness.service import Witness
from middleware.witness.state import WitnessState
from tests.unit.witness.test_protocol import HASHES, LOG, ORIGIN, WITNESS, body, note

LOGS = {ORIGIN: LogConfig(ORIGIN, (LOG.verifier(),))}


class HookedState(WitnessState):
    """The real state file, running ``after_read`` (once) right after the next read."""

    after_read: Callable[[], object] | None = None

    def get(self, origin: str) -> LogState:
        state = super().get(origin)
        hook, self.after_read = self.after_read, None
        if hook is not None:
            hook()
        return state


class FailingSwap(WitnessState):
    def swap(self, expected: LogState, new: LogState) -> tuple[bool, LogState]:
        raise sqlite3.OperationalError("disk I/O error")


def cosigned(size: int) -> LogState:
    return LogState(ORIGIN, size, root(HASHES[:size]), note(size))


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[HookedState, HookedState]]:
    first, second = HookedState(tmp_path / "w.db"), HookedState(tmp_path / "w.db")
    yield first, second
    first.close()
    second.close()


@pytest.mark.parametrize(("old", "new"), [(8, 8), (8, 10)], ids=["same-again", "extension"])
async def test_a_witness_that_read_before_another_process_moved_the_log_answers_409(
    two: tuple[HookedState, HookedState], old: int, new: int
) -> None:
    first, second = two
    witness = Witness(LOGS, first, WITNESS)
    assert (await witness.add_checkpoint(body(0, 8))).status == 200

    def other_process_cosigns_12() -> None:
        assert second.swap(cosigned(8), cosigned(12)) == (True, cosigned(12))

    first.after_read = other_process_cosigns_12
    answer = await witness.add_checkpoint(body(old, new))
    assert (answer.status, answer.body, answer.content_type) == (409, "12\n", SIZE_CONTENT_TYPE)
    assert second.get(ORIGIN) == cosigned(12)  # not rolled back


async def test_the_same_checkpoint_again_is_confirmed_without_a_write(
    two: tuple[HookedState, HookedState],
) -> None:
    first, _ = two
    assert (await Witness(LOGS, first, WITNESS).add_checkpoint(body(0, 8))).status == 200
    again = LogState(ORIGIN, 8, root(HASHES[:8]), "another note of the same tree")
    assert first.swap(cosigned(8), again) == (True, cosigned(8))
    assert first.get(ORIGIN) == cosigned(8)


async def test_two_processes_from_one_size_cosign_one_and_refuse_the_rest(
    two: tuple[HookedState, HookedState],
) -> None:
    first, second = two
    witnesses = Witness(LOGS, first, WITNESS), Witness(LOGS, second, WITNESS)
    assert (await witnesses[0].add_checkpoint(body(0, 4))).status == 200
    # Both read size 4 before either records anything; then each tries to move it.
    together = threading.Barrier(2, timeout=10)
    first.after_read = second.after_read = together.wait
    answers = await asyncio.gather(
        *(witnesses[n % 2].add_checkpoint(body(4, n)) for n in range(5, 16))
    )
    statuses = [a.status for a in answers]
    assert sorted(statuses) == [200] + [409] * 10
    winner = 5 + statuses.index(200)
    assert first.get(ORIGIN).size == second.get(ORIGIN).size == winner
    assert {a.body for a in answers if a.status == 409} == {f"{winner}\n"}


@pytest.mark.parametrize("failure", ["closed-file", "swap-fails"])
async def test_a_failing_state_file_is_503(tmp_path: Path, failure: str) -> None:
    state = (
        FailingSwap(tmp_path / "w.db")
        if failure == "swap-fails"
        else WitnessState(tmp_path / "w.db")
    )
    if failure == "closed-file":
        state.close()
    with capture_logs() as logs:
        answer = await Witness(LOGS, state, WITNESS).add_checkpoint(body(0, 4))
    state.close()
    assert (answer.status, answer.body) == (503, "the witness cannot record its state now\n")
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["witness state file failed"]
    assert "disk" not in str(errors)  # the type only, not the message
