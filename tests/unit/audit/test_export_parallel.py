"""``consentry audit export`` made in parts by worker processes (``export_parallel``) writes
the very bytes, and gives the same answer, as the export made in one process, for any period,
job count and format; when it cannot (parts whose indexes interleave, a worker that fails) it
makes nothing, leaves no file, directory or process behind, and the sequential path decides. The parts have no name, and no worker outlives the command,
whatever signal ends it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.audit import (
    cli_reports,
    export_make,
    export_parallel,
    export_part,
    export_signals,
)
from middleware.audit.cli_common import private_file
from middleware.audit.export_parallel import export_in_parts, usable_cores
from middleware.cli import _parser, main
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.signing import SigningKey
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.contract.backends import PostgresBackend
from tests.support.audit_fill import fill_audit_log, pseudonym_of

ORIGIN = "gw.example/fhir/ledger"
PATIENTS = ["Patient/a", "Patient/b", "Patient/c", "Patient/d"]
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000_000
COUNT = 48  # entry n recorded at hour n (a second fill: earlier hours, later indexes)


def _fill(directory: Path, fills: list[tuple[int, int]]) -> tuple[str, Path]:
    """A SQLite log in ``directory`` filled by ``(count, first hour)`` runs; its store URL
    and ledger key file."""
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    write_ledger_key(directory / "ledger.key", LedgerKey(key, ORIGIN))

    async def fill() -> None:
        store = await SqliteLogStore.open(directory / "audit.db")
        try:
            for count, hour in fills:
                await fill_audit_log(
                    store, key, ORIGIN, count=count, patients=PATIENTS,
                    start_us=T0 + hour * HOUR, step_us=HOUR,
                )  # fmt: skip
        finally:
            await store.close()

    asyncio.run(fill())
    return f"sqlite:{directory / 'audit.db'}", directory / "ledger.key"


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return _fill(tmp_path_factory.mktemp("parts"), [(COUNT, 0)])


def _argv(store: str, key: Path, out: Path, *extra: str) -> list[str]:
    base = ["audit", "export", "--store", store, "--key-file", str(key), "--report", "date-range"]
    return [*base, *extra, "--out", str(out)]


def _sequential(argv: list[str]) -> tuple[bytes, dict[str, object]]:
    """The file and the answer of the export made in this process alone (``--jobs 1``)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*argv, "--jobs", "1"]) == 0
    return Path(argv[-1]).read_bytes(), json.loads(out.getvalue())


def _in_parts(argv: list[str], jobs: int) -> dict[str, object] | None:
    """The export made by ``jobs`` workers, however few its rows and cores (the CLI's own
    builder)."""
    args = _parser().parse_args([*argv, "--jobs", str(jobs)])
    return cli_reports._in_parts(args, min_rows=0, cores=jobs)


def _hour(h: int) -> str:
    return f"2026-01-{1 + h // 24:02d}T{h % 24:02d}:00:00Z"


def _without_rate(answer: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in answer.items() if k not in ("rows_per_second", "out")}


# -- the same file -----------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["ndjson", "csv"]),
    jobs=st.integers(2, 5),
    since=st.none() | st.integers(-2, COUNT + 2),
    length=st.none() | st.integers(0, COUNT),
    agent=st.booleans(),
)
def test_the_parts_make_the_sequential_file(
    log: tuple[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
    fmt: str,
    jobs: int,
    since: int | None,
    length: int | None,
    agent: bool,
) -> None:
    """Any period (open at either end, empty, past the log), any job count, both formats,
    with and without an agent filter: the bytes and the answer of the sequential export.
    (An export of under an eighth of the log, which reads entry by entry, is not cut.)"""
    store, key = log
    directory = tmp_path_factory.mktemp("out")
    extra = ["--format", fmt]
    if since is not None:
        extra += ["--since", _hour(max(since, 0))]
    if length is not None:
        extra += ["--until", _hour(max(since or 0, 0) + length)]
    if agent:
        extra += ["--agent", "Practitioner/nobody"]
    expected, answer = _sequential(_argv(store, key, directory / "one", *extra))
    made = _in_parts(_argv(store, key, directory / "parts", *extra), jobs)
    if int(str(answer["rows"])) * 8 < COUNT:  # under an eighth of the log: made sequentially
        assert made is None
        return
    assert made is not None
    assert (directory / "parts").read_bytes() == expected
    assert _without_rate(made) == _without_rate(answer)
    assert sorted(p.name for p in directory.iterdir()) == ["one", "parts"]  # no part left


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_the_cli_with_jobs_writes_the_sequential_file_and_it_verifies(
    log: tuple[str, Path], tmp_path: Path, fmt: str
) -> None:
    """``--jobs 2`` on the command line (small: made sequentially) and the parts' file are the
    same bytes; a key gone (no opening for a patient's lines) changes nothing to that."""
    store, key = log
    expected, _ = _sequential(_argv(store, key, tmp_path / "one", "--format", fmt))
    assert _in_parts(_argv(store, key, tmp_path / "parts", "--format", fmt), 3) is not None
    assert (tmp_path / "parts").read_bytes() == expected
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*_argv(store, key, tmp_path / "cli", "--format", fmt), "--jobs", "2"]) == 0
    assert (tmp_path / "cli").read_bytes() == expected


def test_a_key_gone_gives_the_same_file(tmp_path: Path) -> None:
    store, key = _fill(tmp_path, [(COUNT, 0)])
    connection = sqlite3.connect(store.removeprefix("sqlite:"))
    with contextlib.closing(connection):
        connection.execute(
            "DELETE FROM consentry_audit_keys WHERE pseudonym = ?", (pseudonym_of("Patient/b"),)
        )
        connection.commit()
    expected, _ = _sequential(_argv(store, key, tmp_path / "one"))
    assert _in_parts(_argv(store, key, tmp_path / "parts"), 2) is not None
    assert (tmp_path / "parts").read_bytes() == expected


# -- when the parts cannot make it ---------------------------------------------------------------


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".consentry-export-"))


def test_interleaved_parts_are_left_to_the_sequential_path(tmp_path: Path) -> None:
    """Entries appended with earlier times than the log's first (a clock set back): the
    slices by time hold interleaved indexes, so no file is made in parts; the command still
    writes the sequential file."""
    store, key = _fill(tmp_path, [(COUNT, 100), (COUNT, 0)])
    expected, _ = _sequential(_argv(store, key, tmp_path / "one"))
    # Two jobs cut at the second run's first time: one part holds nothing, the other all.
    assert _in_parts(_argv(store, key, tmp_path / "halves"), 2) is not None
    assert (tmp_path / "halves").read_bytes() == expected
    # Three: leaves 0-31 and 48-95 before the cut at leaf 32's time, 32-47 after it.
    assert _in_parts(_argv(store, key, tmp_path / "parts"), 3) is None
    assert not (tmp_path / "parts").exists()
    assert not (tmp_path / "parts.tmp").exists()
    assert _leftovers(tmp_path) == []
    assert multiprocessing.active_children() == []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*_argv(store, key, tmp_path / "cli"), "--jobs", "2"]) == 0
    assert (tmp_path / "cli").read_bytes() == expected


def test_a_failing_worker_leaves_nothing_and_the_sequential_path_reports(tmp_path: Path) -> None:
    """A patient's wrapped key that does not unwrap fails the worker holding its entries:
    nothing is made in parts, nothing is left behind, and the command fails as the
    sequential export fails (no trace, no file)."""
    store, key = _fill(tmp_path, [(COUNT, 0)])
    connection = sqlite3.connect(store.removeprefix("sqlite:"))
    with contextlib.closing(connection):
        connection.execute(
            "UPDATE consentry_audit_keys SET wrapped = zeroblob(length(wrapped)) "
            "WHERE pseudonym = ?",
            (pseudonym_of("Patient/c"),),
        )
        connection.commit()
    argv = _argv(store, key, tmp_path / "parts")
    assert _in_parts(argv, 2) is None
    assert _leftovers(tmp_path) == []
    assert multiprocessing.active_children() == []
    sequential, parallel = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(sequential), contextlib.redirect_stderr(io.StringIO()):
        one = main([*_argv(store, key, tmp_path / "one"), "--jobs", "1"])
    with contextlib.redirect_stdout(parallel), contextlib.redirect_stderr(io.StringIO()) as err:
        two = main([*argv, "--jobs", "2"])
    assert one == two != 0
    assert "Traceback" not in err.getvalue()
    assert not (tmp_path / "parts").exists()


def _open_files_under(directory: Path) -> list[tuple[str, int]]:
    """This process's open files under ``directory``: where each points, its mode."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(directory)):
                found.append((target, stat.S_IMODE(os.fstat(int(fd)).st_mode)))
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
def test_the_parts_have_no_name_and_are_private(log: tuple[str, Path], tmp_path: Path) -> None:
    """While the parts exist, the output's directory holds only the unfinished output: each
    part is an open file without a name (``(deleted)`` or ``O_TMPFILE``'s ``#inode``), 0600."""
    store, key = log
    argv = _argv(store, key, tmp_path / "parts")
    names: list[list[str]] = []
    parts: list[list[tuple[str, int]]] = []

    def look(lines: int) -> None:
        names.append(sorted(p.name for p in tmp_path.iterdir()))
        parts.append([f for f in _open_files_under(tmp_path) if not f[0].endswith(".tmp")])

    args = _parser().parse_args([*argv, "--jobs", "4"])
    job = cli_reports._parts_job(args)
    assert export_in_parts(job, private_file(args.out), jobs=4, cores=4, min_rows=0, tell=look)
    assert names
    assert all(seen == ["parts.tmp"] for seen in names)
    assert [len(open_parts) for open_parts in parts] == [3, 3, 3, 3]  # closed only at the end
    assert all(
        target.endswith(" (deleted)") and mode == 0o600
        for open_parts in parts
        for target, mode in open_parts
    )
    assert _open_files_under(tmp_path) == []


def _slow_workers(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every forked worker sleeps ``seconds`` before its part (this process's part is not
    delayed)."""
    parent, made = os.getpid(), export_part.make_part

    def slow(shared: export_part.Shared, period: Any, sink: Any) -> export_part.Outcome:
        if os.getpid() != parent:
            time.sleep(seconds)
        return made(shared, period, sink)

    monkeypatch.setattr(export_part, "make_part", slow)


def test_an_interrupt_ends_the_workers_and_removes_every_part(
    log: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the workers run (raised here from the progress callback, after this
    process's own part; the workers busy for 30 s more): the interrupt goes on at once,
    every worker is killed and joined, and neither the parts nor the output are left."""
    store, key = log
    _slow_workers(monkeypatch, 30)
    raised: list[float] = []

    def interrupt(lines: int) -> None:
        raised.append(time.perf_counter())
        raise KeyboardInterrupt

    args = _parser().parse_args([*_argv(store, key, tmp_path / "parts"), "--jobs", "4"])
    job = cli_reports._parts_job(args)
    with pytest.raises(KeyboardInterrupt):
        export_in_parts(job, private_file(args.out), jobs=4, cores=4, min_rows=0, tell=interrupt)
    assert time.perf_counter() - raised[0] < 2  # the workers killed, not waited for
    assert _leftovers(tmp_path) == []
    assert multiprocessing.active_children() == []
    assert _open_files_under(tmp_path) == []


def test_a_part_that_cannot_be_appended_leaves_the_file_to_the_sequential_path(
    log: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk full while a part is appended (ENOSPC from the kernel's copy): nothing is
    made in parts and nothing is left, so the sequential path has the room it needs."""
    store, key = log

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export_parallel, "_copy", full)
    assert _in_parts(_argv(store, key, tmp_path / "parts"), 3) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []
    assert _open_files_under(tmp_path) == []


def test_never_more_workers_than_cores_nor_than_the_rows_are_worth(
    log: tuple[str, Path], tmp_path: Path
) -> None:
    """``--jobs 64`` makes one part per usable core at most, and a part has ``min_rows / 2``
    rows at least (48 rows, 32 the least to cut: 3 parts of 16)."""
    store, key = log
    args = _parser().parse_args([*_argv(store, key, tmp_path / "parts"), "--jobs", "64"])
    job = cli_reports._parts_job(args)
    parts: list[int] = []
    made = export_in_parts(job, private_file(args.out), jobs=64, min_rows=0, tell=parts.append)
    assert len(parts) == (usable_cores() if made else 0)
    parts.clear()
    assert export_in_parts(
        job, private_file(args.out), jobs=64, cores=64, min_rows=32, tell=parts.append
    )
    assert len(parts) == 3
    assert multiprocessing.active_children() == []


def test_the_rate_counts_the_whole_command_on_both_paths(
    log: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rows_per_second`` is per second since the command started, whichever path made the
    file: the time before the writing (here 0.5 s more to collect, or a start 100 s ago)
    counts."""
    store, key = log
    made = export_make.make_export

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.5)
        return await made(*args, **kwargs)

    monkeypatch.setattr(cli_reports, "make_export", slow)
    _, answer = _sequential(_argv(store, key, tmp_path / "one"))
    assert 0 < int(str(answer["rows_per_second"])) <= COUNT / 0.5
    args = _parser().parse_args([*_argv(store, key, tmp_path / "parts"), "--jobs", "2"])
    parts = cli_reports._in_parts(args, min_rows=0, cores=2, started=time.perf_counter() - 100)
    assert parts is not None
    assert parts["rows_per_second"] == round(COUNT / 100)


def test_a_signal_ignored_stays_ignored_and_the_handlers_are_restored() -> None:
    """Under ``nohup`` (SIGHUP ignored) a closed session does not end the export; SIGTERM
    raises while the parts are made, and its handler is the one before after."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with export_signals.terminations_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            with pytest.raises(export_signals.Terminated):
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


# -- the command killed ----------------------------------------------------------------------------

#: ``consentry audit export`` (``cli_reports.export``) however few the rows, on 3 cores, whose
#: workers each write a little of their part, leave a mark named by their pid, then sleep.
_SLOW_EXPORT = """
import os, sys, time
from pathlib import Path
from middleware.audit import cli_reports, export_part
from middleware.cli import _parser
marks, parent, made = Path(sys.argv[1]), os.getpid(), export_part.make_part
def slow(shared, period, sink):
    if os.getpid() == parent:
        return made(shared, period, sink)
    sink.write(b"x" * 65536)
    sink.flush()
    (marks / str(os.getpid())).touch()
    time.sleep(60)
export_part.make_part = slow
cli_reports._in_parts.__kwdefaults__.update(min_rows=0, cores=3)
sys.exit(cli_reports.export(_parser().parse_args(sys.argv[2:]), sys.stdout))
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that its new parent has not reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG: Linux")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_killed_command_leaves_no_worker_and_no_part(
    log: tuple[str, Path], tmp_path: Path, signum: signal.Signals
) -> None:
    """The command (a process of its own) killed while its workers run: it ends by that
    signal, every worker ends with it, and no part is left on disk (they have no name; the
    last holder gone, they are gone). SIGTERM and SIGHUP also remove the unfinished output;
    after SIGKILL, which nothing can catch, that file (``<out>.tmp``, 0600) is removed by the
    next export to the same name."""
    store, key = log
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    out.mkdir()
    argv = [*_argv(store, key, out / "x.ndjson"), "--jobs", "3"]
    root = Path(__file__).resolve().parents[3]
    command = subprocess.Popen(
        [sys.executable, "-c", _SLOW_EXPORT, str(marks), *argv],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            workers = [int(p.name) for p in marks.iterdir()]
        assert len(workers) == 2
        command.send_signal(signum)
        _, err = command.communicate(timeout=10)
        assert command.returncode == -signum
        deadline = time.monotonic() + 5
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(map(_running, workers))
        left = sorted(p.name for p in out.iterdir())
        assert left == ([] if signum != signal.SIGKILL else ["x.ndjson.tmp"])
        assert b"Traceback" not in err
    finally:
        for pid in workers:  # on a failure: none left running for a minute
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if command.poll() is None:
            command.kill()
        command.communicate()  # its pipe closed


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_on_postgresql_the_parts_make_the_sequential_file(tmp_path: Path, fmt: str) -> None:
    """The same on PostgreSQL (a schema of its own): each worker opens its own connection."""
    backend = asyncio.run(PostgresBackend.create())
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    write_ledger_key(tmp_path / "ledger.key", LedgerKey(key, ORIGIN))

    async def fill() -> None:
        store = await backend.open()
        try:
            await fill_audit_log(
                store, key, ORIGIN, count=COUNT, patients=PATIENTS, start_us=T0, step_us=HOUR
            )
        finally:
            await store.close()

    try:
        asyncio.run(fill())
        extra = ["--schema", backend.schema, "--format", fmt]
        argv = _argv(backend.dsn, tmp_path / "ledger.key", tmp_path / "one", *extra)
        expected, answer = _sequential(argv)
        for jobs in (2, 3):
            out = tmp_path / f"parts-{jobs}"
            argv = _argv(backend.dsn, tmp_path / "ledger.key", out, *extra)
            made = _in_parts(argv, jobs)
            assert made is not None
            assert out.read_bytes() == expected
            assert _without_rate(made) == _without_rate(answer)
        assert multiprocessing.active_children() == []
    finally:
        asyncio.run(backend.cleanup())
