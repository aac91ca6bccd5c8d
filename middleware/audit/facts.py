"""Audit facts: what one ledger entry of the audit trail records, compact, versioned, canonical.

An entry's evidence used to be the IHE BALP AuditEvents themselves. It is now the facts they
are made of (:class:`AuditFacts`): the time, the request id, which event it is (an exchange,
a write's decision or outcome, a break-the-glass start or stop), the parts of the classified
request the BALP events name, the caller, the client's address, the gateway, the patient, the
status, the resources touched, the query as received, the consent decision and the consents it
relied on (with their ledger indexes), the mapping profile, the override's stated reason. The
AuditEvents are rendered from them when read (:func:`middleware.audit.render.render_events`),
and so is the entry's audit-index row (:func:`row_of`, without rendering).

Encoding (:func:`encode_facts`, version 1): one MessagePack array (msgspec), fields in a fixed
order, nothing optional left out (an absent value is ``nil``)::

    [1, event, recorded_us, request_id, [gateway name, gateway base URL],
     [interaction, resource type, resource id, version id] | nil,
     [subject, issuer, kind, client_id, fhirUser, patient, [[system, code]...], [role...],
      token id, organization] | nil,
     client address, status, patient, [resource reference...], raw request (bin),
     [effect, [obligation code...], [[consent id, ledger index | nil]...]] | nil,
     mapping, reason]

Integers in their shortest MessagePack form, strings UTF-8 as given (never normalised), roles
sorted; so equal facts always give equal bytes, and :func:`decode_facts` accepts only the
bytes :func:`encode_facts` would write (it re-encodes and compares). No floats anywhere: time
is integer microseconds since the epoch. Pure: no I/O, no clock, no crypto.

The caller's ``organization`` was appended to its array before version 1 was ever deployed,
so it is part of version 1 (an array without it does not decode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import msgspec

from middleware.audit.alerts import relied_on
from middleware.audit.balp import interaction_codes
from middleware.audit.parts import DCM, AgentInfo, outcome_for_status, patient_reference
from middleware.audit.row import NO_INDEX_YET, AuditRow
from middleware.auth.identity import Identity, IdentityKind
from middleware.auth.scopes import Scope
from middleware.consent.decide import Decision, Obligation, TraceStep
from middleware.consent.model import Effect
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.leaf import EntryFlag

__all__ = [
    "ALERT_EVENT_TYPE",
    "CALLER_KINDS",
    "DECISION_EFFECTS",
    "EVENT_KINDS",
    "FACTS_VERSION",
    "OVERRIDE_SUBTYPES",
    "REST_EVENT_TYPE",
    "WIRE_DECODER",
    "AuditFacts",
    "Caller",
    "DecisionFacts",
    "EventKind",
    "decode_facts",
    "encode_facts",
    "row_of",
]

#: The version :func:`encode_facts` writes and the only one :func:`decode_facts` reads.
FACTS_VERSION: Final = 1

EventKind = Literal["exchange", "decision", "outcome", "break-glass-started", "break-glass-stopped"]
"""Which event an entry records: an exchange once answered (reads, searches, refusals), a
write's ``decision`` before it is forwarded or its ``outcome`` once the upstream answered, an
emergency override started or stopped (DICOM 110127 / 110138)."""

# The vocabulary decode_facts checks, shared with facts_row (which checks the same).
#: The ``event`` values (:data:`EventKind`).
EVENT_KINDS: Final = frozenset(get_args(EventKind))
#: A caller's ``kind`` values (``auth.identity.IdentityKind``).
CALLER_KINDS: Final = frozenset(get_args(IdentityKind))
#: A decision's ``effect`` values.
DECISION_EFFECTS: Final = frozenset({"permit", "deny"})
_SYSTEM_SCOPE: Final = Scope("system", "*", frozenset())


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified caller as the audit trail keeps it: the :class:`Identity` parts an
    AuditEvent or a report names. ``kind`` is :attr:`Identity.kind` (``system``: a backend
    service speaking for itself, no user agent); ``purposes`` are ``(system, code)`` pairs in
    the token's order; ``roles`` sorted; ``organization`` the token's organization claim
    (:attr:`Identity.organization`), the audit index's agent organization."""

    subject: str
    issuer: str
    kind: IdentityKind
    client_id: str | None = None
    fhir_user: str | None = None
    patient: str | None = None
    purposes: tuple[tuple[str, str], ...] = ()
    roles: tuple[str, ...] = ()
    token_id: str | None = None
    organization: str | None = None

    @classmethod
    def of(cls, identity: Identity) -> Caller:
        return cls(
            subject=identity.subject,
            issuer=identity.issuer,
            kind=identity.kind,
            client_id=identity.client_id,
            fhir_user=identity.fhir_user,
            patient=identity.patient,
            purposes=tuple((system, code) for system, code in identity.purpose_of_use),
            roles=tuple(sorted(identity.roles)),
            token_id=identity.token_id,
            organization=identity.organization,
        )

    def identity(self) -> Identity:
        """An :class:`Identity` the BALP builders render exactly as the original: every field
        they read is kept, and a scope of the ``system`` context stands in for the token's
        scopes when (and only when) the caller was a backend service (``kind``)."""
        system = self.kind == "system"
        return Identity(
            subject=self.subject,
            issuer=self.issuer,
            expires_at=0.0,
            scopes=(_SYSTEM_SCOPE,) if system else (),
            client_id=self.client_id,
            fhir_user=self.fhir_user,
            patient=self.patient,
            purpose_of_use=self.purposes,
            roles=frozenset(self.roles),
            token_id=self.token_id,
            organization=self.organization,
        )


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    """A consent decision as the audit trail keeps it: ``effect`` (``permit`` / ``deny``),
    the obligation codes in order, and the consents relied on as ``(consent id, ledger index
    or None)`` pairs (:func:`middleware.audit.alerts.relied_on`). Never the trace's reasons:
    they can reveal sensitivity labels."""

    effect: Effect
    obligations: tuple[str, ...] = ()
    relied_on: tuple[tuple[str, int | None], ...] = ()

    @property
    def permitted(self) -> bool:
        return self.effect == "permit"

    @property
    def consent_index(self) -> int | None:
        """The newest ledger index among the consents relied on (the leaf's consent index)."""
        return max((i for _, i in self.relied_on if i is not None), default=None)

    @classmethod
    def of(cls, decision: Decision) -> DecisionFacts:
        return cls(
            effect=decision.effect,
            obligations=tuple(o.code for o in decision.obligations),
            relied_on=tuple(relied_on(decision)),
        )

    def decision(self) -> Decision:
        """A :class:`Decision` the BALP builders render exactly as the original (one trace
        step per consent relied on; the reasons are not kept)."""
        return Decision(
            effect=self.effect,
            obligations=tuple(Obligation(code) for code in self.obligations),
            trace=tuple(TraceStep(cid, index, "", "") for cid, index in self.relied_on),
        )


@dataclass(frozen=True, slots=True)
class AuditFacts:
    """The facts of one audit-trail entry (module docstring). ``interaction`` and the
    ``resource_*`` fields are the classified request's (None for a break-the-glass event);
    ``status`` the HTTP status sent (0 for break-the-glass); ``patient`` ``Patient/<id>`` or
    None; ``resource_refs`` the ``Type/id`` the entry names (empty: the request's own target);
    ``raw_request`` the request as received (target and query); ``mapping`` the mapping
    profile and the digest of its files (``<id> sha256:<hex>``); ``reason`` the stated reason
    of a break-the-glass override. ``recorded_us``: microseconds since the epoch, UTC."""

    event: EventKind
    recorded_us: int
    request_id: str
    gateway: AgentInfo
    interaction: Interaction | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    version_id: str | None = None
    caller: Caller | None = None
    client_address: str | None = None
    status: int = 0
    patient: str | None = None
    resource_refs: tuple[str, ...] = ()
    raw_request: bytes = b""
    decision: DecisionFacts | None = None
    mapping: str | None = None
    reason: str | None = None
    version: int = FACTS_VERSION

    def __post_init__(self) -> None:
        named = (self.resource_type, self.resource_id, self.version_id)
        if self.interaction is None and named != (None, None, None):
            raise ValueError("facts without an interaction name no resource")

    def request(self) -> FhirRequest | None:
        """A :class:`FhirRequest` carrying what the BALP builders read of the original."""
        if self.interaction is None:
            return None
        return FhirRequest(
            interaction=self.interaction,
            method="",
            level=Level.SYSTEM,
            path="",
            resource_type=self.resource_type,
            resource_id=self.resource_id,
            version_id=self.version_id,
        )

    def identity(self) -> Identity | None:
        return None if self.caller is None else self.caller.identity()

    @property
    def outcome(self) -> str:
        """AuditEvent.outcome of the exchange's RESTful event (from ``status``)."""
        return outcome_for_status(self.status)


_Opt = str | None
_WireCaller = tuple[
    str, str, str, _Opt, _Opt, _Opt, tuple[tuple[str, str], ...], tuple[str, ...], _Opt, _Opt
]
_WireDecision = tuple[str, tuple[str, ...], tuple[tuple[str, int | None], ...]]
_Wire = tuple[
    int,
    str,
    int,
    str,
    tuple[str, str],
    tuple[str, _Opt, _Opt, _Opt] | None,
    _WireCaller | None,
    _Opt,
    int,
    _Opt,
    tuple[str, ...],
    bytes,
    _WireDecision | None,
    _Opt,
    _Opt,
]
_encoder: Final = msgspec.msgpack.Encoder()
#: The typed MessagePack decoder of the facts' wire tuple (facts_row decodes with it too).
WIRE_DECODER: Final = msgspec.msgpack.Decoder(_Wire)


def encode_facts(facts: AuditFacts) -> bytes:
    """The canonical bytes of ``facts`` (the module docstring's version 1 layout)."""
    f = facts
    if f.version != FACTS_VERSION:
        raise ValueError("only the current facts version is written")
    c = f.caller
    d = f.decision
    return _encoder.encode(
        (
            FACTS_VERSION,
            f.event,
            f.recorded_us,
            f.request_id,
            (f.gateway.name, f.gateway.base_url),
            None
            if f.interaction is None
            else (f.interaction.value, f.resource_type, f.resource_id, f.version_id),
            None
            if c is None
            else (
                c.subject,
                c.issuer,
                c.kind,
                c.client_id,
                c.fhir_user,
                c.patient,
                c.purposes,
                c.roles,
                c.token_id,
                c.organization,
            ),
            f.client_address,
            f.status,
            f.patient,
            f.resource_refs,
            f.raw_request,
            None if d is None else (d.effect, d.obligations, d.relied_on),
            f.mapping,
            f.reason,
        )
    )


def decode_facts(data: bytes) -> AuditFacts:
    """The facts :func:`encode_facts` encoded as ``data``. Strict: anything else (another
    version, a field of the wrong type, a value out of its range, bytes that are not exactly
    the canonical encoding) raises :class:`ValueError`, never anything else."""
    try:
        wire = WIRE_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(_why(data)) from exc
    try:
        facts = _facts_of(wire)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"malformed audit facts: {exc}") from None
    if encode_facts(facts) != data:
        raise ValueError("audit facts are not in their canonical encoding")
    return facts


def _why(data: bytes) -> str:
    """The reason ``data`` does not decode: an unknown version if it says one."""
    try:
        head = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return "audit facts are not MessagePack"
    if isinstance(head, list) and head and type(head[0]) is int and head[0] != FACTS_VERSION:
        return f"unknown audit facts version {head[0]}"
    return "malformed audit facts"


def _facts_of(w: Any) -> AuditFacts:
    (version, event, recorded_us, rid, gateway, req, caller, address, status, patient) = w[:10]
    refs, raw, decision, mapping, reason = w[10:]
    if version != FACTS_VERSION:
        raise ValueError(f"unknown audit facts version {version}")
    if event not in EVENT_KINDS:
        raise ValueError("unknown event")
    if recorded_us < 0 or not rid or not 0 <= status < 1000:
        raise ValueError("time, request id or status out of range")
    interaction = rtype = rid_ = vid = None
    if req is not None:
        interaction = Interaction(req[0])
        rtype, rid_, vid = req[1:]
    return AuditFacts(
        event=event,
        recorded_us=recorded_us,
        request_id=rid,
        gateway=AgentInfo(base_url=gateway[1], name=gateway[0]),
        interaction=interaction,
        resource_type=rtype,
        resource_id=rid_,
        version_id=vid,
        caller=None if caller is None else _caller_of(caller),
        client_address=address,
        status=status,
        patient=_patient(patient),
        resource_refs=refs,
        raw_request=raw,
        decision=None if decision is None else _decision_of(decision),
        mapping=mapping,
        reason=reason,
    )


def _caller_of(w: Any) -> Caller:
    subject, issuer, kind, client_id, fhir_user, patient, purposes, roles, token_id, org = w
    if kind not in CALLER_KINDS:
        raise ValueError("unknown caller kind")
    if list(roles) != sorted(set(roles)):
        raise ValueError("roles are sorted and distinct")
    return Caller(
        subject, issuer, kind, client_id, fhir_user, patient, purposes, roles, token_id, org
    )


def _decision_of(w: Any) -> DecisionFacts:
    effect, obligations, relied = w
    if effect not in DECISION_EFFECTS:
        raise ValueError("unknown decision effect")
    if any(index is not None and index < 0 for _, index in relied):
        raise ValueError("a ledger index is not negative")
    return DecisionFacts(effect, obligations, relied)


def _patient(patient: str | None) -> str | None:
    if patient is not None and patient_reference(patient) != patient:
        raise ValueError("a patient is Patient/<id>")
    return patient


#: An index row's ``event_type``: a RESTful event, or an alert (DICOM 110113, a security
#: alert: a consent decision or a break-the-glass override).
REST_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type|rest"
ALERT_EVENT_TYPE: Final = f"{DCM}|110113"
_BREAK_THE_GLASS: Final = int(EntryFlag.BREAK_THE_GLASS)
#: The override events and their DICOM subtype (emergency override started, stopped).
OVERRIDE_SUBTYPES: Final = {"break-glass-started": "110127", "break-glass-stopped": "110138"}


def row_of(
    facts: AuditFacts,
    *,
    kind: int,
    flags: int,
    pseudonym: bytes | None,
    index: int = NO_INDEX_YET,
) -> AuditRow:
    """The audit-index row of the entry recording ``facts`` (its leaf's ``kind``, ``flags``
    and ``pseudonym``), every field filled, ``index`` as given (:data:`NO_INDEX_YET` until the
    store sequences it; ``reindex`` knows it, and ``row.at`` would cost a dataclass copy a
    row); computed from the facts without rendering them.

    The row describes the entry's last rendered event (:func:`~middleware.audit.render.
    render_events`): the RESTful event of an exchange or an outcome, the AuthZconsent event of
    a write's decision (the RESTful event when no decision was taken), the override event of a
    break-the-glass entry; ``event_type``, ``subtype``, ``action`` and ``outcome`` are that
    event's. ``agent`` is the caller's ``fhirUser``, else ``<issuer>#<subject>`` (only a
    ``fhirUser`` naming the patient makes an access "to the individual" for the accounting,
    45 CFR 164.528(a)(1)(ii); :func:`_agent`); ``organization`` the caller's organization
    claim (the agent's organization, IHE BALP / ITI-81 agent who, role and organization).
    ``entities`` are the resources the entry names (``Type/id``, a version suffix dropped);
    ``resource_types`` their types and the request's own type.
    """
    f = facts
    c = f.caller
    event_type, subtype, action, outcome = _primary(f)
    entities = tuple(dict.fromkeys(_unversioned(ref) for ref in _refs(f)))
    types = {ref.partition("/")[0] for ref in entities}
    if f.resource_type is not None:
        types.add(f.resource_type)
    return AuditRow(
        index=index,
        recorded_us=f.recorded_us,
        kind=int(kind),
        flags=int(flags),
        patient=f.patient,
        pseudonym=pseudonym,
        agent=_agent(f),
        roles=() if c is None else c.roles,
        organization=None if c is None else c.organization,
        client=None if c is None else c.client_id,
        purposes=() if c is None else tuple(f"{s}|{code}" for s, code in c.purposes),
        action=action,
        event_type=event_type,
        subtype=subtype,
        outcome=outcome,
        resource_types=tuple(sorted(types)),
        entities=entities,
        break_glass=bool(int(flags) & _BREAK_THE_GLASS) or f.event in OVERRIDE_SUBTYPES,
        request_id=f.request_id,
    )


def _agent(f: AuditFacts) -> str | None:
    """Who acted (see :func:`row_of`): the token's ``fhirUser``, else its login
    ``<issuer>#<subject>``. Only ``fhirUser`` can make the patient the agent (an access "to
    the individual", 45 CFR 164.528(a)(1)(ii)): a launch patient and ``patient/`` scopes
    without it say which record the app is confined to, not who uses it (a clinician's
    EHR-launched app has both), so such an access stays accounted (fail towards accounting;
    a deployment lists its patients' own logins as ``self_agents``)."""
    c = f.caller
    if c is None:
        return None
    if c.fhir_user:
        return c.fhir_user
    return f"{c.issuer}#{c.subject}"


def _primary(f: AuditFacts) -> tuple[str, str | None, str, str]:
    """(type, subtype, action, outcome) of the entry's last rendered event."""
    if f.event in OVERRIDE_SUBTYPES:
        return ALERT_EVENT_TYPE, OVERRIDE_SUBTYPES[f.event], "E", "0"
    if f.event == "decision" and f.decision is not None:
        return ALERT_EVENT_TYPE, "AuthZ-Consent", "E", "0" if f.decision.permitted else "8"
    if f.interaction is None:
        raise ValueError("an exchange's facts name its interaction")
    subtype, action = interaction_codes(f.interaction)
    return REST_EVENT_TYPE, subtype, action, f.outcome


def _refs(f: AuditFacts) -> tuple[str, ...]:
    """The resources the RESTful event names: ``resource_refs``, else the request's own."""
    if f.resource_refs or f.resource_type is None or f.resource_id is None:
        return f.resource_refs
    return (f"{f.resource_type}/{f.resource_id}",)


def _unversioned(ref: str) -> str:
    return ref.partition("/_history/")[0]
