"""End to end: a gateway (``consentry serve``) configured with two real witnesses
(``consentry witness serve``) and a quorum of 2 publishes, after traffic, a checkpoint both
witnesses cosigned; ``consentry ledger verify`` with a trust policy requiring that quorum
accepts its store against it (and refuses the log's own, uncosigned checkpoint), and
``consentry audit verify-export`` accepts the verifiable accounting the gateway serves (made
against the witnessed checkpoint), a receipt, and the file ``consentry audit export
--checkpoint`` makes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.keyfile import generate_ledger_key
from middleware.ledger.note import parse_note
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy
from tests.support import GatewayServer, UpstreamServer
from tests.support.witnesses import WitnessServer

ORIGIN = "consentry.test/fhir/ledger"  # GatewayServer.ledger_origin
PUBLISH_TIMEOUT = 30.0


@pytest.fixture
def gateway(
    upstream: UpstreamServer, tmp_path: Path
) -> Iterator[tuple[GatewayServer, TrustPolicy]]:
    """The gateway with its key made beforehand (the witnesses must know the log's key),
    two witnesses and ``witness_quorum = 2``; and the verifier's policy for that."""
    key_file = tmp_path / "ledger.key"
    ledger_key = _generate_key(key_file)
    with (
        WitnessServer("w1.test", {ORIGIN: ledger_key}) as w1,
        WitnessServer("w2.test", {ORIGIN: ledger_key}) as w2,
        GatewayServer(
            upstream.base_url,
            store="sqlite:consentry.db",
            consent_jurisdiction="opt-out",
            settings={"ledger_key_file": str(key_file)},
            env={
                "CONSENTRY_WITNESSES": json.dumps([w1.setting(), w2.setting()]),
                "CONSENTRY_WITNESS_QUORUM": "2",
                "CONSENTRY_ACCESS_LOG": "0",
            },
        ) as server,
    ):
        policy = TrustPolicy(ORIGIN, (TrustedKey(ledger_key),), (w1.trusted, w2.trusted), 2)
        yield server, policy


def test_the_published_checkpoint_carries_two_cosignatures_and_verifies_with_quorum_2(
    gateway: tuple[GatewayServer, TrustPolicy], tmp_path: Path
) -> None:
    server, policy = gateway
    with httpx.Client(timeout=30.0) as client:
        headers = {**server.system_bearer(), "accept": "application/fhir+json"}
        made = client.post(
            f"{server.base_url}/Patient",
            json={"resourceType": "Patient", "name": [{"family": "Witnessed"}]},
            headers={**headers, "content-type": "application/fhir+json"},
        )
        assert made.status_code == 201, made.text
        patient = f"Patient/{made.json()['id']}"
        for _ in range(3):  # traffic: audited reads (disclosures), each a ledger entry
            assert client.get(f"{server.base_url}/{patient}", headers=headers).status_code == 200
        size = _latest_size(client, server)
        assert size > 0
        note = _published(client, server, size)
    signed = parse_note(note)
    names = [s.name for s in signed.signatures]
    assert names[0] == ORIGIN  # the log's signature first, then the two cosignatures
    assert sorted(names[1:]) == ["w1.test", "w2.test"]

    trust = tmp_path / "trust.toml"
    trust.write_text(format_policy(policy), encoding="utf-8")
    witnessed = tmp_path / "witnessed.note"
    witnessed.write_text(note, encoding="utf-8")
    report = _verify(server, trust, witnessed)
    assert report["ok"], report["findings"]
    assert report["remembered"] == parse_checkpoint(signed.text).size

    # The log's own checkpoint (what /ledger/proof answers carry) is not witnessed.
    with httpx.Client(timeout=30.0) as client:
        plain = client.get(f"{server.root_url}/ledger/proof/consistency?from=0").json()
    witnessed.write_text(plain["checkpoint"], encoding="utf-8")
    report = _verify(server, trust, witnessed)
    assert not report["ok"]
    assert {f["code"] for f in report["findings"]} == {"witness-quorum"}

    # The verifiable accounting the gateway serves is made against the witnessed checkpoint.
    auditor = server.bearer(
        "auditor", "user/AuditEvent.rs", fhir_user="Practitioner/auditor", roles=["ledger-auditor"]
    )
    with httpx.Client(timeout=60.0) as client:
        got = client.get(
            f"{server.base_url}/{patient}/$accounting",
            params={"_format": "csv", "_proofs": "true"},
            headers=auditor,
        )
    assert got.status_code == 200, got.text
    served = tmp_path / "accounting.csv"
    served.write_bytes(got.content)
    done = server.consentry("audit", "verify-export", str(served), "--trust", str(trust))
    verdict = json.loads(done.stdout)
    assert (done.returncode, verdict["ok"]) == (0, True), done.stdout
    assert verdict["rows"] > 0
    # A receipt for an entry the witnessed checkpoint covers carries it, cosignatures included.
    with httpx.Client(timeout=30.0) as client:
        got = client.get(f"{server.root_url}/ledger/receipt/1", headers=auditor)
    assert got.status_code == 200, got.text
    receipt = tmp_path / "receipt.txt"
    receipt.write_bytes(got.content)
    done = server.consentry("audit", "verify-export", str(receipt), "--trust", str(trust))
    assert (done.returncode, json.loads(done.stdout)["ok"]) == (0, True), done.stdout

    # So is the file the command makes against the witnessed checkpoint (--checkpoint).
    (tmp_path / "cosigned.note").write_text(note, encoding="utf-8")
    exported = tmp_path / "accounting.ndjson"
    done = server.consentry(
        "audit", "export", "--store", server.store_url, "--key-file", str(tmp_path / "ledger.key"),
        "--report", "accounting", "--patient", patient, "--format", "ndjson", "--out", str(exported),
        "--checkpoint", str(tmp_path / "cosigned.note"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = server.consentry("audit", "verify-export", str(exported), "--trust", str(trust))
    assert (done.returncode, json.loads(done.stdout)["rows"]) == (0, verdict["rows"]), done.stdout
    without = TrustPolicy(ORIGIN, policy.keys, policy.witnesses, 0)
    trust.write_text(format_policy(without), encoding="utf-8")  # the same file verifies
    assert (
        server.consentry("audit", "verify-export", str(served), "--trust", str(trust)).returncode
        == 0
    )


def _generate_key(key_file: Path) -> str:
    """A key file for the gateway's origin (as ``consentry keys generate`` writes it); the
    log's verifier key."""
    return generate_ledger_key(key_file, ORIGIN).key.vkey()


def _latest_size(client: httpx.Client, server: GatewayServer) -> int:
    answer = client.get(f"{server.root_url}/ledger/proof/consistency?from=0")
    assert answer.status_code == 200, answer.text
    size: int = answer.json()["to"]
    return size


def _published(client: httpx.Client, server: GatewayServer, size: int) -> str:
    """The published checkpoint once it covers ``size`` (the witnessing task runs each second)."""
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    while True:
        answer = client.get(f"{server.root_url}/ledger/checkpoint")
        if answer.status_code == 200:
            note = answer.text
            if parse_checkpoint(parse_note(note).text).size >= size:
                return note
        else:
            assert answer.status_code == 503, answer.text  # no quorum yet
        assert time.monotonic() < deadline, f"nothing witnessed at {size}: {server.log_tail()}"
        time.sleep(0.2)


def _verify(server: GatewayServer, trust: Path, remembered: Path) -> dict[str, Any]:
    done = server.consentry(
        "ledger", "verify", "--store", server.store_url, "--trust", str(trust),
        "--remember", str(remembered),
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report
