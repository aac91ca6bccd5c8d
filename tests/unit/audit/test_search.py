"""ITI-81 search parameters parsed into an AuditQuery: each accepted form, each refusal (a 400
BadRequest naming the parameter), and that parsing raises nothing else whatever it is given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.audit.row import AuditQuery
from middleware.audit.search import SEARCH_PARAMS, parse_search
from middleware.errors import BadRequest

DCM = "http://dicom.nema.org/resources/ontology/DCM"
AET = "http://terminology.hl7.org/CodeSystem/audit-event-type"


def us(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    tz: timezone = UTC,
) -> int:
    """Microseconds since the epoch of a datetime (an independent computation)."""
    moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    return round(moment.timestamp() * 1_000_000)


def parse(*pairs: tuple[str, str], default: int = 50, most: int = 200) -> AuditQuery:
    return parse_search(list(pairs), default_count=default, max_count=most).query


# --- accepted: each parameter's value as the index query holds it -------------------------

ACCEPTED: list[tuple[str, list[tuple[str, str]], dict[str, Any]]] = [
    ("nothing", [], {}),
    ("patient reference", [("patient", "Patient/p1")], {"patient": "Patient/p1"}),
    ("patient bare id", [("patient", "p1")], {"patient": "Patient/p1"}),
    ("agent reference", [("agent", "Practitioner/7")], {"agent": "Practitioner/7"}),
    (
        "agent issuer#subject",
        [("agent", "https://idp.example#u1")],
        {"agent": "https://idp.example#u1"},
    ),
    ("entity", [("entity", "Observation/o1")], {"entity": "Observation/o1"}),
    ("type system|code", [("type", f"{AET}|rest")], {"event_type": f"{AET}|rest"}),
    ("type bare rest", [("type", "rest")], {"event_type": f"{AET}|rest"}),
    ("type bare DICOM", [("type", "110113")], {"event_type": f"{DCM}|110113"}),
    ("subtype bare", [("subtype", "read")], {"subtype": "read"}),
    (
        "subtype with system",
        [("subtype", "http://hl7.org/fhir/restful-interaction|search-type")],
        {"subtype": "search-type"},
    ),
    ("action", [("action", "R")], {"action": "R"}),
    ("outcome", [("outcome", "8")], {"outcome": "8"}),
    (
        "outcome with system",
        [("outcome", "http://hl7.org/fhir/audit-event-outcome|0")],
        {"outcome": "0"},
    ),
    ("purpose bare", [("purpose", "TREAT")], {"purpose": "TREAT"}),
    ("purpose system|code", [("purpose", "urn:x|HPAYMT")], {"purpose": "urn:x|HPAYMT"}),
    ("sort date", [("_sort", "date")], {"sort": "date"}),
    ("sort -date", [("_sort", "-date")], {"sort": "-date"}),
    ("sort agent", [("_sort", "agent")], {"sort": "agent"}),
    ("sort -type", [("_sort", "-type")], {"sort": "-type"}),
    ("sort -outcome", [("_sort", "-outcome")], {"sort": "-outcome"}),
    ("sort client", [("_sort", "client")], {"sort": "client"}),
    ("count", [("_count", "10")], {"limit": 10}),
    ("count over the maximum is the maximum", [("_count", "100000")], {"limit": 200}),
    ("_format is negotiation's", [("_format", "json")], {}),
    # date: FHIR R4 search.html#prefix over the interval the value names (UTC without time)
    (
        "date eq year",
        [("date", "2024")],
        {"since_us": us(2024, 1, 1), "until_us": us(2025, 1, 1) - 1},
    ),
    (
        "date bare month",
        [("date", "eq2024-02")],
        {"since_us": us(2024, 2, 1), "until_us": us(2024, 3, 1) - 1},
    ),
    ("date ge day", [("date", "ge2024-03-04")], {"since_us": us(2024, 3, 4)}),
    ("date gt day", [("date", "gt2024-03-04")], {"since_us": us(2024, 3, 5)}),
    ("date le day", [("date", "le2024-03-04")], {"until_us": us(2024, 3, 5) - 1}),
    ("date lt day", [("date", "lt2024-03-04")], {"until_us": us(2024, 3, 4) - 1}),
    (
        "date range ANDed",
        [("date", "ge2024-01-01"), ("date", "lt2024-02-01")],
        {"since_us": us(2024, 1, 1), "until_us": us(2024, 2, 1) - 1},
    ),
    (
        "date narrowest of several",
        [("date", "ge2023"), ("date", "ge2024-06"), ("date", "le2025"), ("date", "le2024-12")],
        {"since_us": us(2024, 6, 1), "until_us": us(2025, 1, 1) - 1},
    ),
    (
        "date with zone",
        [("date", "ge2024-03-04T10:00:00+02:00")],
        {"since_us": us(2024, 3, 4, 10, tz=timezone(timedelta(hours=2)))},
    ),
    (
        "date second precision",
        [("date", "2024-03-04T10:00:00Z")],
        {"since_us": us(2024, 3, 4, 10), "until_us": us(2024, 3, 4, 10, 0, 1) - 1},
    ),
]


@pytest.mark.parametrize(
    ("pairs", "expected"), [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED]
)
def test_accepted(pairs: list[tuple[str, str]], expected: dict[str, Any]) -> None:
    want = {"limit": 50, **expected}
    query = parse(*pairs)
    got = {name: getattr(query, name) for name in want}
    assert got == want
    # and nothing else is constrained
    untouched = {"since_us", "until_us", "patient", "agent", "entity", "event_type", "subtype"}
    untouched |= {"action", "outcome", "purpose", "client", "resource_type", "break_glass"}
    assert all(getattr(query, name) is None for name in untouched - set(want))
    assert query.after is None
    assert not query.include_shredded


def test_params_kept_for_the_cursor_binding_without_format() -> None:
    search = parse_search(
        [("patient", "p1"), ("_format", "json"), ("date", "ge2024")], default_count=5, max_count=9
    )
    assert search.params == (("patient", "p1"), ("date", "ge2024"))


# --- refused: 400, naming the parameter ------------------------------------------------------

REFUSED: list[tuple[str, list[tuple[str, str]], str]] = [
    ("unknown parameter", [("address", "x")], "unknown AuditEvent search parameter"),
    ("a modifier", [("patient:missing", "true")], "modifiers"),
    ("_sort on an unknown key", [("_sort", "name")], "_sort"),
    ("_sort of several keys", [("_sort", "date,agent")], "lists of values"),
    ("_count zero", [("_count", "0")], "_count"),
    ("_count negative", [("_count", "-1")], "_count"),
    ("_count not a number", [("_count", "ten")], "_count"),
    ("_count unicode digits", [("_count", "\u0661\u0662")], "_count"),
    ("_total is not answered", [("_total", "accurate")], "unknown"),
    ("patient twice", [("patient", "p1"), ("patient", "p2")], "patient may be given once"),
    ("patient OR list", [("patient", "p1,p2")], "lists of values"),
    ("patient of another type", [("patient", "Group/g1")], "patient"),
    ("patient bad id", [("patient", "Patient/a b")], "patient"),
    ("patient dots only", [("patient", "..")], "patient"),
    ("agent free text", [("agent", "Dr No")], "agent"),
    ("entity bare id", [("entity", "o1")], "entity"),
    ("type unknown bare code", [("type", "foo")], "type"),
    ("type empty system", [("type", "|rest")], "type"),
    ("subtype of another system", [("subtype", "urn:x|read")], "subtype"),
    ("subtype unknown", [("subtype", "fly")], "subtype"),
    ("action unknown", [("action", "X")], "action"),
    ("outcome unknown", [("outcome", "3")], "outcome"),
    ("purpose empty", [("purpose", "")], "purpose"),
    ("date prefix ne", [("date", "ne2024")], "prefixes"),
    ("date prefix sa", [("date", "sa2024")], "prefixes"),
    ("date not a date", [("date", "yesterday")], "date"),
    ("date impossible day", [("date", "2024-02-30")], "date"),
    ("date time without zone", [("date", "2024-03-04T10:00:00")], "date"),
    ("date too many", [("date", "ge2024")] * 9, "at most"),
    ("value too long", [("agent", "A/" + "x" * 600)], "longer than"),
]


@pytest.mark.parametrize(
    ("pairs", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_refused(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(*pairs)
    assert caught.value.status == 400
    assert message in caught.value.diagnostics


def test_refusal_never_echoes_a_value() -> None:
    with pytest.raises(BadRequest) as caught:
        parse(("patient", "Patient/<script>secret-name"))
    assert "secret" not in caught.value.diagnostics


def test_every_documented_parameter_is_accepted_alone() -> None:
    samples = {"date": "2024", "patient": "p1", "agent": "Practitioner/1", "entity": "Patient/p1"}
    samples |= {"type": "rest", "subtype": "read", "action": "R", "outcome": "0"}
    samples |= {"purpose": "TREAT", "_sort": "date", "_count": "5", "_format": "json"}
    assert set(samples) == SEARCH_PARAMS
    for name, value in samples.items():
        parse((name, value))


# --- property: parse raises nothing but the typed 400 -----------------------------------------

_names = st.one_of(st.sampled_from(sorted(SEARCH_PARAMS)), st.text(max_size=12))
_values = st.one_of(
    st.text(max_size=40),
    st.from_regex(
        r"(eq|ge|gt|le|lt|ne)?[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9:]{8}(Z|[+-][0-9]{2}:[0-9]{2}))?)?)?",
        fullmatch=True,
    ),
    st.sampled_from(["p1", "Patient/p1", "R", "12", "rest", "-date", "0", "100", "a|b", "|", ","]),
)


@given(st.lists(st.tuples(_names, _values), max_size=6))
def test_parse_raises_only_bad_request(pairs: list[tuple[str, str]]) -> None:
    try:
        query = parse(*pairs)
    except BadRequest as refused:
        status = refused.status
    else:
        status = 200
        assert 1 <= query.limit <= 200
    assert status in (200, 400)
