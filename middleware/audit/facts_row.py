"""An entry's audit-index row straight from its facts' bytes, without the facts' dataclasses.

:func:`row_from_facts` is ``row_of(decode_facts(plain), ...)`` (:mod:`middleware.audit.facts`)
for the paths that open every entry of a log or an export (``consentry audit reindex``,
``verify-export``): it decodes the MessagePack wire tuple (the same typed decoder), runs the
checks :func:`~middleware.audit.facts.decode_facts` runs (version, event, ranges, the
interaction, the gateway, the caller's kind and sorted roles, the patient reference, the
decision's effect and indexes, the canonical encoding, here by re-encoding the wire tuple,
which is what ``encode_facts`` writes for the facts it decodes to) and computes the row's
fields as :func:`~middleware.audit.facts.row_of` does, skipping ``AuditFacts``, ``Caller`` and
``DecisionFacts`` (they were 8 µs of a verified row's 34).

Fail closed, with the same errors: whatever the fast path does not accept (a check fails,
anything unexpected is raised) is handed to ``row_of(decode_facts(plain))``, the reference,
which raises the error it always raised. So the two differ only if the fast path accepted
bytes the reference refuses, or built another row; ``tests/unit/audit/test_facts_row.py``
compares them on random valid facts and on mutated bytes.

:func:`open_row` is the same for sealed evidence: ``row_of(open_entry(opening), ...)``
(:mod:`middleware.audit.evidence`), its decryption by ``ledger.signing``. No I/O.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from middleware.audit.balp import interaction_codes
from middleware.audit.evidence import EVIDENCE_HEADER, EvidenceKeyError
from middleware.audit.facts import (  # the one wire schema and vocabulary, not copies
    ALERT_EVENT_TYPE,
    CALLER_KINDS,
    DECISION_EFFECTS,
    EVENT_KINDS,
    FACTS_VERSION,
    OVERRIDE_SUBTYPES,
    REST_EVENT_TYPE,
    WIRE_DECODER,
    decode_facts,
    row_of,
)
from middleware.audit.parts import outcome_for_status, patient_reference
from middleware.audit.row import NO_INDEX_YET, AuditRow
from middleware.fhir.request import Interaction
from middleware.ledger.leaf import EntryFlag
from middleware.ledger.signing import BOX_KEY_SIZE, unseal_once

__all__ = ["open_row", "row_from_facts"]

_decode: Final = WIRE_DECODER.decode
_encode: Final = msgspec.msgpack.Encoder().encode
_BREAK_THE_GLASS: Final = int(EntryFlag.BREAK_THE_GLASS)
#: (subtype, action) of each interaction's RESTful event, by its wire value.
_CODES: Final = {i.value: interaction_codes(i) for i in Interaction}
#: Patient references already found to be ``Patient/<id>`` (a log names few patients; the
#: check is a regular expression). Bounded: cleared when full.
_PATIENTS: set[str] = set()
_PATIENTS_LIMIT: Final = 1 << 16
_HEADER_SIZE: Final = len(EVIDENCE_HEADER)


class _Refused(Exception):
    """The fast path does not accept these facts: the reference decides (and raises)."""


def row_from_facts(
    plain: bytes,
    *,
    kind: int,
    flags: int,
    pseudonym: bytes | None,
    index: int = NO_INDEX_YET,
) -> AuditRow:
    """``row_of(decode_facts(plain), kind=kind, flags=flags, pseudonym=pseudonym,
    index=index)``, the same row or the same :class:`ValueError` (module docstring)."""
    try:
        return _row(plain, int(kind), int(flags), pseudonym, index)
    except Exception:  # noqa: BLE001 - anything unexpected: the reference decides
        return row_of(decode_facts(plain), kind=kind, flags=flags, pseudonym=pseudonym, index=index)


def open_row(
    key: bytes,
    evidence: bytes,
    *,
    kind: int,
    flags: int,
    pseudonym: bytes | None,
    index: int = NO_INDEX_YET,
) -> AuditRow:
    """The row of the facts sealed in ``evidence`` under the entry ``key``: what
    ``row_of(open_entry(Opening(salt, evidence, key)), ...)`` gives, with the same errors
    (:class:`~middleware.audit.evidence.EvidenceKeyError` when the evidence is not sealed facts
    or the key does not open it, :class:`ValueError` when the facts are not valid)."""
    if not evidence.startswith(EVIDENCE_HEADER) or len(key) != BOX_KEY_SIZE:
        raise EvidenceKeyError("not sealed audit evidence, or not an entry key")
    plain = unseal_once(key, evidence[_HEADER_SIZE:])
    if plain is None:
        raise EvidenceKeyError("the entry key does not open this evidence")
    return row_from_facts(plain, kind=kind, flags=flags, pseudonym=pseudonym, index=index)


def _row(plain: bytes, kind: int, flags: int, pseudonym: bytes | None, index: int) -> AuditRow:
    """The fast path: the row, or any exception (:class:`_Refused` for a failed check)."""
    w = _decode(plain)
    (version, event, recorded_us, request_id, gateway, req, caller, _, status, patient, refs, _,
     decision, _, _) = w  # fmt: skip
    # facts._facts_of, AgentInfo, _caller_of, _patient, _decision_of, in that order.
    if version != FACTS_VERSION or event not in EVENT_KINDS:
        raise _Refused
    if recorded_us < 0 or not request_id or not 0 <= status < 1000:
        raise _Refused
    codes = None if req is None else _CODES[req[0]]
    if not gateway[1] or not gateway[0]:
        raise _Refused
    agent = organization = client = None
    roles: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    if caller is not None:
        subject, issuer, caller_kind, client, fhir_user, _, pairs, roles, _, organization = caller
        if caller_kind not in CALLER_KINDS:
            raise _Refused
        if len(roles) > 1 and list(roles) != sorted(set(roles)):
            raise _Refused
        agent = fhir_user or f"{issuer}#{subject}"
        if pairs:
            purposes = tuple([f"{system}|{code}" for system, code in pairs])
    if patient is not None and patient not in _PATIENTS:
        if patient_reference(patient) != patient:
            raise _Refused
        if len(_PATIENTS) >= _PATIENTS_LIMIT:
            _PATIENTS.clear()
        _PATIENTS.add(patient)
    if decision is not None:
        effect, _, relied = decision
        if effect not in DECISION_EFFECTS or any(i is not None and i < 0 for _, i in relied):
            raise _Refused
    if _encode(w) != plain:
        raise _Refused  # not canonical: encode_facts(decoded) would differ
    # facts.row_of
    subtype: str | None
    if event in OVERRIDE_SUBTYPES:
        event_type, subtype, action, outcome = ALERT_EVENT_TYPE, OVERRIDE_SUBTYPES[event], "E", "0"
    elif event == "decision" and decision is not None:
        event_type, subtype, action = ALERT_EVENT_TYPE, "AuthZ-Consent", "E"
        outcome = "0" if decision[0] == "permit" else "8"
    elif codes is None:
        raise _Refused  # row_of's "an exchange's facts name its interaction"
    else:
        event_type, (subtype, action), outcome = REST_EVENT_TYPE, codes, outcome_for_status(status)
    entities, types = _entities(refs, req)
    return AuditRow(
        index,
        recorded_us,
        kind,
        flags,
        patient,
        pseudonym,
        agent,
        roles,
        organization,
        client,
        purposes,
        action,
        event_type,
        subtype,
        outcome,
        types,
        entities,
        bool(flags & _BREAK_THE_GLASS) or event in OVERRIDE_SUBTYPES,
        request_id,
    )


def _entities(refs: tuple[str, ...], req: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(entities, resource types) as ``row_of`` computes them: the references named, else the
    request's own resource, a version suffix dropped, first occurrence kept; their types and
    the request's type, sorted."""
    rtype = None if req is None else req[1]
    if not refs and rtype is not None and req[2] is not None:
        refs = (f"{rtype}/{req[2]}",)
    if len(refs) == 1:
        entity = refs[0].partition("/_history/")[0]
        first = entity.partition("/")[0]
        if rtype is None or rtype == first:
            return (entity,), (first,)
        return (entity,), tuple(sorted((first, rtype)))
    entities = tuple(dict.fromkeys([ref.partition("/_history/")[0] for ref in refs]))
    types = {ref.partition("/")[0] for ref in entities}
    if rtype is not None:
        types.add(rtype)
    return entities, tuple(sorted(types))
