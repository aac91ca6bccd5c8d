"""Offline verification of an audit export (``middleware.audit.export``) or a receipt.

:func:`verify_export` needs the file and the verifier's trust policy
(:mod:`middleware.ledger.trust`), never the gateway. It checks, and reports each failure as an
:class:`ExportFinding` naming the file line and ledger index:

- the header: the format version, the checkpoint note's signature by a key the policy trusts
  for the checkpoint's size, and its origin (C2SP signed-note, tlog-checkpoint);
- every line: the leaf parses, its RFC 9162 §2.1.3.2 inclusion proof leads to the
  checkpoint's root at the claimed index, lines are in ascending index, no index twice;
- every ``row``/``other`` line: ``commit_evidence(salt, evidence)`` is the leaf's commitment,
  the opening decrypts to facts (``opener``), and a row's columns are what those facts say;
  a ``row`` is inside the export's scope (patient, agent, period; an ``other`` line may be
  recorded outside the period, an outbox replay recorded earlier than the entry before it)
  and rows are the entries the report's rule includes and ``other`` lines (inside the
  period) the ones it leaves out: the rule given, else the kind's own
  (:func:`~middleware.audit.export_rules.default_rule`: the accounting's from the exemption
  rules in the header, the access report's);
- a per-patient export's chain: an accounting, an access report and any export naming a
  patient must carry one (``chain-missing``); every line has the patient's pseudonym and
  names the line before it as its ``previous`` entry, so a dropped line is a gap whose missing
  index the next leaf names, and an inserted line is a link nobody names; the end is proved by
  an ``after`` line or by ``tail`` lines up to the checkpoint's size
  (``chain-tail-unproven`` otherwise).

The report names the scope it verified (patient, agent, period, checkpoint size, chain, how
the tail was proved) and the rules it applied: the header is not signed, so the reader
compares them with what was asked for.

Inclusion proofs are checked by :class:`~middleware.audit.inclusion.InclusionChecker`: the
RFC's check, in about one hash a row for an export in index order instead of ``log2(size)``.
Reading the file is :mod:`middleware.audit.export_read`'s (and ``export_read_csv``'s).

Pure: the ``opener`` (which decrypts, see ``middleware.audit.evidence``) is handed in.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from middleware.audit.export import EntryOpening, format_time, shredded_columns
from middleware.audit.export_chain import LineOrder
from middleware.audit.export_columns import columns_for
from middleware.audit.export_read import ExportLine, HeaderError, ndjson_lines, read_header
from middleware.audit.export_read_csv import csv_lines
from middleware.audit.export_rules import default_rule
from middleware.audit.inclusion import InclusionChecker
from middleware.audit.report_csv import FORMULA_START, csv_escape
from middleware.audit.row import AuditRow
from middleware.ledger.checkpoint import Checkpoint, parse_checkpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import (
    EntryKind,
    LeafFields,
    commit_evidence,
    decode_leaf,
    leaf_fields,
)
from middleware.ledger.receipt import TLOG_PROOF_HEADER, check_receipt, parse_receipt
from middleware.ledger.signing import Verifier, verify_note
from middleware.ledger.trust import TrustPolicy

__all__ = [
    "MAX_FINDINGS",
    "ExportChecker",
    "ExportFinding",
    "ExportReport",
    "RowOpener",
    "RowRule",
    "begin_export",
    "verify_export",
    "verify_file",
    "verify_receipt",
]

#: Report kinds that are about one patient and must carry the patient's chain.
_PER_PATIENT = frozenset({"accounting", "access-report"})

#: Findings kept in a report (more are counted): one dropped line can break every later link.
MAX_FINDINGS = 1000

#: Opens one entry: (opening, leaf, index) -> the entry's audit row as its facts say; raises
#: ValueError (or a LedgerError) when the opening does not decrypt or decode. The leaf is its
#: fields (``leaf.leaf_fields``: kind and flags plain integers), not a ``Leaf``.
RowOpener = Callable[[EntryOpening, LeafFields, int], AuditRow]
#: Entry kinds whose evidence is audit facts (the others on a patient's chain are consents,
#: admin and key entries, which an export does not open).
_AUDIT_KINDS = frozenset(
    {EntryKind.ACCESS_DECISION, EntryKind.ACCESS_OUTCOME, EntryKind.DISCLOSURE}
)
#: Whether a report includes an entry (e.g. the 45 CFR 164.528 accounting's rule).
RowRule = Callable[[AuditRow], bool]
#: The report's columns of a row, None when the report does not show it (default:
#: :func:`~middleware.audit.export_columns.columns_for` of the header's report kind).
Columns = Callable[[AuditRow], Sequence[str] | None]


@dataclass(frozen=True, slots=True)
class ExportFinding:
    """One thing that does not verify: a stable ``code`` (docs/audit.md lists them), the
    file ``line`` (1-based; None for the file as a whole), the ledger ``index``, a message."""

    code: str
    message: str
    line: int | None = None
    index: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        if self.index is not None:
            out["index"] = self.index
        return out


@dataclass
class ExportReport:
    """The verdict: ``ok`` when nothing was found; counts of lines and rows checked."""

    kind: str = "export"
    report: str | None = None
    size: int | None = None
    lines: int = 0
    rows: int = 0
    shredded: int = 0
    findings: list[ExportFinding] = field(default_factory=list)
    omitted: int = 0
    #: What the file claims and was checked against: patient, agent, since, until, size,
    #: chain (hex), tail (``after``, ``end-of-log``, ``unproven``, None without a chain).
    scope: dict[str, Any] = field(default_factory=dict)
    #: The inclusion rules applied (an accounting's exemption rules), None: none or given.
    rules: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.findings and not self.omitted

    def add(self, code: str, message: str, line: int | None, index: int | None = None) -> None:
        if len(self.findings) >= MAX_FINDINGS:
            self.omitted += 1
        else:
            self.findings.append(ExportFinding(code, message, line, index))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "kind": self.kind,
            "report": self.report,
            "size": self.size,
            "lines": self.lines,
            "rows": self.rows,
            "shredded": self.shredded,
            "findings": [f.to_json() for f in self.findings],
            "findings_omitted": self.omitted,
            "scope": self.scope,
            "rules": self.rules,
        }


def verify_file(
    text: Iterable[str],
    policy: TrustPolicy,
    *,
    opener: RowOpener | None,
    rules: Mapping[str, RowRule] | None = None,
    columns: Mapping[str, Columns] | None = None,
) -> ExportReport:
    """Verify an export or a receipt (told apart by their first line); see
    :func:`verify_export` and :func:`verify_receipt`."""
    lines = iter(text)
    first = next(lines, "")
    if first.rstrip("\n") == TLOG_PROOF_HEADER:
        return verify_receipt(first + "".join(lines), policy)
    return verify_export(
        itertools.chain((first,), lines), policy, opener=opener, rules=rules, columns=columns
    )


def verify_receipt(text: str, policy: TrustPolicy) -> ExportReport:
    """Check a receipt (``/ledger/receipt/{index}``, C2SP tlog-proof): its checkpoint's
    signature against ``policy`` and the inclusion of the leaf in its ``extra`` line."""
    report = ExportReport(kind="receipt", lines=1)
    try:
        proof = parse_receipt(text)
    except LedgerError as exc:
        report.add("receipt-malformed", str(exc), None)
        return report
    checkpoint = _checkpoint(report, proof.checkpoint, policy)
    if checkpoint is None:
        return report
    report.size = checkpoint.size
    if proof.extra is None:
        report.add("receipt-leaf", "the receipt carries no leaf bytes (extra)", None, proof.index)
        return report
    try:
        decode_leaf(proof.extra)
        check_receipt(proof, proof.extra, checkpoint)
    except LedgerError as exc:
        report.add("proof", f"inclusion: {exc}", None, proof.index)
    report.rows = 1
    return report


def verify_export(
    text: Iterable[str],
    policy: TrustPolicy,
    *,
    opener: RowOpener | None,
    rules: Mapping[str, RowRule] | None = None,
    columns: Mapping[str, Columns] | None = None,
) -> ExportReport:
    """Verify an export's lines (NDJSON or CSV, told apart by the first character) against
    ``policy``. ``opener`` decrypts an entry's facts (None: openings are not checked, which is
    itself a finding). ``rules`` and ``columns`` map a report kind to its inclusion rule and
    its columns (absent: no rule; the kind's own, ``export_columns.columns_for``)."""
    lines = iter(text)
    report, check = begin_export(
        next(lines, ""), policy, opener=opener, rules=rules, columns=columns
    )
    if check is None:
        return report
    for number, entry in check.entries(lines):
        report.lines += 1
        if isinstance(entry, str):
            report.add("line-malformed", entry, number)
        else:
            check.entry(number, entry)
    check.finish()
    return report


def begin_export(
    first: str,
    policy: TrustPolicy,
    *,
    opener: RowOpener | None,
    rules: Mapping[str, RowRule] | None = None,
    columns: Mapping[str, Columns] | None = None,
) -> tuple[ExportReport, ExportChecker | None]:
    """The report with the header's findings (the export's ``first`` line) and the checker of
    its entry lines; None when the header is unusable (then nothing else is checked)."""
    report = ExportReport()
    try:
        header, names = read_header(first)
    except HeaderError as exc:
        report.add(exc.code, str(exc), 1)
        return report, None
    report.report = header["report"]
    checkpoint = _checkpoint(report, header["checkpoint"], policy)
    if checkpoint is not None:
        report.size = checkpoint.size
        if header.get("origin") != checkpoint.origin:
            report.add("header-malformed", "the header's origin is not the checkpoint's", 1)
    check = ExportChecker(
        report,
        header=header,
        names=names,
        checkpoint=checkpoint,
        opener=opener,
        rules=rules or {},
        columns=columns or {},
        escaped=first.startswith("#"),
    )
    return report, check


# -- checkpoint -------------------------------------------------------------------------------


def _checkpoint(report: ExportReport, note: str, policy: TrustPolicy) -> Checkpoint | None:
    """The checkpoint if its signature, origin and key window hold, else None (reported)."""
    verifiers = [Verifier(k.key) for k in policy.keys]
    try:
        signed = verify_note(note, verifiers)
        checkpoint = parse_checkpoint(signed.text)
    except LedgerError as exc:
        report.add("checkpoint-signature", f"the checkpoint does not verify: {exc}", 1)
        return None
    if checkpoint.origin != policy.origin:
        report.add("checkpoint-origin", f"the checkpoint is for {checkpoint.origin!r}", 1)
        return None
    keys = [k for s in signed.signatures if (k := policy.lookup(s.name, s.key_id))]
    if not any(k.covers(checkpoint.size) for k in keys):
        report.add("key-window", "the checkpoint's key is not valid for its size", 1)
        return None
    return checkpoint


# -- checks -----------------------------------------------------------------------------------


class ExportChecker:
    """The per-line checks (:meth:`entry`) and the chain (``order``), fed one parsed line at
    a time, then :meth:`finish`; findings go to ``report``."""

    def __init__(
        self,
        report: ExportReport,
        *,
        header: dict[str, Any],
        names: tuple[str, ...],
        checkpoint: Checkpoint | None,
        opener: RowOpener | None,
        rules: Mapping[str, RowRule],
        columns: Mapping[str, Columns],
        escaped: bool = False,
    ) -> None:
        self.report = report
        self.header = header
        self.names = names
        self.escaped = escaped  # CSV: report cells carry report_csv.csv_escape
        self.proofs = None if checkpoint is None else InclusionChecker(checkpoint)
        self.opener = opener
        kind, patient = header["report"], header.get("patient")
        self.rule = rules.get(kind)
        if self.rule is None:
            try:
                self.rule = default_rule(kind, patient, header["rules"])
            except ValueError as exc:
                report.add("header-malformed", f"the header's rules: {exc}", 1)
            if kind == "accounting" and patient is not None:
                report.rules = header["rules"]  # None: the documented defaults applied
        chain: bytes | None = header["chain"]
        if chain is None and (kind in _PER_PATIENT or patient is not None):
            # 45 CFR 164.528 and the access report are complete lists: without the chain
            # nothing shows that entries were not left out (the header is not signed).
            report.add("chain-missing", "a per-patient export without the patient's chain", 1)
        since, until = header["since"], header["until"]
        report.scope = {
            "patient": patient,
            "agent": header.get("agent"),
            "since": None if since is None else format_time(since),
            "until": None if until is None else format_time(until),
            "size": None if checkpoint is None else checkpoint.size,
            "chain": None if chain is None else chain.hex(),
            "tail": None,
        }
        names_of_kind, columns_of_kind = columns_for(kind)
        self.columns = columns.get(header["report"], columns_of_kind)
        if header["report"] not in columns and names != names_of_kind:
            report.add("header-malformed", "the header's columns are not its report's", 1)
        self.checkpoint = checkpoint
        self.order = LineOrder(
            report.add, chain, size=None if checkpoint is None else checkpoint.size
        )
        if opener is None:
            report.add("no-opener", "openings were not checked (no way to decrypt them)", None)

    def entries(self, lines: Iterator[str]) -> Iterator[tuple[int, ExportLine | str]]:
        """The entry lines after the header line (``export_read``'s, CSV or NDJSON)."""
        if self.escaped:
            return csv_lines(lines, self.names)
        return ndjson_lines(lines, self.names)

    def entry(self, number: int, line: ExportLine) -> None:
        add, index = self.report.add, line.index
        try:
            leaf = leaf_fields(line.leaf)  # decode_leaf's checks, without the Leaf
        except LedgerError as exc:
            add("leaf-malformed", f"the leaf: {exc}", number, index)
            return
        if self.proofs is not None and not self.proofs.check(index, line.leaf, line.proof):
            add("proof", self.proofs.explain(index, line.leaf, line.proof), number, index)
        self.order.feed(number, line.role, index, leaf)
        if line.role in ("row", "other"):
            self._opening(number, line, leaf)
        elif line.role in ("before", "after") and self._inside(leaf):
            # Recorded outside the period, not necessarily before (after) it: an outbox replay
            # appends an entry recorded earlier (export.plan_chain).
            self.report.add(
                "scope", f"the '{line.role}' entry is inside the period", number, line.index
            )

    def _inside(self, leaf: LeafFields) -> bool:
        since, until = self.header["since"], self.header["until"]
        return (since is None or leaf.recorded_us >= since) and (
            until is None or leaf.recorded_us <= until
        )

    def _opening(self, number: int, line: ExportLine, leaf: LeafFields) -> None:
        add, index, opening = self.report.add, line.index, line.opening
        if line.role == "row":
            self.report.rows += 1
        if opening is None:
            # A crypto-shredded entry cannot be opened; its row may say only what its leaf does.
            if line.role == "row" and line.columns == self._shredded_cells(index, line.leaf):
                self.report.shredded += 1
            elif line.role == "other" and leaf.kind not in _AUDIT_KINDS:
                pass  # a consent, admin or key entry on the chain: no audit facts to open
            else:
                add("opening", "the line has no opening (salt, evidence)", number, index)
            return
        try:
            commitment = commit_evidence(opening.salt, opening.evidence)
        except LedgerError as exc:
            add("commitment", str(exc), number, index)
            return
        if not hmac.compare_digest(commitment, leaf.commitment):
            add("commitment", "the evidence is not what the leaf commits to", number, index)
            return
        if self.opener is None:
            return
        try:
            row = self.opener(opening, leaf, index)
            cells = self.columns(row)
        except (ValueError, LedgerError, OverflowError) as exc:
            add("opening", f"the evidence does not open: {exc}", number, index)
            return
        self._row(number, line, leaf, row, None if cells is None else self._cells(cells))

    def _shredded_cells(self, index: int, leaf: bytes) -> tuple[str, ...]:
        """The cells of a shredded entry's row (the ``leaf`` bytes passed ``leaf_fields``)."""
        return self._cells(shredded_columns(index, decode_leaf(leaf)))

    def _cells(self, cells: Sequence[str]) -> tuple[str, ...]:
        """The cells as the file holds them (a CSV escapes formulas: ``csv_escape``, its
        test inlined, which saves a call for each of a row's cells)."""
        if not self.escaped:
            return tuple(cells)
        return tuple([c if c[:1] not in FORMULA_START else csv_escape(c) for c in cells])

    def _row(
        self,
        number: int,
        line: ExportLine,
        leaf: LeafFields,
        row: AuditRow,
        expected: tuple[str, ...] | None,
    ) -> None:
        add, index, header = self.report.add, line.index, self.header
        if line.role != "row":
            pass
        elif expected is None:
            add("membership", "the report does not show this entry", number, index)
        elif line.columns != expected:
            edited = _differing(self.names, line.columns, expected)
            add("edited", f"columns differ from the entry's facts: {edited}", number, index)
        inside = self._inside(leaf)
        if line.role == "row" and not inside:
            add("scope", "the entry is outside the export's period", number, index)
        if header.get("patient") is not None and row.patient != header["patient"]:
            add("scope", "the entry is about another patient", number, index)
        if line.role == "row" and header.get("agent") is not None and row.agent != header["agent"]:
            add("scope", "the entry is another user's", number, index)
        if self.rule is not None and inside and self.rule(row) != (line.role == "row"):
            which = "left out of" if line.role == "row" else "belongs in"
            add("membership", f"the report's rule says this entry {which} it", number, index)

    def finish(self) -> None:
        tail = self.order.finish()
        self.report.scope["tail"] = tail


def _differing(names: Sequence[str], given: Sequence[str] | None, expected: Sequence[str]) -> str:
    if given is None or len(given) != len(expected):
        return "the row's cells"
    return ", ".join(n for n, a, b in zip(names, given, expected, strict=False) if a != b)
