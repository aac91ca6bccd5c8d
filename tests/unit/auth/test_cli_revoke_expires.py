"""``consentry auth revoke --jti ID --expires TIME``: what ``revocations --prune`` will trust.

A date alone is its last moment (a row is never pruned before its token expired); an
``--expires`` already past the prune margin, after the year 9999 or not ASCII digits nor a
time is refused and appends nothing; ``--ledger-entry N`` records only the ``expires`` entry
N carries (none: never pruned), since the entry's digest does not cover it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from middleware.auth.revocation import PRUNE_MARGIN
from middleware.cli import main
from middleware.ledger.entry import NewEntry
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_sqlite import SqliteLogStore
from middleware.storage.revocations_open import find

ORIGIN = "gateway.test/ledger"
KEY = LedgerKey(SigningKey.from_seed(ORIGIN, bytes(range(32))), ORIGIN)


class Store:
    """A gateway's SQLite store (its ledger has an entry) and the CLI run against it."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "c.db"
        self.url = f"sqlite:{self.db}"
        self.key_file = tmp_path / "ledger.key"
        write_ledger_key(self.key_file, KEY)
        asyncio.run(self._first_entry())

    async def _first_entry(self) -> None:
        store = await SqliteLogStore.open(self.db)
        try:
            entry = NewEntry.create(EntryKind.ADMIN, b'{"type":"test/first"}', recorded_us=1)
            await store.append([entry], sign=checkpoint_signer(KEY.key, ORIGIN))
        finally:
            await store.close()

    def cli(self, *argv: str) -> tuple[int, str, str]:
        """``consentry auth ARGV --store ...``: status, stdout, stderr."""
        out, err = io.StringIO(), io.StringIO()
        store = ("--store", self.url, "--key-file", str(self.key_file))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["auth", *argv, *store])
        return status, out.getvalue(), err.getvalue()

    def entries(self) -> list[dict[str, object]]:
        async def read() -> list[dict[str, object]]:
            store = await SqliteLogStore.open(self.db)
            try:
                found = []
                for index in range(await store.size()):
                    evidence = await store.evidence(index)
                    assert evidence is not None
                    found.append(json.loads(evidence.data))
                return found
            finally:
                await store.close()

        return asyncio.run(read())

    def stored_expires(self, jti: str) -> float | None:
        row = asyncio.run(find(self.url, "jti", jti))
        assert row is not None
        return row.expires

    def pruned(self) -> list[str]:
        """``revocations --prune``; the jtis left."""
        status, text, err = self.cli("revocations", "--prune")
        assert status == 0, err
        return [row["value"] for row in json.loads(text)["revocations"] if row["kind"] == "jti"]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_a_date_is_its_last_moment_so_the_row_outlives_the_token(store: Store) -> None:
    """Red before: a date was its first moment, so --prune dropped the row up to a day before
    the token expired (and a token valid for hours more was accepted again)."""
    status, text, err = store.cli(
        "revoke", "--jti", "t-1", "--expires", "2030-01-01", "--reason", "r"
    )
    assert status == 0, err
    assert json.loads(text)["expires"] == 1893542399.999999  # 2030-01-01T23:59:59.999999Z
    assert store.entries()[1]["expires"] == 1893542399.999999
    assert store.stored_expires("t-1") == 1893542399.999999
    today = datetime.now(UTC).date().isoformat()
    status, _, err = store.cli("revoke", "--jti", "today", "--expires", today, "--reason", "r")
    assert status == 0, err
    assert store.pruned() == ["t-1", "today"]  # expires tonight: not prunable yet


@pytest.mark.parametrize(
    "expires",
    [
        "0",
        str(int(time.time() - PRUNE_MARGIN - 60)),
        (datetime.now(UTC) - timedelta(seconds=PRUNE_MARGIN + 60)).isoformat(),
        (datetime.now(UTC) - timedelta(days=2)).date().isoformat(),
        "9" * 400,  # float('inf'): 'Infinity' in the evidence before
        "253402300800",  # 10000-01-01T00:00:00Z
        "\u0664\u0661\u0660\u0662\u0664\u0664\u0664\u0668\u0660\u0660",  # Arabic-Indic digits
    ],
    ids=["zero", "numericdate-past", "time-past", "date-past", "digit-run", "year-10000", "arabic"],
)
def test_an_expires_past_the_margin_or_no_exp_is_refused(store: Store, expires: str) -> None:
    """Red before: each was recorded (an ``exp`` long past is pruned at the next --prune)."""
    status, text, err = store.cli("revoke", "--jti", "t-1", "--expires", expires, "--reason", "r")
    assert (status, text) == (2, ""), err
    assert err.startswith("consentry auth revoke: ")
    assert len(store.entries()) == 1
    assert not Path(f"{store.db}.revocations").exists()


def test_an_expires_within_the_margin_or_far_ahead_is_recorded(store: Store) -> None:
    recent = int(time.time() - PRUNE_MARGIN + 60)  # a token gateways may still accept
    for jti, expires in (("recent", str(recent)), ("last", "253402300799")):
        status, text, err = store.cli("revoke", "--jti", jti, "--expires", expires, "--reason", "r")
        assert status == 0, err
        assert json.loads(text)["expires"] == float(expires)
    assert store.pruned() == ["recent", "last"]


def _fail_list_write(store: Store, *argv: str) -> None:
    """Revoke with ``argv``: the entry is appended, the list cannot be written (a directory
    where its file goes), exit 2 naming the entry; the list is then writable again."""
    listed = Path(f"{store.db}.revocations")
    listed.mkdir()
    status, _, err = store.cli("revoke", *argv, "--reason", "r")
    assert status == 2
    assert "--ledger-entry 1" in err
    listed.rmdir()


def test_a_replay_records_no_expires_when_the_entry_names_none(store: Store) -> None:
    """Red before: the operator's --expires (not on the ledger, not in the digest) was
    recorded, and --prune then dropped the revocation the entry ordered without one."""
    _fail_list_write(store, "--jti", "stolen")
    soon = str(int(time.time() + 60))
    replay = ("revoke", "--jti", "stolen", "--reason", "r", "--ledger-entry", "1")
    status, text, err = store.cli(*replay, "--expires", soon)
    assert (status, text) == (2, ""), err
    assert "admin entry 1 records no expires" in err
    assert not Path(f"{store.db}.revocations").exists()
    status, text, err = store.cli(*replay)
    assert status == 0, err
    assert json.loads(text)["expires"] is None
    assert store.stored_expires("stolen") is None
    assert store.pruned() == ["stolen"]
    assert len(store.entries()) == 2  # the replays appended nothing


def test_a_replay_records_the_entrys_expires(store: Store) -> None:
    _fail_list_write(store, "--jti", "stolen", "--expires", "2030-01-01")
    replay = ("revoke", "--jti", "stolen", "--reason", "r", "--ledger-entry", "1")
    status, _, err = store.cli(*replay, "--expires", "2030-01-02")
    assert status == 2
    assert "records expires 1893542399.999999, not 1893628799.999999" in err
    for same in (("--expires", "2030-01-01"), ()):  # the same command again, or without it
        status, text, err = store.cli(*replay, *same)
        assert status == 0, err
        assert json.loads(text)["expires"] == 1893542399.999999
    assert store.stored_expires("stolen") == 1893542399.999999
