"""Audit exports with proofs: one file a third party can check offline (``verify_export``).

An export is one file, NDJSON for machines or CSV for people; both hold the same things:

1. A header: :data:`EXPORT_FORMAT`, the report it is (``report``: ``search``, ``accounting``,
   ``access-report``, ``user-report``, ``date-range``), its scope (``patient``, ``agent``,
   ``since``/``until`` as RFC 3339 UTC times), the ``columns`` of its rows, the log's
   ``origin`` and the signed ``checkpoint`` note (C2SP tlog-checkpoint) every proof in the file
   is against, and for a per-patient export the ``chain`` (the patient's pseudonym, hex;
   :data:`NO_CHAIN`, ``""``, when the audit index names no entry of the patient).
2. One line per ledger entry, in ascending ledger index, each with its ``role``:

   ``row``     a row of the report: its ``columns``, and the entry's proofs and opening
   ``other``   an entry of the patient's chain inside the period that the report leaves out
               (an exempt disclosure of an accounting, say): proofs and opening, no columns
   ``before``  the patient's last entry before the period (omitted when there is none):
               leaf and inclusion proof only, nothing of it is disclosed
   ``after``   the patient's first entry after the period (omitted when there is none)
   ``tail``    when there is no ``after`` line: every entry of the log after the chain's
               last line up to the checkpoint's size (none of them the patient's), leaf and
               inclusion proof only, so the verifier sees the chain ends there; omitted when
               there are more than :data:`TAIL_LIMIT` (the tail is then unproven)

   Every line carries ``index`` (the ledger index), ``leaf`` (the 80 stored leaf bytes,
   :mod:`middleware.ledger.leaf`) and ``proof`` (the RFC 9162 §2.1.3.1 inclusion path of the
   leaf in the checkpoint's tree, sibling first, the 32-byte hashes concatenated); ``row`` and
   ``other`` lines also the entry's opening (:class:`EntryOpening`: ``salt``, ``evidence``,
   and ``key``, the per-entry key that decrypts the evidence), so a verifier recomputes the
   leaf's commitment (``commit_evidence(salt, evidence)``), decrypts the facts and compares
   the row's columns with what the facts say. Binary values are standard base64.

Completeness (per-patient exports): every leaf names the index of its pseudonym's previous
entry (``previous``). The lines of the chain, ``before`` then ``row``/``other`` then ``after``,
must each name the one before, so a dropped line breaks a link and its index is named by the
line after the gap. Links point backwards only, so the end of the chain is proved by the
``after`` line, or, when the chain ends inside the period, by the ``tail`` lines (every later
entry of the checkpoint's tree, none on the chain); without either the tail is unproven and the
verifier says so (``chain-tail-unproven``).

The header's ``rules`` (an accounting's: :func:`middleware.audit.export_rules.rules_json`)
are the 45 CFR 164.528(a)(1) exemption rules the exporter applied, so the verifier re-applies
them to every opened entry (``row`` lines must be accountable, ``other`` lines not).

NDJSON: the header is the first line, a JSON object; each entry is one JSON object (keys as
above; ``columns`` an object of strings). CSV (RFC 4180): the first line is ``#`` followed by
the header's JSON; the second names the columns, the report's own then :data:`PROOF_COLUMNS`;
one record per entry (``row`` lines fill the report's columns, the others leave them empty); a
cell a spreadsheet would take for a formula is written with a ``'`` before it
(``report_csv.csv_escape``, OWASP CSV injection), which the verifier expects.

This module holds the format's values and plans the lines (:func:`plan_chain`,
:func:`plan_tail`, :func:`entries_for`); :mod:`middleware.audit.export_write` writes them
(``write_ndjson``, ``write_csv``). Pure: no I/O.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

from middleware.audit.report_csv import FORMULA_START
from middleware.audit.rfc3339 import format_us as format_time
from middleware.audit.row import AuditRow
from middleware.audit.row import shredded_row as leaf_only_row
from middleware.ledger.leaf import EntryFlag, Leaf

__all__ = [
    "EXPORT_FORMAT",
    "NO_CHAIN",
    "PROOF_COLUMNS",
    "TAIL_LIMIT",
    "ProofSource",
    "ROW_COLUMNS",
    "EntryOpening",
    "ExportEntry",
    "ExportHeader",
    "Role",
    "entries_for",
    "format_time",
    "plan_chain",
    "plan_tail",
    "row_columns",
    "shredded_columns",
    "shredded_row",
]

#: The first thing in every export; a verifier refuses any other version.
EXPORT_FORMAT = "consentry-audit-export/v1"

Role = Literal["row", "other", "before", "after", "tail"]

#: The ``chain`` of a per-patient export whose patient the audit index names in no entry at
#: the checkpoint: no chain to list, and none to prove it by (a pseudonym is not linkable to
#: the patient offline), so the verifier says ``chain-none-unproven``, never ``chain-missing``.
NO_CHAIN = b""

#: At most this many ``tail`` lines (about 1 kB each): a patient whose last entry is further
#: back than this from the checkpoint gets an export whose tail is unproven.
TAIL_LIMIT = 10_000

#: The columns of a row of the audit index (every :class:`AuditRow` field but the pseudonym,
#: which is in the leaf); reports with columns of their own name them in the header.
ROW_COLUMNS: tuple[str, ...] = (
    "recorded",
    "kind",
    "flags",
    "patient",
    "agent",
    "roles",
    "organization",
    "client",
    "purposes",
    "action",
    "event_type",
    "subtype",
    "outcome",
    "resource_types",
    "entities",
    "break_glass",
    "request_id",
    "shredded",
)
#: The columns a CSV export appends to the report's own, in this order.
PROOF_COLUMNS: tuple[str, ...] = (
    "role",
    "ledger_index",
    "leaf",
    "proof",
    "salt",
    "evidence",
    "key",
)


class ProofSource(Protocol):
    """Makes RFC 9162 inclusion proofs as a line carries them, the hashes concatenated
    (``proofs.ProofMaker``)."""

    def inclusion_bytes(self, index: int, size: int | None = None) -> bytes: ...


class EntryOpening(msgspec.Struct, frozen=True, gc=False):
    """What opens one entry offline: the evidence ``salt`` and bytes the leaf commits to, and
    the per-entry ``key`` that decrypts them (``None`` when the evidence is not encrypted).
    A frozen ``msgspec.Struct``, like :class:`ExportEntry` (one per line written or read)."""

    salt: bytes
    evidence: bytes
    key: bytes | None


@dataclass(frozen=True, slots=True)
class ExportHeader:
    """What an export is (see the module docstring). ``since_us``/``until_us``: inclusive
    bounds in microseconds since the epoch (None: open). ``chain``: the patient's pseudonym for
    a per-patient export (the completeness proof applies), else None. ``rules``: the
    report's inclusion rules as JSON (an accounting's exemption table), else None."""

    report: str
    checkpoint: str
    origin: str
    columns: tuple[str, ...] = ROW_COLUMNS
    patient: str | None = None
    agent: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    chain: bytes | None = None
    rules: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The header as its JSON object (the NDJSON first line, the CSV ``#`` line)."""
        return {
            "format": EXPORT_FORMAT,
            "report": self.report,
            "patient": self.patient,
            "agent": self.agent,
            "since": None if self.since_us is None else format_time(self.since_us),
            "until": None if self.until_us is None else format_time(self.until_us),
            "columns": list(self.columns),
            "origin": self.origin,
            "checkpoint": self.checkpoint,
            "chain": None if self.chain is None else self.chain.hex(),
            "rules": None if self.rules is None else dict(self.rules),
        }


class ExportEntry(msgspec.Struct, frozen=True, gc=False):
    """One entry line: its ``role``, ledger ``index``, stored ``leaf`` bytes, inclusion
    ``proof`` (the hashes concatenated, sibling first), its ``opening`` (``row`` and ``other``
    lines) and the report's ``columns`` (``row`` lines: one string per header column, in
    order). A ``msgspec.Struct``: an export makes one per line (0.1 µs, a frozen dataclass
    about 1 µs); ``gc=False``, as its fields cannot form a reference cycle."""

    role: Role
    index: int
    leaf: bytes
    proof: bytes
    opening: EntryOpening | None = None
    columns: Sequence[str] | None = None

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        """The entry as its NDJSON object; ``names`` are the header's columns."""
        out: dict[str, Any] = {
            "role": self.role,
            "index": self.index,
            "leaf": _b64(self.leaf),
            "proof": _b64(self.proof),
        }
        if self.opening is not None:
            out["salt"] = _b64(self.opening.salt)
            out["evidence"] = _b64(self.opening.evidence)
            out["key"] = None if self.opening.key is None else _b64(self.opening.key)
        if self.columns is not None:
            out["columns"] = dict(zip(names, self.columns, strict=True))
        return out

    def to_cells(self, width: int) -> list[str]:
        """The entry as a CSV record: ``width`` report cells (formulas escaped,
        ``report_csv.csv_escape``) then :data:`PROOF_COLUMNS`."""
        columns = self.columns
        if columns is None:
            cells = [""] * width
        else:  # csv_escape, inline: a call per cell was a tenth of a CSV record's time
            formula = FORMULA_START
            cells = [("'" + c if c[:1] in formula else c) for c in columns]
        opening = self.opening
        cells += [
            self.role,
            str(self.index),
            _b64(self.leaf),
            _b64(self.proof),
            "" if opening is None else _b64(opening.salt),
            "" if opening is None else _b64(opening.evidence),
            "" if opening is None or opening.key is None else _b64(opening.key),
        ]
        return cells


def row_columns(row: AuditRow) -> tuple[str, ...]:
    """The :data:`ROW_COLUMNS` of ``row`` as text: times RFC 3339 UTC with microseconds,
    lists joined by a space, absent values empty, booleans ``true``/``false``."""
    return (
        format_time(row.recorded_us),
        str(row.kind),
        str(row.flags),
        row.patient or "",
        row.agent or "",
        " ".join(row.roles),
        row.organization or "",
        row.client or "",
        " ".join(row.purposes),
        row.action,
        row.event_type,
        row.subtype or "",
        row.outcome,
        " ".join(row.resource_types),
        " ".join(row.entities),
        "true" if row.break_glass else "false",
        row.request_id,
        "true" if row.shredded else "false",
    )


def shredded_row(index: int, leaf: Leaf) -> AuditRow:
    """The index row of a crypto-shredded entry: only what its ``leaf`` says
    (:meth:`AuditRow.shred`), so a verifier can check it without the evidence."""
    return leaf_only_row(
        index=index,
        recorded_us=leaf.recorded_us,
        kind=int(leaf.kind),
        flags=int(leaf.flags),
        pseudonym=leaf.pseudonym,
        break_glass=bool(leaf.flags & EntryFlag.BREAK_THE_GLASS),
    )


def shredded_columns(index: int, leaf: Leaf) -> tuple[str, ...]:
    """The :data:`ROW_COLUMNS` of :func:`shredded_row`."""
    return row_columns(shredded_row(index, leaf))


def plan_chain(
    chain: Sequence[tuple[int, int]], since_us: int | None, until_us: int | None
) -> tuple[int | None, list[int], int | None]:
    """Split a patient's chain, ``(index, recorded_us)`` pairs in ascending index, into the
    entry just before the period, the entries from the first to the last one recorded in the
    period (inclusive, in chain order), and the entry just after; None where there is none.

    Times need not ascend with the index (an outbox replay appends an entry recorded earlier),
    so the cut is by index around the first and the last entry recorded in the period: an
    entry between them recorded outside it is an ``other`` line, and the boundaries are
    entries recorded outside the period (the verifier checks exactly that)."""
    low = -1 if since_us is None else since_us
    high = 2**64 if until_us is None else until_us
    inside = [i for i, (_, t) in enumerate(chain) if low <= t <= high]
    if not inside:
        cut = next((i for i, (_, t) in enumerate(chain) if t > high), len(chain))
        before = chain[cut - 1][0] if cut > 0 else None
        return before, [], chain[cut][0] if cut < len(chain) else None
    first, last = inside[0], inside[-1]
    return (
        chain[first - 1][0] if first > 0 else None,
        [index for index, _ in chain[first : last + 1]],
        chain[last + 1][0] if last + 1 < len(chain) else None,
    )


def plan_tail(last: int | None, size: int, limit: int = TAIL_LIMIT) -> list[int]:
    """The ``tail`` indexes of a chain whose last exported line is ``last`` and that has no
    ``after`` line: every index after it below ``size``; none when they are more than
    ``limit`` (the tail is then left unproven) or there is no line at all."""
    if last is None or size - last - 1 > limit:
        return []
    return list(range(last + 1, size))


def entries_for(
    lines: Iterable[tuple[Role, int]],
    *,
    tree: ProofSource,
    size: int,
    leaves: Mapping[int, bytes],
    openings: Mapping[int, EntryOpening | None],
    columns: Mapping[int, Sequence[str]],
) -> Iterator[ExportEntry]:
    """The export's entry lines for ``(role, index)`` pairs in ascending index: each leaf with
    its inclusion proof in ``tree`` at ``size`` (the header checkpoint's), ``row`` and
    ``other`` lines with their opening (None: shredded), ``row`` lines with their columns."""
    proof = tree.inclusion_bytes
    for role, index in lines:
        opening = openings.get(index) if role in ("row", "other") else None
        yield ExportEntry(
            role,
            index,
            leaves[index],
            proof(index, size),
            opening,
            columns[index] if role == "row" else None,
        )


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")
