"""Attacks on the log's history: cutting its tail, rolling it back, forking it, rotating its
key, killing its writer, rewriting it with its own key. Each test names the attack and asserts
what the offline verifier (pure function and CLI) and the running gateway report, including
what nobody can detect without a checkpoint remembered from before (an outside witness)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from middleware.ledger.keyfile import parse_ledger_key
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy
from tests.adversarial.harness import KEY, Target, codes, edit_leaves, reseal
from tests.contract.backends import EditRefused, SqliteBackend, make_backend
from tests.contract.helpers import KEY as APPENDER_KEY
from tests.contract.helpers import ORIGIN as APPENDER_ORIGIN

ROOT = Path(__file__).resolve().parents[2]


def _db(target: Target) -> Path:
    assert isinstance(target.backend, SqliteBackend)
    return target.backend.path


def _copy_db(source: Path, destination: Path) -> None:
    """Copy a closed SQLite database (and its WAL files, if any)."""
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{destination}{suffix}")
        elif Path(f"{destination}{suffix}").exists():
            Path(f"{destination}{suffix}").unlink()


async def test_tail_truncation(sqlite_target: Target) -> None:
    """Attack: cut the last three entries, keeping the checkpoints that cover them."""
    export = await sqlite_target.export()
    edit_leaves(export, lambda leaves: leaves[:-3])
    assert codes(sqlite_target.verify_export(export)) == {"checkpoint-beyond-leaves"}

    sqlite_target.sqlite(
        "DELETE FROM consentry_ledger_evidence WHERE idx >= 9",
        "DELETE FROM consentry_ledger_leaves WHERE idx >= 9",
    )
    assert await sqlite_target.gateway_refuses()  # replay: a checkpoint beyond the leaves
    status, found = await sqlite_target.verify_store()
    assert (status, found) == (1, {"checkpoint-beyond-leaves", "state"})


async def test_tail_truncation_covered_up(sqlite_target: Target) -> None:
    """Attack: cut the tail *and* every checkpoint past the cut, and fix the state row: a
    shorter log that is consistent in itself. Neither the gateway nor the verifier can tell
    on their own; a checkpoint remembered from before the cut exposes it."""
    remembered = await sqlite_target.latest_note()
    store = await sqlite_target.backend.open()
    state_at_8 = await store.checkpoint(8)
    await store.close()
    assert state_at_8 is not None
    sqlite_target.sqlite(
        "DELETE FROM consentry_ledger_evidence WHERE idx >= 8",
        "DELETE FROM consentry_ledger_leaves WHERE idx >= 8",
        "DELETE FROM consentry_ledger_checkpoints WHERE size > 8",
        "DELETE FROM consentry_ledger_state",  # replay rebuilds a missing state row
    )
    assert not await sqlite_target.gateway_refuses()
    assert await sqlite_target.verify_store() == (0, set())
    status, found = await sqlite_target.verify_store("--remember", remembered)
    assert (status, found) == (1, {"rollback"})


async def test_restoring_an_older_database(sqlite_target: Target) -> None:
    """Attack: restore yesterday's database file (a rollback), then let the gateway carry on.

    The restored file is an honest older log, so the gateway opens it and appends; it then
    signs new roots for sizes it had signed before. Against a remembered checkpoint the
    verifier reports the rollback, and then the fork; the two histories' checkpoints side by
    side are a fork (two signed roots for one size) anyone can show."""
    backup = sqlite_target.tmp / "backup.db"
    _copy_db(_db(sqlite_target), backup)
    await sqlite_target.append(6, start=100)
    remembered = await sqlite_target.latest_note()  # size 18, seen by an auditor
    old_history = await sqlite_target.export("before-restore")

    _copy_db(backup, _db(sqlite_target))
    assert not await sqlite_target.gateway_refuses()
    status, found = await sqlite_target.verify_store("--remember", remembered)
    assert (status, found) == (1, {"rollback"})

    await sqlite_target.append(8, start=200)  # the gateway carries on: sizes 13.. again
    status, found = await sqlite_target.verify_store("--remember", remembered)
    assert (status, found) == (1, {"remembered-fork"})

    new_history = await sqlite_target.export("after-restore")
    theirs = (old_history / "checkpoints.jsonl").read_text()
    with (new_history / "checkpoints.jsonl").open("a") as fh:
        fh.write(theirs)
    reseal(new_history)
    assert {"fork", "checkpoint-root"} <= codes(sqlite_target.verify_export(new_history))


async def test_two_signed_roots_for_one_size(sqlite_target: Target) -> None:
    """Attack: a second checkpoint for an already signed size. The database refuses to store
    one; presented next to the first (say, to two different auditors), it is a fork."""
    with pytest.raises(EditRefused, match="signed once"):
        await sqlite_target.backend.dba(
            "INSERT INTO consentry_ledger_checkpoints SELECT size, root, note || ' ' "
            "FROM consentry_ledger_checkpoints WHERE size = 12"
        )

    twin = Target(await make_backend("sqlite", sqlite_target.tmp / "twin"), sqlite_target.tmp)
    (sqlite_target.tmp / "twin").mkdir(exist_ok=True)
    await twin.append(12, start=500)  # same key, same sizes, other entries
    export = await sqlite_target.export()
    other = await twin.export("twin-export")
    with (export / "checkpoints.jsonl").open("a") as fh:
        fh.write((other / "checkpoints.jsonl").read_text().splitlines()[-1] + "\n")
    reseal(export)
    report = sqlite_target.verify_export(export)
    assert codes(report) == {"fork", "checkpoint-root", "proof"}  # which root would it prove?
    assert {f.size for f in report.findings} == {12}


async def test_key_rotation_and_a_retired_key_signing_later(target: Target) -> None:
    """Rotate the key (recorded as a key event); a gateway restarted with the new key is
    fine; one still holding the retired key signs a later size, which the verifier reports.
    A verifier whose policy never heard of the rotation rejects the new key's checkpoints."""
    key_file = target.tmp / "ledger.key"
    key_file.write_text(KEY.skey() + "\n")
    stale_policy = target.tmp / "stale-trust.toml"
    stale_policy.write_text(target.trust.read_text())
    status, event = await target.cli(
        "keys", "rotate", "--key-file", key_file, *target.store_args, "--trust", target.trust
    )
    assert status == 0, event
    assert (event["index"], event["retired_not_after"]) == (12, 13)

    successor = parse_ledger_key(key_file.read_text()).key
    await target.append(4, start=300, key=successor)
    assert await target.verify_store() == (0, set())
    assert not await target.gateway_refuses(successor)
    assert await target.gateway_refuses(KEY)  # the retired key may not start signing again

    await target.append(1, start=400, key=KEY)  # not restarted: still the retired key
    status, found = await target.verify_store()
    assert (status, found) == (1, {"key-window", "unsigned-leaves"})

    target.trust = stale_policy
    status, found = await target.verify_store()
    assert status == 1
    assert {"checkpoint-signature", "key-event"} <= found


def _append_then_kill(db: Path, acks: int) -> list[int]:
    """Run tests/crash's appender on ``db``; SIGKILL it after ``acks`` acknowledgements."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.crash.appender", "sqlite", str(db), "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[int] = []
    try:
        assert proc.stdout.readline() == "ready\n"
        while len(acked) < acks:
            acked.append(int(proc.stdout.readline().split()[0]))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    return acked


async def test_kill_9_of_the_appender_leaves_a_log_that_verifies(tmp_path: Path) -> None:
    """Attack (on durability): SIGKILL an appending gateway mid-stream (tests/crash does it at
    random points, many times). What it acknowledged is in the log, and the log verifies."""
    db = tmp_path / "crash.db"
    acked = await asyncio.to_thread(_append_then_kill, db, 150)
    target = Target(SqliteBackend(db), tmp_path)
    trust = target.trust
    policy = TrustPolicy(APPENDER_ORIGIN, (TrustedKey(APPENDER_KEY.vkey()),))
    trust.write_text(format_policy(policy))
    status, report = await target.cli(
        "ledger", "verify", "--store", f"sqlite:{db}", "--trust", trust
    )
    assert status == 0, json.dumps(report["findings"])
    assert report["size"] > max(acked)
    assert report["latest_verified"] == report["size"]


async def test_a_full_rewrite_signed_with_a_stolen_key(sqlite_target: Target) -> None:
    """Attack (the documented limit): with the signing key, rewrite the whole log, a
    different history, every checkpoint freshly signed. Gateway and verifier both accept it:
    it *is* a valid log for that key. Only a checkpoint remembered from before (an outside
    witness, an auditor's copy) shows that the history changed."""
    remembered = await sqlite_target.latest_note()
    forged = Target(await make_backend("sqlite", sqlite_target.tmp / "forged"), sqlite_target.tmp)
    (sqlite_target.tmp / "forged").mkdir(exist_ok=True)
    await forged.append(20, start=900)
    await asyncio.to_thread(_copy_db, _db(forged), _db(sqlite_target))
    assert not await sqlite_target.gateway_refuses()
    assert await sqlite_target.verify_store() == (0, set())
    status, found = await sqlite_target.verify_store("--remember", remembered)
    assert (status, found) == (1, {"remembered-fork"})
