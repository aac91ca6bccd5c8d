"""``consentry audit export`` writes, byte for byte, the file the export wrote before its speed
work (``export_oracle``: the earlier collection over ``ledger_dump``'s snapshot, and the
format's plain ``json.dumps`` / ``csv.writer`` rule), for full and per-patient exports, NDJSON
and CSV, through both views (the whole-log read and the entry-by-entry one), with every line
role (``row``, ``other``, ``before``, ``after``, ``tail``) and entries whose key is gone."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from middleware.cli import _parser
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_open import open_log_store
from tests.contract.helpers import entry
from tests.support.audit_fill import pseudonym_of
from tests.unit.audit.export_oracle import oracle_export
from tests.unit.audit.test_cli import ORIGIN, PERIOD, Setup, setup  # noqa: F401  (a fixture)

#: (name, arguments, the view the export reads through: 8 x rows >= the log's 61 entries
#: reads the whole log at once, fewer reads entry by entry).
CASES = [
    ("full", ("--report", "date-range"), "bulk"),
    ("access-before-after", ("--report", "access-report", "--patient", "Patient/a", *PERIOD), "bulk"),
    (
        "accounting-other-tail",
        ("--report", "accounting", "--patient", "Patient/a", "--since", "2026-01-01T00:00:00Z",
         "--until", "2026-01-04T00:00:00Z"),
        "bulk",
    ),
    (
        "patient-few-rows",
        (
            "--report", "date-range", "--patient", "Patient/b",
            "--since", "2026-01-01T10:00:00Z", "--until", "2026-01-01T20:00:00Z",
        ),
        "store",
    ),
    (
        "few-rows",
        ("--report", "date-range", "--since", "2026-01-01T10:00:00Z", "--until", "2026-01-01T13:00:00Z"),
        "store",
    ),
    (
        "patient-tail-few-rows",
        ("--report", "date-range", "--patient", "Patient/c", "--since", "2026-01-03T08:00:00Z"),
        "store",
    ),
]  # fmt: skip


def _argv(log: Setup, args: tuple[str, ...], fmt: str, out: Path) -> list[str]:
    store = ("--store", log.store, "--key-file", str(log.key))
    return ["audit", "export", *store, *args, "--format", fmt, "--out", str(out)]


def _roles(data: bytes, fmt: str) -> set[str]:
    if fmt == "ndjson":
        return {json.loads(line)["role"] for line in data.splitlines()[1:]}
    return {line.split(b",")[-7].decode() for line in data.splitlines()[2:]}


def _append_one(log: Setup) -> None:
    """One more entry (no patient, evidence not sealed) under a second checkpoint: the
    export's is the latest, and Patient/c's chain, which ends at entry 59, has a tail."""

    async def append() -> None:
        store = await open_log_store(log.store)
        try:
            sign = checkpoint_signer(SigningKey.from_seed(ORIGIN, bytes(range(32))))
            await store.append([entry(1)], sign=sign)
        finally:
            await store.close()

    asyncio.run(append())


def _drop_key(log: Setup, patient: str) -> None:
    """The patient's evidence key deleted, as a shred deletes it (the export then has no
    opening for the patient's entries)."""
    conn = sqlite3.connect(log.store.removeprefix("sqlite:"))
    try:
        conn.execute(
            "DELETE FROM consentry_audit_keys WHERE pseudonym = ?", (pseudonym_of(patient),)
        )
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("drop", [False, True], ids=["keys", "key-gone"])
def test_the_export_writes_what_the_oracle_writes(setup: Setup, fmt: str, drop: bool) -> None:  # noqa: F811
    _append_one(setup)
    if drop:
        _drop_key(setup, "Patient/c")
    roles: set[str] = set()
    for name, args, view in CASES:
        out = setup.dir / f"{name}.{fmt}"
        argv = _argv(setup, args, fmt, out)
        status, text = setup.run(*argv)
        assert status == 0, text
        made = json.loads(text)
        assert (made["rows"] * 8 >= 61) == (view == "bulk"), name  # the view the case is for
        expected = asyncio.run(oracle_export(_parser().parse_args(argv)))
        written = out.read_bytes()
        assert written == expected, name
        roles |= _roles(written, fmt)
    assert roles == {"row", "other", "before", "after", "tail"}
