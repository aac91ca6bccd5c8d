"""Several gateway processes append to one log at once (SQLite file, PostgreSQL database).

Four worker processes (``append_worker``) each open their own store and writer, wait until
all are ready, then append 200 entries of their own plus the same 10 idempotent entries as the
others. Afterwards the log holds exactly 4 x 200 + 10 entries at indexes 0..809, every worker
got distinct indexes for its own entries and the same ones for the shared entries, and every
invariant holds (one signed root per size, consecutive checkpoints consistent, chains intact).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.contract.append_worker import SHARED
from tests.contract.backends import Backend, PostgresBackend, SqliteBackend
from tests.contract.helpers import assert_consistent

WORKERS = 4
COUNT = 200
ROOT = Path(__file__).resolve().parents[2]


def _target(backend: Backend) -> str:
    if isinstance(backend, SqliteBackend):
        return str(backend.path)
    assert isinstance(backend, PostgresBackend)
    return f"{backend.dsn}#{backend.schema}"


def _run_workers(backend: str, target: str) -> list[dict[str, Any]]:
    """Start the workers, release them together once all are ready, collect their reports."""
    command = [sys.executable, "-m", "tests.contract.append_worker", backend, target]
    procs = [
        subprocess.Popen(
            [*command, str(worker), str(COUNT)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for worker in range(WORKERS)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            reports.append(json.loads(out))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_processes_append_to_one_log_as_one_sequence(sql_backend: Backend) -> None:
    store = await sql_backend.open()  # creates the tables before the workers race
    try:
        reports = await asyncio.to_thread(_run_workers, sql_backend.name, _target(sql_backend))
        own = [index for report in reports for index in report["own"]]
        shared = reports[0]["shared"]
        assert all(report["shared"] == shared for report in reports), "one index per shared key"
        assert sorted(own + shared) == list(range(WORKERS * COUNT + SHARED))
        assert sum(report["batches"] for report in reports) < WORKERS * (COUNT + SHARED)

        assert await store.size() == WORKERS * COUNT + SHARED
        await store.rebuild_state()
        await assert_consistent(store)
        assert len(await store.checkpoints()) > 1
    finally:
        await store.close()


pytestmark = pytest.mark.timeout(120)
