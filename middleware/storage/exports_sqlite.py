"""AuditEvent bulk export jobs in a SQLite file every worker of one gateway reads.

:class:`~middleware.audit.bulk.ExportJobs` runs a job's producer in the worker that took the
kick-off; this board holds the job's state and its NDJSON output, so any worker answers the
status, manifest, download and DELETE requests of a job another worker runs (which worker
takes a connection is the kernel's choice), and a restart of a worker does not lose a
finished job's files.

A job's owner (the caller's issuer, subject and launch patient) is not stored: its row holds
a keyed digest of it (:func:`~middleware.ledger.signing.keyed_digest` under
``derive_box_key(ledger data secret, OWNER_PURPOSE)``, the same in every worker), as the
break-the-glass sessions board does, and :meth:`SqliteExportBoard.owned_by` compares digests
in constant time. The file names no caller: without the ledger key nobody can tell whose job
a row is. The first version's table (``job``) held owners in the clear: a newer gateway drops
it when it opens the file (``secure_delete`` zeroes its pages), so those jobs are gone, owned
by nobody (404), and their output is deleted by the next purge; jobs are short-lived
(``keep_seconds``), a client starts such an export again.

The file is its own (``<store>.exports`` beside a SQLite store, mode 0600): an export never
waits for a ledger commit, nor a ledger commit for an export. WAL mode (a status read never
waits for the producer), ``secure_delete`` on and the WAL checkpointed and truncated after a
purge (the files hold PHI: a deleted job's lines are overwritten, not left in free pages or
old WAL frames). A job's output is stored as chunks (a BLOB of newline-terminated lines
each) of one output file; the caller bounds their number and size (``max_events``) and
forgets finished jobs after ``keep_seconds`` (:meth:`expire`). Calls are synchronous and
short (one row, or one chunk of at most about a MiB), made on the event loop like
:meth:`~middleware.storage.sqlite_worker.SqliteWorker.read_now`, except :meth:`purge`, which
deletes forgotten output at a cost in proportion to its size and runs off the event loop.
Errors are ``sqlite3.Error`` (the audit API answers them 503).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from middleware.ledger.signing import keyed_digest
from middleware.storage.exports_base import JobRow
from middleware.storage.sidecar import beside

__all__ = ["OWNER_PURPOSE", "JobRow", "SqliteExportBoard", "export_board", "exports_path"]

#: What the owners' digest key is derived for: ``derive_box_key(data secret, OWNER_PURPOSE)``.
OWNER_PURPOSE: Final = "export-owners"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS export_job (
    id TEXT PRIMARY KEY,
    owner BLOB NOT NULL,
    request TEXT NOT NULL,
    transaction_time TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    too_large INTEGER NOT NULL DEFAULT 0,
    count INTEGER NOT NULL DEFAULT 0,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    producer TEXT NOT NULL,
    beat REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS chunk (
    job TEXT NOT NULL,
    file INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    lines INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job, file, seq)
);
"""
#: How often a purge tries to truncate the WAL, and the pause between tries (seconds).
_TRUNCATE_TRIES: Final = 5
_TRUNCATE_PAUSE: Final = 0.02
# The first version's job table, owners in the clear (module docstring).
_OLD_TABLE: Final = "job"
_INSERT: Final = (
    "INSERT INTO export_job (id, owner, request, transaction_time, state, error, too_large, count,"
    " host, pid, started, producer, beat, finished_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT: Final = (
    "SELECT id, owner, request, transaction_time, state, error, too_large, count, host, pid,"
    " started, producer, beat, finished_at FROM export_job WHERE id = ?"
)


def exports_path(store: str) -> Path | None:
    """The board's file beside a ``sqlite:`` store; None for any other store (jobs then stay
    in each process's memory)."""
    if not store.startswith("sqlite:"):
        return None
    return beside(store.removeprefix("sqlite:"), ".exports")  # the real file's: storage.sidecar


def export_board(store: str, key: bytes) -> SqliteExportBoard | None:
    """The board of the ``store`` setting's gateway, None when it has none (exports_path).
    ``key``: 32 bytes, ``derive_box_key(ledger data secret, OWNER_PURPOSE)``."""
    path = exports_path(store)
    return None if path is None else SqliteExportBoard(path, key)


class SqliteExportBoard:
    """The shared board (module docstring); opened on first use. ``key``: the owners' digest
    key (32 bytes, the same in every worker)."""

    #: Every producer is a process of this machine (the file is local): its pid is looked up.
    local = True

    def __init__(self, path: Path, key: bytes, *, busy_timeout: float = 5.0) -> None:
        keyed_digest(key, ())  # a key of the wrong size fails here, not at the first export
        self._key = key
        self.path = path
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA secure_delete=ON")
        # Export files are a cache of the ledger: a power loss may lose the last chunk (the
        # job is then started again), an application crash never does (WAL).
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        old = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_OLD_TABLE,)
        ).fetchone()
        if old is not None:  # owners in the clear: dropped, pages zeroed (secure_delete)
            db.execute(f"DROP TABLE IF EXISTS {_OLD_TABLE}")
            db.execute("PRAGMA busy_timeout = 0")  # held back by a reader: the next purge's
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        return db

    def owner_digest(self, owner: str) -> bytes:
        """What a job row holds for ``owner`` (a principal, any str: a lone surrogate a JSON
        token may carry is kept, never an error): its keyed digest."""
        return keyed_digest(self._key, (owner.encode("utf-8", "surrogatepass"),))

    def owned_by(self, row: JobRow, owner: str) -> bool:
        """Whether ``owner`` started the job ``row``, in constant time."""
        return hmac.compare_digest(row.owner, self.owner_digest(owner))

    def _write(self, statements: list[tuple[str, tuple[object, ...]]], guard: str) -> bool:
        """Run ``statements`` in one write transaction if the job ``guard`` is running."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT state FROM export_job WHERE id = ?", (guard,)).fetchone()
            if row is None or row[0] != "running":
                db.execute("ROLLBACK")
                return False
            for sql, args in statements:
                db.execute(sql, args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return True

    def create(self, job: JobRow, *, max_running: int, max_per_owner: int | None = None) -> bool:
        """Record the running ``job`` unless ``max_running`` jobs run already, or
        ``max_per_owner`` of its owner's (False)."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            (running, owners) = db.execute(
                "SELECT count(*), coalesce(sum(owner = ?), 0) FROM export_job"
                " WHERE state = 'running'",
                (job.owner,),
            ).fetchone()
            if running >= max_running or (max_per_owner is not None and owners >= max_per_owner):
                db.execute("ROLLBACK")
                return False
            db.execute(
                _INSERT,
                (
                    job.id, job.owner, job.request, job.transaction_time, job.state, job.error,
                    int(job.too_large), job.count, job.host, job.pid, job.started,
                    job.producer, job.beat, job.finished_at,
                ),
            )  # fmt: skip
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return True

    def append(
        self, job_id: str, file: int, seq: int, lines: int, data: bytes, *, now: float
    ) -> bool:
        """Add chunk ``seq`` of output ``file`` (``lines`` lines) to a running job; False
        when the job is no longer running (cancelled, or failed by another process): nothing
        is written."""
        return self._write(
            [
                (
                    "INSERT INTO chunk (job, file, seq, lines, data) VALUES (?, ?, ?, ?, ?)",
                    (job_id, file, seq, lines, data),
                ),
                (
                    "UPDATE export_job SET count = count + ?, beat = ? WHERE id = ?",
                    (lines, now, job_id),
                ),
            ],
            job_id,
        )

    def beat(self, job_id: str, *, now: float) -> bool:
        """Renew a running job's lease (its ``beat``); False when it no longer runs."""
        return self._write([("UPDATE export_job SET beat = ? WHERE id = ?", (now, job_id))], job_id)

    def finish(self, job_id: str, *, error: str | None, too_large: bool, now: float) -> bool:
        """End a running job: done (``error`` None) or failed, whose output is no longer
        served and deleted by the next :meth:`purge`; False when it was not running (nothing
        changes)."""
        return self._write(
            [
                (
                    "UPDATE export_job SET state = ?, error = ?, too_large = ?, finished_at = ?"
                    " WHERE id = ?",
                    ("done" if error is None else "failed", error, int(too_large), now, job_id),
                )
            ],
            job_id,
        )

    def state(self, job_id: str) -> str | None:
        """The job's state, None when there is no such job (one indexed read)."""
        row = (
            self._conn().execute("SELECT state FROM export_job WHERE id = ?", (job_id,)).fetchone()
        )
        return None if row is None else str(row[0])

    def get(self, job_id: str) -> JobRow | None:
        """The job ``job_id``, None when there is none."""
        row = self._conn().execute(_SELECT, (job_id,))
        found = row.fetchone()
        if found is None:
            return None
        values = list(found)
        values[1] = bytes(values[1])
        values[6] = bool(values[6])
        return JobRow(*values)

    def running(self) -> list[JobRow]:
        """Every running job (to tell which producers are gone)."""
        rows = self._conn().execute("SELECT id FROM export_job WHERE state = 'running'").fetchall()
        return [job for (job_id,) in rows if (job := self.get(job_id)) is not None]

    def counts(self, job_id: str) -> list[int]:
        """The number of lines of each output file of the job, in order."""
        rows = self._conn().execute(
            "SELECT file, sum(lines) FROM chunk WHERE job = ? GROUP BY file ORDER BY file",
            (job_id,),
        )
        return [int(lines) for _, lines in rows]

    def file(self, job_id: str, n: int) -> bytes:
        """Output file ``n`` of the job (empty when it has none)."""
        rows = self._conn().execute(
            "SELECT data FROM chunk WHERE job = ? AND file = ? ORDER BY seq", (job_id, n)
        )
        return b"".join(bytes(data) for (data,) in rows)

    def first_line(self, job_id: str, n: int) -> bytes:
        """The first line of output file ``n`` of the job, without its newline (empty when
        it has none): read in SQLite, never the whole chunk (a manifest names each file's
        type by it)."""
        row = (
            self._conn()
            .execute(
                "SELECT substr(data, 1, instr(data, x'0a') - 1) FROM chunk"
                " WHERE job = ? AND file = ? AND seq = 0",
                (job_id, n),
            )
            .fetchone()
        )
        return b"" if row is None or row[0] is None else bytes(row[0])

    def chunks(self, job_id: str, n: int) -> Iterator[bytes]:
        """Output file ``n`` of the job chunk by chunk, each read when it is asked for (one
        indexed read a chunk: a download holds one chunk, not the file); it ends early when
        the job's output is deleted meanwhile."""
        seq = 0
        while True:
            row = (
                self._conn()
                .execute(
                    "SELECT data FROM chunk WHERE job = ? AND file = ? AND seq = ?",
                    (job_id, n, seq),
                )
                .fetchone()
            )
            if row is None:
                return
            yield bytes(row[0])
            seq += 1

    def stored_chunks(self) -> int:
        """How many chunks the file holds (what a purge has left)."""
        (count,) = self._conn().execute("SELECT count(*) FROM chunk").fetchone()
        return int(count)

    def delete(self, job_id: str) -> None:
        """Forget the job (a producer running it stops at its next add); its output is no
        longer served, and deleted by the next :meth:`purge`."""
        self._conn().execute("DELETE FROM export_job WHERE id = ?", (job_id,))

    def expire(self, finished_before: float) -> int:
        """Forget the jobs finished before ``finished_before`` (output: as :meth:`delete`);
        how many there were."""
        db = self._conn()
        found = db.execute(
            "SELECT 1 FROM export_job WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT 1",
            (finished_before,),
        ).fetchone()
        if found is None:
            return 0  # the usual case, without taking the write lock
        deleted = db.execute(
            "DELETE FROM export_job WHERE finished_at IS NOT NULL AND finished_at < ?",
            (finished_before,),
        )
        return deleted.rowcount

    def purge(self, *, slice_chunks: int = 8) -> int:
        """Delete the output of forgotten and failed jobs, ``slice_chunks`` chunks a write
        transaction (each holds the write lock for a few MiB only), then move the WAL into
        the file and truncate it: the deleted lines' pages, zeroed by ``secure_delete``,
        replace them in the file and no older WAL frame keeps them. Slow in proportion to
        what it deletes (about 10 ms a MiB): run it off the event loop; it uses a connection
        of its own. Returns the number of chunks deleted."""
        db = self._open()
        try:
            deleted, job = 0, ""
            while True:  # each job having chunks, by the index (never reading the chunks)
                row = db.execute(
                    "SELECT job FROM chunk WHERE job > ? ORDER BY job LIMIT 1", (job,)
                ).fetchone()
                if row is None:
                    break
                job = row[0]
                live = db.execute("SELECT state FROM export_job WHERE id = ?", (job,)).fetchone()
                while live is None or live[0] == "failed":
                    gone = db.execute(
                        "DELETE FROM chunk WHERE rowid IN"
                        " (SELECT rowid FROM chunk WHERE job = ? LIMIT ?)",
                        (job, slice_chunks),
                    ).rowcount
                    deleted += gone
                    if gone < slice_chunks:
                        break
            # Never waits in SQLite: a busy handler would hold other workers' writers back
            # meanwhile. Tried again a few times after a short sleep (this thread's only):
            # another worker's purge or poll reading the WAL right now is the usual reader,
            # and a truncate left to the next sweep leaves the deleted lines in the WAL for
            # up to a sweep period.
            db.execute("PRAGMA busy_timeout = 0")
            for attempt in range(_TRUNCATE_TRIES):
                if attempt:
                    time.sleep(_TRUNCATE_PAUSE)
                with contextlib.suppress(sqlite3.Error):  # held back by a reader: next purge
                    if not db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                        break
            return deleted
        finally:
            db.close()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None
