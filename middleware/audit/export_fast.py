"""The verifier's fast path for an export's common line: a row with its opening that passes
every check (:class:`~middleware.audit.export_check.ExportChecker`'s).

:func:`row_acceptor` makes a function that takes a ``row`` line's values and answers its
leaf's fields when the line raises no finding at all (its leaf parses, the inclusion proof
holds, the evidence is what the leaf commits to, opens to a row whose cells are the line's,
inside the export's scope, and the report's rule includes it), else None. It changes no
state that matters (the inclusion checker remembers nodes it authenticated, which only
makes later proofs cheaper), so on None the checker judges the line again on its full path,
which reports the findings in their order; on a leaf, the line's only effects are the ones
the full path has for a line without findings (a row counted, the line fed to the order).

It is faster for being one function over local names, for comparing a row's cells at once
(NDJSON: the line's ``columns`` object, undecoded, against the expected cells as msgspec
encodes them, which is how the exporter writes them; any other spelling of the same values
is judged by the full path) and for stopping at the first failed check. Pure: the
``opener`` is handed in.
"""

from __future__ import annotations

import hmac
import operator
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from middleware.audit.export import EntryOpening
from middleware.audit.inclusion import InclusionChecker
from middleware.audit.report_csv import FORMULA_START, csv_escape
from middleware.audit.row import AuditRow
from middleware.ledger.errors import LedgerError
from middleware.ledger.leaf import LeafFields, commit_evidence, leaf_fields

__all__ = ["Accept", "Same", "csv_same", "ndjson_same", "row_acceptor"]

#: ``accept(index, leaf, proof, opening, given)``: the leaf's fields when the ``row`` line
#: with these values raises no finding, else None (module docstring). ``given`` is the line's
#: cells as its format holds them (see :data:`Same`).
Accept = Callable[[int, bytes, bytes, EntryOpening, Any], LeafFields | None]
#: ``same(cells, given)``: whether a row's expected ``cells`` are exactly the line's
#: ``given`` ones (True only when the full path would find them equal).
Same = Callable[[Sequence[str], Any], bool]

_ENCODE = msgspec.json.Encoder().encode


def ndjson_same(names: tuple[str, ...]) -> Same:
    """For NDJSON lines whose ``given`` is the ``columns`` value as raw JSON
    (``msgspec.Raw``): equal when it is the object of ``names`` to the cells, in that order,
    as msgspec writes it. A line that spells the same object otherwise is not equal here
    (the full path decodes and compares it)."""
    fields = [(f"c{i}", str) for i in range(len(names))]
    try:
        columns = msgspec.defstruct(
            "Columns", fields, rename={f"c{i}": n for i, n in enumerate(names)}, gc=False
        )
    except ValueError:  # a name msgspec will not write (a quote, a control character...)
        return _never

    def same(cells: Sequence[str], given: Any) -> bool:
        try:
            return bool(msgspec.Raw(_ENCODE(columns(*cells))) == given)
        except (TypeError, ValueError):  # not as many cells as names, or not text
            return False

    return same


def _never(cells: Sequence[str], given: Any) -> bool:
    return False


def csv_same(cells: Sequence[str], given: Any) -> bool:
    """For CSV lines, whose ``given`` is the tuple of the record's report cells: equal when
    they are the cells as the file holds them (``report_csv.csv_escape``)."""
    # Most rows have no cell to escape, which a loop in C over their first characters finds.
    if FORMULA_START.isdisjoint(map(_FIRST_CHARACTER, cells)):
        return bool(tuple(cells) == given)
    return bool(tuple([c if c[:1] not in FORMULA_START else csv_escape(c) for c in cells]) == given)


_FIRST_CHARACTER = operator.itemgetter(slice(0, 1))  # c[:1]: empty for an empty cell


def row_acceptor(
    *,
    proofs: InclusionChecker,
    opener: Callable[[EntryOpening, LeafFields, int], AuditRow],
    columns: Callable[[AuditRow], Sequence[str] | None],
    same: Same,
    since: int | None,
    until: int | None,
    patient: str | None,
    agent: str | None,
    rule: Callable[[AuditRow], bool] | None,
) -> Accept:
    """The fast check of a ``row`` line (module docstring), for an export of this scope
    (``since``/``until`` in microseconds, ``patient``, ``agent``: the header's; None: any)
    and ``rule`` (None: none)."""
    check = proofs.check
    digest_equal = hmac.compare_digest

    def accept(
        index: int, leaf: bytes, proof: bytes, opening: EntryOpening, given: Any
    ) -> LeafFields | None:
        try:
            fields = leaf_fields(leaf)
            commitment = commit_evidence(opening.salt, opening.evidence)
        except LedgerError:
            return None
        if not check(index, leaf, proof) or not digest_equal(commitment, fields.commitment):
            return None
        try:
            row = opener(opening, fields, index)
            cells = columns(row)
        except (ValueError, LedgerError, OverflowError):
            return None
        if cells is None or not same(cells, given):
            return None
        recorded = fields.recorded_us
        if (since is not None and recorded < since) or (until is not None and recorded > until):
            return None
        if (patient is not None and row.patient != patient) or (
            agent is not None and row.agent != agent
        ):
            return None
        # `is not True`: a rule answering another truthy value is judged by the full path.
        if rule is not None and rule(row) is not True:
            return None
        return fields

    return accept
