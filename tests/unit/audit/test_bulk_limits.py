"""Export job limits beyond lines (audit.bulk_job, audit.bulk): bytes a job and a file, running
time, running jobs of one owner, and files read back in bounded batches, in memory and on a
SQLite board alike."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from middleware.audit.bulk import ExportJob, ExportJobs, Limits
from middleware.audit.bulk_job import BATCH_LINES, ExportTooLarge
from middleware.errors import SettingsError, TooManyRequests
from middleware.settings import load_settings
from middleware.storage.exports_sqlite import SqliteExportBoard

KEY = bytes(range(32))


def _jobs(tmp_path: Path, on_board: bool, limits: Limits | None = None) -> ExportJobs:
    board = SqliteExportBoard(tmp_path / "b.exports", KEY) if on_board else None
    return ExportJobs(clock=time.time, board=board, limits=limits)


def _line(n: int, size: int = 10) -> bytes:
    return f"{n:0{size}d}".encode()


BOARDS = pytest.mark.parametrize("on_board", [False, True], ids=["memory", "board"])


@BOARDS
async def test_a_job_stops_at_its_byte_cap(tmp_path: Path, on_board: bool) -> None:
    """Ten-byte lines (eleven with the newline): 35 bytes hold three, the fourth fails it;
    the stop is logged with the job's id and the error's type only."""

    async def produce(job: ExportJob) -> None:
        for n in range(10):
            job.add(_line(n))

    jobs = _jobs(tmp_path, on_board, Limits(max_bytes=35))
    job = jobs.start(owner="o", request="r", transaction_time="t", produce=produce)
    assert job.task is not None
    with capture_logs() as logs:
        await job.task
    assert logs == [
        {
            "event": "export job too large",
            "log_level": "warning",
            "export_job": job.id,
            "error_type": "ExportTooLarge",
        }
    ]
    seen = jobs.get(job.id, "o")
    assert seen.state == "failed"
    assert seen.too_large
    assert seen.error is not None
    assert "35 bytes" in seen.error
    await jobs.aclose()


def test_the_byte_cap_is_checked_before_the_line_is_kept() -> None:
    job = ExportJob(id="j", owner="o", request="r", transaction_time="t",
                    events_per_file=100, max_events=100, max_bytes=22)  # fmt: skip
    job.add(_line(1))
    job.add(_line(2))
    with pytest.raises(ExportTooLarge, match="22 bytes"):
        job.add(_line(3))
    assert job.count == 2


@BOARDS
async def test_a_file_past_its_bytes_is_followed_by_another(tmp_path: Path, on_board: bool) -> None:
    async def produce(job: ExportJob) -> None:
        for n in range(7):
            job.add(_line(n))

    jobs = _jobs(tmp_path, on_board, Limits(bytes_per_file=30))
    job = jobs.start(owner="o", request="r", transaction_time="t", produce=produce)
    assert job.task is not None
    await job.task
    done = jobs.get(job.id, "o")
    assert done.file_counts() == [3, 3, 1]  # 33 bytes pass 30: the fourth line starts file 2
    assert done.ndjson(1) == b"".join(_line(n) + b"\n" for n in (3, 4, 5))
    await jobs.aclose()


@BOARDS
async def test_files_are_read_back_in_bounded_batches(tmp_path: Path, on_board: bool) -> None:
    total = 2 * BATCH_LINES + 7

    async def produce(job: ExportJob) -> None:
        for n in range(total):
            job.add(_line(n))

    jobs = _jobs(tmp_path, on_board)
    jobs.events_per_file = total
    job = jobs.start(owner="o", request="r", transaction_time="t", produce=produce)
    assert job.task is not None
    await job.task
    done = jobs.get(job.id, "o")
    assert done.first_line(0) == _line(0)  # what a manifest reads for the file's type
    batches = list(done.batches(0))
    assert all(0 < len(batch) <= BATCH_LINES for batch in batches)
    assert [line for batch in batches for line in batch] == [_line(n) for n in range(total)]
    await jobs.aclose()


@BOARDS
async def test_a_job_past_its_running_time_fails(tmp_path: Path, on_board: bool) -> None:
    async def produce(_job: ExportJob) -> None:
        await asyncio.Event().wait()

    jobs = _jobs(tmp_path, on_board, Limits(max_seconds=0.02))
    job = jobs.start(owner="o", request="r", transaction_time="t", produce=produce)
    assert job.task is not None
    await job.task
    seen = jobs.get(job.id, "o")
    assert (seen.state, seen.too_large) == ("failed", True)
    assert seen.error is not None
    assert "longer than 0.02 seconds" in seen.error
    await jobs.aclose()


@BOARDS
async def test_one_owner_holds_at_most_its_share_of_running_jobs(
    tmp_path: Path, on_board: bool
) -> None:
    gate = asyncio.Event()

    async def produce(_job: ExportJob) -> None:
        await gate.wait()

    jobs = _jobs(tmp_path, on_board, Limits(max_per_owner=1))
    jobs.max_running = 3
    jobs.start(owner="alice", request="r", transaction_time="t", produce=produce)
    with pytest.raises(TooManyRequests):
        jobs.start(owner="alice", request="r", transaction_time="t", produce=produce)
    jobs.start(owner="bob", request="r", transaction_time="t", produce=produce)
    gate.set()
    await jobs.aclose()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("export_max_seconds", "inf"),
        ("export_max_seconds", "nan"),
        ("export_max_seconds", "0"),
        ("export_max_bytes", "0"),
        ("export_bytes_per_file", "0"),
        ("export_max_running_per_owner", "0"),
    ],
    ids=["seconds-inf", "seconds-nan", "seconds-zero", "bytes-zero", "file-bytes-zero", "owner-0"],
)
def test_a_setting_that_would_remove_a_limit_stops_the_start(name: str, value: str) -> None:
    """An infinite or nan running time is no time limit at all; a zero cap refuses every
    export. Either stops the gateway's start, naming the setting."""
    env = {"CONSENTRY_UPSTREAM": "http://upstream.test/fhir", f"CONSENTRY_{name.upper()}": value}
    with pytest.raises(SettingsError, match=f"{name}:"):
        load_settings(env=env)
