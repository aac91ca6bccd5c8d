"""``consentry audit ...`` end to end on a real SQLite store filled as the recorder fills it."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from middleware.audit import verify_parallel
from middleware.audit.row import AuditQuery
from middleware.audit.verify_export import verify_file
from middleware.cli import main
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.receipt import TlogProof, format_receipt
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy
from middleware.storage.consent_base import LOOKUP_PURPOSE
from middleware.storage.consent_open import open_consent_store
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support.audit_fill import fill_audit_log, pseudonym_of

ORIGIN = "gw.example/fhir/ledger"
PATIENTS = ["Patient/a", "Patient/b", "Patient/c"]
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000_000
COUNT = 60  # entry n: PATIENTS[n % 3], hour n, purpose TREAT/HRESCH/PUBHLTH by (n // 3) % 3


@dataclass
class Setup:
    dir: Path
    store: str
    key: Path
    trust: Path

    def run(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(list(argv))
        return status, out.getvalue()

    def export(self, name: str, *extra: str) -> Path:
        path = self.dir / name
        args = ["audit", "export", "--store", self.store, "--key-file", str(self.key)]
        status, _ = self.run(*args, *extra, "--out", str(path))
        assert status == 0
        return path

    def verify(self, path: Path) -> tuple[int, dict[str, Any]]:
        status, text = self.run("audit", "verify-export", str(path), "--trust", str(self.trust))
        return status, json.loads(text)

    def query(self, query: AuditQuery) -> list[int]:
        async def read() -> list[int]:
            store = await SqliteLogStore.open(Path(self.store.removeprefix("sqlite:")))
            try:
                return [r.index for r in await store.audit_rows(query)]
            finally:
                await store.close()

        return asyncio.run(read())


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    write_ledger_key(tmp_path / "ledger.key", LedgerKey(key, ORIGIN))
    policy = TrustPolicy(ORIGIN, (TrustedKey(key.vkey()),))
    (tmp_path / "trust.toml").write_text(format_policy(policy))

    async def fill() -> None:
        store = await SqliteLogStore.open(tmp_path / "audit.db")
        try:
            await fill_audit_log(
                store, key, ORIGIN, count=COUNT, patients=PATIENTS, start_us=T0, step_us=HOUR
            )
        finally:
            await store.close()

    asyncio.run(fill())
    return Setup(
        tmp_path,
        f"sqlite:{tmp_path / 'audit.db'}",
        tmp_path / "ledger.key",
        tmp_path / "trust.toml",
    )


def _a_in_period() -> list[int]:
    """Patient a's entries recorded 2026-01-01T06:00Z .. 2026-01-02T05:59:59Z (hours 6..29)."""
    return [n for n in range(6, 30) if n % 3 == 0]


PERIOD = ("--since", "2026-01-01T06:00:00Z", "--until", "2026-01-02T05:59:59Z")


@pytest.mark.parametrize("fmt", ["ndjson", "csv"], ids=["ndjson", "csv"])
def test_an_access_report_export_verifies(setup: Setup, fmt: str) -> None:
    args = ("--report", "access-report", "--patient", "Patient/a", *PERIOD, "--format", fmt)
    path = setup.export(f"a.{fmt}", *args)
    status, report = setup.verify(path)
    assert (status, report["ok"], report["rows"]) == (0, True, len(_a_in_period()))
    if fmt == "ndjson":
        lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        rows = [line["index"] for line in lines if line["role"] == "row"]
        assert rows == _a_in_period()  # every access of a in the period, nothing else
        assert (lines[0]["role"], lines[0]["index"]) == ("before", 3)
        assert (lines[-1]["role"], lines[-1]["index"]) == ("after", 30)


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "export", "--report", "date-range", "--key-file", "{key}"],
        ["audit", "access-report", "--patient", "Patient/a", "--format", "pdf"],
    ],
    ids=["export", "pdf-report"],
)
def test_files_with_phi_are_readable_by_their_owner_only(setup: Setup, argv: list[str]) -> None:
    path = setup.dir / "out.file"
    args = [a.replace("{key}", str(setup.key)) for a in argv]
    status, _ = setup.run(*args[:2], "--store", setup.store, *args[2:], "--out", str(path))
    assert status == 0
    assert path.stat().st_mode & 0o777 == 0o600


def test_an_edited_csv_cell_and_a_dropped_ndjson_line_are_found(setup: Setup) -> None:
    args = ("--report", "access-report", "--patient", "Patient/a", *PERIOD)
    path = setup.export("a.csv", *args, "--format", "csv")
    text = path.read_text()
    first, _, rest = text.partition("\n")
    records = list(csv.reader(io.StringIO(rest)))
    records[3][records[0].index("agent")] = "Practitioner/someone-else"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(records)
    path.write_text(first + "\n" + out.getvalue())
    status, report = setup.verify(path)
    assert status == 1
    assert [(f["code"], f["line"]) for f in report["findings"]] == [("edited", 5)]

    path = setup.export("a.ndjson", *args)
    lines = path.read_text().splitlines(keepends=True)
    dropped = json.loads(lines.pop(4))["index"]
    path.write_text("".join(lines))
    status, report = setup.verify(path)
    assert status == 1
    (finding,) = report["findings"]
    assert finding["code"] == "chain-gap"
    assert f"entry {dropped} " in finding["message"]


def test_the_accounting_lists_the_accountable_disclosures_only(setup: Setup) -> None:
    status, text = setup.run(
        "audit", "accounting", "--store", setup.store, "--patient", "Patient/a", "--detail"
    )
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    listed = sorted(int(r["ledger_index"]) for r in rows)
    # a's entries are n % 3 == 0; treatment (TREAT, (n // 3) % 3 == 0) is exempt
    assert listed == [n for n in range(0, COUNT, 3) if (n // 3) % 3 != 0]


def test_the_accounting_follows_the_gateway_s_settings(setup: Setup) -> None:
    """With the gateway's settings (--config), its exemption table applies: here only
    research is exempt, so treatment and public health disclosures are accounted."""
    config = setup.dir / "consentry.toml"
    config.write_text(
        'upstream = "http://127.0.0.1:1/fhir"\naccounting_exempt_purposes = "HRESCH"\n'
    )
    status, text = setup.run(
        "audit", "accounting", "--store", setup.store, "--patient", "Patient/a", "--detail",
        "--config", str(config),
    )  # fmt: skip
    assert status == 0
    listed = sorted(int(r["ledger_index"]) for r in csv.DictReader(io.StringIO(text)))
    assert listed == [n for n in range(0, COUNT, 3) if (n // 3) % 3 != 1]


def test_after_a_shred_the_accounting_names_the_shredded_period(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Patient b's entries (n % 3 == 1: hours 1 .. 58, 2026-01-01T01Z .. 2026-01-03T10Z) are
    shredded; the accounting (with the ledger key, which finds the shred's link) lists no
    disclosure and says which period was erased. Without the key it says on standard error
    that shredded periods cannot be listed."""
    status, _ = setup.run(
        "audit", "shred", "--store", setup.store, "--key-file", str(setup.key),
        "--patient", "Patient/b", "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0
    args = ("audit", "accounting", "--store", setup.store, "--patient", "Patient/b")
    status, text = setup.run(*args, "--format", "bundle", "--key-file", str(setup.key))
    assert status == 0
    bundle = json.dumps(json.loads(text))
    assert "Records from 2026-01-01 to 2026-01-03 were permanently erased" in bundle
    status, text = setup.run(*args, "--key-file", str(setup.dir / "missing.key"))
    assert status == 0
    assert "shredded for this patient cannot be listed" in capsys.readouterr().err


def test_an_accounting_export_names_the_exempt_entries_as_other(setup: Setup) -> None:
    path = setup.export("acc.ndjson", "--report", "accounting", "--patient", "Patient/a")
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    roles = {line["index"]: line["role"] for line in lines}
    assert {i for i, r in roles.items() if r == "other"} == set(range(0, COUNT, 9))
    assert setup.verify(path)[0] == 0


def test_a_date_range_export_of_every_patient_verifies(setup: Setup) -> None:
    path = setup.export("all.csv", "--report", "date-range", "--format", "csv")
    status, report = setup.verify(path)
    assert (status, report["rows"]) == (0, COUNT)


def test_a_user_report_export_lists_that_user_s_accesses(setup: Setup) -> None:
    path = setup.export("user.ndjson", "--report", "user-report", "--agent", "Practitioner/pr-1")
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert [line["index"] for line in lines] == [n for n in range(COUNT) if n % 4 == 1]
    assert {line["columns"]["agent"] for line in lines} == {"Practitioner/pr-1"}
    status, report = setup.verify(path)
    assert (status, report["rows"]) == (0, COUNT // 4)


def test_search_answers_the_rows_asked_for(setup: Setup) -> None:
    status, text = setup.run(
        "audit", "search", "--store", setup.store, "--patient", "Patient/c",
        "--purpose", "HRESCH", "--format", "ndjson",
    )  # fmt: skip
    assert status == 0
    rows = [json.loads(line) for line in text.splitlines()]
    # c is n % 3 == 2; research is (n // 3) % 3 == 1
    assert [r["index"] for r in rows] == [n for n in range(2, COUNT, 3) if (n // 3) % 3 == 1]


def test_a_receipt_verifies_with_the_same_command(setup: Setup) -> None:
    async def receipt() -> str:
        store = await SqliteLogStore.open(Path(setup.store.removeprefix("sqlite:")))
        try:
            leaves = await store.leaves(0, await store.size())
            checkpoint = await store.checkpoint()
        finally:
            await store.close()
        assert checkpoint is not None
        proof = MerkleLevels.of_leaves(leaves).inclusion_proof(7)
        return format_receipt(TlogProof(7, tuple(proof), checkpoint.note, leaves[7]))

    path = setup.dir / "receipt.txt"
    path.write_text(asyncio.run(receipt()))
    status, report = setup.verify(path)
    assert (status, report["kind"], report["ok"]) == (0, "receipt", True)


def test_reindex_rebuilds_the_rows_it_had(setup: Setup) -> None:
    before = setup.query(AuditQuery(patient="Patient/b", limit=1000))

    async def clear() -> None:
        store = await SqliteLogStore.open(Path(setup.store.removeprefix("sqlite:")))
        try:
            await store.clear_index()
        finally:
            await store.close()

    asyncio.run(clear())
    assert setup.query(AuditQuery(limit=1000)) == []
    status, text = setup.run(
        "audit", "reindex", "--store", setup.store, "--key-file", str(setup.key)
    )
    assert status == 0
    assert json.loads(text)["rows"] == COUNT
    assert setup.query(AuditQuery(patient="Patient/b", limit=1000)) == before


def test_shred_records_an_admin_entry_then_shreds(setup: Setup) -> None:
    status, text = setup.run(
        "audit", "shred", "--store", setup.store, "--key-file", str(setup.key),
        "--patient", "Patient/b", "--reason", "retention period over", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0
    result = json.loads(text)
    assert (result["admin_entry"], result["rows"]) == (COUNT, COUNT // 3)
    assert setup.query(AuditQuery(patient="Patient/b", limit=1000)) == []

    async def last_leaf() -> bytes:
        store = await SqliteLogStore.open(Path(setup.store.removeprefix("sqlite:")))
        try:
            return (await store.leaves(COUNT, COUNT + 1))[0]
        finally:
            await store.close()

    leaf = decode_leaf(asyncio.run(last_leaf()))
    assert (leaf.kind, leaf.pseudonym) == (EntryKind.ADMIN, pseudonym_of("Patient/b"))
    # The ledger still verifies, and so do exports of other patients.
    path = setup.export("a.ndjson", "--report", "access-report", "--patient", "Patient/a")
    assert setup.verify(path)[0] == 0


def test_shred_forgets_the_patients_pseudonym_in_the_consent_store(setup: Setup) -> None:
    """The shred unlinks the patient: the gateway's pseudonym table (consent store on the same
    file, rows found under derive_box_key(ledger key, LOOKUP_PURPOSE)) no longer has them, so
    their next exchange gets a new pseudonym; another patient's row stays."""
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    lookup = derive_box_key(key, LOOKUP_PURPOSE)

    async def pseudonyms(fill: int) -> list[bytes]:
        consents = await open_consent_store(setup.store, lookup_key=lookup)
        try:
            return [
                await consents.pseudonym_for(p, bytes([fill + n]) * 16)
                for n, p in enumerate(("Patient/b", "Patient/c"))
            ]
        finally:
            await consents.close()

    assert asyncio.run(pseudonyms(1)) == [b"\x01" * 16, b"\x02" * 16]
    status, text = setup.run(
        "audit", "shred", "--store", setup.store, "--key-file", str(setup.key),
        "--patient", "Patient/b", "--reason", "patient request", "--operator", "dpo",
    )  # fmt: skip
    assert status == 0
    assert json.loads(text)["pseudonym_forgotten"] is True
    assert asyncio.run(pseudonyms(5)) == [b"\x05" * 16, b"\x02" * 16]


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "access-report", "--since", "yesterday", "--patient", "Patient/a"],
        ["audit", "access-report", "--since", "2026-01-01T00:00:00"],
        ["audit", "accounting", "--format", "pdf", "--patient", "Patient/a"],
        ["audit", "user-report"],
        ["audit", "export", "--report", "date-range"],
        ["audit", "reindex", "--key-file", "/nonexistent/key"],
    ],
    ids=["bad-date", "no-zone", "pdf-to-stdout", "no-agent", "no-out", "no-key-file"],
)
def test_usage_errors_exit_2_without_a_trace(
    setup: Setup, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = setup.run(*argv[:2], "--store", setup.store, *argv[2:])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"consentry audit {argv[1]}: ")
    assert "Traceback" not in err


def test_verify_export_streams_the_file(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is read line by line as it is verified (constant memory), never whole."""
    path = setup.export("all.ndjson", "--report", "date-range")
    fed: list[object] = []

    def streamed(text: Any, *args: Any, **kwargs: Any) -> Any:
        fed.append(text)
        return verify_file(text, *args, **kwargs)

    # A small file is verified in this process (verify_parallel's sequential path).
    monkeypatch.setattr(verify_parallel, "verify_file", streamed)
    status, body = setup.verify(path)
    assert (status, body["ok"]) == (0, True)
    assert body["lines"] == len(path.read_text().splitlines()) - 1  # entry lines
    [text] = fed
    assert isinstance(text, Iterator)  # a generator over the open file, not its lines in a list
