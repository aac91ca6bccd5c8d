"""The checks of an export's entry lines (:class:`ExportChecker`), given its header: each
line's leaf, inclusion proof, commitment, opening, columns, scope and the report's rule, and
the order of the lines (``export_chain.LineOrder``). :mod:`middleware.audit.verify_export`
reads the header and feeds it the lines.
Pure: the ``opener`` (which decrypts, see ``middleware.audit.evidence``) is handed in.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from middleware.audit.export import EntryOpening, format_time, shredded_columns
from middleware.audit.export_chain import LineOrder
from middleware.audit.export_columns import columns_for
from middleware.audit.export_fast import Accept, Same, csv_same, ndjson_same, row_acceptor
from middleware.audit.export_fast_csv import joined_same, judge_plain
from middleware.audit.export_read import ExportLine, RawLine, decode_raw_line, ndjson_line
from middleware.audit.export_read_csv import csv_lines, csv_part
from middleware.audit.export_rules import default_rule
from middleware.audit.inclusion import InclusionChecker
from middleware.audit.report_csv import FORMULA_START, csv_escape
from middleware.audit.row import AuditRow
from middleware.audit.verify_report import ExportReport
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import EntryKind, LeafFields, commit_evidence, decode_leaf, leaf_fields

__all__ = ["Columns", "ExportChecker", "RowOpener", "RowRule", "Verdict"]

#: Report kinds that are about one patient and must carry the patient's chain.
_PER_PATIENT = frozenset({"accounting", "access-report"})

#: Opens one entry: (opening, leaf, index) -> the entry's audit row as its facts say; raises
#: ValueError (or a LedgerError) when the opening does not decrypt or decode. The leaf is its
#: fields (``leaf.leaf_fields``: kind and flags plain integers), not a ``Leaf``.
RowOpener = Callable[[EntryOpening, LeafFields, int], AuditRow]
#: Entry kinds whose evidence is audit facts (the others on a patient's chain are consents,
#: admin and key entries, which an export does not open).
_AUDIT_KINDS = frozenset(
    {EntryKind.ACCESS_DECISION, EntryKind.ACCESS_OUTCOME, EntryKind.DISCLOSURE}
)
#: What :meth:`ExportChecker.judge` says of a line: a ``row`` line that raises no finding
#: as ``(index, leaf fields)``, any other line as read, or why it cannot be read.
Verdict = tuple[int, LeafFields] | ExportLine | str
#: Whether a report includes an entry (e.g. the 45 CFR 164.528 accounting's rule).
RowRule = Callable[[AuditRow], bool]
#: The report's columns of a row, None when the report does not show it (default:
#: :func:`~middleware.audit.export_columns.columns_for` of the header's report kind).
Columns = Callable[[AuditRow], Sequence[str] | None]


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

    def run(self, lines: Iterable[str]) -> None:
        """Check the entry lines after the header line (CSV or NDJSON), counting them on the
        report, then :meth:`finish`: :meth:`apply` of :meth:`judge`."""
        self.apply(self.judge(lines))
        self.finish()

    def judge(self, lines: Iterable[str], *, part: bool = False) -> Iterator[tuple[int, Verdict]]:
        """Each entry line's number and verdict (see :data:`Verdict`); ``lines`` are the
        file's lines after the header line (for CSV the column line first). A ``row`` line
        with its opening is tried on the fast path (``export_fast``), which passes only a
        line without findings. Changes nothing but what makes later proofs cheaper, so lines
        may be judged ahead of the lines before them being applied, and in parts:
        ``part`` lines are later lines of the file, starting at a record (no column line),
        numbered from 1 (``verify_parallel`` adds the lines before them)."""
        accept = self._accept()
        if self.escaped:
            it = iter(lines)
            read = csv_part(it, self.names) if part else csv_lines(it, self.names)
            yield from _csv_verdicts(read, accept)
            return
        names = self.names
        for number, text in enumerate(lines, start=1 if part else 2):
            if not text or text.isspace():  # not text.strip(), without copying the line
                continue
            if accept is not None:
                try:
                    raw: RawLine | None = decode_raw_line(text)
                except ValueError:  # msgspec.DecodeError, ValidationError
                    raw = None
                if raw is not None and raw.role == "row" and raw.index >= 0:
                    salt, evidence = raw.salt, raw.evidence
                    if salt is not None and evidence is not None:
                        opening = EntryOpening(salt, evidence, raw.key)
                        leaf = accept(raw.index, raw.leaf, raw.proof, opening, raw.columns)
                        if leaf is not None:
                            yield number, (raw.index, leaf)
                            continue
            yield number, ndjson_line(text, names)

    def judge_plain(self, lines: Iterable[str], *, part: bool) -> Iterator[tuple[int, Verdict]]:
        """:meth:`judge` of a CSV export's lines as ``export_fast_csv.PlainLines`` gives them
        (without their newlines, no quote: each line a record): the same verdicts, sooner,
        a ``row`` line's cells compared joined (``export_fast_csv.judge_plain``). Raises
        what iterating ``lines`` raises."""
        names, it = self.names, iter(lines)
        if not part:  # the column line first, as csv_lines reads it (a Stop ends the reading)
            stop = list(csv_lines(itertools.islice(it, 1), names))
            if stop:
                yield from stop
                return
        accept = self._accept()

        def slow(number: int, line: str) -> Iterator[tuple[int, Verdict]]:
            read = csv_part(iter((line,)), names)  # one line, one record: numbered 1
            return _csv_verdicts(((number, verdict) for _, verdict in read), accept)

        yield from judge_plain(
            it,
            len(names),
            after=0 if part else 2,  # the column line is the file's second
            accept=self._accept(joined_same(len(names))),
            slow=slow,
        )

    def apply(self, verdicts: Iterable[tuple[int, Verdict]]) -> None:
        """Count and check judged lines, in file order: a passed row counted and fed to the
        order; any other line through :meth:`entry` (or a ``line-malformed`` finding)."""
        report, feed, add, entry = self.report, self.order.feed, self.report.add, self.entry
        for number, verdict in verdicts:
            report.lines += 1
            if isinstance(verdict, tuple):
                report.rows += 1
                feed(number, "row", verdict[0], verdict[1])
            elif isinstance(verdict, str):
                add("line-malformed", verdict, number)
            else:
                entry(number, verdict)

    def _accept(self, same: Same | None = None) -> Accept | None:
        """The fast path's check of a row line (its cells compared by ``same``, default the
        format's), None when every line takes the full path (no trusted checkpoint, no
        opener)."""
        if self.proofs is None or self.opener is None:
            return None
        header = self.header
        if same is None:
            same = csv_same if self.escaped else ndjson_same(self.names)
        return row_acceptor(
            proofs=self.proofs,
            opener=self.opener,
            columns=self.columns,
            same=same,
            since=header["since"],
            until=header["until"],
            patient=header.get("patient"),
            agent=header.get("agent"),
            rule=self.rule,
        )

    def entry(self, number: int, line: ExportLine) -> None:
        """The checks of one entry line, its findings in order (the full path)."""
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
        """After the last line: the chain's end (``LineOrder.finish``) into the scope."""
        tail = self.order.finish()
        self.report.scope["tail"] = tail


def _csv_verdicts(
    read: Iterable[tuple[int, ExportLine | str]], accept: Accept | None
) -> Iterator[tuple[int, Verdict]]:
    """The verdicts of CSV lines as read: a ``row`` line with its opening tried on the fast
    path (``accept``; None: none), any other line as read."""
    for number, line in read:
        if accept is not None and not isinstance(line, str) and line.role == "row":
            opening = line.opening
            if opening is not None:
                index = line.index
                leaf = accept(index, line.leaf, line.proof, opening, line.columns)
                if leaf is not None:
                    yield number, (index, leaf)
                    continue
        yield number, line


def _differing(names: Sequence[str], given: Sequence[str] | None, expected: Sequence[str]) -> str:
    if given is None or len(given) != len(expected):
        return "the row's cells"
    return ", ".join(n for n, a, b in zip(names, given, expected, strict=False) if a != b)
