"""The audit recorder (audit/recorder.py) when a write's intent cannot be made durable slowly:
the outbox takes longer than ``live_for`` to refuse it, and a reconcile meanwhile forgets the
intent as no longer in flight. The write must still be refused as the audit trail being
unavailable (503, nothing forwarded), never fail with whatever forgetting it twice raises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from middleware.audit.recorder import AuditRecorder
from middleware.errors import ServiceUnavailable
from tests.unit.audit.test_recorder import CREATE, FakeLedger, exchange, recorder
from tests.unit.audit.test_recorder_mutants import HoldingOutbox


class SlowRefusingOutbox(HoldingOutbox):
    """``hold`` waits for ``go``, then refuses (its storage failed)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.holding = asyncio.Event()

    async def hold(self, intent: str, probe: str, held: Any, **kwargs: Any) -> None:
        self.holding.set()
        await self.go.wait()
        raise OSError("disk")


async def test_an_intent_refused_after_a_reconcile_forgot_it_is_still_unavailable() -> None:
    now = [0.0]
    outbox = SlowRefusingOutbox()
    rec, _ = recorder(FakeLedger(), outbox=outbox, live_for=120.0, clock=lambda: now[0])
    assert isinstance(rec, AuditRecorder)

    async def undecided(probe: str) -> str | None:
        return None

    intending = asyncio.create_task(rec.intend({"applied": exchange(CREATE, status=201)}, "p"))
    await outbox.holding.wait()
    assert len(rec._live) == 1
    now[0] = 121.0  # the hold has outlasted live_for: a reconcile no longer counts it in flight
    await rec.reconcile(undecided)
    assert rec._live == {}
    outbox.go.set()
    with pytest.raises(ServiceUnavailable, match=r"^audit trail unavailable$"):
        await intending
