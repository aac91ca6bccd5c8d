"""Privacy of the /ledger API: anybody can verify the log, nobody anonymous can follow a patient.

The attack: every leaf carries the patient's stable pseudonym, a microsecond time and the kind
(consent, consent-revoke, disclosure, break-the-glass). Served to anyone, whoever links one
entry to a person (a receipt seen over a shoulder, a visit at a known minute) reads that
person's whole history by its pseudonym. The public answers must carry only what a verifier
needs (signed checkpoints, consistency and inclusion proofs, all hashes); leaf contents go to
an auditor, and a patient's receipt to the patient it is about (and to the consent
administrator for consent entries).
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind, decode_leaf
from middleware.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from middleware.ledger.receipt import check_receipt, parse_receipt
from middleware.ledger.signing import SigningKey, verify_checkpoint
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings, r5_consent

ORIGIN = "gateway.test/fhir/ledger"


@pytest.fixture
def tokens(dev_key_file: Path) -> Tokens:
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
async def app(make_app: Callable[..., Gateway], dev_key_file: Path) -> AsyncIterator[Gateway]:
    made = make_app(auth=auth_settings(dev_key_file))
    yield made
    await made.aclose()


@pytest.fixture
async def http(app: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c


def auditor(tokens: Tokens, scopes: str = "user/AuditEvent.rs", **claims: Any) -> dict[str, str]:
    claims.setdefault("roles", ["ledger-auditor"])
    return tokens.bearer("auditor", scopes, fhir_user="Practitioner/auditor", **claims)


class History:
    """p1's life on the ledger: a consent (its receipt URL as the consent API answered it),
    its revocation, then a break-the-glass disclosure about p1 and one entry of p2 (the
    consent API's own attempt entries sit between them)."""

    def __init__(
        self, consent: int, receipt: str, revoke: int, disclosure: int, other: int
    ) -> None:
        self.consent, self.receipt, self.revoke = consent, receipt, revoke
        self.disclosure, self.other = disclosure, other


@pytest.fixture
async def history(app: Gateway, http: httpx.AsyncClient, tokens: Tokens) -> History:
    p1 = tokens.patient("p1")
    created = await http.post("/fhir/Consent", json=r5_consent(), headers=p1)
    assert created.status_code == 201, created.text
    consent = int(created.headers["x-consentry-ledger-index"])
    receipt = created.headers["x-consentry-ledger-receipt"]
    revoked = await http.post(f"/fhir/Consent/{created.json()['id']}/$revoke", headers=p1)
    assert revoked.status_code == 200, revoked.text
    revoke = int(revoked.headers["x-consentry-ledger-index"])
    assert app.consent is not None
    store = await app.consent.service.store()
    pseudonym = await store.pseudonym("Patient/p1")
    assert pseudonym is not None
    flags = EntryFlag.PERMIT | EntryFlag.BREAK_THE_GLASS
    disclosure = await app.ledger.append(
        NewEntry.create(
            EntryKind.DISCLOSURE, b"{}", recorded_us=_now(), pseudonym=pseudonym, flags=flags
        )
    )
    p2 = await store.pseudonym_for("Patient/p2", bytes(range(1, 17)))
    other = NewEntry.create(EntryKind.DISCLOSURE, b"{}", recorded_us=_now(), pseudonym=p2)
    return History(consent, receipt, revoke, disclosure, await app.ledger.append(other))


def _now() -> int:
    return time.time_ns() // 1000


async def _size(http: httpx.AsyncClient) -> int:
    note = (await http.get("/ledger/checkpoint")).text
    return int(note.split("\n")[1])


# --- the attack: an anonymous caller ---------------------------------------------------------


async def test_an_anonymous_caller_cannot_list_leaves_or_follow_a_pseudonym(
    http: httpx.AsyncClient, store: MemoryLogStore, history: History
) -> None:
    """Was: ``/ledger/entries`` and ``/ledger/receipt/{i}`` served anyone every leaf, so the
    pseudonym of p1's consent led to p1's revocation and break-the-glass disclosure. Now the
    listing and every receipt are 401 without a token, and no public answer about any entry
    (checkpoint, inclusion and consistency proofs) carries a leaf, a pseudonym or a time."""
    size = await _size(http)
    assert size == history.other + 1
    listing = await http.get("/ledger/entries", params={"start": 0})
    assert listing.status_code == 401
    assert listing.headers["www-authenticate"] == "Bearer"
    assert "entries" not in listing.json()
    answers = [listing.content]
    for index in range(size):
        receipt = await http.get(f"/ledger/receipt/{index}")
        assert receipt.status_code == 401, index
        inclusion = await http.get("/ledger/proof/inclusion", params={"index": index})
        assert inclusion.status_code == 200
        assert set(inclusion.json()) == {"index", "size", "leaf_hash", "hashes", "checkpoint"}
        consistency = await http.get("/ledger/proof/consistency", params={"from": index})
        assert consistency.status_code == 200
        answers += [receipt.content, inclusion.content, consistency.content]
    answers.append((await http.get("/ledger/checkpoint")).content)
    public = b"\n".join(answers)
    for raw in await store.leaves(0, size):
        leaf = decode_leaf(raw)
        secrets = [raw, base64.b64encode(raw), str(leaf.recorded_us).encode()]
        if leaf.pseudonym is not None:
            pseudonym = leaf.pseudonym
            secrets += [pseudonym, pseudonym.hex().encode(), base64.b64encode(pseudonym)]
        for secret in secrets:
            assert secret not in public


async def test_a_token_that_does_not_verify_reads_no_leaf(
    http: httpx.AsyncClient, history: History
) -> None:
    forged = {"authorization": "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln"}
    for path in ("/ledger/entries?start=0", f"/ledger/receipt/{history.consent}"):
        response = await http.get(path, headers=forged)
        assert response.status_code == 401, path
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


# --- what a verifier still does anonymously --------------------------------------------------


async def test_a_verifier_checks_checkpoints_and_consistency_anonymously(
    http: httpx.AsyncClient, signer: SigningKey, history: History
) -> None:
    """Every signed checkpoint verifies with the log's key, and each is consistent with the
    latest (RFC 9162 §2.1.4), with no token at all."""
    size = await _size(http)
    roots = {}
    for n in range(1, size + 1):
        answer = await http.get("/ledger/proof/consistency", params={"from": 0, "to": n})
        if answer.status_code == 404:  # a size inside a batch: never signed
            continue
        note = answer.json()["checkpoint"]
        roots[n] = verify_checkpoint(note, [signer.verifier()], origin=ORIGIN).root_hash
    assert len(roots) >= 4
    assert size in roots
    for old, root in roots.items():
        body = (await http.get("/ledger/proof/consistency", params={"from": old})).json()
        hashes = [base64.b64decode(h) for h in body["hashes"]]
        verify_consistency(old, size, root, roots[size], hashes)


async def test_a_patient_checks_their_receipt_with_the_anonymous_inclusion_proof(
    http: httpx.AsyncClient, tokens: Tokens, signer: SigningKey, history: History
) -> None:
    """The patient keeps the receipt the consent API pointed them to (read with their own
    token, against the first checkpoint covering it); later, anyone holding that leaf checks
    it against the newest checkpoint with the public inclusion proof, which needs no token."""
    p1 = tokens.patient("p1")
    for size in range(history.consent + 1, await _size(http) + 1):
        response = await http.get(history.receipt, params={"size": size}, headers=p1)
        if response.status_code != 404:  # the first signed size that holds the entry
            break
    assert response.status_code == 200, response.text
    proof = parse_receipt(response.text)
    assert proof.index == history.consent
    assert proof.extra is not None
    checkpoint = verify_checkpoint(proof.checkpoint, [signer.verifier()], origin=ORIGIN)
    check_receipt(proof, proof.extra, checkpoint)
    assert decode_leaf(proof.extra).kind == EntryKind.CONSENT

    later = (await http.get("/ledger/proof/inclusion", params={"index": proof.index})).json()
    signed = verify_checkpoint(later["checkpoint"], [signer.verifier()], origin=ORIGIN)
    assert signed.size > checkpoint.size
    hashes = [base64.b64decode(h) for h in later["hashes"]]
    verify_inclusion(leaf_hash(proof.extra), proof.index, signed.size, hashes, signed.root_hash)


# --- who reads leaf contents -----------------------------------------------------------------


async def test_an_auditor_token_reads_every_leaf_and_receipt(
    http: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore, history: History
) -> None:
    size = await _size(http)
    body = (await http.get("/ledger/entries?start=0", headers=auditor(tokens))).json()
    leaves = await store.leaves(0, size)
    assert [base64.b64decode(e["leaf"]) for e in body["entries"]] == leaves
    kinds = {e["index"]: e["kind"] for e in body["entries"]}
    assert kinds[history.consent] == "consent"
    assert kinds[history.revoke] == "consent-revoke"
    assert kinds[history.disclosure] == kinds[history.other] == "disclosure"
    for index in range(size):
        receipt = await http.get(f"/ledger/receipt/{index}", headers=auditor(tokens))
        assert receipt.status_code == 200
        assert parse_receipt(receipt.text).extra == leaves[index]


@pytest.mark.parametrize(
    ("who", "path", "status"),
    [
        # the patient: their own consent entries with Consent.r, all of theirs with AuditEvent.r
        ("p1", "consent", 200),
        ("p1", "revoke", 200),
        ("p1", "disclosure", 403),
        ("p1-audit", "disclosure", 200),
        ("p1-audit", "other", 403),
        ("p1", "listing", 403),
        ("p1-audit", "listing", 403),
        # another patient reads none of p1's, even with AuditEvent.r
        ("p2", "consent", 403),
        ("p2-audit", "disclosure", 403),
        # a patient with no entry yet has no pseudonym: reads nothing
        ("p3-audit", "other", 403),
        # the consent administrator: consent entries only, no listing
        ("admin", "consent", 200),
        ("admin", "disclosure", 403),
        ("admin", "listing", 403),
        # the auditor role needs the scope as well, and the scope the role
        ("role-without-scope", "listing", 403),
        ("scope-without-role", "listing", 403),
        ("ehr-backend", "other", 403),
        ("auditor", "listing", 200),
    ],
    ids=str,
)
async def test_who_reads_which_leaf(
    http: httpx.AsyncClient, tokens: Tokens, history: History, who: str, path: str, status: int
) -> None:
    callers = {
        "p1": tokens.patient("p1"),
        "p1-audit": tokens.patient("p1", "patient/Consent.r patient/AuditEvent.r"),
        "p2": tokens.patient("p2"),
        "p2-audit": tokens.patient("p2", "patient/AuditEvent.r"),
        "p3-audit": tokens.patient("p3", "patient/AuditEvent.r"),
        "admin": tokens.admin(),
        "role-without-scope": auditor(tokens, "user/Consent.r"),
        "scope-without-role": auditor(tokens, roles=[]),
        "ehr-backend": tokens.bearer("ehr", "system/*.cruds"),
        "auditor": auditor(tokens),
    }
    paths = {
        "consent": f"/ledger/receipt/{history.consent}",
        "revoke": f"/ledger/receipt/{history.revoke}",
        "disclosure": f"/ledger/receipt/{history.disclosure}",
        "other": f"/ledger/receipt/{history.other}",
        "listing": "/ledger/entries?start=0",
    }
    response = await http.get(paths[path], headers=callers[who])
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["resourceType"] == "OperationOutcome"


async def test_a_configured_auditor_role_replaces_the_default(
    make_app: Callable[..., Gateway], dev_key_file: Path, tokens: Tokens
) -> None:
    app = make_app(auth=auth_settings(dev_key_file), ledger_auditor_role="privacy-officer")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
        await app.ledger.append(NewEntry.create(EntryKind.ADMIN, b"{}", recorded_us=_now()))
        default = await http.get("/ledger/entries?start=0", headers=auditor(tokens))
        assert default.status_code == 403
        officer = auditor(tokens, roles=["privacy-officer"])
        configured = await http.get("/ledger/entries?start=0", headers=officer)
        assert configured.status_code == 200
        assert len(configured.json()["entries"]) == 1
    await app.aclose()
