"""The audit index's vocabulary: one searchable row per ledger entry, and a query over rows.

An :class:`AuditRow` holds the fields a reviewer searches and reports on (time, patient, the
agent who acted with their roles and organization, the client, purposes of use, the BALP
action, type, subtype and outcome, the resource types and references touched, the
break-the-glass flag, the ledger index). It is derived data: every field comes from the entry's
audit facts (:mod:`middleware.audit.facts`), so the whole index can be rebuilt from the ledger's
evidence. A row of a crypto-shredded patient keeps only what the leaf itself says (index, time,
kind, flags, pseudonym) and is marked ``shredded``: its PHI fields are empty.

:class:`AuditQuery` is what a search asks of the index (ITI-81 parameters, already parsed);
every store that holds the index answers it the same way (the contract suite runs on memory,
SQLite and PostgreSQL). Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

__all__ = ["NO_INDEX_YET", "ROW_FIELDS", "AuditQuery", "AuditRow", "SortKey", "shredded_row"]

#: The ``index`` of a row not sequenced yet: the store gives it the entry's ledger index.
NO_INDEX_YET = -1


class AuditRow(msgspec.Struct, frozen=True, gc=False):
    """One ledger entry as the audit index holds it: an immutable value (equal and hashed by
    its fields, like the frozen dataclass it was; :func:`msgspec.structs.replace` copies one
    with fields changed, :data:`ROW_FIELDS` names them in order).

    A ``msgspec.Struct`` because rows are made by the tens of thousands (an export's
    verification, a reindex, every index read): one costs about 0.2 µs to build, a frozen
    dataclass of twenty fields about 2 µs. ``gc=False``: its fields are numbers, text, bytes
    and tuples of text, which cannot form a reference cycle.

    ``index``: the ledger index (:data:`NO_INDEX_YET` before the store sequences the entry).
    ``recorded_us``: microseconds since the epoch (the leaf's time). ``kind`` and ``flags``:
    the leaf's :class:`~middleware.ledger.leaf.EntryKind` and
    :class:`~middleware.ledger.leaf.EntryFlag` values. ``patient``: ``Patient/<id>`` or None.
    ``agent``: who acted, the caller's ``fhirUser`` reference (``Practitioner/<id>``) or, without
    one, ``<issuer>#<subject>``; None for an unauthenticated request. ``roles``: the caller's
    role claims. ``organization``: the caller's organization reference when the token names one.
    ``client``: the OAuth client id. ``purposes``: purpose-of-use codes as ``system|code``.
    ``action``: AuditEvent.action (C R U D E). ``event_type``: AuditEvent.type as
    ``system|code`` (``http://terminology.hl7.org/CodeSystem/audit-event-type|rest``,
    ``http://dicom.nema.org/resources/ontology/DCM|110113`` ...). ``subtype``: the FHIR
    restful-interaction code (``read``, ``search-type``, ``create`` ...) or None.
    ``outcome``: AuditEvent.outcome (``0`` ``4`` ``8`` ``12``). ``resource_types`` and
    ``entities``: the types and ``Type/id`` references touched. ``break_glass``: the
    emergency-access flag. ``request_id``: the exchange's request id. ``shredded``: the
    patient's evidence key was deleted; the PHI fields are then empty.
    """

    index: int
    recorded_us: int
    kind: int
    flags: int
    patient: str | None
    pseudonym: bytes | None
    agent: str | None
    roles: tuple[str, ...]
    organization: str | None
    client: str | None
    purposes: tuple[str, ...]
    action: str
    event_type: str
    subtype: str | None
    outcome: str
    resource_types: tuple[str, ...]
    entities: tuple[str, ...]
    break_glass: bool
    request_id: str
    shredded: bool = False

    def at(self, index: int) -> AuditRow:
        """This row with its ledger ``index`` (the store calls this while sequencing)."""
        return msgspec.structs.replace(self, index=index)

    def shred(self) -> AuditRow:
        """What is left of this row once its patient is crypto-shredded: the leaf's own fields
        (index, time, kind, flags, pseudonym), nothing else."""
        return shredded_row(
            index=self.index,
            recorded_us=self.recorded_us,
            kind=self.kind,
            flags=self.flags,
            pseudonym=self.pseudonym,
            break_glass=self.break_glass,
        )


#: The field names of :class:`AuditRow`, in order (a report's date-range columns).
ROW_FIELDS: tuple[str, ...] = AuditRow.__struct_fields__


def shredded_row(
    *,
    index: int,
    recorded_us: int,
    kind: int,
    flags: int,
    pseudonym: bytes | None,
    break_glass: bool,
) -> AuditRow:
    """The row of a crypto-shredded entry: the leaf's own fields, the PHI fields empty,
    ``shredded`` set (what :meth:`AuditRow.shred` leaves)."""
    return AuditRow(
        index=index,
        recorded_us=recorded_us,
        kind=kind,
        flags=flags,
        patient=None,
        pseudonym=pseudonym,
        agent=None,
        roles=(),
        organization=None,
        client=None,
        purposes=(),
        action="",
        event_type="",
        subtype=None,
        outcome="",
        resource_types=(),
        entities=(),
        break_glass=break_glass,
        request_id="",
        shredded=True,
    )


SortKey = Literal[
    "date",
    "-date",
    "agent",
    "-agent",
    "patient",
    "-patient",
    "type",
    "-type",
    "action",
    "-action",
    "outcome",
    "-outcome",
    "client",
    "-client",
]
"""Row order: by (``recorded_us``, ``index``) ascending, or descending with ``-date``; the
other keys order by (column text, ``index``) (:mod:`middleware.audit.sort_keys`)."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A search of the audit index; every given criterion must hold (AND), None ignores it.

    ``since_us`` / ``until_us``: inclusive bounds on ``recorded_us``. ``patient``: rows about
    that ``Patient/<id>``. ``agent``: rows whose ``agent`` equals it. ``entity``: rows whose
    ``entities`` contain it (a ``Patient/<id>`` also matches ``patient``). ``event_type``,
    ``subtype``, ``action``, ``outcome``, ``client``: equality. ``purpose``: rows whose
    ``purposes`` contain it (``system|code``, or a bare code matching any system).
    ``resource_type``: rows whose ``resource_types`` contain it. ``break_glass``: the flag.
    ``kinds``: rows of these entry kinds only (empty: all). ``pseudonym``: rows of that leaf
    pseudonym (one patient's chain; the only patient criterion a shredded row still meets).
    ``include_shredded``: whether shredded rows are returned (they match only criteria on
    time, kind, pseudonym and index).
    Paging is by keyset: ``after`` is the last row's ``(recorded_us, index)`` of the previous
    page, in the query's ``sort`` order, and ``after_value`` that row's
    :func:`~middleware.audit.sort_keys.sort_value` when ``sort`` is not by date (the page
    starts after ``(after_value, index)``); at most ``limit`` rows come back.
    """

    since_us: int | None = None
    until_us: int | None = None
    patient: str | None = None
    agent: str | None = None
    entity: str | None = None
    event_type: str | None = None
    subtype: str | None = None
    action: str | None = None
    outcome: str | None = None
    client: str | None = None
    purpose: str | None = None
    resource_type: str | None = None
    break_glass: bool | None = None
    kinds: frozenset[int] = frozenset()
    pseudonym: bytes | None = None
    include_shredded: bool = False
    sort: SortKey = "date"
    after: tuple[int, int] | None = None
    after_value: str = ""
    limit: int = 100

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("limit must be positive")
