"""CSV, NDJSON and FHIR renderings of the accounting and the reports.

Read back independently: CSV with the stdlib reader, NDJSON with ``json``, the Bundle with
the ``fhir.resources`` R4B models (R4B has R4's Bundle, Composition, Device and AuditEvent)
plus the FHIR document rules the models do not check (bdl-9/10/11, references resolve).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.composition import Composition

from middleware.audit.accounting import RecipientInfo, Suspension, account
from middleware.audit.report_bundle import COUNT_EXTENSION, accounting_bundle, left_out_text
from middleware.audit.report_csv import (
    ACCESS_COLUMNS,
    ACCOUNTING_COLUMNS,
    access_csv,
    accounting_csv,
    csv_escape,
    csv_unescape,
    date_range_csv,
    date_range_ndjson,
)
from middleware.audit.reports import DATE_RANGE_COLUMNS, access_report, date_range
from tests.unit.audit.test_accounting_rows import AR, DAY, NOW, PATIENT, purpose, row, shredded

ROWS = [
    row(1, at=NOW - 9 * DAY, types=("Condition", "Observation")),
    row(2, at=NOW - 5 * DAY),
    row(3, at=NOW - 4 * DAY, agent="https://idp.example#svc-1", purposes=purpose("PUBHLTH")),
    row(4, at=NOW - 3 * DAY, purposes=purpose("TREAT")),  # exempt
    row(5, at=NOW - 2 * DAY, organization="Organization/police", agent=None),  # suspended
    row(6, at=NOW - DAY, purposes=(), types=('Obs,"quoted"',)),
]
SUSPENSION = Suspension(NOW - DAY, NOW + DAY, "Organization/police", "investigation", 9)


def make() -> Any:
    return account(
        ROWS,
        patient=PATIENT,
        as_of_us=NOW,
        suspensions=[SUSPENSION],
        directory={"Practitioner/dr1": RecipientInfo("Dr Ada Lovelace", "1 Main St, Springfield")},
    )


def read_csv(text: str) -> list[dict[str, str]]:
    assert "\r\n" in text  # RFC 4180 line ends
    return list(csv.DictReader(io.StringIO(text, newline="")))


# --- CSV ------------------------------------------------------------------------------------


def test_accounting_csv_one_row_per_entry_with_ledger_indexes() -> None:
    text = accounting_csv(make())
    assert text.split("\r\n", 1)[0] == ",".join(ACCOUNTING_COLUMNS)
    rows = read_csv(text)
    assert [(r["ledger_index"], r["count"], r["ledger_indexes"]) for r in rows] == [
        ("1", "2", "1 2"),
        ("3", "1", "3"),
        ("6", "1", "6"),
    ]
    first = rows[0]
    assert (first["recipient"], first["recipient_address"]) == (
        "Dr Ada Lovelace",
        "1 Main St, Springfield",
    )
    assert first["date"] == "2025-02-20T00:00:00.000000Z"
    assert first["last_date"] == "2025-02-24T00:00:00.000000Z"
    assert first["description"] == "Condition Observation"
    assert first["purpose"] == "healthcare research"
    assert first["purpose_codes"] == f"{AR}|HRESCH"
    assert rows[2]["description"] == 'Obs,"quoted"'  # quoting survives the round trip
    assert rows[2]["purpose"] == "not stated"


def test_accounting_csv_detail_one_row_per_disclosure() -> None:
    rows = read_csv(accounting_csv(make(), detail=True))
    assert [(r["ledger_index"], r["entry"]) for r in rows] == [
        ("1", "1"),
        ("2", "1"),
        ("3", "2"),
        ("6", "3"),
    ]
    assert rows[1]["date"] == "2025-02-24T00:00:00.000000Z"


@pytest.mark.parametrize("detail", [False, True], ids=["summary", "detail"])
def test_a_suspended_disclosure_is_in_no_rendering(detail: bool) -> None:
    accounting = make()
    assert accounting.suspended == (5,)
    assert "police" not in accounting_csv(accounting, detail=detail)
    bundle = json.dumps(accounting_bundle(accounting, gateway_name="GW"))
    assert "police" not in bundle
    assert "suspen" not in bundle.lower()
    assert "suspen" not in left_out_text(accounting).lower()


def test_access_csv() -> None:
    report = access_report(ROWS, patient=PATIENT, as_of_us=NOW)
    text = access_csv(report)
    assert text.split("\r\n", 1)[0] == ",".join(ACCESS_COLUMNS)
    rows = read_csv(text)
    assert [r["ledger_index"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert rows[0]["what"] == "Condition Observation"
    assert rows[0]["action"] == "searched"
    assert rows[0]["break_glass"] == "false"


# OWASP CSV injection: the first characters a spreadsheet reads as a formula.
FORMULAS = ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=1"]


@pytest.mark.parametrize("value", FORMULAS, ids=["eq", "plus", "minus", "at", "tab", "cr", "q"])
def test_caller_controlled_cells_cannot_be_formulas(value: str) -> None:
    """Fails before the escape: agents, clients and reasons were written as given."""
    rows = [row(1, agent=value, client=value, at=NOW - DAY)]
    report = access_report(rows, patient=PATIENT, as_of_us=NOW)
    renderings = [
        read_csv(access_csv(report))[0],
        read_csv(accounting_csv(account(rows, patient=PATIENT, as_of_us=NOW)))[0],
        read_csv(date_range_csv(rows))[0],
    ]
    for rendered in renderings:
        assert rendered["agent"] == "'" + value
        assert rendered["client"] == "'" + value


@pytest.mark.parametrize("value", ["", "a", "Practitioner/1", *FORMULAS], ids=repr)
def test_the_escape_is_reversible(value: str) -> None:
    escaped = csv_escape(value)
    assert escaped[:1] not in set("=+-@\t\r")
    assert csv_unescape(escaped) == value


def test_date_range_csv_and_ndjson_carry_every_element() -> None:
    rows = [*ROWS, shredded(row(7, at=NOW - DAY))]
    chosen = date_range(rows, since_us=NOW - 30 * DAY, until_us=NOW)
    parsed = read_csv(date_range_csv(chosen))
    assert list(parsed[0]) == [*DATE_RANGE_COLUMNS, "date"]
    assert [r["index"] for r in parsed] == ["1", "2", "3", "4", "5", "6", "7"]
    assert parsed[0]["pseudonym"] == ("01" * 16)
    assert parsed[-1]["shredded"] == "true"
    assert parsed[-1]["agent"] == ""

    objects = [json.loads(line) for line in date_range_ndjson(chosen).splitlines()]
    assert [list(o) for o in objects] == [[*DATE_RANGE_COLUMNS, "date"]] * 7
    assert objects[0]["resource_types"] == ["Condition", "Observation"]
    assert objects[0]["purposes"] == [f"{AR}|HRESCH"]
    assert objects[-1]["agent"] is None
    assert objects[0]["index"] == 1


# --- FHIR document Bundle -------------------------------------------------------------------


def test_accounting_bundle_is_a_valid_r4_document() -> None:
    bundle = accounting_bundle(make(), gateway_name="Consentry at Example Clinic")
    Bundle.model_validate(bundle)
    assert bundle["type"] == "document"
    assert bundle["identifier"]["value"].startswith("urn:uuid:")  # bdl-9
    assert bundle["timestamp"] == "2025-03-01T00:00:00.000000Z"  # bdl-10
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    composition = bundle["entry"][0]["resource"]  # bdl-11: a Composition first
    Composition.model_validate(composition)
    assert composition["subject"] == {"reference": urls[2]}  # included: a document is whole
    assert composition["event"][0]["period"]["start"].startswith("2019-03-01")
    assert composition["author"][0]["reference"] in urls
    section_refs = [e["reference"] for e in composition["section"][0]["entry"]]
    events = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "AuditEvent"
    ]
    assert section_refs == urls[3:]
    patient = bundle["entry"][2]["resource"]
    assert patient == {"resourceType": "Patient", "id": "p1"}
    assert len(events) == 3
    for event in events:
        AuditEvent.model_validate(event)
        assert event["source"]["observer"]["reference"] == urls[1]


def test_bundle_events_say_the_summary() -> None:
    bundle = accounting_bundle(make(), gateway_name="GW")
    summary, single, no_purpose = (
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "AuditEvent"
    )
    assert summary["extension"] == [{"url": COUNT_EXTENSION, "valueInteger": 2}]
    assert summary["period"] == {
        "start": "2025-02-20T00:00:00.000000Z",
        "end": "2025-02-24T00:00:00.000000Z",
    }
    details = [d["valueString"] for d in summary["entity"][0]["detail"]]
    assert details == ["1", "2"]
    assert summary["agent"][0]["who"]["display"] == "Dr Ada Lovelace, 1 Main St, Springfield"
    assert summary["purposeOfEvent"][0]["coding"][0]["code"] == "HRESCH"
    assert "extension" not in single
    assert single["agent"][0]["who"]["identifier"] == {
        "value": "svc-1",
        "system": "https://idp.example",
    }
    assert "purposeOfEvent" not in no_purpose
    types = [e["type"]["code"] for e in summary["entity"][1:]]
    assert types == ["Condition", "Observation"]


def test_empty_accounting_bundle() -> None:
    bundle = accounting_bundle(account([], patient=PATIENT, as_of_us=NOW), gateway_name="GW")
    Bundle.model_validate(bundle)
    section = bundle["entry"][0]["resource"]["section"][0]
    assert "entry" not in section
    assert section["emptyReason"]["coding"][0]["code"] == "nilknown"


def test_the_same_accounting_renders_the_same_bundle() -> None:
    assert accounting_bundle(make(), gateway_name="GW") == accounting_bundle(
        make(), gateway_name="GW"
    )


LEFT_OUT = [
    ([row(1, purposes=purpose("TREAT"))], "1 disclosure for your treatment"),
    ([row(1, agent=PATIENT), row(2, agent=PATIENT)], "2 disclosures to you"),
    ([], "We left none out."),
    ([shredded(row(1, at=NOW - 2 * DAY))], "Records from 2025-02-27 to 2025-02-27"),
]


@pytest.mark.parametrize(("rows", "phrase"), LEFT_OUT, ids=["tpo", "self", "none", "shredded"])
def test_left_out_paragraph(rows: list[Any], phrase: str) -> None:
    assert phrase in left_out_text(account(rows, patient=PATIENT, as_of_us=NOW))


def test_bundle_carries_the_patient_resource_given() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Example"}]}
    bundle = accounting_bundle(make(), gateway_name="GW", patient_resource=patient)
    Bundle.model_validate(bundle)
    assert bundle["entry"][2]["resource"] == patient


@pytest.mark.parametrize(
    "resource",
    [{"resourceType": "Patient", "id": "p2"}, {"resourceType": "Person", "id": "p1"}],
    ids=["other-id", "not-a-patient"],
)
def test_bundle_refuses_another_patient_resource(resource: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        accounting_bundle(make(), gateway_name="GW", patient_resource=resource)
