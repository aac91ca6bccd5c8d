"""Row builders shared by the accounting and report tests."""

from __future__ import annotations

from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryFlag, EntryKind

AR = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PATIENT = "Patient/p1"
OTHER = "Patient/p2"
PSEUDONYM = b"\x01" * 16
DAY = 86_400_000_000
#: 2025-03-01T00:00:00Z, the time the accountings in the tests are made.
NOW = 1_740_787_200_000_000


def row(
    index: int,
    *,
    at: int = NOW - 10 * DAY,
    kind: EntryKind = EntryKind.DISCLOSURE,
    patient: str | None = PATIENT,
    agent: str | None = "Practitioner/dr1",
    organization: str | None = "Organization/o1",
    client: str | None = "app-1",
    purposes: tuple[str, ...] = (f"{AR}|HRESCH",),
    types: tuple[str, ...] = ("Observation",),
    flags: EntryFlag = EntryFlag.PERMIT,
    outcome: str = "0",
    action: str = "R",
    subtype: str | None = "search-type",
    break_glass: bool = False,
) -> AuditRow:
    """A row of ``patient``, by default an accountable disclosure (research) ten days ago."""
    return AuditRow(
        index=index,
        recorded_us=at,
        kind=int(kind),
        flags=int(flags),
        patient=patient,
        pseudonym=PSEUDONYM if patient == PATIENT else b"\x02" * 16,
        agent=agent,
        roles=(),
        organization=organization,
        client=client,
        purposes=purposes,
        action=action,
        event_type="http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
        subtype=subtype,
        outcome=outcome,
        resource_types=types,
        entities=(patient,) if patient else (),
        break_glass=break_glass,
        request_id=f"rid-{index}",
    )


def purpose(code: str) -> tuple[str, ...]:
    """One v3 ActReason purpose."""
    return (f"{AR}|{code}",)


def shredded(r: AuditRow) -> AuditRow:
    """``r`` after its patient's crypto-shred."""
    return r.shred()
