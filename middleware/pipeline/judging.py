"""A :class:`~middleware.pipeline.judge.Judge` for one document, with what it is judged by.

:meth:`Judging.judge` finds every patient a document touches
(:func:`~middleware.pipeline.judge.patients_in`), loads each one's compiled consents, reads
the injected wall clock once and works out which denials break-the-glass overrides; the
:class:`~middleware.pipeline.judge.Judge` it returns decides resource by resource. The read
half releases through it (:mod:`~middleware.pipeline.release`), the write halves check a
write's resources through it (``ACTION_COLLECT``/``ACTION_CORRECT``: never overridden).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from middleware.consent.decide import Defaults
from middleware.consent.decisions import DecisionCache
from middleware.consent.model import Coding, Policy
from middleware.fhir.compartment import PatientRefs
from middleware.pipeline.breakglass import BreakGlass, forbids_break_glass
from middleware.pipeline.caller import ACTION_ACCESS, Caller
from middleware.pipeline.judge import Judge, Trail, may_hold_inline, needs_walk, patients_in
from middleware.pipeline.memberships import Memberships

__all__ = ["Judging", "PolicySource"]

#: Loads the compiled consents of one patient (``Patient/<id>``).
PolicySource = Callable[[str], Awaitable[tuple[Policy, ...]]]


class Judging:
    """Builds the :class:`Judge` of a document (module docstring). ``allow_unknown`` names the
    caller contexts (``user``, ``system``, ``patient``) for which a resource whose patient
    cannot be determined is released; ``break_glass`` (None: never) holds the open
    emergency-access sessions; ``memberships`` (None: the token's only) looks up what the
    caller acts for where a consent names such a party."""

    def __init__(
        self,
        *,
        policies: PolicySource,
        defaults: Defaults,
        base_urls: Sequence[str],
        allow_unknown: frozenset[str],
        wall_clock: Callable[[], float],
        break_glass: BreakGlass | None,
        memberships: Memberships | None = None,
    ) -> None:
        self._policies = policies
        self.memberships = memberships
        self.defaults = defaults
        self.base_urls = tuple(base_urls)
        self.allow_unknown = allow_unknown
        self.wall_clock = wall_clock
        self.break_glass = break_glass
        # Decisions outlive one exchange: a consent change is a new policies tuple from the
        # registry, so a new key (middleware.consent.decisions).
        self.decisions = DecisionCache(defaults)

    async def judge(
        self,
        caller: Caller,
        action: Coding,
        document: Any,
        trail: Trail,
        raw: bytes | None = None,
    ) -> Judge:
        """A :class:`Judge` for ``document`` (``raw``: its bytes as received, when known) with
        the consents of every patient it touches."""
        seen: dict[int, PatientRefs] = {}
        patients = patients_in(document, base_urls=self.base_urls, seen=seen)
        policies = {patient: await self._policies(patient) for patient in sorted(patients)}
        if self.memberships is not None:
            caller, policies = await self.memberships.widen(caller, policies)
        seconds = self.wall_clock()
        now = datetime.fromtimestamp(seconds, UTC)
        return Judge(
            caller=caller,
            action=action,
            policies=policies,
            defaults=self.defaults,
            now=now,
            base_urls=self.base_urls,
            allow_unknown=caller.context in self.allow_unknown,
            override=await self._override(
                caller, action=action, policies=policies, trail=trail, seconds=seconds, now=now
            ),
            trail=trail,
            seen=seen,
            walk=needs_walk(raw, policies.values()),
            inline=may_hold_inline(raw),
            decisions=self.decisions,
        )

    async def _override(
        self,
        caller: Caller,
        *,
        action: Coding,
        policies: dict[str, tuple[Policy, ...]],
        trail: Trail,
        seconds: float,
        now: datetime,
    ) -> frozenset[str]:
        """The patients whose denials break-the-glass overrides for this read: those of an
        open session, or all when the request asks for emergency access, minus every patient
        whose consent refuses it. Writes are never overridden."""
        if self.break_glass is None or action != ACTION_ACCESS:
            return frozenset()
        candidates = set(await self.break_glass.active(caller, seconds, policies))
        if trail.emergency:
            candidates |= set(policies)
        return frozenset(
            p for p in candidates & set(policies) if not forbids_break_glass(policies[p], now)
        )
