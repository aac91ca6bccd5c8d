"""The files beside a SQLite store (storage.sidecar): one per real database file whatever
path (symbolic link) a process was given, and a file root creates is the database owner's."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from middleware.storage.audit_outbox import outbox_path
from middleware.storage.breakglass_sqlite import sessions_path
from middleware.storage.consent_seq import ConsentSeq
from middleware.storage.exports_sqlite import exports_path
from middleware.storage.sidecar import beside, open_beside
from middleware.storage.write_lock import WriteLock

NOBODY = 65534  # the uid and gid the database is given: not this process's


def _consent_seq(db: Path) -> Path:
    return ConsentSeq(db).path


def _write_lock(db: Path) -> Path:
    return WriteLock(db).path


def _sessions(db: Path) -> Path | None:
    return sessions_path(f"sqlite:{db}")


def _exports(db: Path) -> Path | None:
    return exports_path(f"sqlite:{db}")


def _outbox(db: Path) -> Path:
    return Path(outbox_path("", f"sqlite:{db}"))


@pytest.mark.parametrize(
    "named",
    [_consent_seq, _write_lock, _sessions, _exports, _outbox],
    ids=["consent-seq", "write-lock", "sessions", "exports", "outbox"],
)
def test_a_store_reached_through_a_link_names_the_real_files_sidecar(
    tmp_path: Path, named: Callable[[Path], Path | None]
) -> None:
    """SQLite follows the link to one database; a sidecar named from the link would be a
    second file (for the consent counter: a change announced where the other process does
    not look). Red before: each was named from the path as given."""
    real = tmp_path / "data" / "c.db"
    real.parent.mkdir()
    real.touch()
    (tmp_path / "link.db").symlink_to(real)
    (tmp_path / "dir").symlink_to(real.parent)
    for given in (tmp_path / "link.db", tmp_path / "dir" / "c.db"):
        assert named(given) == named(real)
        assert named(given) is not None
        assert str(named(given)).startswith(str(real) + ".")


def test_a_relative_path_names_the_absolute_files_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert beside("c.db", ".x") == tmp_path / "c.db.x"


def _announce(db: Path) -> None:
    seq = ConsentSeq(db)
    seq.announce(1)
    seq.close()


def _lock(db: Path) -> None:
    lock = WriteLock(db)
    assert lock.acquire(1.0)
    lock.close()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")


@needs_root
@pytest.mark.parametrize(
    ("create", "suffix"),
    [
        (_announce, ".consent-seq"),
        (_lock, ".write-lock"),
    ],
    ids=["consent-seq", "write-lock"],
)
def test_a_file_root_creates_is_given_the_databases_owner(
    tmp_path: Path, create: Callable[[Path], object], suffix: str
) -> None:
    """A ``consentry`` command run as root must not leave a 0600 file the gateway's user
    cannot open (for the counter: every consent change of the gateway refused). Red before:
    the file was root's."""
    db = tmp_path / "c.db"
    db.touch()
    os.chown(db, NOBODY, NOBODY)
    create(db)
    made = (tmp_path / ("c.db" + suffix)).stat()
    assert (made.st_uid, made.st_gid) == (NOBODY, NOBODY)
    assert made.st_mode & 0o077 == 0


@needs_root
def test_a_file_already_there_keeps_its_owner(tmp_path: Path) -> None:
    db, path = tmp_path / "c.db", tmp_path / "c.db.x"
    db.touch()
    os.chown(db, NOBODY, NOBODY)
    path.touch()
    os.close(open_beside(path, db, os.O_RDWR))
    assert path.stat().st_uid == os.geteuid()


def test_a_database_not_created_yet_leaves_the_file_to_its_creator(tmp_path: Path) -> None:
    fd = open_beside(tmp_path / "c.db.x", tmp_path / "c.db", os.O_RDWR)
    os.close(fd)
    assert (tmp_path / "c.db.x").stat().st_uid == os.geteuid()
