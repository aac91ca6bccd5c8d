"""The index row of an audit entry written before sealed facts: read from its BALP Bundle.

Before the facts format (:mod:`middleware.audit.facts`), the recorder stored each entry's IHE
BALP AuditEvents as a canonical JSON ``Bundle`` (``collection``), in plain text
(:meth:`~middleware.audit.evidence.EvidenceReader.legacy_bundle`). ``consentry audit reindex``
indexes those entries too, with :func:`legacy_row`, so that after an upgrade they are found
by search, listed by ``$accounting`` and the reports, and removed by a shred.

The row says what :func:`~middleware.audit.facts.row_of` would have said of the same entry:
``event_type``, ``subtype``, ``action`` and ``outcome`` are the entry's last event's; the agent
is the requestor (``who.reference``, the ``fhirUser``, else ``<issuer>#<subject>`` from
``who.identifier``), its roles (``role.text``) and purposes of use (``system|code``, with the
event's own ``purposeOfEvent`` for a backend service); the client is the application agent
(DICOM ``110150``/``110152``/``110153`` other than the gateway); the patient is the entity in
the ``Patient`` object role; the entities are the ``Domain Resource`` entities; the resource
types theirs and the type a search's Query entity names.

What the old events do not say is left empty: a backend service's agent is its client id (the
old events did not keep ``<issuer>#<subject>``), and a write's decision entry names no resource
type. Time, kind, flags and
pseudonym are the leaf's. Pure: no I/O.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from middleware.audit.row import NO_INDEX_YET, AuditRow
from middleware.ledger.leaf import EntryFlag

__all__ = ["legacy_row"]

#: DICOM agent types of the client application: Application, Destination and Source Role ID
#: (BALP names the client the destination of a read, the source of a search).
_APPLICATION: Final = frozenset({"110150", "110152", "110153"})
_URI: Final = "urn:ietf:rfc:3986"  # the gateway names itself by its URL
_QUERY_ROLE: Final = "24"  # object-role: Query
_TYPE: Final = re.compile(r"[A-Z][A-Za-z]{1,63}")
_OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
_REQUEST_ID: Final = "XrequestId"
_OVERRIDE_SUBTYPES: Final = frozenset({"110127", "110138"})  # emergency override started/stopped
_BREAK_THE_GLASS: Final = int(EntryFlag.BREAK_THE_GLASS)

Json = Mapping[str, Any]


def _events(evidence: bytes) -> list[Json]:
    """The AuditEvents of a stored Bundle; ValueError when ``evidence`` is not one."""
    try:
        bundle = json.loads(evidence)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError("the evidence is not JSON") from exc
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValueError("the evidence is not a Bundle")
    events = [
        e["resource"]
        for e in _list(bundle.get("entry"))
        if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == "AuditEvent"
    ]
    if not events:
        raise ValueError("the Bundle holds no AuditEvent")
    return events


def _list(value: object) -> list[Json]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dict(value: object) -> Json:
    return value if isinstance(value, dict) else {}


def _codes(agent: Json) -> set[str]:
    return {str(c.get("code")) for c in _list(_dict(agent.get("type")).get("coding"))}


def _purposes(concepts: Iterable[Json]) -> tuple[str, ...]:
    return tuple(
        f"{c.get('system')}|{c.get('code')}"
        for concept in concepts
        for c in _list(concept.get("coding"))
    )


def _who(agent: Json) -> str | None:
    who = _dict(agent.get("who"))
    reference = who.get("reference")
    if isinstance(reference, str):
        return reference
    identifier = _dict(who.get("identifier"))
    system, value = identifier.get("system"), identifier.get("value")
    if isinstance(value, str):
        return f"{system}#{value}" if isinstance(system, str) else value
    return None


def _query_type(query: object) -> set[str]:
    """The resource type a search's raw request names (``GET /fhir/Observation?...``, base64
    in the Query entity); empty when it names none."""
    if not isinstance(query, str):
        return set()
    try:
        request = base64.b64decode(query, validate=True).decode("utf-8", "replace")
    except ValueError:
        return set()
    target = request.split(" ", 2)[1] if request.count(" ") >= 1 else ""
    path = target.partition("?")[0]
    found = [seg for seg in path.split("/") if _TYPE.fullmatch(seg)]
    return set(found[-1:])


def legacy_row(
    evidence: bytes,
    *,
    recorded_us: int,
    kind: int,
    flags: int,
    pseudonym: bytes | None,
    index: int = NO_INDEX_YET,
) -> AuditRow:
    """The index row of the entry whose evidence is the BALP Bundle ``evidence`` (module
    docstring); ``ValueError`` when it is not a Bundle of AuditEvents."""
    events = _events(evidence)
    last = events[-1]
    event_type = _dict(last.get("type"))
    subtypes = _list(last.get("subtype"))
    subtype = subtypes[0].get("code") if subtypes else None
    agents = [a for e in events for a in _list(e.get("agent"))]
    requestor = next((a for a in _list(last.get("agent")) if a.get("requestor") is True), None)
    if requestor is None:
        requestor = next((a for a in agents if a.get("requestor") is True), None)
    application = next(
        (
            a
            for a in agents
            if a.get("requestor") is False
            and _codes(a) & _APPLICATION
            and _dict(_dict(a.get("who")).get("identifier")).get("system") != _URI
        ),
        None,
    )
    if application is None and requestor is not None and _codes(requestor) & _APPLICATION:
        application = requestor  # a backend service acts as itself
    patient: str | None = None
    entities: list[str] = []
    request_id = ""
    types: set[str] = set()
    for event in events:
        for entity in _list(event.get("entity")):
            what = _dict(entity.get("what"))
            reference = what.get("reference")
            entity_type = _dict(entity.get("type"))
            role = _dict(entity.get("role"))
            if role.get("system") == _OBJECT_ROLE and role.get("code") == _QUERY_ROLE:
                types.update(_query_type(entity.get("query")))
            if entity_type.get("code") == _REQUEST_ID:
                request_id = str(_dict(what.get("identifier")).get("value", ""))
            if not isinstance(reference, str):
                continue
            if role.get("system") == _OBJECT_ROLE and role.get("code") == "1":
                patient = patient or reference
            elif role.get("system") == _OBJECT_ROLE and role.get("code") == "4":
                entities.append(reference.partition("/_history/")[0])  # a domain resource
    purposes = _purposes(_list(None if requestor is None else requestor.get("purposeOfUse")))
    purposes += _purposes(_list(last.get("purposeOfEvent")))
    unique = tuple(dict.fromkeys(entities))
    return AuditRow(
        index=index,
        recorded_us=recorded_us,
        kind=int(kind),
        flags=int(flags),
        patient=patient,
        pseudonym=pseudonym,
        agent=None if requestor is None else _who(requestor),
        roles=tuple(
            str(r["text"])
            for r in _list(None if requestor is None else requestor.get("role"))
            if "text" in r
        ),
        organization=None,
        client=None
        if application is None
        else _dict(_dict(application.get("who")).get("identifier")).get("value"),
        purposes=tuple(dict.fromkeys(purposes)),
        action=str(last.get("action", "")),
        event_type=f"{event_type.get('system')}|{event_type.get('code')}",
        subtype=None if subtype is None else str(subtype),
        outcome=str(last.get("outcome", "")),
        resource_types=tuple(sorted(types | {ref.partition("/")[0] for ref in unique})),
        entities=unique,
        break_glass=bool(int(flags) & _BREAK_THE_GLASS) or subtype in _OVERRIDE_SUBTYPES,
        request_id=request_id,
    )
