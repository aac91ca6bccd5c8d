"""A small log of audit entries as plain data, and exports of it, for the export tests.

The evidence here is a stand-in for the audit facts: the JSON of the row's fields, not
encrypted (``key`` None). :func:`fake_opener` reads it back, as the real opener decrypts and
decodes facts; the verifier under test cannot tell, which is the point: what it checks is the
link between leaf, evidence, opening and columns, whatever the evidence format.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from middleware.audit.export import (
    EntryOpening,
    ExportHeader,
    Role,
    entries_for,
    plan_chain,
    plan_tail,
)
from middleware.audit.export_columns import columns_for
from middleware.audit.export_write import write_csv, write_ndjson
from middleware.audit.row import NO_INDEX_YET, AuditRow
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.entry import NewEntry, TreeState
from middleware.ledger.leaf import EntryFlag, EntryKind, LeafFields, decode_leaf
from middleware.ledger.merkle import CompactRange
from middleware.ledger.sequencer import plan_batch
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.trust import TrustedKey, TrustPolicy
from tests.contract.helpers import KEY, ORIGIN

POLICY = TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey()),))
PATIENTS = {"Patient/a": bytes([1]) * 16, "Patient/b": bytes([2]) * 16}
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000_000


def fake_row(index: int, recorded_us: int, patient: str, n: int) -> AuditRow:
    return AuditRow(
        index=index,
        recorded_us=recorded_us,
        kind=int(EntryKind.DISCLOSURE),
        flags=int(EntryFlag.PERMIT),
        patient=patient,
        pseudonym=PATIENTS[patient],
        agent=f"Practitioner/p{n % 3}",
        roles=("doctor",),
        organization=None,
        client="app",
        purposes=("http://terminology.hl7.org/CodeSystem/v3-ActReason|TREAT",)
        if n % 2
        else ("http://terminology.hl7.org/CodeSystem/v3-ActReason|HRESCH",),
        action="R",
        event_type="http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
        subtype="read",
        outcome="0",
        resource_types=("Observation",),
        entities=(f"Observation/o{n}",),
        break_glass=False,
        request_id=f"req-{n}",
    )


def _evidence(row: AuditRow) -> bytes:
    body = {
        "patient": row.patient,
        "agent": row.agent,
        "purposes": list(row.purposes),
        "entities": list(row.entities),
        "request_id": row.request_id,
    }
    return json.dumps(body, sort_keys=True).encode()


class ReferenceProofs:
    """The ledger's own proofs (``MerkleLevels``, the recursive split of RFC 9162 §2.1.3.1)
    as an export's proof source, independent of ``proofs.ProofMaker``."""

    def __init__(self, tree: MerkleLevels) -> None:
        self.tree = tree

    def inclusion_bytes(self, index: int, size: int | None = None) -> bytes:
        return b"".join(self.tree.inclusion_proof(index, size))


def fake_opener(opening: EntryOpening, leaf: LeafFields, index: int) -> AuditRow:
    """The row the stand-in evidence says (ValueError when it is not that JSON)."""
    body = json.loads(opening.evidence)
    n = int(body["request_id"].removeprefix("req-"))
    return fake_row(index, leaf.recorded_us, body["patient"], n)


@dataclass
class Log:
    leaves: list[bytes] = field(default_factory=list)
    rows: dict[int, AuditRow] = field(default_factory=dict)
    openings: dict[int, EntryOpening] = field(default_factory=dict)
    note: str = ""

    @property
    def size(self) -> int:
        return len(self.leaves)


def build_log(
    count: int = 12,
    *,
    consents: frozenset[int] = frozenset(),
    recorded: Mapping[int, int] | None = None,
) -> Log:
    """``count`` disclosures an hour apart, patients a and b alternating two to one; the
    entries numbered in ``consents`` are consent entries instead (no facts, no row); entry
    ``n`` is recorded at ``recorded[n]`` when given (an outbox replay: earlier than the one
    before it)."""
    entries, rows = [], []
    for n in range(count):
        patient = "Patient/b" if n % 3 == 2 else "Patient/a"
        at = (recorded or {}).get(n, T0 + n * HOUR)
        row = fake_row(NO_INDEX_YET, at, patient, n)
        consent = n in consents
        rows.append(None if consent else row)
        entries.append(
            NewEntry.create(
                EntryKind.CONSENT if consent else EntryKind.DISCLOSURE,
                b'{"resourceType":"Consent"}' if consent else _evidence(row),
                recorded_us=row.recorded_us,
                pseudonym=PATIENTS[patient],
                flags=EntryFlag.NONE if consent else EntryFlag.PERMIT,
            )
        )
    plan = plan_batch(TreeState.of(CompactRange()), entries, recorded={}, last_index={})
    log = Log()
    for planned, maybe in zip(plan.leaves, rows, strict=True):
        log.leaves.append(planned.leaf)
        if maybe is not None:
            log.rows[planned.index] = maybe.at(planned.index)
            log.openings[planned.index] = EntryOpening(planned.salt, planned.evidence, None)
    tree = MerkleLevels.of_leaves(log.leaves)
    log.note = KEY.sign_checkpoint(Checkpoint(ORIGIN, log.size, tree.root()))
    return log


def export(
    log: Log,
    patient: str = "Patient/a",
    since_us: int | None = T0 + 2 * HOUR,
    until_us: int | None = T0 + 8 * HOUR,
    *,
    fmt: str = "ndjson",
    exclude: frozenset[int] = frozenset(),
    report: str = "access-report",
    rules: Mapping[str, Any] | None = None,
) -> str:
    """A per-patient export of ``log`` (the rows in ``exclude`` as ``other`` lines)."""
    pseudonym = PATIENTS[patient]
    chain = []
    for index, data in enumerate(log.leaves):
        leaf = decode_leaf(data)
        if leaf.pseudonym == pseudonym:
            chain.append((index, leaf.recorded_us))
    before, inside, after = plan_chain(chain, since_us, until_us)
    lines: list[tuple[Role, int]] = []
    if before is not None:
        lines.append(("before", before))
    lines += [("other" if i in exclude else "row", i) for i in inside]
    if after is not None:
        lines.append(("after", after))
    else:
        lines += [("tail", i) for i in plan_tail(lines[-1][1] if lines else None, log.size)]
    names, cells_of = columns_for(report)
    header = ExportHeader(
        report=report,
        columns=names,
        checkpoint=log.note,
        origin=ORIGIN,
        patient=patient,
        since_us=since_us,
        until_us=until_us,
        chain=pseudonym,
        rules=rules,
    )
    entries = entries_for(
        lines,
        tree=ReferenceProofs(MerkleLevels.of_leaves(log.leaves)),
        size=log.size,
        leaves=dict(enumerate(log.leaves)),
        openings=log.openings,
        columns={i: c for i, r in log.rows.items() if (c := cells_of(r)) is not None},
    )
    out = io.StringIO(newline="")
    (write_csv if fmt == "csv" else write_ndjson)(header, entries, out)
    return out.getvalue()
