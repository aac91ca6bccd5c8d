"""The accounting of disclosures as a verifiable export over HTTP, on the real upstream: the
CSV ``GET Patient/<id>/$accounting?_format=csv&_proofs=true`` serves an auditor is accepted by
``consentry audit verify-export`` (a subprocess, as an auditor runs it) against the gateway's
trust policy, and proves exactly the rows ``consentry audit export --report accounting`` proves
for the same patient."""

from __future__ import annotations

import csv
import io
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


def _rows(path: Path) -> set[int]:
    """The ledger indexes of the ``row`` lines of an NDJSON or CSV export."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("{"):
        lines = map(json.loads, text.splitlines()[1:])
        return {line["index"] for line in lines if line["role"] == "row"}
    records = csv.DictReader(io.StringIO(text.split("\n", 1)[1]))
    return {int(r["ledger_index"]) for r in records if r["role"] == "row"}


def test_the_http_served_accounting_csv_verifies_with_the_cli(
    gateway: GatewayServer, traffic: list[Sent], tmp_path: Path
) -> None:
    patient = traffic[0].patient
    officer = gateway.bearer(
        "officer-proofs", "user/AuditEvent.rs", fhir_user="Practitioner/officer-proofs",
        roles=["ledger-auditor"],
    )  # fmt: skip
    got = httpx.get(
        f"{gateway.base_url}/{patient}/$accounting",
        params={"_format": "csv", "_proofs": "true"},
        headers=officer,
        timeout=60.0,
    )
    assert got.status_code == 200, got.text
    served = tmp_path / "accounting.csv"
    served.write_bytes(got.content)
    trust = _trust(gateway)
    status, text = _consentry(gateway, "audit", "verify-export", str(served), "--trust", trust)
    assert (status, json.loads(text)["ok"]) == (0, True), text
    assert json.loads(text)["rows"] > 0

    made = tmp_path / "cli.ndjson"
    status, text = _consentry(
        gateway, "audit", "export", "--store", gateway.store_url, "--key-file",
        _key_file(gateway), "--report", "accounting", "--patient", patient,
        "--format", "ndjson", "--out", str(made),
    )  # fmt: skip
    assert status == 0, text
    assert _rows(served) == _rows(made)
