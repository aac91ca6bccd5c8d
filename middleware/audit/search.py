"""ITI-81 search parameters → :class:`~middleware.audit.row.AuditQuery` (pure, strict).

IHE ITI-81 (Retrieve ATNA Audit Event, https://profiles.ihe.net/ITI/RESTful-ATNA/) searches
``AuditEvent`` with these FHIR R4 parameters; the gateway answers the ones below and refuses
everything else with 400 (:class:`~middleware.errors.BadRequest`, an OperationOutcome): a
parameter the gateway silently ignored would widen the answer, and a reviewer would read a
wider answer as the one asked for.

==========  =================================================================================
parameter   accepted values (FHIR R4 search.html)
==========  =================================================================================
date        ``[eq|ge|gt|le|lt]<dateTime>``; repeatable (ANDed: ``date=ge2024&date=lt2025``);
            a value names an interval at its precision (``2024-03`` is the whole month, in
            UTC when it has no time); a time needs a zone (FHIR R4 datatypes.html#dateTime)
patient     ``Patient/<id>`` or ``<id>``
agent       who acted: ``Type/id`` (``Practitioner/7``) or ``<issuer>#<subject>``
entity      a ``Type/id`` the event touched (``Patient/<id>`` also matches ``patient``)
type        ``system|code``, or a bare code of audit-event-type (``rest``) or DICOM (``110113``)
subtype     a restful-interaction code (``read``, ``search-type``...), bare or with its system
action      ``C`` ``R`` ``U`` ``D`` ``E``
outcome     ``0`` ``4`` ``8`` ``12`` (bare or with the audit-event-outcome system)
purpose     ``system|code`` or a bare code (any system)
_sort       one key of ``date`` ``agent`` ``patient`` ``type`` ``action`` ``outcome``
            ``client``, ``-`` prefixed for descending; ties in the order of the ledger
            (:mod:`~middleware.audit.sort_keys`); several keys (FHIR's comma) are refused
_count      1.. ; more than the gateway's maximum is served as the maximum (FHIR allows fewer)
_format     answered by content negotiation, not here
==========  =================================================================================

Each parameter but ``date`` may appear once, with one value: FHIR's comma (OR) and modifiers
(``:missing``, ``:not``...) are refused, as are prefixes other than the five above. Every
refusal is a :class:`BadRequest` naming the parameter, never echoing the value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast, get_args

from middleware.audit.parts import FHIR_ID
from middleware.audit.row import AuditQuery, SortKey
from middleware.consent.fhirtime import bounds
from middleware.errors import BadRequest
from middleware.ledger.leaf import micros

__all__ = [
    "AUDIT_EVENT_TYPE",
    "DCM",
    "OUTCOME_SYSTEM",
    "RESTFUL_INTERACTION",
    "SEARCH_PARAMS",
    "Search",
    "parse_search",
]

AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
OUTCOME_SYSTEM: Final = "http://hl7.org/fhir/audit-event-outcome"
_ACTION_SYSTEM: Final = "http://hl7.org/fhir/audit-event-action"

#: The search parameters answered (module table); anything else is a 400.
SEARCH_PARAMS: Final = frozenset(
    {
        "date",
        "patient",
        "agent",
        "entity",
        "type",
        "subtype",
        "action",
        "outcome",
        "purpose",
        "_sort",
        "_count",
        "_format",
    }
)
_SINGLE: Final = SEARCH_PARAMS - {"date"}
_MAX_VALUE: Final = 512
_MAX_DATES: Final = 8

_REFERENCE: Final = re.compile(rf"[A-Z][A-Za-z]{{0,63}}/{FHIR_ID.pattern}")
_AGENT_TOKEN: Final = re.compile(r"[\x21-\x7e]{1,512}#[\x21-\x7e]{1,512}")
_CODE: Final = re.compile(r"[^\s|,]{1,128}")
_SYSTEM: Final = re.compile(r"[^\s|,]{1,256}")
_PREFIX: Final = re.compile(r"([a-z]{2})?(.*)", re.DOTALL)
_DATE_PREFIXES: Final = frozenset({"eq", "ge", "gt", "le", "lt"})
_SORTS: Final[frozenset[str]] = frozenset(get_args(SortKey))
_ACTIONS: Final = frozenset({"C", "R", "U", "D", "E"})
_OUTCOMES: Final = frozenset({"0", "4", "8", "12"})
_RESTFUL_CODES: Final = frozenset(
    {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history",
        "history-instance",
        "history-type",
        "history-system",
        "create",
        "search",
        "search-type",
        "search-system",
        "capabilities",
        "transaction",
        "batch",
        "operation",
    }
)
# A bare type code is read in the one code system the gateway's events use it from.
_BARE_TYPES: Final = {
    "rest": AUDIT_EVENT_TYPE,
    **{str(code): DCM for code in range(110100, 110154)},
}


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed search: the index ``query`` (``limit`` is the page size, ``after`` unset) and
    ``params``, the client's parameters that define the search (``_format`` left out, order
    kept): what a paging cursor is bound to."""

    query: AuditQuery
    params: tuple[tuple[str, str], ...]


def parse_search(
    params: Sequence[tuple[str, str]], *, default_count: int, max_count: int
) -> Search:
    """The :class:`Search` of decoded ``(name, value)`` pairs (module table), or raise
    :class:`BadRequest` (400). Raises nothing else, whatever the input."""
    if not 1 <= default_count <= max_count:
        raise ValueError("expected 1 <= default_count <= max_count")
    seen: set[str] = set()
    dates: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    count = default_count
    sort: SortKey = "date"
    for name, value in params:
        base, colon, _ = name.partition(":")
        if colon:
            raise BadRequest(f"search parameter modifiers are not supported ({base})")
        if name not in SEARCH_PARAMS:
            raise BadRequest(
                f"unknown AuditEvent search parameter {_shown(name)}; supported: "
                + ", ".join(sorted(SEARCH_PARAMS)),
                code="not-supported",
            )
        if name in _SINGLE and name in seen:
            raise BadRequest(f"{name} may be given once")
        seen.add(name)
        if len(value) > _MAX_VALUE:
            raise BadRequest(f"{name}: the value is longer than {_MAX_VALUE} characters")
        if name != "_format" and "," in value:
            raise BadRequest(f"{name}: lists of values (comma, OR) are not supported")
        match name:
            case "date":
                dates.append(_date(value))
            case "_count":
                count = _count(value, max_count)
            case "_sort":
                sort = _sort(value)
            case "_format":
                pass  # content negotiation (fhir.negotiate) answers it
            case _:
                key, parsed = _FIELDS[name](value)
                fields[key] = parsed
    if len(dates) > _MAX_DATES:
        raise BadRequest(f"date may be given at most {_MAX_DATES} times")
    since, until = _range(dates)
    query = AuditQuery(sort=sort, limit=count, since_us=since, until_us=until, **fields)
    kept = tuple((n, v) for n, v in params if n != "_format")
    return Search(query, kept)


def _shown(name: str) -> str:
    """A parameter name fit to repeat in a message (printable ASCII, cut short)."""
    safe = "".join(c if 0x20 < ord(c) < 0x7F else "?" for c in name[:40])
    return repr(safe)


def _count(value: str, max_count: int) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 9 or int(value) < 1:
        raise BadRequest("_count: expected a positive integer")
    return min(int(value), max_count)


def _sort(value: str) -> SortKey:
    if value in _SORTS:
        return cast("SortKey", value)
    raise BadRequest(
        "_sort: expected one of date, agent, patient, type, action, outcome, client "
        "(a - prefix for descending); one key only"
    )


def _date(value: str) -> tuple[str, str]:
    found = _PREFIX.fullmatch(value)
    prefix, rest = (found[1], found[2]) if found else (None, value)
    if prefix is not None and prefix not in _DATE_PREFIXES:
        raise BadRequest("date: the prefixes accepted are eq, ge, gt, le and lt")
    return prefix or "eq", rest


def _range(dates: Sequence[tuple[str, str]]) -> tuple[int | None, int | None]:
    """Inclusive microsecond bounds of every ``date`` criterion ANDed (FHIR R4
    search.html#prefix: ``ge`` from the start of the value's interval, ``gt`` after its end,
    ``le`` to its end, ``lt`` before its start, ``eq`` within it)."""
    since: int | None = None
    until: int | None = None
    for prefix, text in dates:
        interval = bounds(text)
        if interval is None:
            raise BadRequest(
                "date: expected a FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD or "
                "YYYY-MM-DDThh:mm:ss with a zone)"
            )
        lower, upper = (micros(interval[0]), micros(interval[1]))
        low = {"eq": lower, "ge": lower, "gt": upper}.get(prefix)
        high = {"eq": upper - 1, "le": upper - 1, "lt": lower - 1}.get(prefix)
        if low is not None:
            since = low if since is None else max(since, low)
        if high is not None:
            until = high if until is None else min(until, high)
    return since, until


def _patient(value: str) -> tuple[str, str]:
    ref = value if "/" in value else f"Patient/{value}"
    kind, _, pid = ref.partition("/")
    if kind != "Patient" or not FHIR_ID.fullmatch(pid) or not pid.strip("."):
        raise BadRequest("patient: expected Patient/<id> or <id>")
    return "patient", ref


def _agent(value: str) -> tuple[str, str]:
    if _REFERENCE.fullmatch(value) or _AGENT_TOKEN.fullmatch(value):
        return "agent", value
    raise BadRequest("agent: expected Type/id or <issuer>#<subject>")


def _entity(value: str) -> tuple[str, str]:
    if not _REFERENCE.fullmatch(value):
        raise BadRequest("entity: expected Type/id")
    return "entity", value


def _token(name: str, value: str) -> tuple[str | None, str]:
    system, bar, code = value.rpartition("|")
    if not _CODE.fullmatch(code) or (bar and not _SYSTEM.fullmatch(system)):
        raise BadRequest(f"{name}: expected code or system|code")
    return (system if bar else None), code


def _type(value: str) -> tuple[str, str]:
    system, code = _token("type", value)
    if system is None:
        system = _BARE_TYPES.get(code)
        if system is None:
            raise BadRequest("type: give system|code for a code other than rest or DICOM")
    return "event_type", f"{system}|{code}"


def _coded(
    name: str, system: str, codes: frozenset[str], expected: str
) -> Callable[[str], tuple[str, str]]:
    """The parser of a token criterion whose system, when given, is ``system`` and whose code
    is one of ``codes`` (anything else: 400 saying ``expected``)."""

    def parse(value: str) -> tuple[str, str]:
        found, code = _token(name, value)
        if found not in (None, system) or code not in codes:
            raise BadRequest(f"{name}: expected {expected}")
        return name, code

    return parse


_subtype = _coded(
    "subtype",
    RESTFUL_INTERACTION,
    _RESTFUL_CODES,
    "a restful-interaction code (read, search-type...)",
)
_action = _coded("action", _ACTION_SYSTEM, _ACTIONS, "C, R, U, D or E")
_outcome = _coded("outcome", OUTCOME_SYSTEM, _OUTCOMES, "0, 4, 8 or 12")


def _purpose(value: str) -> tuple[str, str]:
    system, code = _token("purpose", value)
    return "purpose", code if system is None else f"{system}|{code}"


_FIELDS: Final = {
    "patient": _patient,
    "agent": _agent,
    "entity": _entity,
    "type": _type,
    "subtype": _subtype,
    "action": _action,
    "outcome": _outcome,
    "purpose": _purpose,
}
