"""``consentry ledger verify|export`` and ``consentry keys generate|policy|rotate`` through
``middleware.cli.main``, on SQLite logs written by the group-commit writer."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from middleware.cli import main
from middleware.ledger.entry import NewEntry
from middleware.ledger.keyfile import LedgerKey, parse_ledger_key
from middleware.ledger.leaf import EntryKind
from middleware.ledger.rotation import record_rotation
from middleware.ledger.signing import SigningKey
from middleware.ledger.trust import parse_policy
from middleware.ledger.writer import LedgerWriter
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.helpers import PSEUDONYMS

ORIGIN = "gw.test/fhir/ledger"


def append(db: Path, key_file: Path, count: int, start: int = 0) -> None:
    """Append ``count`` entries through the writer, signing with the key in ``key_file``."""
    key = parse_ledger_key(key_file.read_text()).key

    async def run() -> None:
        store = await SqliteLogStore.open(db)
        writer = LedgerWriter(store, key, origin=ORIGIN, max_batch=4)
        await writer.start()
        entries = [
            NewEntry.create(
                EntryKind.ACCESS_OUTCOME,
                f"evidence {n}".encode(),
                recorded_us=n,
                pseudonym=PSEUDONYMS[n % 3],
            )
            for n in range(start, start + count)
        ]
        await asyncio.gather(*(writer.append(e) for e in entries))
        await writer.stop()
        await store.close()

    asyncio.run(run())


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, Any]:
    """Run the CLI; return its exit status and its JSON output (or text, or None)."""
    status = main([str(a) for a in argv])
    out = capsys.readouterr().out
    try:
        return status, json.loads(out)
    except json.JSONDecodeError:
        return status, out or None


@pytest.fixture
def setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """A key, a trust policy and a log of 10 entries signed by that key."""
    paths = {
        "key": tmp_path / "ledger.key",
        "trust": tmp_path / "trust.toml",
        "db": tmp_path / "ledger.db",
    }
    status, out = run(
        capsys,
        "keys",
        "generate",
        "--key-file",
        paths["key"],
        "--origin",
        ORIGIN,
        "--trust",
        paths["trust"],
    )
    assert status == 0, out
    append(paths["db"], paths["key"], 10)
    return paths


def test_keys_generate_writes_an_owner_only_key_and_a_policy(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key = parse_ledger_key(setup["key"].read_text()).key
    assert stat.S_IMODE(setup["key"].stat().st_mode) == 0o600
    policy = parse_policy(setup["trust"].read_text())
    assert policy.origin == ORIGIN
    assert [k.vkey for k in policy.keys] == [key.vkey()]
    again: list[str | Path] = ["keys", "generate", "--key-file", setup["key"], "--origin", ORIGIN]
    assert run(capsys, *again)[0] == 2  # never overwrites a key


def test_keys_policy_prints_a_policy_for_an_existing_key(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run(capsys, "keys", "policy", "--key-file", setup["key"], "--origin", ORIGIN)
    assert status == 0
    assert parse_policy(out) == parse_policy(setup["trust"].read_text())


def test_verify_a_store_prints_an_ok_report(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = run(
        capsys, "ledger", "verify", "--store", f"sqlite:{setup['db']}", "--trust", setup["trust"]
    )
    assert status == 0
    assert report["ok"] is True
    assert (report["size"], report["latest_verified"], report["evidence_checked"]) == (10, 10, 10)
    assert report["findings"] == []


def test_export_then_verify_the_export_against_a_remembered_checkpoint(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "export"
    status, manifest = run(
        capsys, "ledger", "export", "--store", f"sqlite:{setup['db']}", "--out", out
    )
    assert status == 0
    assert manifest["size"] == 10
    remembered = tmp_path / "seen.note"
    remembered.write_text((out / "latest.note").read_text())
    append(setup["db"], setup["key"], 5, start=10)
    later = tmp_path / "later"
    assert (
        run(capsys, "ledger", "export", "--store", f"sqlite:{setup['db']}", "--out", later)[0] == 0
    )
    status, report = run(
        capsys,
        "ledger",
        "verify",
        "--export",
        later,
        "--trust",
        setup["trust"],
        "--remember",
        remembered,
    )
    assert status == 0, report
    assert (report["size"], report["remembered"]) == (15, 10)


def test_rotate_records_the_event_updates_the_policy_and_replaces_the_key(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old = setup["key"].read_text()
    status, event = run(
        capsys,
        "keys",
        "rotate",
        "--key-file",
        setup["key"],
        "--store",
        f"sqlite:{setup['db']}",
        "--trust",
        setup["trust"],
    )
    assert status == 0, event
    assert (event["index"], event["retired_not_after"], event["successor_not_before"]) == (
        10,
        11,
        12,
    )
    assert setup["key"].read_text() != old
    assert not setup["key"].with_name("ledger.key.next").exists()
    policy = parse_policy(setup["trust"].read_text())
    assert [(k.not_before, k.not_after) for k in policy.keys] == [(0, 11), (12, None)]
    append(setup["db"], setup["key"], 5, start=10)  # the restarted gateway, new key
    verify: list[str | Path] = [
        "ledger",
        "verify",
        "--store",
        f"sqlite:{setup['db']}",
        "--trust",
        setup["trust"],
    ]
    status, report = run(capsys, *verify)
    assert status == 0, report
    assert report["key_events"] == 1

    stale = setup["key"].with_name("stale.key")
    stale.write_text(old)
    append(setup["db"], stale, 1, start=20)  # a gateway still on the retired key
    status, report = run(capsys, *verify)
    assert status == 1
    assert {f["code"] for f in report["findings"]} == {"key-window", "unsigned-leaves"}


def test_an_interrupted_rotation_resumes(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The event was recorded, then the command died before the policy and key file moved.
    The pending file (as an earlier version wrote it) names no data secret: the new key file
    carries the retired file's."""
    before = parse_ledger_key(setup["key"].read_text())
    retired = before.key
    successor = SigningKey.generate(ORIGIN)
    pending = setup["key"].with_name("ledger.key.next")
    pending.write_text(LedgerKey(successor, ORIGIN).text())

    async def first_attempt() -> None:
        store = await SqliteLogStore.open(setup["db"])
        await record_rotation(store, retired, successor, origin=ORIGIN, recorded_us=1)
        await store.close()

    asyncio.run(first_attempt())
    status, event = run(
        capsys,
        "keys",
        "rotate",
        "--key-file",
        setup["key"],
        "--store",
        f"sqlite:{setup['db']}",
        "--trust",
        setup["trust"],
    )
    assert status == 0
    assert (event["resumed"], event["successor"]) == (True, successor.vkey())
    after = parse_ledger_key(setup["key"].read_text())
    assert after == LedgerKey(successor, ORIGIN, secret=before.data_secret)


@pytest.mark.parametrize(
    "argv",
    [
        ["ledger", "verify", "--store", "sqlite:{db}", "--trust", "{missing}"],
        ["ledger", "verify", "--store", "sqlite:{db}", "--trust", "{db}"],
        ["ledger", "verify", "--store", "sqlite:{missing}", "--trust", "{trust}"],
        ["ledger", "verify", "--store", "memory:", "--trust", "{trust}"],
        ["ledger", "verify", "--export", "{tmp}", "--trust", "{trust}"],
        ["ledger", "verify", "--trust", "{trust}"],
        ["ledger", "export", "--store", "sqlite:{db}", "--out", "{tmp}"],
        ["keys", "rotate", "--key-file", "{trust}", "--store", "sqlite:{db}", "--trust", "{trust}"],
        ["keys", "generate", "--key-file", "{missing}", "--origin", "bad origin\n"],
    ],
    ids=[
        "no-policy-file",
        "policy-not-toml",
        "no-store-file",
        "memory-store",
        "not-an-export",
        "no-source",
        "export-into-non-empty",
        "key-file-not-a-key",
        "bad-origin",
    ],
)
def test_what_stops_a_command_is_exit_status_2(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    names = {
        "db": setup["db"],
        "trust": setup["trust"],
        "missing": tmp_path / "nope",
        "tmp": tmp_path,
    }
    status, _ = run(capsys, *[a.format(**names) for a in argv])
    assert status == 2


def test_an_action_is_required() -> None:
    assert main(["ledger"]) == 2
