"""The compliance officer's round against the real upstream: traffic through the gateway, then
the accounting, the access report and the date-range report from its SQLite ledger, each
checked against what was sent, and exports verified offline (an edit and a drop detected).

A burst of reads and writes by three practitioners with different purposes of use (treatment,
research, public health) for three carebundle patients goes through the gateway with a fresh
``X-Request-Id`` each, which the audit facts keep: the reports are checked request by request.
Every command runs as ``consentry audit ...`` in the gateway's working directory, on its store
and key file, while it serves.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import GatewayServer

_V3 = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
#: (practitioner, purpose of use): treatment is exempt from an accounting, the others are not.
USERS = [("dr-treat", "TREAT"), ("dr-research", "HRESCH"), ("dr-health", "PUBHLTH")]
ACCOUNTABLE = {"HRESCH", "PUBHLTH"}


@dataclass(frozen=True)
class Sent:
    request_id: str
    user: str
    purpose: str
    patient: str
    path: str
    status: int


@pytest.fixture(scope="module")
def traffic(gateway: GatewayServer, carebundle: dict[str, list[str]]) -> list[Sent]:
    """Reads of three patients by every user, twice each, sent concurrently."""
    patients = list(carebundle)[:3]

    async def send(client: httpx.AsyncClient, user: str, purpose: str, path: str) -> Sent:
        request_id = uuid.uuid4().hex
        headers = {
            "accept": "application/fhir+json",
            "x-request-id": request_id,
            **gateway.bearer(
                user,
                "user/*.cruds",
                fhir_user=f"Practitioner/{user}",
                purpose_of_use=[purpose],
                roles=["doctor"],
            ),
        }
        if path.startswith("Observation/for/"):  # a write: a new Observation of the patient
            patient = path.removeprefix("Observation/for/")
            body = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "audit report test"},
                "subject": {"reference": f"Patient/{patient}"},
            }
            url = f"{gateway.base_url}/Observation"
            response = await client.post(url, json=body, headers=headers)
        else:
            response = await client.get(f"{gateway.base_url}/{path}", headers=headers)
            patient = path.split("/")[1] if path.startswith("Patient/") else path.split("=")[1]
        return Sent(request_id, user, purpose, f"Patient/{patient}", path, response.status_code)

    async def burst() -> list[Sent]:
        async with httpx.AsyncClient(timeout=60.0) as client:
            calls = [
                send(client, user, purpose, path)
                for _ in range(2)
                for user, purpose in USERS
                for patient in patients
                for path in (f"Patient/{patient}", f"Observation?patient={patient}")
            ]
            calls += [send(client, user, purpose, f"Observation/for/{patients[0]}")
                      for user, purpose in USERS]  # fmt: skip
            return list(await asyncio.gather(*calls))

    sent = asyncio.run(burst())
    expected = [201 if s.path.startswith("Observation/for/") else 200 for s in sent]
    assert [s.status for s in sent] == expected, [(s.path, s.status) for s in sent]
    return sent


def _is_write(sent: Sent) -> bool:
    return sent.path.startswith("Observation/for/")


def _consentry(gateway: GatewayServer, *argv: str) -> tuple[int, str]:
    done = gateway.consentry(*argv)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout


def _key_file(gateway: GatewayServer) -> str:
    return str(gateway.ledger_key_file)


def _trust(gateway: GatewayServer) -> str:
    """The trust policy of the gateway's key (``consentry keys policy``)."""
    assert gateway.workdir is not None
    path = gateway.workdir / "audit-trust.toml"
    if not path.exists():
        status, text = _consentry(
            gateway, "keys", "policy", "--key-file", _key_file(gateway),
            "--origin", gateway.ledger_origin,
        )  # fmt: skip
        assert status == 0
        path.write_text(text)
    return str(path)


def _rows(gateway: GatewayServer, *argv: str) -> list[dict[str, Any]]:
    """``audit search ... --format ndjson`` as objects."""
    status, text = _consentry(
        gateway, "audit", "search", "--store", gateway.store_url, *argv, "--format", "ndjson"
    )
    assert status == 0
    return [json.loads(line) for line in text.splitlines() if line]


def _by_request(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Index rows by request id (a write has two: its decision and its outcome)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["request_id"], []).append(row)
    return out


def test_the_accounting_lists_every_accountable_disclosure_and_no_other(
    gateway: GatewayServer, traffic: list[Sent]
) -> None:
    patient = traffic[0].patient
    rows = _by_request(_rows(gateway))
    status, text = _consentry(
        gateway, "audit", "accounting", "--store", gateway.store_url, "--patient", patient,
        "--detail",
    )  # fmt: skip
    assert status == 0
    listed = {int(r["ledger_index"]) for r in csv.DictReader(io.StringIO(text))}
    ours = [s for s in traffic if s.patient == patient and not _is_write(s)]
    # Every read of this patient's record was one disclosure, recorded with its request id.
    assert all([r["kind"] for r in rows[s.request_id]] == [5] for s in ours)
    accountable = {rows[s.request_id][0]["index"] for s in ours if s.purpose in ACCOUNTABLE}
    exempt = {rows[s.request_id][0]["index"] for s in ours if s.purpose not in ACCOUNTABLE}
    assert accountable
    assert accountable <= listed  # every accountable disclosure present
    assert not exempt & listed  # every treatment disclosure left out
    writes = {r["index"] for s in traffic if _is_write(s) for r in rows[s.request_id]}
    assert len(writes) == 2 * len(USERS)  # each write: its decision and its outcome
    assert not writes & listed  # a write discloses nothing
    others = {r["index"] for s in traffic if s.patient != patient for r in rows[s.request_id]}
    assert others
    assert not others & listed  # no row of another patient


def test_the_access_report_shows_every_read_and_write_of_the_patient_only(
    gateway: GatewayServer, traffic: list[Sent]
) -> None:
    patient = traffic[0].patient
    rows = _by_request(_rows(gateway, "--patient", patient))
    status, text = _consentry(
        gateway, "audit", "access-report", "--store", gateway.store_url, "--patient", patient
    )
    assert status == 0
    report = {int(r["ledger_index"]): r for r in csv.DictReader(io.StringIO(text))}
    assert {r["patient"] for r in report.values()} == {patient}
    ours = [s for s in traffic if s.patient == patient]
    reads = {rows[s.request_id][0]["index"] for s in ours if not _is_write(s)}
    outcomes = {r["index"] for s in ours if _is_write(s) for r in rows[s.request_id]
                if r["kind"] == 4}  # fmt: skip
    assert reads <= set(report)
    assert {report[i]["result"] for i in reads} == {"released"}
    assert len(outcomes) == len(USERS)
    assert outcomes <= set(report)
    assert {report[i]["result"] for i in outcomes} == {"written"}
    agents = {report[i]["agent"] for i in reads | outcomes}
    assert agents == {f"Practitioner/{user}" for user, _ in USERS}


def test_the_date_range_report_holds_every_request_in_its_period(
    gateway: GatewayServer, traffic: list[Sent]
) -> None:
    everything = _rows(gateway)
    dates = sorted(
        r["date"] for r in everything if r["request_id"] in {s.request_id for s in traffic}
    )
    since, until = dates[0], dates[-1]
    patient = traffic[0].patient
    in_period = _rows(gateway, "--patient", patient, "--since", since, "--until", until)
    assert {s.request_id for s in traffic if s.patient == patient} <= {
        r["request_id"] for r in in_period
    }
    assert {r["patient"] for r in in_period} == {patient}
    assert all(since <= r["date"] <= until for r in in_period)


@pytest.mark.parametrize("report", ["accounting", "access-report"], ids=["accounting", "access"])
def test_exports_verify_and_an_edit_or_a_drop_is_found(
    gateway: GatewayServer, traffic: list[Sent], report: str, tmp_path: Path
) -> None:
    patient = traffic[0].patient
    trust = _trust(gateway)
    paths = {}
    for fmt in ("ndjson", "csv"):
        path = tmp_path / f"{report}.{fmt}"
        status, text = _consentry(
            gateway, "audit", "export", "--store", gateway.store_url, "--key-file",
            _key_file(gateway), "--report", report, "--patient", patient, "--format", fmt,
            "--out", str(path),
        )  # fmt: skip
        assert status == 0
        assert json.loads(text)["complete"] is True
        status, text = _consentry(gateway, "audit", "verify-export", str(path), "--trust", trust)
        assert (status, json.loads(text)["ok"]) == (0, True)
        paths[fmt] = path

    # A CSV cell edited: the recipient of the first row.
    text = paths["csv"].read_text()
    first, _, rest = text.partition("\n")
    records = list(csv.reader(io.StringIO(rest)))
    role, agent = records[0].index("role"), records[0].index("agent")
    edited = next(i for i, r in enumerate(records) if i and r[role] == "row")
    records[edited][agent] = "Practitioner/not-the-one"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(records)
    paths["csv"].write_text(first + "\n" + out.getvalue())
    status, text = _consentry(
        gateway, "audit", "verify-export", str(paths["csv"]), "--trust", trust
    )
    assert status == 1
    assert [f["code"] for f in json.loads(text)["findings"]] == ["edited"]

    # An NDJSON row dropped: the next leaf names it.
    lines = paths["ndjson"].read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines[1:-1], start=1) if json.loads(line)["role"] == "row")
    dropped = json.loads(lines.pop(at))["index"]
    paths["ndjson"].write_text("".join(lines))
    status, text = _consentry(
        gateway, "audit", "verify-export", str(paths["ndjson"]), "--trust", trust
    )
    assert status == 1
    findings = json.loads(text)["findings"]
    assert [f["code"] for f in findings] == ["chain-gap"]
    assert f"entry {dropped} " in findings[0]["message"]


def test_a_receipt_from_the_gateway_verifies_offline(
    gateway: GatewayServer, traffic: list[Sent], tmp_path: Path
) -> None:
    """The patient fetches the receipt of an access to its record (``/ledger/receipt``) and
    ``audit verify-export`` checks it against the trust policy; an edited leaf is found."""
    patient = traffic[0].patient
    index = _by_request(_rows(gateway, "--patient", patient))[traffic[0].request_id][0]["index"]
    token = gateway.bearer("the-patient", "patient/AuditEvent.r", patient=patient.split("/")[1])
    answer = httpx.get(f"{gateway.root_url}/ledger/receipt/{index}", headers=token, timeout=30.0)
    assert answer.status_code == 200, answer.text
    path = tmp_path / "receipt.txt"
    path.write_text(answer.text)
    trust = _trust(gateway)
    status, text = _consentry(gateway, "audit", "verify-export", str(path), "--trust", trust)
    report = json.loads(text)
    assert (status, report["kind"], report["ok"]) == (0, "receipt", True)
    head, _, rest = answer.text.partition("\nindex ")
    extra = head.split("extra ", 1)[1]
    flipped = extra[:10] + ("A" if extra[10] != "A" else "B") + extra[11:]
    path.write_text(head.replace(extra, flipped) + "\nindex " + rest)
    status, text = _consentry(gateway, "audit", "verify-export", str(path), "--trust", trust)
    assert status == 1
    assert [f["code"] for f in json.loads(text)["findings"]] == ["proof"]
