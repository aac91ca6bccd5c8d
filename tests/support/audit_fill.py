"""Fill a ledger store quickly with audit entries as the recorder writes them (tests, bench).

Each entry is a ``DISCLOSURE`` of one Observation read by one of a few practitioners for a
purpose, with its facts sealed under the patient's evidence key (``evidence.seal_facts``), its
index row (``facts.row_of``) written with it, appended in large batches signed by ``key``.
Not used by the gateway: the recorder builds its entries from real exchanges.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from middleware.audit.evidence import EVIDENCE_PURPOSE, PatientKeys, sealed_entry
from middleware.audit.facts import AuditFacts, Caller
from middleware.audit.parts import AgentInfo
from middleware.fhir.request import Interaction
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_base import LogStore

__all__ = ["PURPOSES", "Filled", "fill_audit_log", "pseudonym_of"]

_V3 = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
#: The purposes entries cycle through: treatment (exempt from an accounting) and research.
PURPOSES: tuple[tuple[str, str], ...] = ((_V3, "TREAT"), (_V3, "HRESCH"), (_V3, "PUBHLTH"))
_GATEWAY = AgentInfo("https://gw.example/fhir", "Consentry test gateway")


@dataclass(frozen=True, slots=True)
class Filled:
    """What was written: entry count and, per patient, its pseudonym."""

    entries: int
    pseudonyms: dict[str, bytes]


def pseudonym_of(patient: str) -> bytes:
    """A fixed pseudonym per patient (tests only; the gateway's are random)."""
    return hashlib.sha256(b"test-pseudonym:" + patient.encode()).digest()[:16]


async def fill_audit_log(
    store: LogStore,
    key: SigningKey,
    origin: str,
    *,
    count: int,
    patients: Sequence[str],
    start_us: int,
    step_us: int = 1_000_000,
    batch: int = 2000,
    organizations: Sequence[str | None] = (None,),
) -> Filled:
    """Append ``count`` audit entries to ``store``, patient ``n % len(patients)`` for entry
    ``n`` (and caller organization ``n % len(organizations)``), recorded ``step_us`` apart
    from ``start_us``."""
    sign = checkpoint_signer(key, origin)
    keys = PatientKeys(store.audit_key, derive_box_key(key, EVIDENCE_PURPOSE))
    pseudonyms = {p: pseudonym_of(p) for p in patients}
    pending: list[NewEntry] = []
    for n in range(count):
        patient = patients[n % len(patients)]
        pseudonym = pseudonyms[patient]
        facts = AuditFacts(
            event="exchange",
            recorded_us=start_us + n * step_us,
            request_id=f"fill-{n}",
            gateway=_GATEWAY,
            interaction=Interaction.READ,
            resource_type="Observation",
            resource_id=f"obs-{n}",
            caller=Caller(
                subject=f"user-{n % 4}",
                issuer="https://idp.example",
                kind="user",
                client_id="ehr-app",
                fhir_user=f"Practitioner/pr-{n % 4}",
                purposes=(PURPOSES[(n // len(patients)) % len(PURPOSES)],),
                roles=("doctor",),
                organization=organizations[n % len(organizations)],
            ),
            status=200,
            patient=patient,
            resource_refs=(f"Observation/obs-{n}",),
        )
        pending.append(
            sealed_entry(
                await keys.key(pseudonym),
                facts,
                kind=EntryKind.DISCLOSURE,
                flags=EntryFlag.PERMIT,
                pseudonym=pseudonym,
            )
        )
        if len(pending) >= batch:
            await store.append(pending, sign=sign)
            pending = []
    if pending:
        await store.append(pending, sign=sign)
    return Filled(count, pseudonyms)
