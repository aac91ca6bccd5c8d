"""The dashboard's pure parts: chart geometry, the overview and search view-models, the
download requests, the checkpoint note, and the reviews read back from admin evidence."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from middleware.audit.oversight import access_lines, awaiting_review, summarize
from middleware.audit.reports import AfterHours
from middleware.audit.reviews import REVIEW_TYPE, Review, parse_reviews, review_evidence
from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.web.charts_svg import BUSINESS, columns, nice_top, rows
from middleware.web.compliance import parse_checkpoint
from middleware.web.compliance_reports import download_request
from middleware.web.compliance_search import event_row, search_params

# --- charts ---


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 1), (1, 1), (2, 2), (3, 5), (5, 5), (6, 10), (11, 20), (99, 100), (101, 200)],
)
def test_nice_top(value: int, top: int) -> None:
    assert nice_top(value) == top


def test_columns_stack_each_category_bottom_up_to_scale() -> None:
    chart = columns(
        ["03-10", "03-11"],
        [("business", "#1", [2, 0]), ("late", "#2", [1, 0]), ("glass", "#3", [1, 4])],
        width=200,
        height=100,
    )
    assert not chart.empty
    first = [b for b in chart.bars if b.title.startswith("03-10")]
    assert [b.fill for b in first] == ["#1", "#2", "#3"]
    # stacked: each bar starts where the one below it ends
    assert first[0].y == pytest.approx(first[1].y + first[1].height)
    assert first[1].y == pytest.approx(first[2].y + first[2].height)
    # the tallest column (4, on a top of 5) is 4/5 of the plot's height
    (second,) = [b for b in chart.bars if b.title.startswith("03-11")]
    plot = 100 - 48 - 12
    assert second.height == pytest.approx(plot * 4 / 5)
    assert sum(b.height for b in first) == pytest.approx(plot * 4 / 5)
    assert "03-11: 4 glass" in {b.title for b in chart.bars}


def test_columns_label_at_most_sixteen_categories() -> None:
    labels = [f"d{i}" for i in range(62)]
    chart = columns(labels, [("n", "#1", [1] * 62)])
    shown = [lab.text for lab in chart.labels if lab.text.startswith("d")]
    assert 0 < len(shown) <= 16
    assert shown[0] == "d0"


def test_nothing_to_draw_is_an_empty_chart() -> None:
    assert columns([], []).empty
    assert columns(["a"], [("n", "#1", [0])]).empty
    assert rows([]).empty


def test_rows_scale_to_the_largest_and_keep_the_order() -> None:
    chart = rows([("Practitioner/a", 10), ("Practitioner/b", 5)], width=400, label_width=100)
    a, b = chart.bars
    assert a.width == pytest.approx(2 * b.width)
    assert a.y < b.y
    assert a.fill == BUSINESS


# --- the overview's counting ---


def _row(index: int, at: datetime, **fields: object) -> AuditRow:
    values: dict[str, object] = {
        "index": index,
        "recorded_us": int(at.timestamp() * 1_000_000),
        "kind": int(EntryKind.DISCLOSURE),
        "flags": int(EntryFlag.PERMIT),
        "patient": "Patient/p1",
        "pseudonym": None,
        "agent": "Practitioner/a",
        "roles": (),
        "organization": None,
        "client": None,
        "purposes": (),
        "action": "R",
        "event_type": "rest",
        "subtype": "read",
        "outcome": "0",
        "resource_types": ("Observation",),
        "entities": (),
        "break_glass": False,
        "request_id": f"r{index}",
    }
    values.update(fields)
    return AuditRow(**values)  # type: ignore[arg-type]


DAY = datetime(2026, 3, 10, tzinfo=UTC)


def test_accesses_follow_the_access_reports_rule() -> None:
    """Released data, a write's outcome and a refused decision are accesses; a permitted
    decision (its disclosure is counted) and a consent entry are not."""
    found = access_lines(
        [
            _row(1, DAY.replace(hour=10)),
            _row(2, DAY.replace(hour=10), kind=int(EntryKind.ACCESS_DECISION)),
            _row(3, DAY.replace(hour=10), kind=int(EntryKind.ACCESS_DECISION), flags=0),
            _row(4, DAY.replace(hour=10), kind=int(EntryKind.ACCESS_OUTCOME), outcome="4"),
            _row(5, DAY.replace(hour=10), kind=int(EntryKind.CONSENT)),
        ]
    )
    assert [(line.index, line.result) for line in found] == [
        (1, "released"),
        (3, "refused"),
        (4, "failed"),
    ]


def test_summary_counts_each_access_once() -> None:
    after = AfterHours(time(19, 0), time(7, 0))
    lines = access_lines(
        [
            _row(1, DAY.replace(hour=10)),
            _row(2, DAY.replace(hour=22), agent="Practitioner/b"),
            _row(3, DAY.replace(hour=23), break_glass=True),  # glass first, not after hours
            _row(4, DAY.replace(hour=11), kind=int(EntryKind.ACCESS_DECISION), flags=0),
        ]
    )
    view = summarize(lines, since_us=0, until_us=1, after=after)
    assert view.buckets == (("03-10", 2, 1, 1),)
    assert (view.accesses, view.after_hours, view.break_glass, view.refused) == (4, 1, 1, 1)
    assert view.users == (("Practitioner/a", 3), ("Practitioner/b", 1))


def test_reviews_first_one_stands_and_malformed_are_skipped() -> None:
    evidence = [
        (7, 100, review_evidence(entry=3, reviewer="Practitioner/o", note="ok")),
        (9, 200, review_evidence(entry=3, reviewer="Practitioner/x", note="again")),
        (10, 300, b'{"type": "' + REVIEW_TYPE.encode() + b'", "entry": "3"}'),
        (11, 400, b"not json"),
        (12, 500, b'{"type": "consentry/audit-suspension"}'),
    ]
    assert parse_reviews(evidence) == {3: Review(3, 7, 100, "Practitioner/o", "ok")}
    glass = access_lines([_row(3, DAY, break_glass=True), _row(4, DAY, break_glass=True)])
    waiting = awaiting_review(glass, parse_reviews(evidence))
    assert [line.index for line in waiting] == [4]


# --- search, downloads, checkpoint ---


def test_search_params_carry_every_filter_and_the_sort() -> None:
    params = search_params(
        {"from": "2026-03-01", "to": "2026-03-10", "patient": "p1", "outcome": "8", "sort": "date"}
    )
    assert params == [
        ("date", "ge2026-03-01"),
        ("date", "le2026-03-10"),
        ("patient", "p1"),
        ("outcome", "8"),
        ("_sort", "date"),
        ("_count", "50"),
    ]
    assert ("_sort", "-date") in search_params({})
    with pytest.raises(ValueError, match="month"):
        search_params({"from": "2026-13-01"})


def test_event_row_reads_a_balp_event() -> None:
    event = {
        "id": "12-1",
        "recorded": "2026-03-10T10:00:00.5Z",
        "type": {"code": "rest", "display": "Restful Operation"},
        "subtype": [{"code": "read", "display": "read"}],
        "action": "R",
        "outcome": "8",
        "agent": [
            {"who": {"reference": "Practitioner/dr"}, "requestor": True,
             "purposeOfUse": [{"coding": [{"code": "TREAT"}]}]},
            {"who": {"identifier": {"value": "gateway"}}, "requestor": False},
        ],
        "entity": [
            {"what": {"reference": "Patient/p1"}, "role": {"code": "1"}},
            {"what": {"reference": "Observation/o1"}, "role": {"code": "4"}},
        ],
    }  # fmt: skip
    row = event_row(event)
    assert row["who"] == "Practitioner/dr"
    assert row["patient"] == "Patient/p1"
    assert row["touched"] == "Observation/o1"
    assert row["time"] == "2026-03-10 10:00 UTC"
    assert row["purposes"] == "TREAT"
    assert row["outcome"] == "Serious failure or refused"
    assert row["what"] == "Restful Operation, read"


@pytest.mark.parametrize(
    ("values", "path", "params"),
    [
        (
            {"report": "accounting", "patient": "Patient/p1", "format": "pdf"},
            "/fhir/Patient/p1/$accounting",
            [("_format", "pdf")],
        ),
        (
            {"report": "accounting", "patient": "p1", "format": "csv"},
            "/fhir/Patient/p1/$accounting",
            [("_format", "csv"), ("_proofs", "true")],
        ),
        (
            {"report": "access", "patient": "p1", "format": "csv", "from": "2026-01-01"},
            "/fhir/Patient/p1/$access-report",
            [("_format", "csv"), ("date", "ge2026-01-01")],
        ),
        (
            {"report": "date-range", "format": "ndjson", "to": "2026-01-31", "sort": "-agent"},
            "/fhir/AuditEvent/$date-range",
            [("_format", "ndjson"), ("date", "le2026-01-31"), ("_sort", "-agent")],
        ),
    ],
    ids=["accounting", "accounting-proven", "access", "date-range"],
)
def test_download_requests(
    values: dict[str, str], path: str, params: list[tuple[str, str]]
) -> None:
    assert download_request(values, "/fhir") == (path, params)


@pytest.mark.parametrize(
    "values",
    [
        {"report": "accounting", "patient": "p1/../p2", "format": "pdf"},
        {"report": "accounting", "patient": "", "format": "pdf"},
        {"report": "accounting", "patient": "p1", "format": "xml"},
        {"report": "date-range", "format": "xml"},
        {"report": "date-range", "format": "csv", "sort": "secret"},
        {"report": "access", "patient": "p1", "format": "csv", "to": "soon"},
    ],
)
def test_download_requests_refused(values: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"^compliance\.problem\."):
        download_request(values, "/fhir")


def test_checkpoint_note() -> None:
    note = (
        "gateway.test/fhir/ledger\n12\nq83Xh0Vh6dM=\n\n"
        "\u2014 gateway.test/fhir/ledger AAAAsig=\n\u2014 witness.example BBBBsig=\n"
    )
    assert parse_checkpoint(note) == {
        "origin": "gateway.test/fhir/ledger",
        "size": 12,
        "root": "q83Xh0Vh6dM=",
        "extensions": [],
        "signers": ["gateway.test/fhir/ledger", "witness.example"],
    }
    assert parse_checkpoint("not a note") is None
