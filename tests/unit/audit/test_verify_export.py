"""verify_export: an untouched export verifies; every kind of edit is reported by line and index."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit import verify_report
from middleware.audit.accounting import DEFAULT_EXEMPT
from middleware.audit.row import AuditRow
from middleware.audit.verify_export import ExportReport, verify_file
from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.receipt import TlogProof, format_receipt
from middleware.ledger.signing import SigningKey
from middleware.ledger.tree import MerkleLevels
from tests.contract.helpers import KEY, ORIGIN
from tests.unit.audit import export_fixtures
from tests.unit.audit.export_fixtures import (
    HOUR,
    PATIENTS,
    POLICY,
    T0,
    Log,
    build_log,
    export,
    fake_opener,
)

LOG = build_log()
# Patient a's chain is 0 1 3 4 6 7 9 10 (b has every third entry); the period, hours 2..8,
# holds 3 4 6 7 with 1 before it and 9 after it.
PERIOD = [3, 4, 6, 7]


def check(text: str, **kwargs: object) -> ExportReport:
    return verify_file(io.StringIO(text), POLICY, opener=fake_opener, **kwargs)  # type: ignore[arg-type]


def codes(report: ExportReport) -> set[str]:
    return {f.code for f in report.findings}


@pytest.mark.parametrize("fmt", ["ndjson", "csv"], ids=["ndjson", "csv"])
def test_an_untouched_export_verifies(fmt: str) -> None:
    report = check(export(LOG, fmt=fmt))
    assert report.ok, report.findings
    assert (report.rows, report.lines, report.size) == (4, 6, LOG.size)


def test_the_lines_are_the_patient_s_chain_in_the_period() -> None:
    lines = [json.loads(line) for line in export(LOG).splitlines()[1:]]
    assert [(line["role"], line["index"]) for line in lines] == [
        ("before", 1),
        *(("row", i) for i in PERIOD),
        ("after", 9),
    ]
    assert "salt" not in lines[0]  # the boundaries disclose nothing
    assert "columns" not in lines[-1]


# -- NDJSON tampering: (edit of the list of lines, expected codes, line of the first finding) ---

Lines = list[str]


def _ndjson(edit: Callable[[Lines], None]) -> str:
    lines = export(LOG).splitlines()
    edit(lines)
    return "\n".join(lines) + "\n"


def _set(line: int, key: str, value: object) -> Callable[[Lines], None]:
    def edit(lines: Lines) -> None:
        obj = json.loads(lines[line - 1])
        target = obj["columns"] if key in obj.get("columns", {}) else obj
        target[key] = value
        lines[line - 1] = json.dumps(obj)

    return edit


def _drop(line: int) -> Callable[[Lines], None]:
    def edit(lines: Lines) -> None:
        del lines[line - 1]

    return edit


def _swap(a: int, b: int) -> Callable[[Lines], None]:
    def edit(lines: Lines) -> None:
        lines[a - 1], lines[b - 1] = lines[b - 1], lines[a - 1]

    return edit


def _insert_from(other: str, index: int, at: int) -> Callable[[Lines], None]:
    """Insert the line of ``index`` from another patient's export (genuine leaf and proof)."""
    found = next(line for line in other.splitlines()[1:] if json.loads(line)["index"] == index)
    return lambda lines: lines.insert(at - 1, found)


def _forge(at: int) -> Callable[[Lines], None]:
    """A made-up row: a copy of line 3 claiming the unused index 5 (patient b's)."""

    def edit(lines: Lines) -> None:
        obj = json.loads(lines[2])
        obj["index"] = 5
        lines.insert(at - 1, json.dumps(obj))

    return edit


def _older_checkpoint(lines: Lines) -> None:
    header = json.loads(lines[0])
    tree = MerkleLevels.of_leaves(LOG.leaves)
    header["checkpoint"] = KEY.sign_checkpoint(Checkpoint(ORIGIN, 11, tree.root(11)))
    lines[0] = json.dumps(header)


def _stranger_checkpoint(lines: Lines) -> None:
    header = json.loads(lines[0])
    stranger = SigningKey.from_seed(ORIGIN, bytes([9]) * 32)
    root = MerkleLevels.of_leaves(LOG.leaves).root()
    header["checkpoint"] = stranger.sign_checkpoint(Checkpoint(ORIGIN, LOG.size, root))
    lines[0] = json.dumps(header)


def _b64_flip(line: int, key: str) -> Callable[[Lines], None]:
    def edit(lines: Lines) -> None:
        obj = json.loads(lines[line - 1])
        data = bytearray(base64.b64decode(obj[key]))
        data[-1] ^= 1
        obj[key] = base64.b64encode(bytes(data)).decode()
        lines[line - 1] = json.dumps(obj)

    return edit


B_EXPORT = export(LOG, "Patient/b")

NDJSON_CASES = [
    # Edits of a row's columns: what the facts say wins.
    (_set(3, "agent", "Practitioner/nobody"), {"edited"}, 3),
    (_set(4, "purpose_codes", ""), {"edited"}, 4),
    # Dropped lines: the next leaf names the missing index.
    (_drop(3), {"chain-gap"}, 3),
    (_drop(2), {"chain-gap"}, 2),
    (_drop(5), {"chain-gap"}, 5),
    # Inserted lines: another patient's genuine entry, a forged one.
    (_insert_from(B_EXPORT, 5, 4), {"chain-foreign", "scope"}, 4),
    (_forge(5), {"proof", "chain-inserted"}, 5),
    # Reordered lines.
    (_swap(3, 4), {"order", "chain-gap", "chain-inserted"}, 3),
    # A line repeated.
    (lambda lines: lines.insert(3, lines[2]), {"duplicate", "chain-inserted"}, 4),
    # The header's checkpoint: an older genuine one, another key's, an edited one.
    (_older_checkpoint, {"proof"}, 2),
    (_stranger_checkpoint, {"checkpoint-signature"}, 1),
    (_set(1, "checkpoint", "not a note"), {"checkpoint-signature"}, 1),
    # The proofs themselves: evidence, leaf, proof hash, index.
    (_b64_flip(3, "evidence"), {"commitment"}, 3),
    (_b64_flip(3, "salt"), {"commitment"}, 3),
    (_b64_flip(3, "proof"), {"proof"}, 3),
    (_b64_flip(2, "leaf"), {"proof"}, 2),
    (_set(3, "index", 2), {"proof", "chain-gap"}, 3),
    (_set(3, "evidence", base64.b64encode(b"{}").decode()), {"commitment"}, 3),
    (lambda lines: lines.insert(2, "{not json"), {"line-malformed"}, 3),
    (_set(1, "format", "something-else/v9"), {"header-format"}, 1),
    # The period moved past an entry: a row outside it, or a boundary inside it.
    (_set(1, "since", "2026-01-01T03:30:00.000000Z"), {"scope"}, 3),
    (_set(1, "since", "2026-01-01T00:30:00.000000Z"), {"scope"}, 2),
    (_set(1, "origin", "another.example/log"), {"header-malformed"}, 1),
    (_set(1, "columns", ["date", "agent"]), {"header-malformed", "line-malformed"}, 1),
]


@pytest.mark.parametrize(
    ("edit", "expected", "line"),
    NDJSON_CASES,
    ids=[
        "edited-agent",
        "edited-purposes",
        "dropped-row",
        "dropped-before",
        "dropped-last-row",
        "inserted-other-patient",
        "inserted-forged",
        "swapped-rows",
        "repeated-row",
        "older-checkpoint",
        "untrusted-checkpoint",
        "garbled-checkpoint",
        "evidence-edited",
        "salt-edited",
        "proof-edited",
        "leaf-edited",
        "index-edited",
        "evidence-replaced",
        "garbage-line",
        "other-format",
        "period-starts-later",
        "period-starts-earlier",
        "origin-edited",
        "columns-renamed",
    ],
)
def test_each_ndjson_edit_is_found(
    edit: Callable[[Lines], None], expected: set[str], line: int
) -> None:
    report = check(_ndjson(edit))
    assert not report.ok
    assert expected <= codes(report), report.findings
    assert report.findings[0].line == line


def test_a_dropped_row_names_the_missing_index() -> None:
    report = check(_ndjson(_drop(3)))  # index 3
    assert [(f.code, f.line, f.index) for f in report.findings] == [("chain-gap", 3, 4)]
    assert "entry 3 " in report.findings[0].message


# -- CSV tampering -------------------------------------------------------------------------


def _csv(edit: Callable[[list[list[str]]], None]) -> str:
    text = export(LOG, fmt="csv")
    first, _, rest = text.partition("\r\n")
    records = list(csv.reader(io.StringIO(rest)))
    edit(records)
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(records)
    return first + "\r\n" + out.getvalue()


def _cell(record: int, column: str, value: str) -> Callable[[list[list[str]]], None]:
    def edit(records: list[list[str]]) -> None:
        records[record][records[0].index(column)] = value

    return edit


CSV_CASES = [
    (_cell(2, "agent", "Practitioner/x"), {"edited"}, 4),
    (_cell(2, "date", "2026-01-01T00:00:00.000000Z"), {"edited"}, 4),
    (_cell(3, "result", "refused"), {"edited"}, 5),
    (lambda records: records.pop(3) and None, {"chain-gap"}, 5),
    (_cell(2, "ledger_index", "4"), {"proof", "duplicate", "chain-inserted"}, 4),
    # A row hidden as "other": the access report's own rule (data released is a row).
    (_cell(2, "role", "other"), {"membership"}, 4),
    (_cell(0, "agent", "who"), {"line-malformed"}, 2),
    (lambda records: records[2].pop(), {"line-malformed"}, 4),
]


@pytest.mark.parametrize(
    ("edit", "expected", "line"),
    CSV_CASES,
    ids=[
        "edited-cell",
        "edited-time",
        "edited-result",
        "dropped-record",
        "renumbered",
        "hidden-as-other",
        "renamed-column",
        "short-record",
    ],
)
def test_each_csv_edit_is_found(
    edit: Callable[[list[list[str]]], None], expected: set[str], line: int | None
) -> None:
    report = check(_csv(edit))
    assert expected <= codes(report), report.findings
    if line is not None:
        assert not report.ok
        assert report.findings[0].line == line


def _is_research(row: AuditRow) -> bool:
    return any(p.endswith("|HRESCH") for p in row.purposes)


@pytest.mark.parametrize(
    ("exclude", "ok"),
    [(frozenset({3, 7}), True), (frozenset(), False), (frozenset({3, 4, 6, 7}), False)],
    ids=["as-the-rule-says", "exempt-rows-listed", "accountable-rows-hidden"],
)
def test_a_report_rule_decides_rows_and_others(exclude: frozenset[int], ok: bool) -> None:
    """With the report's rule (here: research disclosures are accountable), a row the rule
    leaves out, or an 'other' line it includes, is a membership finding."""
    text = export(LOG, exclude=exclude)
    report = check(text, rules={"access-report": _is_research})
    assert report.ok == ok, report.findings
    assert ok or codes(report) == {"membership"}


@pytest.mark.parametrize(
    ("consents", "expected"),
    [(frozenset({4}), set()), (frozenset(), {"opening"})],
    ids=["a-consent-entry", "an-audit-entry"],
)
def test_other_lines_without_an_opening(consents: frozenset[int], expected: set[str]) -> None:
    """A consent entry on the patient's chain is an 'other' line with nothing to open; an
    audit entry listed as 'other' without its opening is a finding."""
    log = build_log(consents=consents)
    text = export(log, exclude=frozenset({4}))
    if not consents:  # strip the opening of the audit entry listed as other
        lines = [json.loads(line) for line in text.splitlines()]
        for line in lines[1:]:
            if line["role"] == "other":
                for key in ("salt", "evidence", "key"):
                    line.pop(key)
        text = "\n".join(json.dumps(line) for line in lines) + "\n"
    assert codes(check(text)) == expected


def test_without_an_opener_the_openings_are_unchecked_and_said_so() -> None:
    report = verify_file(io.StringIO(export(LOG)), POLICY, opener=None)
    assert codes(report) == {"no-opener"}


# -- receipts -----------------------------------------------------------------------------


def _receipt(log: Log, index: int, *, flip: bool = False) -> str:
    tree = MerkleLevels.of_leaves(log.leaves)
    leaf = bytearray(log.leaves[index])
    if flip:
        leaf[20] ^= 1
    proof = TlogProof(index, tuple(tree.inclusion_proof(index)), log.note, bytes(leaf))
    return format_receipt(proof)


@pytest.mark.parametrize(
    ("flip", "expected"), [(False, set()), (True, {"proof"})], ids=["genuine", "leaf-edited"]
)
def test_a_receipt_is_checked_by_the_same_command(flip: bool, expected: set[str]) -> None:
    report = check(_receipt(LOG, 4, flip=flip))
    assert report.kind == "receipt"
    assert codes(report) == expected


# -- any one character changed ---------------------------------------------------------------

_CLEAN = export(LOG)
_BINARY = ("leaf", "proof", "salt", "evidence", "key")


def _meaning(text: str) -> list[Any] | None:
    """What the file says, binary fields decoded (None when a line is not JSON)."""
    out: list[Any] = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
            if isinstance(obj, dict):
                for key in _BINARY:
                    if isinstance(obj.get(key), str):
                        obj[key] = base64.b64decode(obj[key], validate=True)
        except (ValueError, binascii.Error):
            return None
        out.append(obj)
    return out


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_CLEAN) - 1), st.characters(min_codepoint=33, max_codepoint=126))
def test_changing_any_character_is_found_unless_it_means_the_same(at: int, char: str) -> None:
    """One character of the export changed (a digit of an index, a letter of a column, of a
    base64 value, of a key name, of the checkpoint note): the verifier finds something, unless
    the file still says exactly the same (a base64 value's unused bits)."""
    if _CLEAN[at] == char or _CLEAN[at] == "\n":
        return
    changed = _CLEAN[:at] + char + _CLEAN[at + 1 :]
    meaning, clean = _meaning(changed), _meaning(_CLEAN)
    if meaning == clean:
        return
    if meaning is not None and _period_moved(meaning[0], clean[0]):  # type: ignore[index]
        # A bound moved inside the gap between two of the patient's entries names the same
        # entries: the file proves that changed claim too (a bound moved past an entry is a
        # 'scope' finding, which the table above pins).
        return
    assert not check(changed).ok


def _period_moved(changed: dict[str, Any], clean: dict[str, Any]) -> bool:
    rest = {k: v for k, v in changed.items() if k not in ("since", "until")}
    return rest == {k: v for k, v in clean.items() if k not in ("since", "until")}


# -- the chain's ends, the header's chain, the verified scope ---------------------------------


def _header(key: str, value: object) -> Callable[[Lines], None]:
    return _set(1, key, value)


def _keep(*numbers: int) -> Callable[[Lines], None]:
    """Keep only the header and the entry lines numbered (file lines, 2 = first entry)."""

    def edit(lines: Lines) -> None:
        lines[:] = [lines[0], *(lines[n - 1] for n in numbers)]

    return edit


def _both(*edits: Callable[[Lines], None]) -> Callable[[Lines], None]:
    def edit(lines: Lines) -> None:
        for one in edits:
            one(lines)

    return edit


# Fails before the fix: each of these verified ok (findings: none).
TRUNCATIONS = [
    # The header's chain nulled, a middle row dropped: no link is checked any more.
    (_both(_header("chain", None), _drop(4)), {"chain-missing"}),
    (_header("chain", None), {"chain-missing"}),
    # The last rows and the 'after' line dropped: the links that remain are all intact.
    (_keep(2, 3, 4), {"chain-tail-unproven"}),
    # Only the 'before' line kept: an export with no rows.
    (_keep(2), {"chain-tail-unproven"}),
]


@pytest.mark.parametrize(
    ("edit", "expected"),
    TRUNCATIONS,
    ids=["chain-nulled-row-dropped", "chain-nulled", "tail-dropped", "before-only"],
)
def test_an_export_cut_short_is_found(edit: Callable[[Lines], None], expected: set[str]) -> None:
    report = check(_ndjson(edit))
    assert not report.ok
    assert expected <= codes(report), report.findings


def test_a_chain_ending_in_the_period_is_proved_by_the_tail() -> None:
    """Patient a's chain ends at 10 and the log at 11: with an open period the export lists
    the tail (index 11, patient b's) and proves the end; without it, or with the last row
    dropped, it does not."""
    text = export(LOG, until_us=None)
    lines = [json.loads(line) for line in text.splitlines()[1:]]
    assert [(line["role"], line["index"]) for line in lines[-3:]] == [
        ("row", 9),
        ("row", 10),
        ("tail", 11),
    ]
    report = check(text)
    assert report.ok, report.findings
    assert report.scope["tail"] == "end-of-log"
    dropped_tail = "".join(text.splitlines(keepends=True)[:-1])
    assert codes(check(dropped_tail)) == {"chain-tail-unproven"}
    parts = text.splitlines(keepends=True)
    del parts[-2]  # row 10: the tail now skips it
    assert codes(check("".join(parts))) == {"chain-tail"}


def test_the_report_names_the_scope_it_verified() -> None:
    report = check(export(LOG))
    assert report.to_json()["scope"] == {
        "patient": "Patient/a",
        "agent": None,
        "since": "2026-01-01T02:00:00.000000Z",
        "until": "2026-01-01T08:00:00.000000Z",
        "size": LOG.size,
        "chain": PATIENTS["Patient/a"].hex(),
        "tail": "after",
    }


# -- the accounting's rule, from the header ----------------------------------------------------

RULES: dict[str, Any] = {
    "exempt": dict(DEFAULT_EXEMPT),
    "compliance_date": None,
    "internal_organizations": [],
}


@pytest.mark.parametrize(
    ("exclude", "rules", "expected"),
    [
        (frozenset({3, 7}), RULES, set()),  # treatment (3, 7) exempt, research (4, 6) not
        (frozenset({3, 7}), None, set()),  # no rules in the header: the defaults
        (frozenset({3, 4, 7}), RULES, {"membership"}),  # a research disclosure hidden
        (frozenset({7}), RULES, {"membership"}),  # an exempt one listed
        (frozenset({3, 7}), {**RULES, "exempt": {}}, {"membership"}),  # other rules applied
        (frozenset({3, 7}), {"exempt": 1}, {"header-malformed"}),
    ],
    ids=["as-exported", "default-rules", "hidden", "listed", "other-rules", "bad-rules"],
)
def test_the_verifier_reapplies_the_accounting_s_rules(
    exclude: frozenset[int], rules: dict[str, Any] | None, expected: set[str]
) -> None:
    """No rule handed in (as ``consentry audit verify-export`` calls it): the accounting's
    exemption rules come from the header and are named in the report."""
    report = check(export(LOG, exclude=exclude, report="accounting", rules=rules))
    assert codes(report) == expected, report.findings
    if rules is RULES:
        assert report.rules == RULES


# -- CSV formula injection -----------------------------------------------------------------------


def test_formula_cells_are_escaped_in_a_csv_export_and_verified(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent a caller controls (a token's subject) that a spreadsheet would run: the CSV
    cell starts with a quote, the NDJSON value is the agent, both verify; the quote removed
    is an edit."""
    plain = export_fixtures.fake_row

    def formula(index: int, recorded_us: int, patient: str, n: int) -> AuditRow:
        return msgspec.structs.replace(plain(index, recorded_us, patient, n), agent="=HYPERLINK(1)")

    monkeypatch.setattr(export_fixtures, "fake_row", formula)
    log = build_log()
    text = export(log, fmt="csv")
    records = list(csv.reader(io.StringIO(text.partition("\r\n")[2])))
    agent = records[0].index("agent")
    assert {r[agent] for r in records[1:] if r[agent]} == {"'=HYPERLINK(1)"}
    assert check(text).ok
    assert check(export(log)).ok
    edited = text.replace("'=HYPERLINK(1)", "=HYPERLINK(1)", 1)
    assert codes(check(edited)) == {"edited"}


# -- times that do not ascend with the index (an outbox replay) -----------------------------------


@pytest.mark.parametrize(
    ("recorded", "exclude", "roles"),
    [
        # 9, the 'after' line, was replayed: recorded at 01:30, before the period.
        ({9: T0 + 3 * HOUR // 2}, frozenset(), {9: "after"}),
        # 6, in the middle of the period's chain, was replayed: an 'other' line outside it.
        ({6: T0 + 3 * HOUR // 2}, frozenset({6}), {6: "other"}),
    ],
    ids=["replayed-after", "replayed-inside"],
)
def test_a_replayed_entry_recorded_earlier_is_no_finding(
    recorded: dict[int, int], exclude: frozenset[int], roles: dict[int, str]
) -> None:
    """Fails before the fix: both were 'scope' findings (the period cut by index, checked by
    time)."""
    log = build_log(recorded=recorded)
    text = export(log, exclude=exclude)
    lines = {(o := json.loads(line))["index"]: o["role"] for line in text.splitlines()[1:]}
    assert roles.items() <= lines.items()
    report = check(text)
    assert report.ok, report.findings


# -- the findings cap -----------------------------------------------------------------------


def _broken_lines() -> str:
    """The export with lines 2-5 cut short: five findings (four malformed lines, a gap)."""
    lines = export(LOG).splitlines()
    for line in range(2, 6):
        lines[line - 1] = lines[line - 1][:-5]
    return "\n".join(lines) + "\n"


def test_the_report_keeps_at_most_max_findings_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``verify_report.MAX_FINDINGS`` caps the findings kept (where ``ExportReport.add``
    reads it); the ones past it are counted as omitted and the export does not verify."""
    full = check(_broken_lines())
    assert (len(full.findings), full.omitted) == (5, 0)
    monkeypatch.setattr(verify_report, "MAX_FINDINGS", 2)
    capped = check(_broken_lines())
    assert capped.findings == full.findings[:2]
    assert capped.omitted == 3
    assert not capped.ok
    assert capped.to_json()["findings_omitted"] == 3
