"""The operations table: which FHIR operations pass the gateway, and how (pure data).

Every ``$operation`` request is looked up in an :class:`OperationTable`; what is not in it is
refused (403, deny by default). A row names a resource type (or ``*``: any type), a level and
an operation, and says what the gateway does with it (:class:`Mode`):

========================  =====================================================================
mode                      meaning
========================  =====================================================================
``filter`` (``bundle``)   the answer is a Bundle: every resource in it is judged like a search's
                          (withheld resources removed); at type level a patient-context caller's
                          query is pinned to its compartment (``$lastn``) or refused
``filter`` (``document``) the answer is a document Bundle, released whole or not at all: any
                          withheld or redacted entry withholds the document (generic 404)
``filter`` (``stats``)    ``Observation/$stats``: statistics the gateway cannot filter, released
                          only when every Observation they are computed over may be seen
``forward``               carries no patient data: only the operations of
                          :data:`FORWARDABLE` (terminology, type-level ``$validate`` of a posted
                          resource); forwarded and audited, the answer released only when it is
                          of a type of :data:`FORWARDED_ANSWERS` holding no patient data
``refuse``                403 (the same as no row)
========================  =====================================================================

Keys are written like the FHIR URL templates: ``$op`` (system level), ``Type/$op`` or ``*/$op``
(type level), ``Type/[id]/$op`` or ``*/[id]/$op`` (instance level). ``filter`` picks its kind
from the operation name (``$document``, ``$stats``, else ``bundle``); ``filter:bundle``,
``filter:document`` and ``filter:stats`` name it. A row for a type wins over the ``*`` row.
:func:`parse_operations` validates rows (settings, at start) and raises ``ValueError`` naming
every bad one: a row the gateway could not enforce is refused rather than trusted, so
``filter:bundle`` and ``filter:document`` take only the operations of :data:`BUNDLE_ANSWERS`
and :data:`DOCUMENT_ANSWERS` (an answer of another shape cannot be judged entry by entry), and
a row for ``$export`` (the gateway's own bulk export, never forwarded) is refused whatever it
says.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from middleware.fhir.request import Level
from middleware.fhir.resource_types import RESOURCE_TYPES

__all__ = [
    "ANY_TYPE",
    "BUNDLE_ANSWERS",
    "DEFAULT_ROWS",
    "DEFAULT_TABLE",
    "DOCUMENT_ANSWERS",
    "FORWARDABLE",
    "FORWARDED_ANSWERS",
    "Mode",
    "OperationTable",
    "Row",
    "parse_operations",
]

#: The resource type of a row that applies to every type.
ANY_TYPE: Final = "*"


class Mode(enum.StrEnum):
    """What the gateway does with an operation (module docstring)."""

    BUNDLE = "filter:bundle"
    DOCUMENT = "filter:document"
    STATS = "filter:stats"
    FORWARD = "forward"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Row:
    """One operation at one level: ``rtype`` a resource type, ``*`` or None (system level)."""

    rtype: str | None
    level: Level
    operation: str

    @property
    def key(self) -> str:
        """The row's key as written in the table (``Patient/[id]/$everything``)."""
        if self.level is Level.SYSTEM:
            return self.operation
        middle = "/[id]" if self.level is Level.INSTANCE else ""
        return f"{self.rtype}{middle}/{self.operation}"


#: The default table (docs/consent-api.md shows it). Instance-level ``$validate`` reads a
#: stored resource upstream (R4 resource-operation-validate: "the resource ... is the current
#: version"), so it is refused rather than forwarded unjudged.
DEFAULT_ROWS: Final[Mapping[str, str]] = {
    "Patient/[id]/$everything": "filter",
    "Patient/$everything": "filter",
    "Observation/$lastn": "filter",
    "Composition/[id]/$document": "filter",
    "Observation/$stats": "filter",
    "ValueSet/$expand": "forward",
    "ValueSet/$validate-code": "forward",
    "CodeSystem/$lookup": "forward",
    "CodeSystem/$validate-code": "forward",
    "CodeSystem/$subsumes": "forward",
    "ConceptMap/$translate": "forward",
    "*/$validate": "forward",
    "*/[id]/$validate": "refuse",
}

#: The operations a ``forward`` row may name, and the types they may be called on (``*``: any,
#: type level only): they answer about terminology or a posted resource, never about stored
#: patient data (R4 terminology-service.html; resource-operation-validate).
FORWARDABLE: Final[Mapping[str, frozenset[str]]] = {
    "$expand": frozenset({"ValueSet"}),
    "$validate-code": frozenset({"ValueSet", "CodeSystem"}),
    "$lookup": frozenset({"CodeSystem"}),
    "$subsumes": frozenset({"CodeSystem"}),
    "$translate": frozenset({"ConceptMap"}),
    "$validate": frozenset({ANY_TYPE}),
}
#: The resource types a forwarded operation's answer may be (anything else is withheld):
#: what the operations of :data:`FORWARDABLE` answer with.
FORWARDED_ANSWERS: Final = frozenset(
    {"Parameters", "OperationOutcome", "ValueSet", "CodeSystem", "ConceptMap"}
)
#: Operations whose answer is a Bundle of resources (searchset or collection), each judged
#: like a search's (``filter:bundle``): R4 patient-operation-everything,
#: encounter-operation-everything, observation-operation-lastn, patient-operation-match,
#: documentreference-operation-docref.
BUNDLE_ANSWERS: Final = frozenset({"$everything", "$lastn", "$match", "$docref"})
#: Operations whose answer is a document Bundle (``filter:document``): R4
#: composition-operation-document, IPS ``Patient/[id]/$summary``.
DOCUMENT_ANSWERS: Final = frozenset({"$document", "$summary"})

_KEY: Final = re.compile(
    r"(?:(?P<rtype>\*|[A-Z][A-Za-z]*)/(?P<instance>\[id\]/)?)?(?P<op>\$[A-Za-z][A-Za-z0-9_\-]*)"
)
_MODES: Final = {m.value: m for m in Mode} | {"filter": None}
#: Types whose operations the gateway never passes on: it serves them itself.
_OWN_TYPES: Final = frozenset({"Consent", "AuditEvent"})


class OperationTable:
    """Rows to modes (module docstring); :meth:`mode` looks one request up."""

    def __init__(self, rows: Mapping[Row, Mode]) -> None:
        self.rows: Final = dict(rows)

    def mode(self, rtype: str | None, level: Level, operation: str | None) -> Mode:
        """The mode of ``operation`` at ``level`` on ``rtype``; :attr:`Mode.REFUSE` when no
        row names it."""
        if operation is None or rtype in _OWN_TYPES:
            return Mode.REFUSE
        exact = self.rows.get(Row(rtype, level, operation))
        if exact is not None:
            return exact
        if level is Level.SYSTEM:
            return Mode.REFUSE
        return self.rows.get(Row(ANY_TYPE, level, operation), Mode.REFUSE)

    def allowed(self) -> frozenset[tuple[str | None, str]]:
        """``(type or * or None, operation)`` of every row that is not refused."""
        return frozenset(
            (row.rtype, row.operation) for row, mode in self.rows.items() if mode is not Mode.REFUSE
        )


def _row(key: str) -> Row:
    match = _KEY.fullmatch(key.strip())
    if match is None:
        raise ValueError(f"{key!r}: expected $op, Type/$op or Type/[id]/$op (Type may be *)")
    rtype, operation = match["rtype"], match["op"]
    if rtype is None:
        return Row(None, Level.SYSTEM, operation)
    if rtype != ANY_TYPE and rtype not in RESOURCE_TYPES:
        raise ValueError(f"{key!r}: unknown resource type {rtype}")
    return Row(rtype, Level.INSTANCE if match["instance"] else Level.TYPE, operation)


def _mode(row: Row, text: str) -> Mode:
    value = text.strip()
    if value not in _MODES:
        raise ValueError(f"{row.key!r}: mode {text!r} is not one of {', '.join(_MODES)}")
    mode = _MODES[value]
    if mode is None:  # plain "filter": the kind the operation's answer needs
        by_name = {"$document": Mode.DOCUMENT, "$stats": Mode.STATS}
        mode = by_name.get(row.operation, Mode.BUNDLE)
    if row.operation.startswith("$export"):
        # Bulk export is the gateway's own (docs/operations.md): a row would be ignored, and a
        # forward row would reach the upstream from a batch entry. Refused whatever it says.
        raise ValueError(f"{row.key!r}: $export is served by the gateway itself; remove the row")
    if mode is Mode.REFUSE:
        return mode
    if row.operation == "$graphql":
        raise ValueError(f"{row.key!r}: $graphql cannot be allowed (it joins past every check)")
    if row.rtype in _OWN_TYPES:
        raise ValueError(f"{row.key!r}: {row.rtype} is served by the gateway itself")
    if mode is Mode.FORWARD and row.level is Level.INSTANCE:
        # An instance-level operation works on a stored record the caller may not see.
        raise ValueError(f"{row.key!r}: an instance-level operation cannot be forwarded unjudged")
    if mode is Mode.STATS and (row.rtype, row.level, row.operation) != (
        "Observation",
        Level.TYPE,
        "$stats",
    ):
        raise ValueError(f"{row.key!r}: filter:stats judges Observation/$stats only")
    _check_answer_shape(row, mode)
    return mode


def _check_answer_shape(row: Row, mode: Mode) -> None:
    """Refuse a row whose mode cannot be enforced on the operation's answer."""
    if mode is Mode.FORWARD:
        types = FORWARDABLE.get(row.operation)
        if (
            types is None
            or row.level is Level.SYSTEM
            or (ANY_TYPE not in types and row.rtype not in types)
        ):
            allowed = ", ".join(f"{'|'.join(sorted(t))}/{op}" for op, t in FORWARDABLE.items())
            raise ValueError(
                f"{row.key!r}: only operations that carry no patient data may be forwarded"
                f" ({allowed})"
            )
    elif mode is Mode.BUNDLE and row.operation not in BUNDLE_ANSWERS:
        raise ValueError(
            f"{row.key!r}: filter:bundle judges operations answering a Bundle"
            f" ({', '.join(sorted(BUNDLE_ANSWERS))})"
        )
    elif mode is Mode.DOCUMENT and row.operation not in DOCUMENT_ANSWERS:
        raise ValueError(
            f"{row.key!r}: filter:document judges operations answering a document"
            f" ({', '.join(sorted(DOCUMENT_ANSWERS))})"
        )


def parse_operations(rows: Mapping[str, str], *, replace_defaults: bool = False) -> OperationTable:
    """The table of :data:`DEFAULT_ROWS` with ``rows`` over it (or ``rows`` alone with
    ``replace_defaults``). Raises ``ValueError`` naming every bad row, one per line."""
    merged = dict(rows) if replace_defaults else {**DEFAULT_ROWS, **rows}
    table: dict[Row, Mode] = {}
    problems: list[str] = []
    for key, text in merged.items():
        try:
            row = _row(key)
            table[row] = _mode(row, text)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("\n".join(problems))
    return OperationTable(table)


#: The table in force without configuration.
DEFAULT_TABLE: Final = parse_operations({})
