"""The accounting of disclosures as NDJSON (``$accounting?_format=ndjson``) against the export
that proves it, on the real upstream: the disclosures the gateway lists over HTTP are exactly the
``row`` lines of ``consentry audit export --report accounting --format ndjson`` for the same
patient, which ``consentry audit verify-export`` accepts against the gateway's trust policy, and
each line's agent, client, time and purposes are that proven row's. The NDJSON carries the ledger
index of each disclosure for this check; the proofs and openings stay in the export."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.integration.test_audit_reports import (
    Sent,
    _consentry,
    _key_file,
    _trust,
    traffic,
)
from tests.support import GatewayServer

__all__ = ["traffic"]  # the module fixture: the same burst of reads and writes


def test_accounting_ndjson_lists_exactly_the_rows_a_verified_export_proves(
    gateway: GatewayServer, traffic: list[Sent], tmp_path: Path
) -> None:
    patient = traffic[0].patient
    officer = gateway.bearer(
        "officer-ndjson", "user/AuditEvent.rs", fhir_user="Practitioner/officer-ndjson",
        roles=["ledger-auditor"],
    )  # fmt: skip
    got = httpx.get(
        f"{gateway.base_url}/{patient}/$accounting",
        params={"_format": "ndjson"},
        headers=officer,
        timeout=60.0,
    )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/fhir+ndjson"
    listed = {line["ledger_index"]: line for line in map(json.loads, got.text.splitlines())}
    assert listed

    path = tmp_path / "accounting.ndjson"
    status, text = _consentry(
        gateway, "audit", "export", "--store", gateway.store_url, "--key-file",
        _key_file(gateway), "--report", "accounting", "--patient", patient,
        "--format", "ndjson", "--out", str(path),
    )  # fmt: skip
    assert status == 0, text
    trust = _trust(gateway)
    status, text = _consentry(gateway, "audit", "verify-export", str(path), "--trust", trust)
    assert (status, json.loads(text)["ok"]) == (0, True), text
    proven = {
        line["index"]: line["columns"]
        for line in map(json.loads, path.read_text().splitlines()[1:])
        if line["role"] == "row"
    }
    assert set(listed) == set(proven)
    for index, line in listed.items():
        columns = proven[index]
        assert line["agent"] == columns["agent"]
        assert (line["client"] or "") == columns["client"]
        assert line["date"] == columns["recorded"]
        assert " ".join(line["purpose_codes"]) == columns["purposes"]
