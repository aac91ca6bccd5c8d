"""``consentry serve --workers N`` (middleware.supervisor): the workers share one port; SIGTERM
stops them all (exit 0); a worker that dies stops the serve (exit 1); a worker that cannot
start stops it with its own status; the worker count follows the settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from middleware.errors import SettingsError
from middleware.serving import worker_count
from middleware.settings import load_settings
from tests.support import free_port


def _serve(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """The serve command, its output (log lines and errors) going to ``tmp_path/serve.log``."""
    argv = [sys.executable, "-m", "middleware.cli", "serve", "--upstream"]
    argv += ["http://127.0.0.1:9/fhir", "--port", str(port), *extra]
    with (tmp_path / "serve.log").open("wb") as log:
        return subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)


def _workers(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def _started(serve: subprocess.Popen[bytes], log: Path, port: int, workers: int) -> list[int]:
    """The worker pids once the supervisor has logged that all of them serve."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise AssertionError(log.read_text())
        if '"event":"serving"' in log.read_text():
            pids = _workers(serve.pid)
            assert len(pids) == workers
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            return pids
        time.sleep(0.2)
    raise AssertionError("the workers did not start")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def test_sigterm_stops_every_worker_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    serve = _serve(tmp_path, port, "--workers", "2", "--store", "sqlite:x.db")
    pids = _started(serve, tmp_path / "serve.log", port, 2)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(30) == 0
    assert all(_gone(pid) for pid in pids)


def test_sigterm_stops_a_single_process_serve_with_exit_0(tmp_path: Path) -> None:
    """One worker exits 0 on SIGTERM like several (red before: uvicorn re-raised the signal,
    exit -15, a shell's 143)."""
    port = free_port()
    serve = _serve(tmp_path, port, "--workers", "1", "--store", "sqlite:x.db")
    deadline = time.monotonic() + 60
    while True:
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()
        assert time.monotonic() < deadline, "the gateway did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    assert _workers(serve.pid) == []  # served in the serve process itself
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(30) == 0


def test_a_worker_that_dies_stops_the_others_and_the_serve_exits_1(tmp_path: Path) -> None:
    port = free_port()
    serve = _serve(tmp_path, port, "--workers", "2", "--store", "sqlite:x.db")
    first, second = _started(serve, tmp_path / "serve.log", port, 2)
    os.kill(first, signal.SIGKILL)
    assert serve.wait(30) == 1
    assert _gone(second)
    assert "worker exited, stopping the gateway" in (tmp_path / "serve.log").read_text()


def test_a_worker_that_cannot_start_stops_the_serve_with_its_status(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "x.db"
    serve = _serve(tmp_path, free_port(), "--workers", "2", "--store", f"sqlite:{missing}")
    assert serve.wait(60) == 3  # a store it cannot open, as with one process
    log = (tmp_path / "serve.log").read_text()
    assert f"consentry: cannot start: store sqlite:{missing}" in log


@pytest.mark.parametrize(
    ("store", "workers", "expected"),
    [
        ("sqlite:x.db", 3, 3),
        ("memory:", 0, 1),  # one process's memory: never shared
        ("sqlite:x.db", 0, len(os.sched_getaffinity(0))),
        ("sqlite:x.db", None, 1),
    ],
    ids=["explicit", "memory-store-one", "zero-one-per-cpu", "default-one"],
)
def test_worker_count(store: str, workers: int | None, expected: int) -> None:
    """One process unless asked (docs/operations.md: a second worker did not pay on 2 cores,
    a cgroup quota is invisible to the CPU count); 0 asks for one per CPU."""
    overrides: dict[str, object] = {"upstream": "http://u/fhir", "store": store}
    if workers is not None:
        overrides["workers"] = workers
    assert worker_count(load_settings(overrides=overrides)) == expected


@pytest.mark.parametrize(
    ("store", "workers"), [("memory:", 2), ("sqlite:x.db", -1)], ids=["memory", "negative"]
)
def test_impossible_worker_counts_are_refused(store: str, workers: int) -> None:
    with pytest.raises(SettingsError, match="workers"):
        load_settings(overrides={"upstream": "http://u/fhir", "store": store, "workers": workers})
