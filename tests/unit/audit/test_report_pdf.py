"""The PDF reports, read back with pypdf: what they name, their page numbers, and what they
must not say (a suspended disclosure)."""

from __future__ import annotations

import io
import re

import pytest
from pypdf import PdfReader

from middleware.audit.accounting import RecipientInfo, Suspension, account
from middleware.audit.charts import buckets
from middleware.audit.report_pdf import access_pdf, accounting_pdf, user_pdf
from middleware.audit.reports import AfterHours, access_report, user_activity
from tests.unit.audit.test_accounting_rows import DAY, NOW, OTHER, PATIENT, purpose, row, shredded

GATEWAY = "Consentry at Example Clinic"
HOUR = 3_600_000_000


def pages(pdf: bytes) -> list[str]:
    assert pdf.startswith(b"%PDF-")
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_numbered(texts: list[str]) -> None:
    total = len(texts)
    for n, text in enumerate(texts, 1):
        assert f"Page {n} of {total}" in text


def test_accounting_pdf_names_the_disclosures_in_plain_language() -> None:
    rows = [
        row(1, at=NOW - 9 * DAY),
        row(2, at=NOW - 5 * DAY),
        row(3, at=NOW - 4 * DAY, agent="Practitioner/dr7", purposes=purpose("PUBHLTH")),
        row(4, purposes=purpose("TREAT")),
        row(5, agent=None, organization="Organization/police"),
        shredded(row(6, at=NOW - 20 * DAY)),
    ]
    accounting = account(
        rows,
        patient=PATIENT,
        as_of_us=NOW,
        directory={
            "Practitioner/dr1": RecipientInfo("Dr Ada Lovelace", "1 Main St"),
            "Practitioner/dr7": RecipientInfo("County Health Department"),
            "Organization/police": RecipientInfo("City Police Department"),
        },
        suspensions=[Suspension(NOW - DAY, NOW + DAY, "Organization/police", "inquiry", 11)],
    )
    texts = pages(accounting_pdf(accounting, gateway_name=GATEWAY))
    assert_numbered(texts)
    text = flat(" ".join(texts))
    assert GATEWAY in text
    assert "between 2019-03-01 and 2025-03-01" in text
    assert "Dr Ada Lovelace, 1 Main St" in text
    assert "healthcare research" in text
    assert "2 times, the last on 2025-02-24" in text
    assert "County Health Department" in text
    assert "public health" in text
    assert "1 disclosure for your treatment" in text
    assert "Records from 2025-02-09 to 2025-02-09 were permanently erased" in text
    assert "City Police" not in text
    assert "suspen" not in text.lower()


def test_an_empty_accounting_says_so() -> None:
    text = flat(" ".join(pages(accounting_pdf(account([], patient=PATIENT, as_of_us=NOW),
                                              gateway_name=GATEWAY))))  # fmt: skip
    assert "No disclosure needs to be listed for this period." in text
    assert "Page 1 of 1" in text


def test_a_long_accounting_has_numbered_pages_and_repeats_the_header() -> None:
    rows = [row(i, at=NOW - i * HOUR, agent=f"Practitioner/d{i}") for i in range(300)]
    texts = pages(accounting_pdf(account(rows, patient=PATIENT, as_of_us=NOW), gateway_name="G"))
    assert len(texts) > 3
    assert_numbered(texts)
    assert all("To whom" in t for t in texts[1:-1])
    named = set(re.findall(r"Practitioner/d\d+", " ".join(texts)))
    assert len(named) == 300


def test_access_pdf_charts_and_highlights() -> None:
    rows = [
        row(1, at=NOW - 2 * DAY + 10 * HOUR, agent="Practitioner/day"),
        row(2, at=NOW - 2 * DAY + 22 * HOUR, agent="Practitioner/night"),
        row(3, at=NOW - DAY + 11 * HOUR, agent="Practitioner/er", break_glass=True),
        row(4, patient=OTHER, agent="Practitioner/elsewhere"),
        row(5, at=NOW - DAY + 12 * HOUR, agent=PATIENT),
    ]
    report = access_report(rows, patient=PATIENT, as_of_us=NOW)
    texts = pages(access_pdf(report, gateway_name=GATEWAY, after=AfterHours.parse("19:00-07:00")))
    assert_numbered(texts)
    text = flat(" ".join(texts))
    assert "Who looked at your record" in text
    assert "Accesses per day" in text
    assert "Accesses by user" in text
    assert "Practitioner/day" in text
    assert "Practitioner/night" in text
    assert "after hours" in text
    assert "break the glass" in text
    assert "(19:00 to 07:00)" in text
    assert "Practitioner/elsewhere" not in text
    assert " you " in text
    assert PATIENT not in text  # the patient's own reads say "you"


def test_user_pdf_lists_the_patients() -> None:
    rows = [row(1, at=NOW - 2 * DAY), row(2, at=NOW - DAY, patient=OTHER)]
    report = user_activity(rows, agent="Practitioner/dr1", since_us=NOW - 7 * DAY, until_us=NOW)
    text = flat(" ".join(pages(user_pdf(report, gateway_name=GATEWAY))))
    assert "User activity report" in text
    assert "2 accesses to the records of 2 patients" in text
    assert PATIENT in text
    assert OTHER in text
    assert "Patients with the most accesses" in text


# --- the activity chart's counting ----------------------------------------------------------

BUCKETS = [
    ("one day", [0], "day", 1),
    ("62 days: per day", [0, 61 * DAY], "day", 62),
    ("63 days: per week", [0, 62 * DAY], "week", 10),
    ("two years: per month", [0, 730 * DAY], "month", 24),  # 2023-03 .. 2025-02
]


@pytest.mark.parametrize(
    ("offsets", "unit", "bars"), [b[1:] for b in BUCKETS], ids=[b[0] for b in BUCKETS]
)
def test_activity_buckets(offsets: list[int], unit: str, bars: int) -> None:
    report = access_report(
        [row(i, at=NOW - DAY - off) for i, off in enumerate(offsets)],
        patient=PATIENT,
        as_of_us=NOW,
    )
    got_unit, labels, business, late, btg = buckets(report.lines, AfterHours())
    assert (got_unit, len(labels)) == (unit, bars)
    assert sum(business) + sum(late) + sum(btg) == len(offsets)


def test_each_access_counts_once_break_the_glass_first() -> None:
    day = NOW - 3 * DAY
    rows = [
        row(1, at=day + 10 * HOUR),  # business hours
        row(2, at=day + 22 * HOUR),  # after hours
        row(3, at=day + 23 * HOUR, break_glass=True),  # after hours and break the glass
    ]
    report = access_report(rows, patient=PATIENT, as_of_us=NOW)
    assert buckets(report.lines, AfterHours())[2:] == ([1], [1], [1])
