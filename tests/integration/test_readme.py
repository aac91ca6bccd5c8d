"""The README's set-up commands and one-minute demo, run exactly as printed.

One source of truth: the blocks are read from README.md between ``<!-- readme-test:NAME -->``
markers, written to files unchanged and run with ``bash`` in a copy of the checkout (the files
git tracks or would add, so nothing beside the checkout, such as ``../shared``, is there to
lean on), with an environment stripped of the test run's own virtual environment, ``PYTHONPATH``
and ``CONSENTRY_*`` settings:

1. ``setup``: creates the virtual environment, installs the checkout into it and runs
   ``consentry serve --upstream http://127.0.0.1:8103/fhir`` in front of the upstream that
   ``scripts/upstream.sh`` serves there; the gateway must answer ``/readyz`` (store and
   upstream) and refuse an anonymous FHIR request with 401; then it is stopped;
2. ``demo``: with that environment active (its ``bin`` first on ``PATH``), the demo runs to
   its end and prints, in order, the lines of the README's ``output`` block (``<id>`` stands
   for a server-assigned id).

The demo once failed four ways: the development issuer only in a comment (401), the EHR's
transaction refused under the default opt-in jurisdiction (403), a ``--remember`` file used
before it was written, and a variable the README told users to set stopping ``serve``.

Fixed ports (8080 and 8103), as printed: the test fails, naming them, if either is taken. Each
script runs in its own session and the whole process group is stopped afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.integration.shell import clean_env
from tests.support.peers import repo_root

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

_BLOCK: Final = re.compile(
    r"<!-- readme-test:(?P<name>[a-z]+) -->\s*```[a-z]*\n(?P<body>.*?)```\s*"
    r"<!-- /readme-test:(?P=name) -->",
    re.DOTALL,
)
_PORTS: Final = (8080, 8103)
_GATEWAY: Final = "http://127.0.0.1:8080"
_ID: Final = r"[A-Za-z0-9\-.]{1,64}"


def readme_blocks() -> dict[str, str]:
    """The marked blocks of README.md by name, as printed."""
    text = (repo_root() / "README.md").read_text(encoding="utf-8")
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def test_the_readme_marks_the_blocks_this_test_runs() -> None:
    blocks = readme_blocks()
    assert set(blocks) >= {"setup", "demo", "output"}
    assert "consentry serve --upstream" in blocks["setup"]
    assert "../" not in blocks["setup"] + blocks["demo"]  # nothing outside the checkout


def _copy_checkout(target: Path) -> None:
    root = repo_root()
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        source = root / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def _running(script: Path, env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``bash script`` in its own session (stdout and stderr to ``log``); on exit the whole
    process group (background jobs included) gets SIGTERM, then SIGKILL."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", str(script)],
            cwd=script.parent,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                process.poll()
                return
            process.poll()
            time.sleep(0.1)


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                break
            time.sleep(0.5)
    tail = log.read_text(errors="replace")[-4000:]
    pytest.fail(f"{url} did not answer 200 (exit {process.poll()}); log tail:\n{tail}")


def _expected_lines(output_block: str) -> list[re.Pattern[str]]:
    return [
        re.compile(re.escape(line).replace(re.escape("<id>"), _ID))
        for line in output_block.splitlines()
        if line.strip()
    ]


def _in_order(patterns: list[re.Pattern[str]], printed: list[str]) -> list[str]:
    """The expected lines not found in ``printed`` in that order (empty: all there)."""
    position = 0
    for index, pattern in enumerate(patterns):
        for offset, line in enumerate(printed[position:]):
            if pattern.fullmatch(line.rstrip()):
                position += offset + 1
                break
        else:
            return [p.pattern for p in patterns[index:]]
    return []


def test_the_setup_command_and_the_demo_run_as_printed(tmp_path: Path) -> None:
    taken = [port for port in _PORTS if _port_taken(port)]
    assert not taken, f"the README's demo needs ports {taken} free"
    blocks = readme_blocks()
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _copy_checkout(checkout)
    setup, demo = checkout / "readme-setup.sh", checkout / "readme-demo.sh"
    setup.write_text(blocks["setup"], encoding="utf-8")
    demo.write_text(blocks["demo"], encoding="utf-8")
    env = clean_env()

    # 1. The run command, in front of the upstream the README names (scripts/upstream.sh).
    upstream_script = checkout / "readme-upstream.sh"
    upstream_script.write_text("exec bash scripts/upstream.sh\n", encoding="utf-8")
    with _running(upstream_script, env, tmp_path / "upstream.log") as upstream:
        _wait_for("http://127.0.0.1:8103/healthz", upstream, tmp_path / "upstream.log", 300)
        with _running(setup, env, tmp_path / "setup.log") as serve:
            _wait_for(f"{_GATEWAY}/readyz", serve, tmp_path / "setup.log", 900)
            anonymous = httpx.get(f"{_GATEWAY}/fhir/Patient", timeout=10.0)
            assert anonymous.status_code == 401
    venv_bin = checkout / ".venv" / "bin"
    assert (venv_bin / "consentry").exists()

    # 2. The demo, with that environment active.
    active = {
        **env,
        "PATH": f"{venv_bin}{os.pathsep}{env['PATH']}",
        "VIRTUAL_ENV": str(checkout / ".venv"),
    }
    log = tmp_path / "demo.log"
    with _running(demo, active, log) as process:
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not finish in 300 s:\n{log.read_text()[-4000:]}")
    printed = log.read_text(errors="replace")
    missing = _in_order(_expected_lines(blocks["output"]), printed.splitlines())
    assert missing == [], f"the demo did not print {missing}; it printed:\n{printed}"
    assert process.returncode == 0, printed
