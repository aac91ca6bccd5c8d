"""``consentry audit reindex`` counts apart what it could not index: evidence the patient's key
does not open (``unreadable``) and evidence it opens to facts that give no row
(``malformed``); neither stops the run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from middleware.audit.evidence import EVIDENCE_PURPOSE, PatientKeys, seal_facts
from middleware.audit.facts import AuditFacts, encode_facts
from middleware.audit.parts import AgentInfo
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind, new_salt
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support.audit_fill import pseudonym_of
from tests.unit.audit.test_cli import COUNT, ORIGIN, T0, Setup, setup  # noqa: F401  (a fixture)

_GATEWAY = AgentInfo("https://gw.example/fhir", "Consentry test gateway")


def _entry(patient_key: bytes, facts: AuditFacts, pseudonym: bytes) -> NewEntry:
    """An audit entry of ``facts`` sealed under ``patient_key``, without its index row."""
    salt = new_salt()
    return NewEntry(
        kind=EntryKind.DISCLOSURE,
        recorded_us=facts.recorded_us,
        salt=salt,
        evidence=seal_facts(patient_key, salt, encode_facts(facts)),
        pseudonym=pseudonym,
        flags=EntryFlag.PERMIT,
    )


def test_reindex_counts_unreadable_and_malformed_apart(setup: Setup) -> None:  # noqa: F811
    """Entry COUNT: an exchange naming no interaction, sealed under the patient's own key (it
    opens and decodes, but row_of gives no row: malformed); entry COUNT + 1: valid facts
    sealed under another key (unreadable). The other entries are indexed as before."""
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    pseudonym = pseudonym_of("Patient/a")

    async def append() -> None:
        store = await SqliteLogStore.open(Path(setup.store.removeprefix("sqlite:")))
        try:
            keys = PatientKeys(store.audit_key, derive_box_key(key, EVIDENCE_PURPOSE))
            own = await keys.key(pseudonym)
            facts = AuditFacts(
                event="exchange",
                recorded_us=T0,
                request_id="no-interaction",
                gateway=_GATEWAY,
                status=200,
                patient="Patient/a",
            )
            batch = [_entry(own, facts, pseudonym), _entry(bytes(32), facts, pseudonym)]
            await store.append(batch, sign=checkpoint_signer(key, ORIGIN))
        finally:
            await store.close()

    asyncio.run(append())
    status, text = setup.run(
        "audit", "reindex", "--store", setup.store, "--key-file", str(setup.key)
    )  # fmt: skip
    report = json.loads(text)
    assert status == 0
    assert (report["entries"], report["rows"]) == (COUNT + 2, COUNT)
    assert (report["unreadable"], report["malformed"]) == (1, 1)
