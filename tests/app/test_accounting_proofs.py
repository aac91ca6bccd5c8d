"""``Patient/<id>/$accounting?_proofs=true``: the accounting of disclosures as the verifiable
export ``consentry audit export --report accounting`` writes. The attack it guards: the
openings in the file hand out entry keys, so a patient (or any non-auditor) asking for it is
refused before anything is read; and the file an auditor gets must verify offline against the
gateway's trust policy, naming the accountable disclosure only."""

from __future__ import annotations

import json

import httpx
import pytest

from middleware.audit.cli_reports import facts_opener
from middleware.audit.verify_export import verify_file
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import SigningKey
from middleware.ledger.trust import TrustedKey, TrustPolicy
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app import test_audit_http_export as base
from tests.app.consenting import Tokens
from tests.app.test_audit_http_export import auditor, traffic

client = base.client  # the same gateway fixture as the other $accounting tests
URL = "/fhir/Patient/{}/$accounting"


def _policy(signer: SigningKey) -> TrustPolicy:
    return TrustPolicy("gateway.test/fhir/ledger", (TrustedKey(signer.vkey()),))


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
async def test_the_auditor_gets_an_export_that_verifies(
    client: httpx.AsyncClient, tokens: Tokens, signer: SigningKey, store: MemoryLogStore, fmt: str
) -> None:
    await traffic(client, tokens)
    before = await store.size()
    got = await client.get(
        URL.format("p1"), params={"_format": fmt, "_proofs": "true"}, headers=auditor(tokens)
    )
    assert got.status_code == 200, got.text
    assert got.headers["cache-control"] == "no-store"
    # the download is recorded like every read of the audit trail, naming the patient
    (leaf,) = [decode_leaf(raw) for raw in await store.leaves(before, await store.size())]
    assert leaf.kind == EntryKind.ACCESS_DECISION
    first = got.text.splitlines()[0]
    assert "consentry-audit-export/v1" in first
    report = verify_file(got.text.splitlines(True), _policy(signer), opener=facts_opener)
    assert report.ok, json.dumps(report.to_json())
    assert "dr-research" in got.text  # the accountable research read, proven
    assert "dr-treat" not in got.text  # treatment is exempt from the accounting
    assert "Patient/p2" not in got.text


async def test_an_unknown_patient_gets_an_empty_valid_export(
    client: httpx.AsyncClient, tokens: Tokens, signer: SigningKey
) -> None:
    """As the CLI writes it: a header saying no entry names the patient, no rows; the
    verifier's only finding is that nothing in a file can prove that (as for the CLI's)."""
    await traffic(client, tokens)
    got = await client.get(
        URL.format("nobody"), params={"_format": "csv", "_proofs": "true"},
        headers=auditor(tokens),
    )  # fmt: skip
    assert got.status_code == 200, got.text
    report = verify_file(got.text.splitlines(True), _policy(signer), opener=facts_opener)
    verdict = report.to_json()
    assert [f["code"] for f in verdict["findings"]] == ["chain-none-unproven"]
    assert verdict["lines"] == 0
    assert "dr-research" not in got.text


async def test_a_patient_may_not_have_the_openings(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    """The patient may read its own accounting, but not the file of entry keys."""
    await traffic(client, tokens)
    own = tokens.patient("p1", "patient/AuditEvent.r")
    plain = await client.get(URL.format("p1"), params={"_format": "csv"}, headers=own)
    assert plain.status_code == 200
    got = await client.get(
        URL.format("p1"), params={"_format": "csv", "_proofs": "true"}, headers=own
    )
    assert got.status_code == 403
    assert "consentry-audit-export" not in got.text


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"_format": "pdf", "_proofs": "true"}, 406),
        ({"_format": "json", "_proofs": "true"}, 406),
        ({"_format": "csv", "_proofs": "yes"}, 400),
    ],
)
async def test_proofs_take_csv_or_ndjson_and_true_or_false(
    client: httpx.AsyncClient, tokens: Tokens, params: dict[str, str], status: int
) -> None:
    got = await client.get(URL.format("p1"), params=params, headers=auditor(tokens))
    assert got.status_code == status, got.text


async def test_beyond_the_row_cap_is_too_costly(
    client: httpx.AsyncClient, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request may not make the gateway prove (and hold in memory) an unbounded export:
    past the cap it is 422 too-costly, an OperationOutcome, not a 500."""
    await traffic(client, tokens)
    monkeypatch.setattr("middleware.audit.report_http.MAX_REPORT_ROWS", 0)
    got = await client.get(
        URL.format("p1"), params={"_format": "csv", "_proofs": "true"}, headers=auditor(tokens)
    )
    assert got.status_code == 422, got.text
    assert got.json()["issue"][0]["code"] == "too-costly"
