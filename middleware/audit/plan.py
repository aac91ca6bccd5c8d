"""Which ledger entries one audited exchange becomes, and the facts each records (pure).

:func:`plan` turns an :class:`Exchange` in one :data:`Phase` into :class:`Planned` entries,
one per patient of :attr:`Exchange.decisions` in order, or one without a patient when the
exchange names none (:mod:`middleware.audit.recorder` documents the kinds and flags; which
resources each entry names is decided by :mod:`middleware.audit.entities`). It
builds :class:`~middleware.audit.facts.AuditFacts`, never AuditEvents: those are rendered
when read (:mod:`middleware.audit.render`), off the request's hot path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from middleware.audit.balp import is_query
from middleware.audit.entities import Phase, entries
from middleware.audit.facts import AuditFacts, Caller, DecisionFacts
from middleware.audit.parts import AgentInfo, patient_reference
from middleware.auth.identity import Identity
from middleware.consent.decide import Decision
from middleware.fhir.request import FhirRequest
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.recent import RecentByIdentity

__all__ = ["Exchange", "Phase", "Planned", "plan", "plan_break_glass"]

_PERMIT = int(EntryFlag.PERMIT)
_NARROWED = int(EntryFlag.NARROWED)
_BREAK_THE_GLASS = int(EntryFlag.BREAK_THE_GLASS)
# Looked up once: an enum member read through its class costs a descriptor call per entry.
_DISCLOSURE: Final = EntryKind.DISCLOSURE
_ACCESS_DECISION: Final = EntryKind.ACCESS_DECISION
_ACCESS_OUTCOME: Final = EntryKind.ACCESS_OUTCOME

#: The EntryFlag of each combination of the bits plan() sets.
_FLAGS: Final = {
    bits: EntryFlag(bits)
    for bits in range((_PERMIT | _NARROWED | _BREAK_THE_GLASS) + 1)
    if bits & ~(_PERMIT | _NARROWED | _BREAK_THE_GLASS) == 0
}
#: How many identities and decisions plan() remembers the facts of.
_RECENT_SIZE: Final = 1024


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the pipeline knows about one exchange when it is audited.

    ``identity`` is None for an unauthenticated (401) request. ``status`` is the HTTP status
    sent (or to be sent) to the client. ``raw_request`` is the request as received (target and
    query, plus the form body of ``POST _search``); it may be empty except for queries.
    ``decisions`` maps each patient the exchange touched or named (``Patient/<id>``, order
    kept) to the consent decision taken for it, or None when none was needed (a patient
    reading their own record). ``released`` are the patients whose data reached the client;
    ``resource_refs`` the ``Type/id`` the exchange names of the resources released or written
    (:func:`~middleware.audit.entities.named_resources`; which entry names them:
    :func:`~middleware.audit.entities.entries`). ``narrowed``: the
    answer was filtered, the query pinned or the resource redacted. ``mapping``: the mapping
    profile the exchange went through and the digest of its files (``<id> sha256:<hex>``),
    None without one.
    """

    request: FhirRequest
    identity: Identity | None
    status: int
    request_id: str
    raw_request: bytes
    client_address: str | None
    decisions: Mapping[str, Decision | None] = field(default_factory=dict, hash=False)
    released: frozenset[str] = frozenset()
    resource_refs: Sequence[str] = ()
    narrowed: bool = False
    break_glass: bool = False
    mapping: str | None = None

    def __post_init__(self) -> None:
        # Frozen in fact, not only in name: the caller's dict or list may change afterwards.
        object.__setattr__(self, "decisions", MappingProxyType(dict(self.decisions)))
        object.__setattr__(self, "resource_refs", tuple(self.resource_refs))


@dataclass(frozen=True, slots=True)
class Planned:
    """One entry before its pseudonym is known (``facts.patient`` names its patient)."""

    kind: EntryKind
    facts: AuditFacts
    flags: EntryFlag
    consent: int | None


def plan(exchange: Exchange, phase: Phase, recorded_us: int, gateway: AgentInfo) -> list[Planned]:
    """The entries of one :meth:`~middleware.audit.recorder.AuditRecorder.record` call, in
    order. Raises :class:`ValueError` for a malformed exchange (an empty request id, a patient
    that is no ``Patient/<id>``, a query without its raw request)."""
    x = exchange
    if not x.request_id:
        raise ValueError("request_id must not be empty")
    if is_query(x.request.interaction) and not x.raw_request:
        raise ValueError("raw_request is required for a query interaction")
    # Flag bits as plain ints, their EntryFlag looked up (IntFlag arithmetic is slow).
    extra = (_NARROWED if x.narrowed else 0) | (_BREAK_THE_GLASS if x.break_glass else 0)
    caller = None if x.identity is None else _CALLERS.made(x.identity)
    status = x.status
    out: list[Planned] = []
    # Who each entry is about and what it names: entities.py decides, this only reads.
    for patient, decision, disclosed, refs in entries(
        phase, status, x.decisions, x.released, x.resource_refs
    ):
        flags = _FLAGS[extra | (_PERMIT if _permits(phase, status, decision) else 0)]
        if phase == "exchange":
            kind = _DISCLOSURE if disclosed else _ACCESS_DECISION
        elif phase == "decision":
            kind = _ACCESS_DECISION
        else:
            kind = _ACCESS_OUTCOME  # rendered without the decision (render.py)
        facts_decision, consent = (None, None) if decision is None else _DECISIONS.made(decision)
        facts = AuditFacts(
            event=phase,
            recorded_us=recorded_us,
            request_id=x.request_id,
            gateway=gateway,
            interaction=x.request.interaction,
            resource_type=x.request.resource_type,
            resource_id=x.request.resource_id,
            version_id=x.request.version_id,
            caller=caller,
            client_address=x.client_address,
            status=status,
            patient=patient,
            resource_refs=refs,
            raw_request=x.raw_request,
            decision=facts_decision,
            mapping=x.mapping,
        )
        out.append(Planned(kind, facts, flags, consent))
    return out


def plan_break_glass(
    phase: Literal["started", "stopped"],
    *,
    identity: Identity,
    patients: Sequence[str],
    recorded_us: int,
    request_id: str,
    gateway: AgentInfo,
    client_address: str | None,
    reason: str | None,
) -> list[Planned]:
    """The emergency-override entries of ``identity`` for ``patients`` (distinct, order
    kept): ``ACCESS_DECISION``, flagged ``BREAK_THE_GLASS`` (and ``PERMIT`` when started).
    Raises :class:`ValueError` without a patient or for a malformed one."""
    refs = list(dict.fromkeys(patient_reference(p) for p in patients))
    if not refs or not request_id:
        raise ValueError("a break-the-glass entry names its patients and request id")
    flags = EntryFlag.BREAK_THE_GLASS | (EntryFlag.PERMIT if phase == "started" else EntryFlag.NONE)
    caller = _CALLERS.made(identity)
    return [
        Planned(
            EntryKind.ACCESS_DECISION,
            AuditFacts(
                event="break-glass-started" if phase == "started" else "break-glass-stopped",
                recorded_us=recorded_us,
                request_id=request_id,
                gateway=gateway,
                caller=caller,
                client_address=client_address,
                patient=ref,
                reason=reason,
            ),
            flags,
            None,
        )
        for ref in refs
    ]


def _permits(phase: Phase, status: int, decision: Decision | None) -> bool:
    """The PERMIT flag: the status is below 400 and the decision, if any, permits. Before a
    write is forwarded (phase ``decision``) its status is not known yet: the decision counts."""
    if phase == "decision" and decision is not None:
        return decision.permitted
    return status < 400 and (decision is None or decision.permitted)


def _decision_facts(decision: Decision) -> tuple[DecisionFacts, int | None]:
    """The facts of ``decision`` and the leaf's consent index (the newest relied on)."""
    facts = DecisionFacts.of(decision)
    return facts, facts.consent_index


#: Facts made recently, by the object they were made of (see :mod:`middleware.recent`): the
#: token verifier hands out the same Identity for a token it verified before, the decision
#: cache the same Decision for the same question, and both are frozen, so their facts are made
#: once (3.1 and 2.2 us each made afresh). Module-level, not a recorder's attribute: plan() is
#: a pure function that three recorders and the benchmarks call, and what is remembered is a
#: pure function of its key object, so sharing it can only save work, never answer wrongly;
#: its memory is bounded (1,024 entries each), and no test needs to empty it.
_CALLERS: Final = RecentByIdentity[Identity, Caller](Caller.of, _RECENT_SIZE)
_DECISIONS: Final = RecentByIdentity[Decision, tuple[DecisionFacts, int | None]](
    _decision_facts, _RECENT_SIZE
)
