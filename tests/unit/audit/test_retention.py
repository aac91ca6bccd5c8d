"""Retention per entry kind (``middleware.audit.retention``) and ``consentry audit retention``
end to end on a real SQLite store: which entries expire (cut-offs worked out by hand from the
calendar), the dry run changes nothing, ``--apply`` records an ADMIN entry, removes exactly the
expired evidence and shreds those index rows, and ``consentry ledger verify`` still passes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from middleware.audit.accounting import years_before
from middleware.audit.retention import RetentionRules, expired, parse_retention
from middleware.cli import main
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import SigningKey
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support.audit_fill import fill_audit_log

AD, AO, DISC, ADMIN = (
    EntryKind.ACCESS_DECISION,
    EntryKind.ACCESS_OUTCOME,
    EntryKind.DISCLOSURE,
    EntryKind.ADMIN,
)


def us(text: str) -> int:
    """Microseconds since the epoch of a UTC ISO time."""
    at = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


# --- parsing the per-kind setting ------------------------------------------------------------

PARSED = [
    ("empty", "", {}),
    ("one", "disclosure=7", {DISC: 7}),
    ("spaces", " admin = 10 , access-decision=1 ", {ADMIN: 10, AD: 1}),
    ("trailing-comma", "access-outcome=3,", {AO: 3}),
]


@pytest.mark.parametrize(("text", "want"), [p[1:] for p in PARSED], ids=[p[0] for p in PARSED])
def test_parse_retention(text: str, want: dict[EntryKind, int]) -> None:
    assert parse_retention(text) == want


REFUSED = [
    ("consent-never-expires", "consent=1", "KIND=YEARS"),
    ("key-event-never-expires", "key-event=1", "KIND=YEARS"),
    ("unknown", "disclosures=7", "KIND=YEARS"),
    ("no-years", "disclosure", "KIND=YEARS"),
    ("zero", "disclosure=0", "1..100"),
    ("too-many", "disclosure=101", "1..100"),
    ("not-a-number", "disclosure=six", "1..100"),
    ("twice", "admin=7,admin=8", "twice"),
]


@pytest.mark.parametrize(("text", "match"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_parse_retention_refuses(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_retention(text)


# --- which entries expire ---------------------------------------------------------------------

AS_OF = us("2026-03-01T00:00:00")
RULES = RetentionRules(by_kind={ADMIN: 10})
EXPIRY = [
    # default six years: the cut-off is 2020-03-01T00:00:00Z; strictly before it expires
    ("disclosure-just-before", (DISC, "2020-02-29T23:59:59.999999"), True),
    ("disclosure-at-cutoff", (DISC, "2020-03-01T00:00:00"), False),
    ("decision-old", (AD, "2019-01-01T00:00:00"), True),
    ("outcome-recent", (AO, "2025-01-01T00:00:00"), False),
    # admin kept ten years: cut-off 2016-03-01
    ("admin-nine-years", (ADMIN, "2017-01-01T00:00:00"), False),
    ("admin-eleven-years", (ADMIN, "2015-01-01T00:00:00"), True),
    # consents and key events never expire
    ("consent-ancient", (EntryKind.CONSENT, "2000-01-01T00:00:00"), False),
    ("revoke-ancient", (EntryKind.CONSENT_REVOKE, "2000-01-01T00:00:00"), False),
    ("key-event-ancient", (EntryKind.KEY_EVENT, "2000-01-01T00:00:00"), False),
]


@pytest.mark.parametrize(("entry", "gone"), [e[1:] for e in EXPIRY], ids=[e[0] for e in EXPIRY])
def test_an_entry_expires_after_its_kinds_retention(
    entry: tuple[EntryKind, str], gone: bool
) -> None:
    kind, at = entry
    assert expired([(7, kind, us(at))], RULES, as_of_us=AS_OF) == ([7] if gone else [])


def test_a_leap_day_cutoff_falls_on_the_28th() -> None:
    rules = RetentionRules()
    leap = us("2024-02-29T12:00:00")
    assert rules.cutoffs(leap)[DISC] == us("2018-02-28T12:00:00")


# --- consentry audit retention --------------------------------------------------------------

ORIGIN = "gw.example/fhir/ledger"
OLD, NEW = 20, 10


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A SQLite log with OLD disclosures seven years old, then NEW of yesterday."""
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    write_ledger_key(tmp_path / "ledger.key", LedgerKey(key, ORIGIN))
    (tmp_path / "trust.toml").write_text(
        format_policy(TrustPolicy(ORIGIN, (TrustedKey(key.vkey()),)))
    )
    now = us(datetime.now(UTC).replace(tzinfo=None).isoformat())

    async def fill() -> None:
        store = await SqliteLogStore.open(tmp_path / "audit.db")
        try:
            patients = ["Patient/a", "Patient/b"]
            await fill_audit_log(
                store, key, ORIGIN, count=OLD, patients=patients,
                start_us=years_before(now, 7), step_us=3_600_000_000,
            )  # fmt: skip
            await fill_audit_log(
                store, key, ORIGIN, count=NEW, patients=patients,
                start_us=now - 86_400_000_000, step_us=60_000_000,
            )  # fmt: skip
        finally:
            await store.close()

    asyncio.run(fill())
    return tmp_path


def run(*argv: str) -> tuple[int, dict[str, object]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, json.loads(out.getvalue())


def retention(d: Path, *extra: str) -> tuple[int, dict[str, object]]:
    return run(
        "audit", "retention", "--store", f"sqlite:{d / 'audit.db'}",
        "--key-file", str(d / "ledger.key"), "--operator", "dpo", *extra,
    )  # fmt: skip


async def _evidence_and_rows(d: Path) -> tuple[list[bool], list[bool], list[bytes]]:
    store = await SqliteLogStore.open(d / "audit.db")
    try:
        size = await store.size()
        present = [await store.evidence(n) is not None for n in range(size)]
        shredded = []
        for n in range(OLD + NEW):
            row = await store.audit_row(n)
            assert row is not None
            shredded.append(row.shredded)
        return present, shredded, await store.leaves(0, size)
    finally:
        await store.close()


async def _evidence(d: Path, index: int) -> bytes:
    store = await SqliteLogStore.open(d / "audit.db")
    try:
        found = await store.evidence(index)
        assert found is not None
        return found.data
    finally:
        await store.close()


def test_a_dry_run_lists_the_expired_entries_and_changes_nothing(filled: Path) -> None:
    before = asyncio.run(_evidence_and_rows(filled))
    status, report = retention(filled)
    assert status == 0
    assert (report["apply"], report["total"], report["removed"]) == (False, OLD, 0)
    assert report["entries"] == {
        "access-decision": 0, "access-outcome": 0, "disclosure": OLD, "admin": 0
    }  # fmt: skip
    assert asyncio.run(_evidence_and_rows(filled)) == before


def test_a_longer_retention_for_the_kind_keeps_them(filled: Path) -> None:
    config = filled / "consentry.toml"
    config.write_text(
        'upstream = "http://127.0.0.1:1/fhir"\naudit_retention_by_kind = "disclosure=8"\n'
    )
    status, report = retention(filled, "--config", str(config))
    assert (status, report["total"]) == (0, 0)


def test_apply_removes_the_expired_evidence_records_it_and_the_ledger_verifies(
    filled: Path,
) -> None:
    status, report = retention(filled, "--apply")
    assert status == 0
    assert (report["removed"], report["admin_entry"]) == (OLD, OLD + NEW)
    present, shredded, leaves = asyncio.run(_evidence_and_rows(filled))
    assert present == [False] * OLD + [True] * NEW + [True]
    assert shredded == [True] * OLD + [False] * NEW
    admin = decode_leaf(leaves[-1])
    assert (admin.kind, admin.pseudonym) == (EntryKind.ADMIN, None)
    recorded = json.loads(asyncio.run(_evidence(filled, OLD + NEW)))
    assert recorded["type"] == "consentry/audit-retention"
    assert recorded["entries"]["disclosure"] == OLD
    assert recorded["operator"] == "dpo"
    assert "Patient" not in json.dumps(recorded)  # counts and cut-offs only: no PHI
    status, verified = run(
        "ledger", "verify", "--store", f"sqlite:{filled / 'audit.db'}",
        "--trust", str(filled / "trust.toml"),
    )  # fmt: skip
    assert (status, verified["ok"]) == (0, True)
    assert retention(filled, "--apply")[1]["total"] == 0, "a second run finds nothing"


def test_a_retention_setting_that_names_a_consent_kind_is_refused(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = filled / "consentry.toml"
    config.write_text(
        'upstream = "http://127.0.0.1:1/fhir"\naudit_retention_by_kind = "consent=1"\n'
    )
    assert main(["audit", "retention", "--store", f"sqlite:{filled / 'audit.db'}",
                 "--config", str(config)]) == 2  # fmt: skip
    assert "audit_retention_by_kind" in capsys.readouterr().err
