"""The dashboard's audit search (``GET /compliance/search``): the filters of the AuditEvent
search (IHE ITI-81, ``middleware.audit.search``), a table of the events found, sortable by
its time, who, patient, what (event type) and result columns, and pages of 50, through
``GET {base}/AuditEvent`` as the signed-in auditor.

The page is a plain GET form, so a search is a link (bookmark, back button) and works without
JavaScript. Each filter becomes the API parameter of the same name; the two days become
``date=ge<day>`` and ``date=le<day>``; the sort is the API's ``_sort`` (:data:`SORTS`; anything
else is read as newest first). Each sortable column header is a link (keyboard reachable, no
JavaScript) to the same search sorted by that column, ascending, or reversed when the table is
already sorted by it (the time column starts newest first); the sorted header carries
``aria-sort`` (WAI-ARIA 1.2, sortable table pattern) and an arrow hidden from screen readers,
which read ``aria-sort`` instead. A new sort starts from the first page. Paging follows the
API's own sealed cursor: the page takes ``_cursor`` from the answer's ``next`` link and hands
it back with the same filters (the cursor is bound to them and to the auditor; the API
refuses it otherwise). Nothing is loaded beyond the page asked for, so a search over a
million events costs what one page costs. What the API refuses (400) is shown as "check your
filters"; the page never rewrites a filter it did not understand.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from middleware.web.compliance_view import api_params, auditor, day_bounds, failed, field, show_time
from middleware.web.deps import WebDeps
from middleware.web.render import page
from middleware.web.text import t

__all__ = [
    "ACTIONS",
    "FILTERS",
    "OUTCOMES",
    "PAGE_SIZE",
    "SORTABLE",
    "SORTS",
    "TEXT_FIELDS",
    "event_row",
    "routes",
    "search_params",
]

#: The search filters the form offers, each passed to the API under its own name.
FILTERS: Final = (
    "patient",
    "agent",
    "entity",
    "type",
    "subtype",
    "action",
    "outcome",
    "purpose",
)
PAGE_SIZE: Final = 50
#: BALP ``action`` codes and their text keys, in the form's order.
ACTIONS: Final = (
    ("C", "compliance.action.create"),
    ("R", "compliance.action.read"),
    ("U", "compliance.action.update"),
    ("D", "compliance.action.delete"),
    ("E", "compliance.action.execute"),
)
#: AuditEvent ``outcome`` codes (FHIR R4 audit-event-outcome) and their text keys.
OUTCOMES: Final = (
    ("0", "compliance.outcome.success"),
    ("4", "compliance.outcome.minor"),
    ("8", "compliance.outcome.serious"),
    ("12", "compliance.outcome.major"),
)
#: The text fields of the form: (name, label key, hint key).
TEXT_FIELDS: Final = (
    ("patient", "compliance.field.patient", "compliance.hint.patient"),
    ("agent", "compliance.field.agent", "compliance.hint.agent"),
    ("entity", "compliance.field.entity", "compliance.hint.entity"),
    ("type", "compliance.field.type", "compliance.hint.type"),
    ("subtype", "compliance.field.subtype", "compliance.hint.subtype"),
    ("purpose", "compliance.field.purpose", "compliance.hint.purpose"),
)
_OUTCOME_TEXT: Final = dict(OUTCOMES)
#: The table's sortable columns, in its order: (API ``_sort`` key, header text key).
SORTABLE: Final = (
    ("date", "compliance.column.time"),
    ("agent", "compliance.column.who"),
    ("patient", "compliance.column.patient"),
    ("type", "compliance.column.what"),
    ("outcome", "compliance.column.outcome"),
)
#: The orders the form's select offers (every ``_sort`` of the API): (value, label key, column
#: key); the two by time have labels of their own.
SORTS: Final = (
    ("-date", "compliance.sort.newest", ""),
    ("date", "compliance.sort.oldest", ""),
    *(
        (f"{sign}{key}", order, column)
        for key, column in (
            ("agent", "compliance.column.who"),
            ("patient", "compliance.column.patient"),
            ("type", "compliance.column.what"),
            ("action", "compliance.field.action"),
            ("outcome", "compliance.column.outcome"),
            ("client", "compliance.column.client"),
        )
        for sign, order in (("", "compliance.sort.ascending"), ("-", "compliance.sort.descending"))
    ),
)
_SORT_VALUES: Final = frozenset(value for value, _, _ in SORTS)


def search_params(values: dict[str, str]) -> list[tuple[str, str]]:
    """The API parameters of the form ``values`` (module docstring); ValueError for a day
    that is not a date."""
    params = day_bounds(values.get("from", ""), values.get("to", ""))
    params += [(name, values[name]) for name in FILTERS if values.get(name)]
    params.append(("_sort", _sort_of(values)))
    params.append(("_count", str(PAGE_SIZE)))
    return params


def routes(deps: WebDeps) -> list[BaseRoute]:
    """``GET /compliance/search``."""
    base = deps.settings.base_path

    async def search(request: Request) -> Response:
        session = await auditor(request)
        values = {name: field(request, name) for name in ("from", "to", "sort", *FILTERS)}
        values["sort"] = _sort_of(values)
        context: dict[str, Any] = {
            "session": session,
            "title": t("compliance.search.title"),
            "values": values,
            "actions": ACTIONS,
            "outcomes": OUTCOMES,
            "text_fields": TEXT_FIELDS,
            "asked": "run" in request.query_params,
            "events": [],
            "problem": "",
            "next_link": "",
            "sorts": SORTS,
            "headers": [],
        }
        if context["asked"]:
            try:
                params = search_params(values)
            except ValueError:
                context["problem"] = t("compliance.problem.date")
                return page(request, "compliance/search.html", context, status=400)
            cursor = field(request, "cursor")
            sent = params + ([("_cursor", cursor)] if cursor else [])
            status, data, _ = await deps.api.get(session, f"{base}/AuditEvent", api_params(sent))
            if status == 400:
                context["problem"] = t("compliance.problem.filters")
                return page(request, "compliance/search.html", context, status=400)
            if status != 200 or not isinstance(data, dict):
                return failed(request, status, session)
            context["events"] = [
                event_row(entry.get("resource", {})) for entry in data.get("entry", [])
            ]
            shown = {k: v for k, v in values.items() if v}
            context["headers"] = sort_headers(shown, values["sort"])
            after = _next_cursor(data)
            if after:
                query = urlencode({**shown, "run": "1", "cursor": after})
                context["next_link"] = "/compliance/search?" + query
        return page(request, "compliance/search.html", context)

    return [Route("/compliance/search", search, methods=["GET"])]


def _sort_of(values: dict[str, str]) -> str:
    """The form's sort if the API answers it, else newest first."""
    sort = values.get("sort", "")
    return sort if sort in _SORT_VALUES else "-date"


def sort_headers(shown: dict[str, str], sort: str) -> list[dict[str, str]]:
    """The sortable headers of the table of a search of ``shown`` (the form's values) sorted by
    ``sort``: each one's label, link (the same filters, the column's order, first page),
    ``aria-sort`` value (``ascending``/``descending`` on the sorted column, "" elsewhere) and
    the hidden text saying what the link does."""
    headers = []
    for key, label in SORTABLE:
        if sort.lstrip("-") == key:
            state = "descending" if sort.startswith("-") else "ascending"
            target = key if sort.startswith("-") else f"-{key}"
            hint = t("compliance.sort.flip")
        else:
            state = ""
            target = "-date" if key == "date" else key
            hint = t("compliance.sort.by_column")
        query = urlencode({**shown, "sort": target, "run": "1"})
        headers.append(
            {
                "label": t(label),
                "link": "/compliance/search?" + query,
                "sorted": state,
                "hint": hint,
            }
        )
    return headers


def _next_cursor(bundle: dict[str, Any]) -> str:
    """The ``_cursor`` of the Bundle's ``next`` link ("" without one)."""
    for link in bundle.get("link", []):
        if isinstance(link, dict) and link.get("relation") == "next":
            query = urlsplit(str(link.get("url", ""))).query
            return next((v for k, v in parse_qsl(query) if k == "_cursor"), "")
    return ""


def event_row(event: dict[str, Any]) -> dict[str, str]:
    """The cells of one served AuditEvent in the results table: id, time, who, patient,
    what was done, outcome, purposes, and the ledger receipt link."""
    who = ""
    purposes: list[str] = []
    for agent in event.get("agent", []):
        if not isinstance(agent, dict):
            continue
        if agent.get("requestor") and not who:
            ident = agent.get("who", {})
            who = str(ident.get("reference") or ident.get("identifier", {}).get("value", ""))
        for use in agent.get("purposeOfUse", []):
            purposes += [str(c.get("code", "")) for c in use.get("coding", [])]
    for use in event.get("purposeOfEvent", []):
        purposes += [str(c.get("code", "")) for c in use.get("coding", [])]
    patient = ""
    touched: list[str] = []
    for entity in event.get("entity", []):
        ref = str(entity.get("what", {}).get("reference", ""))
        if entity.get("role", {}).get("code") == "1" and ref.startswith("Patient/"):
            patient = patient or ref
        elif ref:
            touched.append(ref)
    subtypes = [str(c.get("display") or c.get("code", "")) for c in event.get("subtype", [])]
    kind = event.get("type", {})
    outcome = str(event.get("outcome", ""))
    return {
        "id": str(event.get("id", "")),
        "time": show_time(event.get("recorded", "")),
        "who": who,
        "patient": patient,
        "what": ", ".join(filter(None, [str(kind.get("display") or ""), *subtypes])),
        "touched": ", ".join(touched[:5]),
        "action": str(event.get("action", "")),
        "outcome": t(_OUTCOME_TEXT[outcome]) if outcome in _OUTCOME_TEXT else outcome,
        "purposes": ", ".join(dict.fromkeys(p for p in purposes if p)),
        "receipt": str(event.get("meta", {}).get("source", "")),
    }
