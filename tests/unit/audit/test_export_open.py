"""``consentry audit export`` opens the log without its replay and refuses a forged log
itself: what the replay would refuse, for everything the export holds (cli_reports.export)."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from middleware.audit import export_make
from middleware.audit.cli_common import read_key
from middleware.audit.evidence import EVIDENCE_PURPOSE
from middleware.audit.export_collect import ExportSpec, StoreView, collect_export
from middleware.ledger.entry import NewEntry
from middleware.ledger.errors import LedgerError, VerificationError
from middleware.ledger.leaf import EntryKind
from middleware.ledger.merkle import leaf_hash
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_open import open_log_store
from tests.contract.helpers import entry
from tests.support.audit_fill import pseudonym_of
from tests.unit.audit.test_cli import HOUR, ORIGIN, PERIOD, T0, Setup, setup  # noqa: F401  (a fixture)


@pytest.fixture
def log(setup: Setup) -> Setup:  # noqa: F811  (test_cli's fixture: 60 entries, 3 patients)
    return setup


def _edit(log: Setup, *statements: tuple[str, tuple[object, ...]]) -> None:
    """A superuser's edit: the leaf table's append-only triggers dropped first."""
    conn = sqlite3.connect(log.store.removeprefix("sqlite:"))
    try:
        for suffix in ("no_update", "no_delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS consentry_ledger_leaves_{suffix}")
        for sql, args in statements:
            conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def _leaf(log: Setup, index: int) -> bytes:
    conn = sqlite3.connect(log.store.removeprefix("sqlite:"))
    try:
        row = conn.execute("SELECT leaf FROM consentry_ledger_leaves WHERE idx = ?", (index,))
        return bytes(row.fetchone()[0])
    finally:
        conn.close()


def _export(log: Setup, *extra: str) -> tuple[int, str]:
    out = log.dir / "out.ndjson"
    args = ("audit", "export", "--store", log.store, "--key-file", str(log.key))
    return log.run(*args, *extra, "--out", str(out))


PATIENT_A = ("--report", "access-report", "--patient", "Patient/a", *PERIOD)


def test_an_honest_log_exports_and_verifies(log: Setup) -> None:
    for extra in (("--report", "date-range"), PATIENT_A):
        assert _export(log, *extra)[0] == 0
        status, report = log.verify(log.dir / "out.ndjson")
        assert (status, report["ok"]) == (0, True)


@pytest.mark.parametrize("extra", [("--report", "date-range"), PATIENT_A], ids=["all", "patient"])
def test_a_forged_leaf_with_its_hash_is_refused(log: Setup, extra: tuple[str, ...]) -> None:
    """Another valid leaf and its hash at index 3 (Patient/a's): the leaves' root is not
    the signed checkpoint's."""
    forged = bytearray(_leaf(log, 3))
    forged[15] ^= 1  # the recorded time's last byte
    _edit(
        log,
        (
            "UPDATE consentry_ledger_leaves SET leaf = ?, leaf_hash = ? WHERE idx = 3",
            (bytes(forged), leaf_hash(bytes(forged))),
        ),
    )
    assert _export(log, *extra)[0] == 2


@pytest.mark.parametrize("extra", [("--report", "date-range"), PATIENT_A], ids=["all", "patient"])
def test_a_forged_leaf_under_its_old_hash_is_refused(log: Setup, extra: tuple[str, ...]) -> None:
    """The per-patient export proves against the stored hashes; the leaf it holds must
    hash to its own. The whole-log export hashes the snapshot's leaves themselves (not
    checked again line by line): their root is then not the signed one."""
    forged = bytearray(_leaf(log, 3))
    forged[15] ^= 1
    _edit(log, ("UPDATE consentry_ledger_leaves SET leaf = ? WHERE idx = 3", (bytes(forged),)))
    assert _export(log, *extra)[0] == 2


def _lines_of(
    url: str,
    wrap_key: bytes,
    patient: str,
    since_us: int | None = None,
    until_us: int | None = None,
) -> list[tuple[str, int]]:
    """``patient``'s lines as a per-patient export of a live store reads them (StoreView:
    the chain found by the pseudonym column), the store opened without its replay."""

    async def collect() -> list[tuple[str, int]]:
        store = await open_log_store(url, replay=False)
        try:
            spec = ExportSpec(
                report="access-report",
                patient=patient,
                pseudonym=pseudonym_of(patient),
                since_us=since_us,
                until_us=until_us,
            )
            view = await StoreView.open(store)
            _, lines = await collect_export(
                view, spec, [], wrapped_keys=store.audit_keys_get, wrap_key=wrap_key
            )
            return [(line.role, line.index) for line in lines]
        finally:
            await store.close()

    return asyncio.run(collect())


def _collect_patient_a(log: Setup) -> int:
    wrap_key = derive_box_key(read_key(log.key).data_secret, EVIDENCE_PURPOSE)
    return len(_lines_of(log.store, wrap_key, "Patient/a"))


def _with_time(leaf: bytes, recorded_us: int) -> bytes:
    """``leaf`` recorded at ``recorded_us`` (bytes 8..16 of ledger.leaf's layout)."""
    return leaf[:8] + recorded_us.to_bytes(8, "big") + leaf[16:]


def test_a_chain_leaf_outside_the_file_under_its_old_hash_is_refused(log: Setup) -> None:
    """Patient/a's entry 0, before the period's ``before`` line (entry 3), changed under its
    stored hash: the file would not hold it, but the export reads it to plan the chain, so
    it is checked against the verified tree too, as the replay would."""
    wrap_key = derive_box_key(read_key(log.key).data_secret, EVIDENCE_PURPOSE)
    since, until = T0 + 6 * HOUR, T0 + 30 * HOUR - 1  # PERIOD: hours 6..29
    assert _lines_of(log.store, wrap_key, "Patient/a", since, until)[0] == ("before", 3)
    forged = bytearray(_leaf(log, 0))
    forged[15] ^= 1
    _edit(log, ("UPDATE consentry_ledger_leaves SET leaf = ? WHERE idx = 0", (bytes(forged),)))
    with pytest.raises(VerificationError, match="stored hash of leaf 0 does not match"):
        _lines_of(log.store, wrap_key, "Patient/a", since, until)


def test_an_entry_moved_out_of_the_period_under_its_old_hash_is_refused(tmp_path: Path) -> None:
    """An outbox replay leaves times out of order: a1 (in the period), o (recorded before
    it), a2 (in it). a1's time moved before the period under its stored hash would make the
    plan start at a2 with o as its ``before`` line, a1 silently left out of the accounting
    (and verify-export would accept the file): the export refuses instead."""
    url = f"sqlite:{tmp_path / 'audit.db'}"
    a, b = pseudonym_of("Patient/a"), pseudonym_of("Patient/b")
    times = [(a, 100), (a, 10), (a, 150), (b, 160)]  # a1, o, a2, another patient's

    async def fill() -> None:
        store = await open_log_store(url)
        try:
            sign = checkpoint_signer(SigningKey.from_seed(ORIGIN, bytes(range(32))))
            batch = [
                NewEntry.create(EntryKind.ACCESS_DECISION, b"e", recorded_us=t, pseudonym=p)
                for p, t in times
            ]
            await store.append(batch, sign=sign)
        finally:
            await store.close()

    asyncio.run(fill())
    wrap_key = bytes(32)  # no sealed evidence: no patient key is unwrapped
    honest = _lines_of(url, wrap_key, "Patient/a", 50, 200)
    assert honest == [("other", 0), ("other", 1), ("other", 2), ("tail", 3)]
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        (leaf,) = conn.execute("SELECT leaf FROM consentry_ledger_leaves WHERE idx = 0").fetchone()
    finally:
        conn.close()
    forged = _with_time(bytes(leaf), 20)
    log = Setup(tmp_path, url, tmp_path / "ledger.key", tmp_path / "trust.toml")
    _edit(log, ("UPDATE consentry_ledger_leaves SET leaf = ? WHERE idx = 0", (forged,)))
    with pytest.raises(VerificationError, match="stored hash of leaf 0 does not match"):
        _lines_of(url, wrap_key, "Patient/a", 50, 200)


def test_an_entry_hidden_from_the_patient_s_chain_is_refused(log: Setup) -> None:
    """The store finds the chain by the pseudonym column: cleared on entry 3, the entry
    would be left out, but entry 6 names it as its previous one."""
    assert _collect_patient_a(log) == 22  # every third of 60, then the tail: 58 and 59
    _edit(log, ("UPDATE consentry_ledger_leaves SET pseudonym = NULL WHERE idx = 3", ()))
    with pytest.raises(VerificationError, match="chain is broken at leaf 6"):
        _collect_patient_a(log)


def test_an_entry_added_to_the_patient_s_chain_is_refused(log: Setup) -> None:
    """Entry 4 (Patient/b's) given Patient/a's pseudonym in its column: its leaf says
    otherwise."""
    _edit(
        log,
        (
            "UPDATE consentry_ledger_leaves SET pseudonym = ? WHERE idx = 4",
            (pseudonym_of("Patient/a"),),
        ),
    )
    with pytest.raises(VerificationError, match="chain is broken at leaf 4"):
        _collect_patient_a(log)


def test_a_store_opened_without_its_replay_does_not_append(log: Setup) -> None:
    sign = checkpoint_signer(SigningKey.from_seed(ORIGIN, bytes(range(32))))

    async def append() -> None:
        store = await open_log_store(log.store, replay=False)
        try:
            await store.append([entry(1)], sign=sign)
        finally:
            await store.close()

    with pytest.raises(LedgerError, match="without its replay"):
        asyncio.run(append())


def test_the_garbage_collector_is_back_after_an_export(
    log: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export pauses the collector while it gathers and writes the lines
    (cli_reports._collector_paused) and restores it, also when the export fails."""
    seen: list[bool] = []
    collect = collect_export  # the function the CLI calls (through export_make)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return collect(*args, **kwargs)

    monkeypatch.setattr(export_make, "collect_export", spy)
    assert gc.isenabled()
    assert _export(log, "--report", "date-range")[0] == 0
    assert seen == [False]  # paused during the export
    assert gc.isenabled()
    forged = bytes([_leaf(log, 3)[0] ^ 1]) + _leaf(log, 3)[1:]  # a malformed leaf
    _edit(log, ("UPDATE consentry_ledger_leaves SET leaf = ? WHERE idx = 3", (forged,)))
    assert _export(log, "--report", "date-range")[0] == 2
    assert gc.isenabled()
