"""The recorder's intents: a write's possible outcomes kept before it is forwarded, and the
reconcile that decides the intents a stopped gateway left.

Before a write is forwarded, :meth:`IntentRecorder.intend` keeps durably (in the
:class:`~middleware.audit.outbox.Outbox`) its outcome entries for each way it can end and a
probe that tells which one happened. :meth:`IntentRecorder.reconcile` resolves the intents
whose owner is gone: this process's own once no longer in flight, another process's once its
:class:`~middleware.audit.outbox.Lease` lapsed or the process stopped running (told apart from
a reused pid by its start time, :func:`started`), then replays the outbox
(:mod:`middleware.audit.recorder_outbox`). A layer of
:class:`~middleware.audit.recorder.AuditRecorder`, whose ``__init__`` sets its state.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Mapping

from middleware.audit.outbox import Lease, OpenIntent, OutboxRow
from middleware.audit.plan import Exchange, plan
from middleware.audit.recorder_direct import unavailable
from middleware.audit.recorder_outbox import OutboxRecorder
from middleware.ledger.leaf import micros_at
from middleware.logging import get_logger

__all__ = ["IntentRecorder", "running", "started"]


class IntentRecorder(OutboxRecorder):
    """Intents, leases and reconcile (module docstring)."""

    # This process's intents whose write is in flight: never reconciled (the upstream may
    # not have it *yet*), unless one outlives ``live_for`` seconds (a request cancelled
    # before its outcome was recorded).
    _live: dict[str, float]
    _live_for: float
    _max_attempts: int
    _give_up_after: float
    # Who this process is to others sharing the outbox: a random owner id, and what tells a
    # process on this host whether it still runs (Lease).
    _owner: str
    _host: str
    _started: str
    given_up: int

    def _lease(self) -> Lease:
        """This process's lease, running ``live_for`` seconds from now."""
        expires = micros_at(self._wall_clock() + self._live_for)
        return Lease(self._owner, self._host, os.getpid(), self._started, expires)

    def _owner_gone(self, intent: OpenIntent) -> bool:
        """Whether ``intent``'s owner is another process that no longer holds it: no lease,
        a lease lapsed, or an owner on this host whose process is not running any more."""
        lease = intent.lease
        if lease is None:
            return True
        if lease.expires_us <= micros_at(self._wall_clock()):
            return True
        return lease.host == self._host and not running(lease.pid, lease.started)

    async def intend(self, variants: Mapping[str, Exchange], probe: str) -> str | None:
        """Before a write is forwarded: keep, durably, its outcome entries for each way it can
        end (``variants``, by name) and the ``probe`` that tells which one it was, so a
        gateway killed before the outcome is recorded leaves what :meth:`reconcile` needs.
        Returns the intent to pass to :meth:`record` (None without an outbox). Raises
        ServiceUnavailable when the intent cannot be made durable: nothing is forwarded."""
        outbox = self.outbox
        if outbox is None:
            return None
        intent = uuid.uuid4().hex
        held: dict[str, list[OutboxRow]] = {}
        for name, exchange in variants.items():
            recorded_us = micros_at(self._wall_clock())
            plans = plan(exchange, "outcome", recorded_us, self._gateway)
            rid = exchange.request_id
            await self._pseudonyms(rid, [p.facts.patient for p in plans if p.facts.patient])
            held[name] = await self._rows(plans, rid, intent)
        self._live[intent] = self._clock()
        try:
            created = micros_at(self._wall_clock())
            await outbox.hold(intent, probe, held, lease=self._lease(), created_us=created)
        except Exception as exc:  # the outbox's own storage failed: do not forward
            # A reconcile may have dropped it already (a hold that outlasted live_for):
            # tests/unit/audit/test_recorder_slow_hold.py.
            self._live.pop(intent, None)
            raise unavailable(next(iter(variants.values())).request_id, exc) from exc
        return intent

    async def reconcile(self, decide: Callable[[str], Awaitable[str | None]]) -> int:
        """Resolve each open intent (a write whose gateway stopped before its outcome was
        recorded) with ``decide(probe)``, which asks the upstream and names the variant that
        happened (None: it cannot tell now), then :meth:`replay`. Only intents whose owner is
        gone are taken: this process's own, unless in flight, and another process's once
        its lease lapsed or it stopped running (class docstring); the others are left alone
        and not counted. An intent ``decide`` cannot tell (None, or it raised) counts an
        attempt; after ``max_attempts`` of them or ``give_up_after`` seconds it is resolved
        ``unknown``. Returns the rows and undecided intents still waiting (-1 when that is
        not known: the outbox cannot be read)."""
        outbox = self.outbox
        if outbox is None:
            return 0
        now = self._clock()
        self._live = {i: t for i, t in self._live.items() if now - t < self._live_for}
        undecided = 0
        # equivalent mutants (name): our log lines do not render a logger name
        log = get_logger("consentry.audit")
        try:
            await outbox.renew(self._lease())
            for open_intent in await outbox.open_intents():
                intent = open_intent.intent
                if intent in self._live:
                    continue
                if open_intent.owner != self._owner and not self._owner_gone(open_intent):
                    continue  # another process's write, maybe still in flight
                try:
                    variant = await decide(open_intent.probe)
                # The upstream unreachable, a probe that does not decode: not decided now.
                except Exception as exc:  # noqa: BLE001
                    log.warning("audit intent not decided", error_type=type(exc).__name__)
                    variant = None
                if variant is None:
                    if self._give_up(open_intent):
                        variant = "unknown"
                        self.given_up += 1
                        log.warning(
                            "audit intent given up: outcome recorded as unknown",
                            attempts=open_intent.attempts + 1,
                        )
                    else:
                        await outbox.attempted(intent)
                        undecided += 1
                        continue
                await outbox.resolve(intent, variant)
                # equivalent mutants (None, False): the replay() below sets it from what waits
                self._deferred = True
        # Start-up and readiness call this: an unreachable upstream or outbox is reported as
        # work still waiting, never raised.
        except Exception as exc:  # noqa: BLE001
            # equivalent mutants (name): our log lines do not render a logger name
            get_logger("consentry.audit").warning(
                "audit intents not reconciled", error_type=type(exc).__name__
            )
            undecided = -1
        waiting = await self.replay()
        return -1 if -1 in (waiting, undecided) else waiting + undecided

    def _give_up(self, intent: OpenIntent) -> bool:
        """Whether an intent that could not be decided once more is resolved ``unknown``."""
        if intent.attempts + 1 >= self._max_attempts:
            return True
        now = micros_at(self._wall_clock())
        age = (now - intent.created_us) / 1_000_000
        return intent.created_us > 0 and age >= self._give_up_after


def started(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), "" when
    it cannot be read: with the pid it names one process, so a reused pid is told apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return ""


def running(pid: int, started_at: str) -> bool:
    """Whether the process ``pid`` that started at ``started_at`` runs on this host (when its
    start time cannot be compared, whether any process ``pid`` exists)."""
    if started_at:
        return started(pid) == started_at
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True
