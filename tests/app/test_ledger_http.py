"""The /ledger API through the gateway: every proof it serves verifies with the published key,
every bad request is an OperationOutcome, and an unavailable or inconsistent ledger is 503.
Who may read leaf contents is pinned in ``test_ledger_privacy``; here the leaves are read with
an auditor's token."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind, decode_leaf
from middleware.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from middleware.ledger.receipt import TLOG_PROOF_HEADER, check_receipt, parse_receipt
from middleware.ledger.signing import SigningKey, verify_checkpoint
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_memory import MemoryLog, MemoryLogStore
from tests.app.consenting import AUDIENCE, DEV_ISSUER, auth_settings
from tests.contract.helpers import entry

ORIGIN = "gateway.test/fhir/ledger"  # settings.checkpoint_origin of the test gateway
ENTRIES = 7
PSEUDONYM = bytes(range(1, 17))


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


async def _append(app: Gateway, count: int, start: int = 0) -> None:
    """``count`` entries, one batch (and so one checkpoint) each."""
    for n in range(start, start + count):
        entry = NewEntry.create(
            EntryKind.ACCESS_DECISION,
            f"evidence {n}".encode(),
            recorded_us=n,
            pseudonym=PSEUDONYM if n % 2 else None,
            flags=EntryFlag.PERMIT,
        )
        await app.ledger.append(entry)


@pytest.fixture
async def app(make_app: Callable[..., Gateway], dev_key_file: Path) -> AsyncIterator[Gateway]:
    made = make_app(auth=auth_settings(dev_key_file))
    await _append(made, ENTRIES)
    yield made
    await made.aclose()


@pytest.fixture
async def ledger(app: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """An anonymous client: what it is served, anybody is."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c


@pytest.fixture
async def auditor(app: Gateway, dev_key_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a ledger auditor's token (role and ``user/AuditEvent.rs``)."""
    issuer = UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True)
    token = issuer.issue(
        "auditor", scopes="user/AuditEvent.rs", audience=AUDIENCE, roles=["ledger-auditor"]
    )
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway.test", headers=headers
    ) as c:
        yield c


def _checkpoint(note: str, signer: SigningKey) -> tuple[int, bytes]:
    checkpoint = verify_checkpoint(note, [signer.verifier()], origin=ORIGIN)
    return checkpoint.size, checkpoint.root_hash


# --- what a client verifies ------------------------------------------------------------------


async def test_checkpoint_is_the_latest_signed_note(
    ledger: httpx.AsyncClient, signer: SigningKey
) -> None:
    response = await ledger.get("/ledger/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    size, _ = _checkpoint(response.text, signer)
    assert size == ENTRIES


@pytest.mark.parametrize("size", [None, 1, 4, ENTRIES], ids=["latest", "1", "4", "7"])
async def test_every_inclusion_proof_verifies_against_its_signed_checkpoint(
    ledger: httpx.AsyncClient, store: MemoryLogStore, signer: SigningKey, size: int | None
) -> None:
    """Anonymously: the proof is hashes only; the holder of the leaf (here read from the
    store) checks it against the signed root."""
    tree_size = ENTRIES if size is None else size
    leaves = await store.leaves(0, tree_size)
    for index in range(tree_size):
        query = {"index": index} if size is None else {"index": index, "size": size}
        body = (await ledger.get("/ledger/proof/inclusion", params=query)).json()
        signed_size, root = _checkpoint(body["checkpoint"], signer)
        assert (body["index"], body["size"], signed_size) == (index, tree_size, tree_size)
        leaf = leaves[index]
        assert _b64(body["leaf_hash"]) == leaf_hash(leaf)
        hashes = [_b64(h) for h in body["hashes"]]
        verify_inclusion(leaf_hash(leaf), index, tree_size, hashes, root)


async def test_every_consistency_proof_verifies_between_signed_checkpoints(
    ledger: httpx.AsyncClient, signer: SigningKey
) -> None:
    roots = {}
    for size in range(ENTRIES + 1):
        body = (
            await ledger.get("/ledger/proof/consistency", params={"from": 0, "to": size})
        ).json()
        roots[size] = _checkpoint(body["checkpoint"], signer)[1]
    for old in range(ENTRIES + 1):
        for new in range(old, ENTRIES + 1):
            query = {"from": old, "to": new}
            body = (await ledger.get("/ledger/proof/consistency", params=query)).json()
            assert (body["from"], body["to"]) == (old, new)
            hashes = [_b64(h) for h in body["hashes"]]
            verify_consistency(old, new, roots[old], roots[new], hashes)


async def test_receipt_is_a_c2sp_tlog_proof_that_verifies(
    auditor: httpx.AsyncClient, signer: SigningKey
) -> None:
    for index in range(ENTRIES):
        response = await auditor.get(f"/ledger/receipt/{index}")
        assert response.status_code == 200
        assert response.text.startswith(f"{TLOG_PROOF_HEADER}\nextra ")
        proof = parse_receipt(response.text)
        assert proof.index == index
        assert proof.extra is not None
        checkpoint = verify_checkpoint(proof.checkpoint, [signer.verifier()], origin=ORIGIN)
        check_receipt(proof, proof.extra, checkpoint)


async def test_entries_are_the_phi_free_leaves_decoded(auditor: httpx.AsyncClient) -> None:
    body = (await auditor.get("/ledger/entries", params={"start": 2, "end": 5})).json()
    assert (body["start"], body["end"], body["size"]) == (2, 5, ENTRIES)
    assert [e["index"] for e in body["entries"]] == [2, 3, 4]
    for item in body["entries"]:
        leaf = decode_leaf(_b64(item["leaf"]))
        assert item["kind"] == "access-decision"
        assert item["recorded_us"] == item["index"]
        assert item["pseudonym"] == (PSEUDONYM.hex() if item["index"] % 2 else None)
        assert _b64(item["commitment"]) == leaf.commitment
    assert b"evidence" not in (await auditor.get("/ledger/entries?start=0")).content


async def test_entries_end_is_clamped_to_the_signed_size(auditor: httpx.AsyncClient) -> None:
    body = (await auditor.get("/ledger/entries", params={"start": 5, "end": 10**9})).json()
    assert body["end"] == ENTRIES
    assert len(body["entries"]) == 2
    empty = (await auditor.get("/ledger/entries", params={"start": ENTRIES})).json()
    assert empty["entries"] == []


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        # missing or malformed parameters: 400
        ("GET", "/ledger/proof/inclusion", 400),
        ("GET", "/ledger/proof/inclusion?index=abc", 400),
        ("GET", "/ledger/proof/inclusion?index=-1", 400),
        ("GET", "/ledger/proof/inclusion?index=01", 400),
        ("GET", "/ledger/proof/inclusion?index=%2B1", 400),
        ("GET", "/ledger/proof/inclusion?index=99999999999999999999", 400),
        ("GET", "/ledger/proof/consistency?from=5&to=3", 400),
        ("GET", "/ledger/proof/consistency", 400),
        ("GET", "/ledger/entries?start=3&end=2", 400),
        ("GET", "/ledger/entries", 400),
        ("GET", "/ledger/receipt/x", 400),
        # what the log does not have: 404
        ("GET", "/ledger/proof/inclusion?index=7", 404),
        ("GET", "/ledger/proof/inclusion?index=0&size=8", 404),
        ("GET", "/ledger/proof/consistency?from=0&to=8", 404),
        ("GET", "/ledger/entries?start=8", 404),
        ("GET", "/ledger/receipt/7", 404),
        ("GET", "/ledger/receipt/0?size=99", 404),
        ("GET", "/ledger/nothing", 404),
        # read-only
        ("POST", "/ledger/checkpoint", 405),
        ("DELETE", "/ledger/entries?start=0", 405),
    ],
    ids=str,
)
async def test_bad_requests_are_operation_outcomes(
    auditor: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await auditor.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_an_unavailable_ledger_is_503(
    auditor: httpx.AsyncClient, store: MemoryLogStore
) -> None:
    store.available = False
    for path in ("/ledger/checkpoint", "/ledger/proof/inclusion?index=0", "/ledger/receipt/0"):
        response = await auditor.get(path)
        assert response.status_code == 503
        assert response.json()["resourceType"] == "OperationOutcome"


async def test_proofs_follow_the_log_as_it_grows(
    app: Gateway, ledger: httpx.AsyncClient, store: MemoryLogStore, signer: SigningKey
) -> None:
    await ledger.get("/ledger/proof/inclusion?index=0")  # the proof cache holds 7 leaves
    await _append(app, 3, start=ENTRIES)
    body = (await ledger.get("/ledger/proof/inclusion", params={"index": 9})).json()
    size, root = _checkpoint(body["checkpoint"], signer)
    assert size == ENTRIES + 3
    (leaf,) = await store.leaves(9, 10)
    verify_inclusion(leaf_hash(leaf), 9, size, [_b64(h) for h in body["hashes"]], root)


async def test_a_store_swapped_under_the_proof_cache_is_503_not_a_bad_proof(
    ledger: httpx.AsyncClient, store: MemoryLogStore, signer: SigningKey
) -> None:
    """A database restored to another history while the gateway runs: the cached tree no
    longer matches the stored checkpoints, so no proof is served until it is rebuilt."""
    assert (await ledger.get("/ledger/proof/inclusion?index=0")).status_code == 200
    other = await MemoryLogStore.open(MemoryLog())
    sign = checkpoint_signer(signer, ORIGIN)
    for n in range(ENTRIES):
        await other.append([entry(100 + n)], sign=sign)
    store.log = other.log
    assert (await ledger.get("/ledger/proof/inclusion?index=0")).status_code == 503
    rebuilt = await ledger.get("/ledger/proof/inclusion?index=0")
    assert rebuilt.status_code == 200  # the cache was dropped and rebuilt from the store
