"""Worker processes of one gateway share what the next request needs (docs/operations.md,
"Worker processes"): consent changes, paging cursors, break-the-glass sessions, AuditEvent and
patient-data bulk export jobs.

Which worker of ``consentry serve --workers N`` takes a connection is the kernel's choice, so
a test through one port could pass with every request landing on the same worker. Here the
"workers" are two serve processes on two ports, sharing what ``--workers`` shares: one store
file, one settings file (one public URL, one ledger key file, one token issuer). Gateway A is
itself ``--workers 2`` (the supervisor, whose first worker creates the ledger key file B then
reads); gateway B is ``--workers 1``. Each step goes through one named gateway, so what B does
with A's consent, cursor or session can only come from the shared store and keys (that a
session is honoured, not started again, is pinned in tests/unit/storage/test_breakglass_board.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.storage.consent_seq import ConsentSeq
from tests.support import GatewayServer, UpstreamServer

PUBLIC: Final = "http://consentry.workers.test/fhir"
ISSUER: Final = "http://consentry.workers.test/dev-issuer"
BTG_SCOPE: Final = "consentry/break-glass"
DR: Final = "Practitioner/dr-workers"
JSON: Final = {"accept": "application/fhir+json"}
ORIGIN: Final = "consentry.workers.test/fhir/ledger"


class Pair:
    """Gateways A and B of one store, and tokens both accept."""

    def __init__(
        self, a: GatewayServer, b: GatewayServer, issuer: UnsafeDevelopmentIssuer, shared: Path
    ):
        self.a, self.b, self.issuer, self.shared = a, b, issuer, shared

    def bearer(self, sub: str, scopes: str, **claims: Any) -> dict[str, str]:
        token = self.issuer.issue(sub, scopes=scopes, audience=PUBLIC, **claims)
        return {**JSON, "authorization": f"Bearer {token}"}

    def doctor(self, *, glass: bool = False) -> dict[str, str]:
        scopes = "user/*.rs" + (f" {BTG_SCOPE}" if glass else "")
        return self.bearer("dr-workers", scopes, fhir_user=DR)

    def patient(self, patient: str) -> dict[str, str]:
        scopes = "launch/patient patient/Consent.cruds"
        return self.bearer(f"user-{patient}", scopes, patient=patient)


@pytest.fixture(scope="module")
def pair(upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    shared = tmp_path_factory.mktemp("workers")
    config = shared / "consentry.toml"
    config.write_text(_settings(shared), encoding="utf-8")
    issuer = UnsafeDevelopmentIssuer.from_key_file(shared / "dev.jwk", ISSUER, enabled=True)
    common = ["--config", str(config), "--store", f"sqlite:{shared / 'consentry.db'}"]
    with (
        GatewayServer(upstream.base_url, args=[*common, "--workers", "2"]) as a,
        GatewayServer(upstream.base_url, args=[*common, "--workers", "1"]) as b,
    ):
        yield Pair(a, b, issuer, shared)


def _settings(shared: Path) -> str:
    return f"""
public_url = "{PUBLIC}"
ledger_key_file = "{shared / "ledger.key"}"
ledger_origin = "{ORIGIN}"
break_glass_minutes = 10

[auth]
dev_issuer_enabled = true
dev_issuer_url = "{ISSUER}"
dev_issuer_key_file = "{shared / "dev.jwk"}"
audiences = ["{PUBLIC}"]
break_glass_scope = "{BTG_SCOPE}"
"""


def _patients_with_observations(carebundle: dict[str, list[str]], least: int) -> list[str]:
    return [
        patient
        for patient, created in carebundle.items()
        if sum(ref.startswith("Observation/") for ref in created) >= least
    ]


def _permit_dr(gateway: GatewayServer, pair: Pair, patient: str) -> None:
    """``patient`` records, through ``gateway``, an R5 consent permitting only :data:`DR`."""
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": f"Patient/{patient}"},
        "decision": "deny",
        "provision": [{"actor": [{"reference": {"reference": DR}}]}],
    }
    answer = httpx.post(
        f"{gateway.base_url}/Consent",
        json=consent,
        headers={**pair.patient(patient), "content-type": "application/fhir+json"},
        timeout=30.0,
    )
    assert answer.status_code == 201, answer.text


def test_gateway_a_runs_two_worker_processes(pair: Pair) -> None:
    """A is served by a supervisor with two workers (what the other tests rely on)."""
    children = Path(f"/proc/{pair.a.pid}/task/{pair.a.pid}/children").read_text().split()
    workers = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(workers) == 2


def test_a_consent_recorded_through_one_worker_is_enforced_by_the_other_at_once(
    pair: Pair, carebundle: dict[str, list[str]]
) -> None:
    patient = _patients_with_observations(carebundle, 1)[0]
    read = f"Patient/{patient}"
    # Opt-in: nobody reads the record without a consent, through either gateway.
    assert httpx.get(f"{pair.b.base_url}/{read}", headers=pair.doctor()).status_code == 404
    _permit_dr(pair.a, pair, patient)
    answer = httpx.get(f"{pair.b.base_url}/{read}", headers=pair.doctor())
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == patient
    # B learnt of it through the announcements word, which holds the latest consent's mark.
    assert _announced(pair) == _latest_consent(pair) + 1


def test_a_consent_change_by_the_cli_is_enforced_by_running_gateways_at_their_next_request(
    pair: Pair, carebundle: dict[str, list[str]]
) -> None:
    """``consentry audit shred`` (another process, on the store file) erases the patient's
    consent: its marker is announced like any consent change, and both running gateways,
    whose registries were warm, refuse the next read."""
    patient = _patients_with_observations(carebundle, 1)[5]
    read = f"Patient/{patient}"
    _permit_dr(pair.b, pair, patient)
    for gateway in (pair.a, pair.b, pair.a, pair.b):
        assert httpx.get(f"{gateway.base_url}/{read}", headers=pair.doctor()).status_code == 200
    before = _announced(pair)
    done = pair.a.consentry(
        "audit", "shred", "--store", f"sqlite:{pair.shared / 'consentry.db'}",
        "--key-file", str(pair.shared / "ledger.key"), "--patient", read,
        "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _announced(pair) == _latest_consent(pair) + 1 > before
    for gateway in (pair.b, pair.a, pair.a):
        assert httpx.get(f"{gateway.base_url}/{read}", headers=pair.doctor()).status_code == 404


def test_a_gateway_that_cannot_use_the_word_reads_the_position_and_stays_exact(
    upstream: UpstreamServer, carebundle: dict[str, list[str]], tmp_path: Path
) -> None:
    """C maps ``<store>.consent-seq``; the file is then moved away and a directory put at the
    path, so D, started after, cannot use it: D reads the ledger's consent position before
    every decision and enforces C's change (announced in the moved file) at once, and
    refuses a consent change of its own (503: C, still mapping the file, would not learn of
    it) without recording it."""
    config = tmp_path / "consentry.toml"
    config.write_text(_settings(tmp_path), encoding="utf-8")
    issuer = UnsafeDevelopmentIssuer.from_key_file(tmp_path / "dev.jwk", ISSUER, enabled=True)
    common = ["--config", str(config), "--store", f"sqlite:{tmp_path / 'consentry.db'}"]
    patient = _patients_with_observations(carebundle, 1)[6]
    read = f"Patient/{patient}"
    with GatewayServer(upstream.base_url, args=[*common, "--workers", "1"]) as c:
        pair = Pair(c, c, issuer, tmp_path)
        assert httpx.get(f"{c.base_url}/{read}", headers=pair.doctor()).status_code == 404
        word = tmp_path / "consentry.db.consent-seq"
        word.rename(tmp_path / "moved")
        word.mkdir()
        with GatewayServer(upstream.base_url, args=[*common, "--workers", "1"]) as d:
            assert httpx.get(f"{d.base_url}/{read}", headers=pair.doctor()).status_code == 404
            _permit_dr(c, pair, patient)
            answer = httpx.get(f"{d.base_url}/{read}", headers=pair.doctor())
            assert answer.status_code == 200, answer.text
            refused = httpx.post(
                f"{d.base_url}/Consent",
                json={"resourceType": "Consent", "status": "active",
                      "subject": {"reference": read}, "decision": "deny"},
                headers={**pair.patient(patient), "content-type": "application/fhir+json"},
                timeout=30.0,
            )  # fmt: skip
            assert refused.status_code == 503, refused.text
            assert httpx.get(f"{c.base_url}/{read}", headers=pair.doctor()).status_code == 200


def _announced(pair: Pair) -> int:
    """The announcements word of the shared store, as another process maps it."""
    seq = ConsentSeq(pair.shared / "consentry.db")
    try:
        mark = seq.announced()
    finally:
        seq.close()
    assert mark is not None
    return mark


def _latest_consent(pair: Pair) -> int:
    with sqlite3.connect(pair.shared / "consentry.db") as db:
        (latest,) = db.execute(
            "SELECT max(idx) FROM consentry_ledger_leaves WHERE substr(leaf, 6, 1) IN (x'01', x'02')"
        ).fetchone()
    assert isinstance(latest, int)
    return latest


def test_a_paging_cursor_issued_by_one_worker_is_honoured_by_the_other(
    pair: Pair, carebundle: dict[str, list[str]]
) -> None:
    patient = _patients_with_observations(carebundle, 4)[1]
    _permit_dr(pair.b, pair, patient)
    query = f"Observation?subject=Patient/{patient}&_count=2"
    first = httpx.get(f"{pair.a.base_url}/{query}", headers=pair.doctor())
    assert first.status_code == 200, first.text
    links = {link["relation"]: link["url"] for link in first.json().get("link", [])}
    assert links["next"].startswith(PUBLIC + "/")
    cursor = dict(parse_qsl(urlsplit(links["next"]).query))["_cursor"]
    page = links["next"].replace(PUBLIC, pair.b.base_url, 1)
    second = httpx.get(page, headers=pair.doctor())
    assert second.status_code == 200, second.text
    ids = [e["resource"]["id"] for e in second.json().get("entry", [])]
    first_ids = [e["resource"]["id"] for e in first.json()["entry"]]
    assert ids
    assert not set(ids) & set(first_ids)
    # The cursor is bound to its caller on B as on A: another caller is refused.
    stranger = pair.bearer("other", "user/*.rs", fhir_user="Practitioner/other")
    refused = httpx.get(page, headers=stranger)
    assert refused.status_code == 400
    assert cursor in page


def test_a_break_the_glass_session_opened_through_one_worker_is_honoured_by_the_other(
    pair: Pair, carebundle: dict[str, list[str]]
) -> None:
    patient = _patients_with_observations(carebundle, 1)[2]
    read = f"{pair.a.base_url}/Patient/{patient}"
    plain = pair.doctor(glass=True)
    assert httpx.get(read, headers=plain).status_code == 404  # opt-in, no consent
    asked = {**plain, "x-break-glass-reason": "unconscious patient in ED"}
    assert httpx.get(read, headers=asked).status_code == 200
    answer = httpx.get(f"{pair.b.base_url}/Patient/{patient}", headers=plain)
    assert answer.status_code == 200, answer.text


def test_a_bulk_export_kicked_off_on_one_worker_is_polled_and_downloaded_on_the_other(
    pair: Pair, carebundle: dict[str, list[str]]
) -> None:
    """Each request on its own connection: status, manifest, files and DELETE of a job A
    runs are answered by B (the job's state and files are in the store's ``.exports``
    file), for the auditor who started it only."""
    patient = _patients_with_observations(carebundle, 1)[4]
    httpx.get(f"{pair.a.base_url}/Patient/{patient}", headers=pair.doctor())
    auditor = pair.bearer(
        "officer-workers", "user/AuditEvent.rs", fhir_user="Practitioner/officer-workers",
        roles=["ledger-auditor"],
    )  # fmt: skip
    kick = httpx.get(
        f"{pair.a.base_url}/AuditEvent/$export",
        headers={**auditor, "prefer": "respond-async"},
        timeout=30.0,
    )
    assert kick.status_code == 202, kick.text
    status = kick.headers["content-location"].replace(PUBLIC, pair.b.base_url, 1)
    deadline = time.monotonic() + 60
    got = httpx.get(status, headers=auditor, timeout=30.0)
    while got.status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.2)
        got = httpx.get(status, headers=auditor, timeout=30.0)
    assert got.status_code == 200, got.text
    outputs = got.json()["output"]
    assert outputs
    lines: list[str] = []
    for output in outputs:
        url = output["url"].replace(PUBLIC, pair.b.base_url, 1)
        answer = httpx.get(url, headers=auditor, timeout=30.0)
        assert answer.status_code == 200, answer.text
        assert len(answer.text.splitlines()) == output["count"]
        lines += answer.text.splitlines()
    assert all(json.loads(line)["resourceType"] == "AuditEvent" for line in lines)
    assert patient in "\n".join(lines)
    # Another auditor gets the 404 of an unknown job, on either gateway.
    other = pair.bearer(
        "officer-other", "user/AuditEvent.rs", fhir_user="Practitioner/officer-other",
        roles=["ledger-auditor"],
    )  # fmt: skip
    assert httpx.get(status, headers=other, timeout=30.0).status_code == 404
    # DELETE through B forgets the job for A too.
    assert httpx.delete(status, headers=auditor, timeout=30.0).status_code == 202
    on_a = status.replace(pair.b.base_url, pair.a.base_url, 1)
    assert httpx.get(on_a, headers=auditor, timeout=30.0).status_code == 404


def test_a_patient_data_export_kicked_off_on_one_worker_is_served_by_the_other(
    pair: Pair, carebundle: dict[str, list[str]]
) -> None:
    """``Patient/$export`` started on A: status, files and DELETE answered by B (the job is
    on the store's ``.patient-exports`` board), each file judged again by B. Under opt-in,
    the patient who permits the exporting clinician is in it; one who permits nobody is not."""
    patient = _patients_with_observations(carebundle, 1)[7]
    _permit_dr(pair.a, pair, patient)
    silent = _patients_with_observations(carebundle, 1)[8]  # no consent: opt-in denies
    doctor = pair.bearer("dr-workers", "user/*.rs", fhir_user=DR, purpose_of_use=["HTEST"])
    kick = httpx.get(
        f"{pair.a.base_url}/Patient/$export",
        params={"_type": "Patient,Observation"},
        headers={**doctor, "prefer": "respond-async"},
        timeout=30.0,
    )
    assert kick.status_code == 202, kick.text
    status = kick.headers["content-location"].replace(PUBLIC, pair.b.base_url, 1)
    assert "/$export-status/" in status
    deadline = time.monotonic() + 60
    got = httpx.get(status, headers=doctor, timeout=30.0)
    while got.status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.2)
        got = httpx.get(status, headers=doctor, timeout=30.0)
    assert got.status_code == 200, got.text
    text = ""
    for output in got.json()["output"]:
        answer = httpx.get(
            output["url"].replace(PUBLIC, pair.b.base_url, 1), headers=doctor, timeout=30.0
        )
        assert answer.status_code == 200, answer.text
        text += answer.text
    assert f'"id":"{patient}"' in text
    assert f"Patient/{patient}" in text  # its Observations
    assert silent not in text
    assert httpx.delete(status, headers=doctor, timeout=30.0).status_code == 202
    on_a = status.replace(pair.b.base_url, pair.a.base_url, 1)
    assert httpx.get(on_a, headers=doctor, timeout=30.0).status_code == 404


def test_the_ledger_both_gateways_appended_to_verifies_offline(
    pair: Pair, carebundle: dict[str, list[str]], tmp_path: Path
) -> None:
    """Entries appended by several processes to one file form one log whose every entry,
    proof and checkpoint signature verifies (``consentry ledger verify``)."""
    patient = _patients_with_observations(carebundle, 1)[3]
    for gateway in (pair.a, pair.b, pair.a, pair.b):
        httpx.get(f"{gateway.base_url}/Patient/{patient}", headers=pair.doctor())
    policy = pair.a.consentry(
        "keys", "policy", "--key-file", str(pair.shared / "ledger.key"), "--origin", ORIGIN
    )
    assert policy.returncode == 0, policy.stderr
    trust = tmp_path / "trust.toml"
    trust.write_text(policy.stdout, encoding="utf-8")
    store = f"sqlite:{pair.shared / 'consentry.db'}"
    done = pair.a.consentry("ledger", "verify", "--store", store, "--trust", str(trust))
    assert done.returncode == 0, done.stdout + done.stderr
