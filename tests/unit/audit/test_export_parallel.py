"""``consentry audit export`` made in parts by worker processes (``export_parallel``) writes
the very bytes, and gives the same answer, as the export made in one process, for any period,
job count and format; when it cannot (parts whose indexes interleave, a worker that fails) it
makes nothing, leaves no file, directory or process behind, and the sequential path decides."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import multiprocessing
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.audit import cli_reports
from middleware.audit.cli_common import private_file
from middleware.audit.export_parallel import export_in_parts
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
    """The export made by ``jobs`` workers, however few its rows (the CLI's own builder)."""
    args = _parser().parse_args([*argv, "--jobs", str(jobs)])
    return cli_reports._in_parts(args, min_rows=0)


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


def test_the_parts_are_private_while_they_exist(log: tuple[str, Path], tmp_path: Path) -> None:
    """The parts' directory is its owner's only (0700), each part 0600, named by its number."""
    store, key = log
    argv = _argv(store, key, tmp_path / "parts")
    seen: list[tuple[int, list[tuple[str, int]]]] = []

    def look(lines: int) -> None:
        for directory in tmp_path.glob(".consentry-export-*"):
            parts = [(p.name, stat.S_IMODE(p.stat().st_mode)) for p in _files(directory)]
            seen.append((stat.S_IMODE(directory.stat().st_mode), parts))

    args = _parser().parse_args([*argv, "--jobs", "4"])
    job = cli_reports._parts_job(args)
    assert export_in_parts(job, private_file(args.out), jobs=4, min_rows=0, tell=look)
    assert seen
    assert all(mode == 0o700 for mode, _ in seen)
    assert all(m == 0o600 and n.startswith("part-") for _, parts in seen for n, m in parts)
    assert _leftovers(tmp_path) == []


def _files(directory: Path) -> Iterator[Path]:
    with contextlib.suppress(FileNotFoundError):
        yield from list(directory.iterdir())


def test_an_interrupt_ends_the_workers_and_removes_every_part(
    log: tuple[str, Path], tmp_path: Path
) -> None:
    """Ctrl-C while the workers run (raised here from the progress callback, after this
    process's own part): the interrupt goes on, every worker is ended and joined, and neither
    the parts nor the unfinished output are left."""
    store, key = log

    def interrupt(lines: int) -> None:
        raise KeyboardInterrupt

    args = _parser().parse_args([*_argv(store, key, tmp_path / "parts"), "--jobs", "4"])
    out = private_file(args.out)
    with pytest.raises(KeyboardInterrupt):
        export_in_parts(cli_reports._parts_job(args), out, jobs=4, min_rows=0, tell=interrupt)
    assert _leftovers(tmp_path) == []
    assert multiprocessing.active_children() == []


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
