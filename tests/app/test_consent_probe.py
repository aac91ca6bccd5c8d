"""A patient probing another patient's consents is named on that patient's trail, until shred.

The attack: patient A's token reads, changes or revokes patient B's consent (404, 403). The
attempt goes on B's chain, and since a patient caller's attempts name none of their accounts
(so a shred of A leaves no PHI), it named nothing of A: B's "who looked at my record" and the
compliance officer saw an anonymous attempt. Now it carries A's tag, derived from A's evidence
key, which the gateway resolves to ``Patient/A`` while A exists (``consent.callers``; the
officer's ``consentry audit consent-attempts --patient B`` shows it); after ``consentry audit
shred`` of A it resolves to nobody (shown ``patient (pseudonymous) <hex>``, a named suspect A
included) and the file holds nothing of A's identity.

The second attack: the attempt named A's chain pseudonym in the clear, and the shred keeps a
tombstone linking A's keyed lookup to that chain (for A's accounting): whoever holds the
ledger key tested candidate patient ids against the tombstone and recovered "A probed B"
after the shred. The tag is no chain, and the key it came from is gone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from middleware.audit.cli_attempts import PSEUDONYMOUS
from middleware.audit.evidence import EVIDENCE_PURPOSE, unwrap_key
from middleware.consent.callers import CallerResolver, attempt_tag
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import derive_box_key
from middleware.settings import Settings
from middleware.storage.consent_base import LOOKUP_PURPOSE, lookup_of
from middleware.storage.consent_open import open_consent_store
from middleware.storage.ledger_open import open_log_store
from tests.app.test_shred_consent import (
    KEPT,
    P_SECRETS,
    Q_SECRETS,
    SHREDDED,
    World,
    consent_of,
    shred_p,
)

PROBER, PROBED = SHREDDED, KEPT  # A (shredded afterwards), B


@pytest.fixture
def world(tmp_path: Path, make_settings: Callable[..., Settings]) -> World:
    return World(tmp_path, make_settings)


async def _probes(world: World, audit_indexes: list[int]) -> list[tuple[str | None, bytes]]:
    """Each attempt entry ``audit_indexes`` names: (the caller it resolves to, evidence)."""
    log = await open_log_store(world.store)
    consents = await open_consent_store(
        world.store, lookup_key=derive_box_key(world.signer, LOOKUP_PURPOSE)
    )
    wrap = derive_box_key(world.signer, EVIDENCE_PURPOSE)

    async def key_of(chain: bytes) -> bytes | None:
        wrapped = await log.audit_key_get(chain)
        return None if wrapped is None else unwrap_key(wrap, wrapped)

    try:
        probed_chain = await consents.pseudonym(f"Patient/{PROBED}")
        found: list[tuple[str | None, bytes]] = []
        callers = CallerResolver(log, consents, key_of, [f"Patient/{PROBER}"])
        for index in audit_indexes:
            (raw,) = await log.leaves(index, index + 1)
            leaf = decode_leaf(raw)
            assert leaf.kind is EntryKind.ADMIN
            assert leaf.pseudonym == probed_chain  # on B's trail
            stored = await log.evidence(index)
            assert stored is not None
            tag = attempt_tag(stored.data)
            assert tag is not None
            found.append((await callers.resolve(tag), stored.data))
        return found
    finally:
        await consents.close()
        await log.close()


async def _listed(world: World, *extra: str) -> list[dict[str, Any]]:
    """``consentry audit consent-attempts --patient B``: the attempts it lists."""
    status, text = await world.run(
        "audit", "consent-attempts", *world.where, "--key-file", str(world.key),
        "--patient", f"Patient/{PROBED}", *extra,
    )  # fmt: skip
    assert status == 0, text
    attempts: list[dict[str, Any]] = json.loads(text)["attempts"]
    return attempts


async def _probe(world: World) -> list[int]:
    """A and B each write a consent; A reads, updates and revokes B's: the attempts' indexes."""
    a, b = world.tokens.patient(PROBER), world.tokens.patient(PROBED)
    async with world.gateway() as gw:
        mine = await gw.post("/fhir/Consent", json=consent_of(PROBER, P_SECRETS), headers=a)
        assert mine.status_code == 201, mine.text
        theirs = await gw.post("/fhir/Consent", json=consent_of(PROBED, Q_SECRETS), headers=b)
        assert theirs.status_code == 201, theirs.text
        cid = theirs.json()["id"]
        probes = [
            await gw.get(f"/fhir/Consent/{cid}", headers=a),
            await gw.put(
                f"/fhir/Consent/{cid}",
                json={**consent_of(PROBED, Q_SECRETS), "id": cid},
                headers=a,
            ),
            await gw.post(f"/fhir/Consent/{cid}/$revoke", headers=a),
        ]
    assert [p.status_code for p in probes] == [404, 403, 403]
    return [int(p.headers["x-consentry-audit-index"]) for p in probes]


async def test_a_probe_names_the_prober_until_their_shred(world: World) -> None:
    indexes = await _probe(world)

    # While A exists: each attempt on B's chain resolves to A, and names no account of A.
    before = await _probes(world, indexes)
    assert [who for who, _ in before] == [f"Patient/{PROBER}"] * 3  # failed before: no chain
    for _, evidence in before:
        assert PROBER.encode() not in evidence
    # The compliance officer's view of B's consents: B's own create, then A's three probes.
    listed = await _listed(world)
    assert [(a["operation"], a["outcome"]) for a in listed] == [
        ("create", 201),
        ("read", 404),
        ("update", 403),
        ("revoke", 403),
    ]
    assert [a["index"] for a in listed[1:]] == indexes
    assert [a["caller"] for a in listed] == [
        f"Patient/{PROBED} (the patient)",
        *[f"Patient/{PROBER}"] * 3,
    ]

    await shred_p(world)  # A

    # After A's shred: the same attempts are still on B's trail, and name nobody.
    after = await _probes(world, indexes)
    assert [who for who, _ in after] == [None] * 3
    assert [evidence for _, evidence in after] == [evidence for _, evidence in before]
    callers = [a["caller"] for a in await _listed(world, "--suspect", f"Patient/{PROBER}")]
    assert callers[0] == f"Patient/{PROBED} (the patient)"
    assert all(c.startswith(f"{PSEUDONYMOUS} ") for c in callers[1:])
    raw = world.raw()
    for secret in (PROBER.encode(), f"user-{PROBER}".encode(), *P_SECRETS):
        assert secret not in raw
    assert PROBED.encode() in raw  # B untouched


async def test_a_shredded_probers_attempt_is_linked_to_them_by_nothing(world: World) -> None:
    """After A's shred, whoever holds the ledger key tries candidate patient ids against the
    shred's tombstones (``shredded_chains(lookup_of(...))``: enumerable ids on the upstream):
    none of A's shredded chains appears in A's attempts on B's chain, in hex or bytes, so
    "A probed B" is not recovered. Failed before: the attempt named A's chain in the clear."""
    indexes = await _probe(world)
    await shred_p(world)  # A
    log = await open_log_store(world.store)
    try:
        lookup = derive_box_key(world.signer, LOOKUP_PURPOSE)
        chains = [
            chain
            for pid in (PROBED, "someone", PROBER)
            for chain in await log.shredded_chains(lookup_of(lookup, f"Patient/{pid}"))
        ]
        assert chains  # A's chain is in a tombstone: the link the attack used
        for index in indexes:
            stored = await log.evidence(index)
            assert stored is not None
            tag = attempt_tag(stored.data)
            assert tag is not None  # the attempt still names someone, grouped by tag
            for chain in chains:
                assert chain not in stored.data
                assert chain.hex().encode() not in stored.data
                assert tag != chain
                # and A's old chain's key, which the tag came from, is gone
                assert await log.audit_key_get(chain) is None
    finally:
        await log.close()
