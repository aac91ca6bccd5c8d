"""Offline verification of an audit export (``middleware.audit.export``) or a receipt.

:func:`verify_export` needs the file and the verifier's trust policy
(:mod:`middleware.ledger.trust`), never the gateway. It checks, and reports each failure as an
:class:`ExportFinding` naming the file line and ledger index:

- the header: the format version, the checkpoint note's signature by a key the policy trusts
  for the checkpoint's size, and its origin (C2SP signed-note, tlog-checkpoint); with a
  witness quorum in the policy, that many valid cosignatures on it
  (:mod:`middleware.ledger.quorum`);
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

This module reads the header (the checkpoint's signature, the scope) and feeds the entry
lines to :class:`~middleware.audit.export_check.ExportChecker`, which checks each line and
their order; the verdict is a :class:`~middleware.audit.verify_report.ExportReport`.
Inclusion proofs are checked by :class:`~middleware.audit.inclusion.InclusionChecker`: the
RFC's check, in about one hash a row for an export in index order instead of ``log2(size)``.
Reading the file is :mod:`middleware.audit.export_read`'s (and ``export_read_csv``'s).

Pure: the ``opener`` (which decrypts, see ``middleware.audit.evidence``) is handed in.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from middleware.audit.export_check import Columns, ExportChecker, RowOpener, RowRule
from middleware.audit.export_read import HeaderError, read_header
from middleware.audit.verify_report import ExportFinding, ExportReport
from middleware.ledger.checkpoint import Checkpoint, parse_checkpoint
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import decode_leaf
from middleware.ledger.quorum import quorum_finding
from middleware.ledger.receipt import TLOG_PROOF_HEADER, check_receipt, parse_receipt
from middleware.ledger.signing import Verifier, verify_note
from middleware.ledger.trust import TrustPolicy

# The report and the line checks live in verify_report and export_check; their names are
# re-exported here, where callers of the verifier find them. Not MAX_FINDINGS: the cap is
# read in verify_report (ExportReport.add), the one place to set or patch it.
__all__ = [
    "Columns",
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
    if check is not None:
        check.run(lines)
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
    # A policy with a witness quorum: the checkpoint must carry that many cosignatures.
    witnessed = quorum_finding(note, policy)
    if witnessed is not None:
        report.add(witnessed[0], f"the checkpoint: {witnessed[1]}", 1)
        return None
    return checkpoint
