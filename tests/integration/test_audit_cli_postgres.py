"""``consentry audit reindex|shred|suspend|retention|export|verify-export`` against a real
PostgreSQL store (the production store of several replicas), filled as the recorder fills it.

The unit tests run the same commands on SQLite (``tests/unit/audit/test_cli.py`` and its
neighbours); here the store is ``postgresql://...`` with ``--schema`` naming a fresh schema per
test (``tests.contract.backends.PostgresBackend``, dropped afterwards). Marked ``integration``;
an unreachable server fails these tests, never skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from middleware.audit.accounting import years_before
from middleware.audit.row import AuditQuery, AuditRow
from middleware.cli import main
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.leaf import EntryKind, decode_leaf, micros
from middleware.ledger.signing import SigningKey
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_postgres import PostgresLogStore
from tests.contract.backends import PostgresBackend
from tests.support.audit_fill import fill_audit_log, pseudonym_of

pytestmark = pytest.mark.integration

ORIGIN = "gw.example/fhir/ledger"
KEY = SigningKey.from_seed(ORIGIN, bytes(range(32)))
PATIENTS = ["Patient/a", "Patient/b", "Patient/c"]
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000_000
COUNT = 60  # entry n: PATIENTS[n % 3], hour n, practitioner pr-(n % 4), purpose by (n // 3) % 3
OLD, NEW = 20, 10  # retention: seven-year-old entries, then yesterday's
ALL = AuditQuery(limit=10_000, include_shredded=True)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Fill:
    """One ``fill_audit_log`` call: ``count`` entries from ``start_us``, ``step_us`` apart."""

    count: int
    start_us: int
    step_us: int
    patients: Sequence[str] = tuple(PATIENTS)


@dataclass
class Pg:
    """A filled log in a fresh PostgreSQL schema, and the files the commands read."""

    dir: Path
    backend: PostgresBackend

    @property
    def key(self) -> Path:
        return self.dir / "ledger.key"

    @property
    def trust(self) -> Path:
        return self.dir / "trust.toml"

    def cli(self, *argv: str) -> tuple[int, str]:
        """``consentry *argv`` with ``--store``/``--schema`` (and the key file, where the
        command takes one) inserted after the subcommand; its status and standard output."""
        group, command, *rest = argv
        where = ["--store", self.backend.dsn, "--schema", self.backend.schema]
        if command not in {"verify", "search", "access-report", "user-report"}:
            where += ["--key-file", str(self.key)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main([group, command, *where, *rest])
        return status, out.getvalue()

    def verify_export(self, path: Path) -> tuple[int, dict[str, Any]]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["audit", "verify-export", str(path), "--trust", str(self.trust)])
        return status, json.loads(out.getvalue())

    def ledger_verifies(self) -> bool:
        status, text = self.cli("ledger", "verify", "--trust", str(self.trust))
        return status == 0 and json.loads(text)["ok"] is True

    def on_store(self, use: Callable[[LogStore], Awaitable[_T]]) -> _T:
        """``use`` applied to a store opened on the schema (as another replica would)."""

        async def run() -> _T:
            store = await PostgresLogStore.open(
                self.backend.dsn, schema=self.backend.schema, max_size=2
            )
            try:
                return await use(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def rows(self, query: AuditQuery = ALL) -> list[AuditRow]:
        return self.on_store(lambda store: store.audit_rows(query))

    def fill(self, *fills: Fill) -> None:
        async def run(store: LogStore) -> None:
            for f in fills:
                await fill_audit_log(
                    store, KEY, ORIGIN, count=f.count, patients=f.patients,
                    start_us=f.start_us, step_us=f.step_us,
                )  # fmt: skip

        self.on_store(run)


def _made(tmp_path: Path, *fills: Fill) -> Iterator[Pg]:
    write_ledger_key(tmp_path / "ledger.key", LedgerKey(KEY, ORIGIN))
    (tmp_path / "trust.toml").write_text(
        format_policy(TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey()),)))
    )
    pg = Pg(tmp_path, asyncio.run(PostgresBackend.create()))
    try:
        pg.fill(*fills)
        yield pg
    finally:
        asyncio.run(pg.backend.cleanup())


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Pg]:
    """COUNT entries of three patients, an hour apart from 2026-01-01."""
    yield from _made(tmp_path, Fill(COUNT, T0, HOUR))


@pytest.fixture
def aged(tmp_path: Path) -> Iterator[Pg]:
    """OLD disclosures seven years old (past the six-year default), then NEW of yesterday."""
    now = micros(datetime.now(UTC))
    yield from _made(
        tmp_path,
        Fill(OLD, years_before(now, 7), HOUR, PATIENTS[:2]),
        Fill(NEW, now - 24 * HOUR, 60_000_000, PATIENTS[:2]),
    )


# --- reindex ----------------------------------------------------------------------------------


def test_reindex_rebuilds_the_rows_written_at_append(pg: Pg) -> None:
    """The rows the appends wrote (``row_of`` of each entry's facts, in the leaf's
    transaction) come back identical from the sealed evidence after the index is emptied."""
    written = pg.rows()
    assert [(r.index, r.patient, r.agent, r.entities) for r in written] == [
        (n, PATIENTS[n % 3], f"Practitioner/pr-{n % 4}", (f"Observation/obs-{n}",))
        for n in range(COUNT)
    ]  # as audit_fill wrote entry n
    pg.on_store(lambda store: store.clear_index())
    assert pg.rows() == []
    status, text = pg.cli("audit", "reindex", "--batch", "7")  # several transactions
    assert status == 0, text
    assert json.loads(text)["rows"] == COUNT
    assert pg.rows() == written


# --- shred ------------------------------------------------------------------------------------


def test_shred_deletes_the_key_shreds_the_rows_and_the_tombstone_holds(pg: Pg) -> None:
    b = pseudonym_of("Patient/b")
    assert pg.on_store(lambda store: store.audit_key_get(b)) is not None
    status, text = pg.cli(
        "audit", "shred", "--patient", "Patient/b", "--reason", "patient request",
        "--operator", "dpo",
    )  # fmt: skip
    assert status == 0, text
    result = json.loads(text)
    assert (result["admin_entry"], result["chains"], result["rows"]) == (COUNT, 1, COUNT // 3)
    assert pg.on_store(lambda store: store.audit_key_get(b)) is None
    assert pg.rows(AuditQuery(patient="Patient/b", limit=1000)) == []
    by_index = {r.index: r for r in pg.rows()}
    assert {n for n, r in by_index.items() if r.shredded} == set(range(1, COUNT, 3))
    leaf = decode_leaf(pg.on_store(lambda store: store.leaves(COUNT, COUNT + 1))[0])
    assert (leaf.kind, leaf.pseudonym) == (EntryKind.ADMIN, b)
    # A replica that still had b's pseudonym appends: the row is born shredded, no key comes back.
    pg.fill(Fill(2, T0 + COUNT * HOUR, HOUR, ["Patient/b"]))
    assert pg.on_store(lambda store: store.audit_key_get(b)) is None
    assert [r.shredded for r in pg.rows() if r.index > COUNT] == [True, True]
    assert pg.rows(AuditQuery(patient="Patient/b", limit=1000)) == []
    assert pg.ledger_verifies()


# --- suspend ----------------------------------------------------------------------------------


def _accounted(pg: Pg) -> list[tuple[int, str]]:
    status, text = pg.cli("audit", "accounting", "--patient", "Patient/a", "--detail")
    assert status == 0, text
    return sorted(
        (int(r["ledger_index"]), r["recipient"]) for r in csv.DictReader(io.StringIO(text))
    )


def test_a_suspension_hides_the_agency_while_in_force(pg: Pg) -> None:
    before = _accounted(pg)
    # a's entries are n % 3 == 0; treatment ((n // 3) % 3 == 0) is exempt (45 CFR 164.528(a)(1)(i))
    assert [i for i, _ in before] == [n for n in range(0, COUNT, 3) if (n // 3) % 3 != 0]
    agency = "Practitioner/pr-3"
    hidden = {i for i, who in before if who == agency}
    assert hidden == {i for i, _ in before if i % 4 == 3}
    status, text = pg.cli(
        "audit", "suspend", "--agency", agency, "--until", "2099-12-31",
        "--reason", "investigation", "--operator", "officer",
    )  # fmt: skip
    assert status == 0, text
    entry = json.loads(text)["admin_entry"]
    assert entry == COUNT
    assert [i for i, _ in _accounted(pg)] == sorted({i for i, _ in before} - hidden)
    status, text = pg.cli("audit", "suspend", "--lift", str(entry), "--reason", "over")
    assert status == 0, text
    assert _accounted(pg) == before


# --- retention --------------------------------------------------------------------------------


def test_retention_apply_removes_the_expired_evidence_and_the_ledger_verifies(aged: Pg) -> None:
    status, text = aged.cli("audit", "retention", "--apply", "--operator", "dpo")
    assert status == 0, text
    report = json.loads(text)
    assert (report["removed"], report["admin_entry"]) == (OLD, OLD + NEW)

    async def present(store: LogStore) -> list[bool]:
        return [await store.evidence(n) is not None for n in range(await store.size())]

    assert aged.on_store(present) == [False] * OLD + [True] * NEW + [True]
    assert [r.shredded for r in aged.rows()] == [True] * OLD + [False] * NEW
    assert aged.ledger_verifies()
    status, text = aged.cli("audit", "retention", "--apply", "--operator", "dpo")
    assert (status, json.loads(text)["total"]) == (0, 0)


# --- export and verify-export -----------------------------------------------------------------

EXPORTS = [
    # (report arguments, the ledger indexes of its rows, worked out from the fill's pattern)
    (("--report", "date-range"), list(range(COUNT))),
    (("--report", "access-report", "--patient", "Patient/a"), list(range(0, COUNT, 3))),
    (("--report", "user-report", "--agent", "Practitioner/pr-1"), list(range(1, COUNT, 4))),
]
FORMATS = ["ndjson", "csv"]


def _export(pg: Pg, name: str, *args: str) -> Path:
    path = pg.dir / name
    status, _ = pg.cli("audit", "export", *args, "--out", str(path))
    assert status == 0
    return path


def _indexes(path: Path, fmt: str) -> list[int]:
    if fmt == "ndjson":
        lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        return [line["index"] for line in lines if line["role"] == "row"]
    _, _, rest = path.read_text().partition("\n")
    records = list(csv.DictReader(io.StringIO(rest)))
    return [int(r["ledger_index"]) for r in records if r["role"] == "row"]


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMATS)
@pytest.mark.parametrize(
    ("args", "indexes"), EXPORTS, ids=["date-range", "access-report", "user-report"]
)
def test_an_export_lists_the_report_s_entries_and_verifies(
    pg: Pg, args: tuple[str, ...], indexes: list[int], fmt: str
) -> None:
    path = _export(pg, f"out.{fmt}", *args, "--format", fmt)
    assert _indexes(path, fmt) == indexes
    status, report = pg.verify_export(path)
    assert (status, report["ok"], report["rows"]) == (0, True, len(indexes))


def _edit_csv(path: Path) -> None:
    first, _, rest = path.read_text().partition("\n")
    records = list(csv.reader(io.StringIO(rest)))
    records[3][records[0].index("agent")] = "Practitioner/someone-else"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(records)
    path.write_text(first + "\n" + out.getvalue())


def _edit_ndjson(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[3])
    row["columns"]["agent"] = "Practitioner/someone-else"
    lines[3] = json.dumps(row) + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    ("fmt", "edit", "line"),
    [("csv", _edit_csv, 5), ("ndjson", _edit_ndjson, 4)],
    ids=["csv-cell", "ndjson-column"],
)
def test_an_edited_row_is_found(pg: Pg, fmt: str, edit: Callable[[Path], None], line: int) -> None:
    path = _export(pg, f"a.{fmt}", "--report", "access-report", "--patient", "Patient/a",
                   "--format", fmt)  # fmt: skip
    assert pg.verify_export(path)[0] == 0
    edit(path)
    status, report = pg.verify_export(path)
    assert status == 1
    assert [(f["code"], f["line"]) for f in report["findings"]] == [("edited", line)]
