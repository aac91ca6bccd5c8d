"""Entries written before sealed facts (their evidence a plain BALP Bundle, as the old recorder
built it: ``old_events.py``) are indexed by ``consentry audit reindex``, so search and the
accounting find them after an upgrade, and ``consentry audit shred`` removes their evidence.

The known answer for the row is :func:`middleware.audit.facts.row_of` of the same exchange's
facts (computed from the facts, not from events); what the old events cannot say is listed."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from middleware.audit.facts import row_of
from middleware.audit.legacy import legacy_row
from middleware.audit.plan import Exchange, Phase, plan
from middleware.audit.row import AuditQuery
from middleware.fhir.jsoncodec import encode_canonical
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind, micros
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.consent_base import LOOKUP_PURPOSE, lookup_of
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support.audit_fill import pseudonym_of
from tests.unit.audit.old_events import old_plan
from tests.unit.audit.test_cli import ORIGIN, Setup, setup  # noqa: F401  (the fixture)
from tests.unit.audit.test_render import ACT, CASES, GATEWAY, USER, WHEN

# (case, field): what the old events do not carry.
UNKNOWABLE = {
    ("read-backend", "agent"),  # the old event kept the client id, not <issuer>#<subject>
    ("invalid-request-400", "resource_types"),  # the raw request names it; the facts do not
    *((c, "resource_types") for c in ("create-decision", "create-decision-deny")),
    *((c, "resource_types") for c in ("create-decision-none", "create-decision-no-patient")),
    ("delete-decision", "resource_types"),  # a decision event names no resource
    ("delete-decision", "entities"),
}


def _bundle(events: list[dict[str, object]]) -> bytes:
    entries = [{"resource": e} for e in events]
    return encode_canonical({"resourceType": "Bundle", "type": "collection", "entry": entries})


@pytest.mark.parametrize(("exchange", "phase"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_legacy_row_says_what_row_of_says(
    request: pytest.FixtureRequest, exchange: Exchange, phase: Phase
) -> None:
    case = request.node.callspec.id
    planned = plan(exchange, phase, micros(WHEN), GATEWAY)
    old = old_plan(exchange, phase, WHEN, GATEWAY)
    assert len(planned) == len(old)
    for p, (_, events) in zip(planned, old, strict=True):
        want = row_of(p.facts, kind=p.kind, flags=p.flags, pseudonym=None, index=3)
        got = legacy_row(
            _bundle(events), recorded_us=want.recorded_us, kind=p.kind, flags=p.flags,
            pseudonym=None, index=3,
        )  # fmt: skip
        differ = {
            name for name in want.__struct_fields__ if getattr(want, name) != getattr(got, name)
        }
        assert differ == {field for c, field in UNKNOWABLE if c == case}


@pytest.mark.parametrize(
    "evidence",
    [b"not json", b"[]", b'{"resourceType":"Consent"}', b'{"resourceType":"Bundle","entry":[]}'],
    ids=["not-json", "array", "consent", "empty-bundle"],
)
def test_what_is_not_a_bundle_of_events_is_refused(evidence: bytes) -> None:
    with pytest.raises(ValueError):
        legacy_row(evidence, recorded_us=1, kind=3, flags=0, pseudonym=None)


# --- end to end: reindex finds them, the accounting lists them, shred removes them ---------

_READ = next(c for c in CASES if c[0] == "read")
#: The "read" case for research (HRESCH, accountable; treatment would be exempt).
RESEARCH = dataclasses.replace(
    _READ[1], identity=dataclasses.replace(USER, purpose_of_use=((ACT, "HRESCH"),))
)
PATIENT = "Patient/p1"


async def _append_legacy(store_url: str) -> list[int]:
    """Two read entries of Patient/p1 from before sealed facts, on its chain."""
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    store = await SqliteLogStore.open(Path(store_url.removeprefix("sqlite:")))
    try:
        ((_, events),) = old_plan(RESEARCH, _READ[2], WHEN, GATEWAY)
        (p,) = plan(RESEARCH, _READ[2], micros(WHEN), GATEWAY)
        entries = [
            NewEntry.create(
                EntryKind.DISCLOSURE,
                _bundle(events),
                recorded_us=micros(WHEN) + n,
                pseudonym=pseudonym_of(PATIENT),
                flags=p.flags,
            )
            for n in range(2)
        ]
        done = await store.append(entries, sign=checkpoint_signer(key, ORIGIN))
        return [r.index for r in done]
    finally:
        await store.close()


async def _evidence(store_url: str, indexes: list[int]) -> list[bool]:
    store = await SqliteLogStore.open(Path(store_url.removeprefix("sqlite:")))
    try:
        return [await store.evidence(i) is not None for i in indexes]
    finally:
        await store.close()


def test_reindex_indexes_legacy_entries_and_shred_removes_their_evidence(
    setup: Setup,  # noqa: F811
) -> None:
    legacy = asyncio.run(_append_legacy(setup.store))
    assert setup.query(AuditQuery(patient=PATIENT, limit=100)) == []  # not indexed yet
    status, text = setup.run(
        "audit", "reindex", "--store", setup.store, "--key-file", str(setup.key)
    )
    assert status == 0, text
    assert json.loads(text)["legacy"] == len(legacy)
    assert setup.query(AuditQuery(patient=PATIENT, limit=100)) == legacy
    status, text = setup.run(
        "audit", "accounting", "--store", setup.store, "--patient", PATIENT, "--detail",
        "--key-file", str(setup.key),
    )  # fmt: skip
    assert status == 0
    listed = [int(r["ledger_index"]) for r in csv.DictReader(io.StringIO(text))]
    assert listed == legacy
    status, text = setup.run(
        "audit", "shred", "--store", setup.store, "--key-file", str(setup.key),
        "--patient", PATIENT, "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0, text
    assert json.loads(text)["legacy_evidence_removed"] == len(legacy)
    assert asyncio.run(_evidence(setup.store, legacy)) == [False, False]
    assert setup.query(AuditQuery(patient=PATIENT, limit=100)) == []


async def _old_shred(store_url: str) -> None:
    """What a shred did before it removed legacy evidence: key and rows, tombstone, link."""
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    store = await SqliteLogStore.open(Path(store_url.removeprefix("sqlite:")))
    try:
        link = lookup_of(derive_box_key(key, LOOKUP_PURPOSE), PATIENT)
        await store.shred(pseudonym_of(PATIENT), link=link)
    finally:
        await store.close()


def test_legacy_entries_of_a_patient_shredded_before_stay_shredded_and_a_new_shred_removes_them(
    setup: Setup,  # noqa: F811
) -> None:
    legacy = asyncio.run(_append_legacy(setup.store))
    asyncio.run(_old_shred(setup.store))
    status, text = setup.run(
        "audit", "reindex", "--store", setup.store, "--key-file", str(setup.key)
    )
    assert status == 0, text
    assert setup.query(AuditQuery(patient=PATIENT, limit=100)) == []  # no PHI back in the index
    assert asyncio.run(_evidence(setup.store, legacy)) == [True, True]
    status, text = setup.run(
        "audit", "shred", "--store", setup.store, "--key-file", str(setup.key),
        "--patient", PATIENT, "--reason", "finish the earlier shred", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0, text
    assert json.loads(text)["legacy_evidence_removed"] == len(legacy)
    assert asyncio.run(_evidence(setup.store, legacy)) == [False, False]
