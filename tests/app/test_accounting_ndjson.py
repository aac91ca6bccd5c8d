"""``Patient/<id>/$accounting`` as NDJSON through the gateway: one line per disclosure with the
per-disclosure CSV's fields and values (read from the CSV the same endpoint serves, not from the
renderer), by ``_format`` or ``Accept``, and the exempt treatment read and the other patient's
disclosure left out as in every other format."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest

from middleware.audit.report_csv import ACCOUNTING_DETAIL_COLUMNS, csv_unescape
from tests.app import test_audit_http_export as base
from tests.app.consenting import Tokens
from tests.app.test_audit_http_export import auditor, traffic

client = base.client  # the same gateway fixture as the other $accounting tests


@pytest.mark.parametrize(
    "how",
    [
        {"params": {"_format": "ndjson"}},
        {"params": {"_format": "application/fhir+ndjson"}},
        {"headers": {"accept": "application/fhir+ndjson"}},
    ],
    ids=["format", "format-media-type", "accept"],
)
async def test_accounting_as_ndjson_one_disclosure_a_line(
    client: httpx.AsyncClient, tokens: Tokens, how: dict[str, dict[str, str]]
) -> None:
    await traffic(client, tokens)
    headers = {**auditor(tokens), **how.get("headers", {})}
    url = "/fhir/Patient/p1/$accounting"
    got = await client.get(url, headers=headers, params=how.get("params"))
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/fhir+ndjson"
    assert got.headers["cache-control"] == "no-store"
    lines = [json.loads(line) for line in got.text.splitlines()]
    assert got.text.endswith("\n")
    assert len(lines) == 1  # the research read; treatment is exempt, p2's is another's
    assert list(lines[0]) == list(ACCOUNTING_DETAIL_COLUMNS)
    assert lines[0]["agent"] == "Practitioner/dr-research"
    assert "dr-treat" not in got.text
    assert "Patient/p2" not in got.text
    # the same fields and values as the CSV (when asked for per disclosure, one row each)
    table = (await client.get(url, headers=auditor(tokens), params={"_format": "csv"})).text
    summary = next(csv.DictReader(io.StringIO(table)))
    line = lines[0]
    assert line["ledger_index"] == int(summary["ledger_index"])
    assert line["entry"] == 1
    assert line["date"] == summary["date"]
    for name in ("recipient", "agent", "client", "description", "purpose"):
        assert (line[name] or "") == csv_unescape(summary[name]), name
    assert " ".join(line["purpose_codes"]) == summary["purpose_codes"]


async def test_an_unknown_format_is_still_refused(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    got = await client.get(
        "/fhir/Patient/p1/$accounting", params={"_format": "xml"}, headers=auditor(tokens)
    )
    assert got.status_code == 406
    assert "NDJSON" in got.text
