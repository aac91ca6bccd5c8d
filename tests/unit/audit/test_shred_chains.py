"""``consentry audit shred`` shreds every chain of the patient: a patient forgotten once (or
whose pseudonym table was rebuilt) has entries under two pseudonyms, and both must go."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from middleware.audit.row import AuditQuery
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support import audit_fill
from tests.unit.audit.test_cli import COUNT, HOUR, ORIGIN, T0, Setup, setup  # noqa: F401

SECOND = b"\x0b" * 16  # Patient/b's second pseudonym
MORE = 5


async def _second_chain(store_url: str) -> None:
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    store = await SqliteLogStore.open(Path(store_url.removeprefix("sqlite:")))
    try:
        await audit_fill.fill_audit_log(
            store, key, ORIGIN, count=MORE, patients=["Patient/b"],
            start_us=T0 + COUNT * HOUR, step_us=HOUR,
        )  # fmt: skip
    finally:
        await store.close()


async def _keys(store_url: str) -> list[bytes | None]:
    store = await SqliteLogStore.open(Path(store_url.removeprefix("sqlite:")))
    try:
        return [
            await store.audit_key_get(p) for p in (audit_fill.pseudonym_of("Patient/b"), SECOND)
        ]
    finally:
        await store.close()


def test_shred_shreds_both_chains_of_the_patient(
    setup: Setup,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = audit_fill.pseudonym_of("Patient/b")
    with monkeypatch.context() as m:
        m.setattr(audit_fill, "pseudonym_of", lambda patient: SECOND)
        asyncio.run(_second_chain(setup.store))
    assert all(k is not None for k in asyncio.run(_keys(setup.store)))
    assert len(setup.query(AuditQuery(patient="Patient/b", limit=1000))) == COUNT // 3 + MORE
    status, text = setup.run(
        "audit", "shred", "--store", setup.store, "--key-file", str(setup.key),
        "--patient", "Patient/b", "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0, text
    result = json.loads(text)
    assert (result["chains"], result["rows"]) == (2, COUNT // 3 + MORE)
    assert setup.query(AuditQuery(patient="Patient/b", limit=1000)) == []
    assert asyncio.run(_keys(setup.store)) == [None, None]
    assert first != SECOND
