"""Three replicas on one PostgreSQL database behind HAProxy: nothing a replica holds in memory
is needed to serve the next request correctly (docs/operations.md, "Replicas").

Three ``consentry serve --workers 1`` processes share a fresh PostgreSQL database, one
settings file, one ledger key file (the data secret cursors and sessions derive from) and one
token issuer; Debian's HAProxy balances them round robin, health-checking ``/readyz``
(:mod:`tests.support.replicas`). The gateways run under the ``opt-out`` jurisdiction: without
a consent the doctor reads the record, and a patient's deny consent stops that.

What one replica does, the others honour at their very next request, asked directly and all
three through the balancer (three requests in a row, which the balancer's ``x-served-by``
header shows landing on each replica once): a consent change and its revocation, a paging
cursor, a break-the-glass session, a token revoked with ``consentry auth revoke`` on the
shared store, a Bulk Data ``$export`` job (polled and downloaded through the replicas that did
not take the kick-off). Every replica has answered the caller before the change, so a replica serving
from a warm cache would answer the old way and fail the test. The one ledger they all append
to verifies, and the balancer keeps requests away from a replica that is not ready or gone.
Marked ``integration``; a missing upstream, PostgreSQL or HAProxy fails these tests, never
skips them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import httpx
import pytest

from tests.support import GatewayServer, UpstreamServer, free_port
from tests.support.replicas import ORIGIN, PUBLIC, HAProxy, ReplicaSet, fresh_database

pytestmark = pytest.mark.integration

DR: Final = "Practitioner/dr-replicas"
REASON: Final = {"x-break-glass-reason": "unconscious patient in ED"}


class Cluster:
    """The replicas, the balancer and the database they share."""

    def __init__(self, replicas: ReplicaSet, lb: HAProxy, dsn: str) -> None:
        self.replicas, self.lb, self.dsn = replicas, lb, dsn

    @property
    def gateways(self) -> list[GatewayServer]:
        return self.replicas.gateways

    def doctor(self, *, glass: bool = False) -> dict[str, str]:
        scopes = "user/*.rs" + (" consentry/break-glass" if glass else "")
        return self.replicas.bearer("dr-replicas", scopes, fhir_user=DR)

    def patient(self, patient: str) -> dict[str, str]:
        scopes = "launch/patient patient/Consent.cruds"
        return {
            **self.replicas.bearer(f"user-{patient}", scopes, patient=patient),
            "content-type": "application/fhir+json",
        }

    def others(self, index: int) -> list[str]:
        """The FHIR bases of every replica but ``index``."""
        return [g.base_url for n, g in enumerate(self.gateways) if n != index]

    def through_balancer(self, path: str, headers: dict[str, str]) -> list[int]:
        """``GET path`` three times through HAProxy, each on a new connection; the statuses,
        after checking that each replica answered once."""
        statuses, served = [], []
        for _ in self.gateways:
            answer = httpx.get(f"{self.lb.base_url}/{path}", headers=headers, timeout=30.0)
            statuses.append(answer.status_code)
            served.append(answer.headers.get("x-served-by"))
        assert sorted(served) == self.lb.names(), served
        return statuses


@pytest.fixture(scope="module")
def cluster(
    upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("replicas")
    opt_out = ['consent_jurisdiction = "opt-out"']
    with (
        fresh_database() as dsn,
        ReplicaSet(upstream.base_url, dsn, workdir, 3, settings=opt_out) as replicas,
        HAProxy(replicas.gateways, workdir) as lb,
    ):
        yield Cluster(replicas, lb, dsn)


@pytest.fixture(scope="module")
def patients(carebundle: dict[str, list[str]]) -> list[str]:
    """Carebundle patients with at least four Observations (paging needs two pages)."""
    return [
        patient
        for patient, created in carebundle.items()
        if sum(ref.startswith("Observation/") for ref in created) >= 4
    ]


def _deny_dr(cluster: Cluster, via: str, patient: str) -> httpx.Response:
    """``patient`` records, through the replica at ``via``, a consent refusing everyone."""
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": f"Patient/{patient}"},
        "decision": "deny",
    }
    answer = httpx.post(
        f"{via}/Consent", json=consent, headers=cluster.patient(patient), timeout=30.0
    )
    assert answer.status_code == 201, answer.text
    return answer


def _reads(cluster: Cluster, bases: list[str], path: str, headers: dict[str, str]) -> list[int]:
    return [
        httpx.get(f"{base}/{path}", headers=headers, timeout=30.0).status_code for base in bases
    ]


def _reads_until(
    bases: list[str], path: str, headers: dict[str, str], status: int, seconds: float = 5.0
) -> list[int]:
    """Each replica's answer, asked again (every 20 ms, ``seconds`` at most) until it is
    ``status``: a change pushed by NOTIFY reaches a replica's list within milliseconds of the
    commit, not before the command that committed it has exited."""
    answers = []
    for base in bases:
        for _ in range(int(seconds / 0.02)):
            answer = httpx.get(f"{base}/{path}", headers=headers, timeout=30.0).status_code
            if answer == status:
                break
            time.sleep(0.02)
        answers.append(answer)
    return answers


def test_the_balancer_sends_requests_to_each_replica_in_turn(cluster: Cluster) -> None:
    assert cluster.through_balancer("metadata", {"accept": "application/fhir+json"}) == [200] * 3


def test_a_consent_change_through_one_replica_holds_on_the_next_request_through_every_other(
    cluster: Cluster, patients: list[str]
) -> None:
    """A deny recorded through replica 0 is enforced by replicas 1 and 2 (directly and through
    the balancer) at their very next request; its revocation through replica 2 reopens the
    record on replicas 0 and 1 at theirs."""
    patient = patients[0]
    read = f"Patient/{patient}"
    doctor = cluster.doctor()
    # Opt-out, no consent yet: every replica serves the record (and has it warm).
    assert _reads(cluster, [g.base_url for g in cluster.gateways], read, doctor) == [200] * 3
    assert cluster.through_balancer(read, doctor) == [200] * 3

    made = _deny_dr(cluster, cluster.gateways[0].base_url, patient)
    assert _reads(cluster, cluster.others(0), read, doctor) == [404, 404]
    assert cluster.through_balancer(read, doctor) == [404] * 3

    consent_id, etag = made.json()["id"], made.headers["etag"]
    revoked = httpx.post(
        f"{cluster.gateways[2].base_url}/Consent/{consent_id}/$revoke",
        headers={**cluster.patient(patient), "if-match": etag},
        timeout=30.0,
    )
    assert revoked.status_code == 200, revoked.text
    assert _reads(cluster, cluster.others(2), read, doctor) == [200, 200]
    assert cluster.through_balancer(read, doctor) == [200] * 3


def test_a_paging_cursor_issued_by_one_replica_is_redeemed_by_the_others(
    cluster: Cluster, patients: list[str]
) -> None:
    """The next-page link replica 1 signs is honoured by replicas 0 and 2 and through the
    balancer (the cursor key derives from the shared ledger key), for its caller only."""
    patient = patients[1]
    doctor = cluster.doctor()
    query = f"Observation?subject=Patient/{patient}&_count=2"
    first = httpx.get(f"{cluster.gateways[1].base_url}/{query}", headers=doctor, timeout=30.0)
    assert first.status_code == 200, first.text
    links = {link["relation"]: link["url"] for link in first.json().get("link", [])}
    assert links["next"].startswith(PUBLIC + "/")
    page = links["next"].removeprefix(PUBLIC + "/")
    first_ids = {e["resource"]["id"] for e in first.json()["entry"]}
    for base in cluster.others(1):
        second = httpx.get(f"{base}/{page}", headers=doctor, timeout=30.0)
        assert second.status_code == 200, second.text
        ids = {e["resource"]["id"] for e in second.json().get("entry", [])}
        assert ids
        assert not ids & first_ids
    assert cluster.through_balancer(page, doctor) == [200] * 3
    stranger = cluster.replicas.bearer("other", "user/*.rs", fhir_user="Practitioner/other")
    assert _reads(cluster, cluster.others(1), page, stranger) == [400, 400]


def test_a_break_the_glass_session_opened_on_one_replica_holds_on_the_others(
    cluster: Cluster, patients: list[str]
) -> None:
    """The patient refuses everyone; the doctor breaks the glass (with a reason) through
    replica 2; replicas 0 and 1, and all three through the balancer, honour the session at
    their next request without asking for the reason again."""
    patient = patients[2]
    read = f"Patient/{patient}"
    glass = cluster.doctor(glass=True)
    assert _reads(cluster, [g.base_url for g in cluster.gateways], read, glass) == [200] * 3
    _deny_dr(cluster, cluster.gateways[1].base_url, patient)
    assert _reads(cluster, [g.base_url for g in cluster.gateways], read, glass) == [404] * 3
    opened = httpx.get(
        f"{cluster.gateways[2].base_url}/{read}", headers={**glass, **REASON}, timeout=30.0
    )
    assert opened.status_code == 200, opened.text
    assert _reads(cluster, cluster.others(2), read, glass) == [200, 200]
    assert cluster.through_balancer(read, glass) == [200] * 3


def test_the_balancer_sends_nothing_to_a_replica_that_is_not_ready_or_stopped(
    cluster: Cluster, upstream: UpstreamServer, patients: list[str], tmp_path: Path
) -> None:
    """A balancer of its own over replicas 0 and 1 and two more on the same store: r2, whose
    upstream does not answer (alive, ``/readyz`` 503), and r3, stopped midway and not
    health-checked. r2 never gets a request (the ``/readyz`` check keeps it out); once r3 is
    stopped, every request still gets an answer from r0 or r1 (a refused connection is retried
    on another replica, HAProxy's redispatch)."""
    read = f"Patient/{patients[5]}"
    doctor = cluster.doctor()
    nowhere = f"http://127.0.0.1:{free_port()}/fhir"
    unready = GatewayServer(nowhere, args=cluster.replicas.args(), startup_timeout=60.0)
    doomed = GatewayServer(upstream.base_url, args=cluster.replicas.args(), startup_timeout=60.0)
    with unready, doomed:
        assert httpx.get(f"{unready.root_url}/readyz", timeout=30.0).status_code == 503
        four = [*cluster.gateways[:2], unready, doomed]
        with HAProxy(four, tmp_path, check_ms=200, ready=[0, 1, 3], unchecked=[3]) as lb:
            url = f"{lb.base_url}/{read}"
            time.sleep(0.6)  # three checks
            answers = [httpx.get(url, headers=doctor, timeout=30.0) for _ in range(9)]
            assert [a.status_code for a in answers] == [200] * 9
            assert {a.headers["x-served-by"] for a in answers} == {"r0", "r1", "r3"}
            doomed.stop()
            answers = [httpx.get(url, headers=doctor, timeout=30.0) for _ in range(12)]
            assert [a.status_code for a in answers] == [200] * 12
            assert {a.headers["x-served-by"] for a in answers} == {"r0", "r1"}


def _jti(headers: dict[str, str]) -> str:
    """The ``jti`` claim of the bearer token in ``headers`` (the payload, not verified)."""
    payload = headers["authorization"].removeprefix("Bearer ").split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    jti = claims["jti"]
    assert isinstance(jti, str)
    return jti


def test_a_token_revoked_on_one_replica_is_refused_by_every_replica(
    cluster: Cluster, patients: list[str]
) -> None:
    """``consentry auth revoke --jti`` run beside replica 0 on the shared store: the token,
    which every replica has just accepted (and may hold verified in its cache), is refused
    with 401 at each replica's next request, directly and through the balancer; a token of
    the same doctor that was not revoked still reads; ``--lift`` makes each accept it again."""
    read = f"Patient/{patients[4]}"
    doomed, other = cluster.doctor(), cluster.doctor()
    assert _jti(doomed) != _jti(other)
    every = [g.base_url for g in cluster.gateways]
    assert _reads(cluster, every, read, doomed) == [200] * 3
    done = cluster.replicas.consentry(
        "auth", "revoke", "--jti", _jti(doomed), "--reason", "laptop stolen",
        "--operator", "security", "--store", cluster.dsn,
        "--key-file", str(cluster.replicas.key_file),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _reads(cluster, every, read, doomed) == [401] * 3
    assert cluster.through_balancer(read, doomed) == [401] * 3
    assert _reads(cluster, every, read, other) == [200] * 3
    # lifted (a mistaken revocation): every replica accepts the token again
    lifted = cluster.replicas.consentry(
        "auth", "revoke", "--lift", "--jti", _jti(doomed), "--reason", "laptop found",
        "--operator", "security", "--store", cluster.dsn,
        "--key-file", str(cluster.replicas.key_file),
    )  # fmt: skip
    assert lifted.returncode == 0, lifted.stdout + lifted.stderr
    assert _reads_until(every, read, doomed, 200) == [200] * 3


def _leaves(dsn: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM consentry_ledger_leaves"))
        finally:
            await conn.close()

    return asyncio.run(count())


def test_the_ledger_all_three_replicas_appended_to_verifies(
    cluster: Cluster, patients: list[str], tmp_path: Path
) -> None:
    """Each replica appends to the one log (its leaf count grows at each replica's read),
    and ``consentry ledger verify`` checks every entry, proof and checkpoint signature."""
    read = f"Patient/{patients[3]}"
    for gateway in cluster.gateways:
        before = _leaves(cluster.dsn)
        answer = httpx.get(f"{gateway.base_url}/{read}", headers=cluster.doctor(), timeout=30.0)
        assert answer.status_code == 200, answer.text
        assert _leaves(cluster.dsn) > before
    policy = cluster.replicas.consentry(
        "keys", "policy", "--key-file", str(cluster.replicas.key_file), "--origin", ORIGIN
    )
    assert policy.returncode == 0, policy.stderr
    trust = tmp_path / "trust.toml"
    trust.write_text(policy.stdout, encoding="utf-8")
    done = cluster.replicas.consentry(
        "ledger", "verify", "--store", cluster.dsn, "--trust", str(trust)
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_export_kicked_off_on_one_replica_is_polled_and_downloaded_on_the_others(
    cluster: Cluster, patients: list[str]
) -> None:
    """``$export`` through replica 0; its status polled and its files downloaded through
    replicas 1 and 2 in turn (the job lives in the shared store, not in replica 0's memory),
    for its caller only; a DELETE through replica 2 forgets it on all three."""
    doctor = cluster.doctor()
    kick = httpx.get(
        f"{cluster.gateways[0].base_url}/Patient/$export",
        params={"_type": "Patient"},
        headers={**doctor, "prefer": "respond-async"},
        timeout=30.0,
    )
    assert kick.status_code == 202, kick.text
    status = kick.headers["content-location"].removeprefix(PUBLIC + "/")
    others = cluster.others(0)
    deadline, turn = time.monotonic() + 120, 0
    while True:
        answer = httpx.get(f"{others[turn % 2]}/{status}", headers=doctor, timeout=30.0)
        turn += 1
        if answer.status_code == 200:
            break
        assert answer.status_code == 202, answer.text
        assert time.monotonic() < deadline, "the export did not finish in time"
        time.sleep(0.2)
    outputs = answer.json()["output"]
    assert [item["type"] for item in outputs] == ["Patient"]
    path = outputs[0]["url"].removeprefix(PUBLIC + "/")
    files = [httpx.get(f"{base}/{path}", headers=doctor, timeout=30.0) for base in others]
    assert [f.status_code for f in files] == [200, 200]
    assert files[0].content == files[1].content
    exported = [json.loads(line)["id"] for line in files[0].text.splitlines()]
    assert len(exported) == outputs[0]["count"]
    assert patients[3] in exported  # the carebundle is there (no consent refuses the doctor)
    stranger = cluster.replicas.bearer("other", "user/*.rs", fhir_user="Practitioner/other")
    assert _reads(cluster, others, status, stranger) == [404, 404]
    gone = httpx.delete(f"{others[1]}/{status}", headers=doctor, timeout=30.0)
    assert gone.status_code == 202, gone.text
    every = [g.base_url for g in cluster.gateways]
    assert _reads(cluster, every, status, doctor) == [404] * 3
