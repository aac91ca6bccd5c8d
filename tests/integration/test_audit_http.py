"""The audit trail over the gateway's own FHIR API, against the real upstream and a SQLite
ledger: practitioners read carebundle patients with fresh ``X-Request-Id`` values, then a
patient reads "who looked at my record" (``GET AuditEvent``), an auditor pages through one
patient's events and exports the whole trail (FHIR Bulk Data), and the patient's accounting
is read back as CSV and PDF. Each check is against the requests this test sent."""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pypdf import PdfReader

from tests.support import GatewayServer

XREQUEST = "XrequestId"
USERS = [("dr-http-treat", "TREAT"), ("dr-http-research", "HRESCH")]


@dataclass(frozen=True)
class Read:
    request_id: str
    user: str
    patient: str


@pytest.fixture(scope="module")
def reads(gateway: GatewayServer, carebundle: dict[str, list[str]]) -> list[Read]:
    """Each user reads the first two carebundle patients once."""
    sent: list[Read] = []
    with httpx.Client(timeout=60.0) as client:
        for patient in list(carebundle)[:2]:
            for user, purpose in USERS:
                rid = uuid.uuid4().hex
                headers = {
                    "accept": "application/fhir+json",
                    "x-request-id": rid,
                    **gateway.bearer(
                        user,
                        "user/*.rs",
                        fhir_user=f"Practitioner/{user}",
                        purpose_of_use=[purpose],
                    ),
                }
                got = client.get(f"{gateway.base_url}/Patient/{patient}", headers=headers)
                assert got.status_code == 200
                sent.append(Read(rid, user, patient))
    return sent


def _auditor(gateway: GatewayServer) -> dict[str, str]:
    return gateway.bearer(
        "officer-http", "user/AuditEvent.rs", fhir_user="Practitioner/officer-http",
        roles=["ledger-auditor"],
    )  # fmt: skip


def _request_ids(event: dict[str, Any]) -> set[str]:
    return {
        e["what"]["identifier"]["value"]
        for e in event.get("entity", [])
        if e.get("type", {}).get("code") == XREQUEST
    }


def _all_pages(client: httpx.Client, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    got = client.get(url, headers=headers)
    while True:
        assert got.status_code == 200, got.text
        found += [entry["resource"] for entry in got.json().get("entry", [])]
        nxt = [link["url"] for link in got.json()["link"] if link["relation"] == "next"]
        if not nxt:
            return found
        got = client.get(nxt[0], headers=headers)


def test_a_patient_reads_who_looked_at_its_record(
    gateway: GatewayServer, reads: list[Read]
) -> None:
    mine, other = reads[0].patient, next(r.patient for r in reads if r.patient != reads[0].patient)
    token = gateway.bearer(f"user-{mine}", "launch/patient patient/AuditEvent.rs", patient=mine)
    with httpx.Client(timeout=60.0) as client:
        found = _all_pages(client, f"{gateway.base_url}/AuditEvent?subtype=read&_count=2", token)
        refused = client.get(f"{gateway.base_url}/AuditEvent?patient={other}", headers=token)
    seen = set().union(*(_request_ids(e) for e in found))
    assert {r.request_id for r in reads if r.patient == mine} <= seen
    assert not {r.request_id for r in reads if r.patient != mine} & seen
    looked = {a["who"].get("reference") for e in found for a in e["agent"] if "who" in a}
    assert {f"Practitioner/{user}" for user, _ in USERS} <= looked
    assert refused.status_code == 403


def test_an_auditor_pages_through_one_patients_events(
    gateway: GatewayServer, reads: list[Read]
) -> None:
    patient = reads[-1].patient
    with httpx.Client(timeout=60.0) as client:
        found = _all_pages(
            client,
            f"{gateway.base_url}/AuditEvent?patient={patient}&type=rest&_count=1",
            _auditor(gateway),
        )
    seen = set().union(*(_request_ids(e) for e in found))
    assert {r.request_id for r in reads if r.patient == patient} <= seen
    ids = [e["id"] for e in found]
    assert len(ids) == len(set(ids))
    assert {e["type"]["code"] for e in found} == {"rest"}


def test_the_accounting_as_csv_and_pdf(gateway: GatewayServer, reads: list[Read]) -> None:
    patient = reads[0].patient
    own = gateway.bearer(f"user-{patient}", "launch/patient patient/AuditEvent.r", patient=patient)
    url = f"{gateway.base_url}/Patient/{patient}/$accounting"
    with httpx.Client(timeout=60.0) as client:
        text = client.get(url, params={"_format": "csv"}, headers=own)
        pdf = client.get(url, headers={**own, "accept": "application/pdf"})
    assert text.status_code == 200
    assert "dr-http-research" in text.text  # research is accountable
    assert "dr-http-treat" not in text.text  # treatment is not (164.528(a)(1)(i))
    assert pdf.status_code == 200
    pages = PdfReader(io.BytesIO(pdf.content)).pages
    assert "Accounting of disclosures" in "".join(page.extract_text() for page in pages)


def test_bulk_export_holds_every_read(gateway: GatewayServer, reads: list[Read]) -> None:
    auditor = _auditor(gateway)
    with httpx.Client(timeout=60.0) as client:
        kick = client.get(
            f"{gateway.base_url}/AuditEvent/$export",
            headers={**auditor, "prefer": "respond-async"},
        )
        assert kick.status_code == 202
        status = kick.headers["content-location"]
        deadline = time.monotonic() + 60
        got = client.get(status, headers=auditor)
        while got.status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.2)
            got = client.get(status, headers=auditor)
        assert got.status_code == 200
        lines: list[str] = []
        for output in got.json()["output"]:
            lines += client.get(output["url"], headers=auditor).text.splitlines()
    exported = "\n".join(lines)
    assert all(r.request_id in exported for r in reads)
