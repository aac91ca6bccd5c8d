"""The ledger's origin is the log's identity, kept in its key file: the gateway signs the origin
``consentry keys generate --origin`` chose whatever address it listens on, restarts on other
ports and public URLs keep one log that ``consentry ledger verify`` accepts, and a key file or
``ledger_origin`` that does not match the log stops start-up with a message saying which."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.app import Gateway, create_app
from middleware.cli import main
from middleware.ledger.entry import NewEntry
from middleware.ledger.keyfile import generate_ledger_key
from middleware.ledger.leaf import EntryKind
from middleware.settings import load_settings
from tests.app.conftest import UPSTREAM

ORIGIN = "gw.example/fhir/ledger"


def _gateway(tmp_path: Path, **settings: Any) -> Gateway:
    values: dict[str, Any] = {
        "upstream": UPSTREAM,
        "store": f"sqlite:{tmp_path / 'consentry.db'}",
        "ledger_key_file": str(tmp_path / "consentry-ledger.key"),
        **settings,
    }
    return create_app(
        load_settings(overrides=values),
        upstream=httpx.MockTransport(lambda _: httpx.Response(500)),
    )


async def _serve_and_record(app: Gateway, count: int) -> dict[str, Any]:
    """Run the ASGI lifespan start-up as a server does; if the app started, record ``count``
    entries and shut it down. The app's answer to the start-up."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        await answers.put(message)

    task = asyncio.create_task(app({"type": "lifespan"}, receive, send))  # type: ignore[arg-type]
    answer = await answers.get()
    if answer["type"] == "lifespan.startup.complete":
        for n in range(count):
            entry = NewEntry.create(EntryKind.ADMIN, b'{"n":%d}' % n, recorded_us=1_000 + n)
            await app.ledger.append(entry)
        await inbox.put({"type": "lifespan.shutdown"})
        await answers.get()
    await task
    return answer


def _cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()  # the app's log lines so far
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _verify(tmp_path: Path, capsys: pytest.CaptureFixture[str], *origin: str) -> dict[str, Any]:
    """``consentry keys policy [--origin ORIGIN]`` then ``consentry ledger verify``."""
    key_file = tmp_path / "consentry-ledger.key"
    status, policy, err = _cli(capsys, "keys", "policy", "--key-file", key_file, *origin)
    assert status == 0, err
    trust = tmp_path / "trust.toml"
    trust.write_text(policy)
    store = f"sqlite:{tmp_path / 'consentry.db'}"
    status, out, err = _cli(capsys, "ledger", "verify", "--store", store, "--trust", trust)
    assert out, err
    report: dict[str, Any] = json.loads(out)
    assert report["ok"] is (status == 0)
    return report


async def test_restarts_on_other_ports_and_urls_keep_one_verifiable_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "consentry-ledger.key"
    assert _cli(capsys, "keys", "generate", "--key-file", key_file, "--origin", ORIGIN)[0] == 0
    runs: list[dict[str, Any]] = [
        {"port": 8080},
        {"port": 9091},
        {"host": "0.0.0.0", "port": 8443, "public_url": "https://gw.example/fhir"},
    ]
    for settings in runs:
        answer = await _serve_and_record(_gateway(tmp_path, **settings), 3)
        assert answer["type"] == "lifespan.startup.complete", answer
    report = await asyncio.to_thread(_verify, tmp_path, capsys, "--origin", ORIGIN)
    assert report["findings"] == []
    assert report["ok"] is True
    assert report["size"] == 9


async def test_a_key_file_created_at_first_start_keeps_that_origin_after_moves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ``keys generate``: the first start creates the key file with the origin of its
    public URL then; later starts elsewhere sign that same origin."""
    for port in (8080, 9092):
        answer = await _serve_and_record(_gateway(tmp_path, port=port), 2)
        assert answer["type"] == "lifespan.startup.complete", answer
    report = await asyncio.to_thread(_verify, tmp_path, capsys)
    assert (report["ok"], report["findings"], report["size"]) == (True, [], 4)
    status, policy, _ = _cli(
        capsys, "keys", "policy", "--key-file", tmp_path / "consentry-ledger.key"
    )
    assert status == 0
    assert 'origin = "127.0.0.1:8080/fhir/ledger"' in policy


async def test_a_key_file_of_another_origin_refuses_to_start(tmp_path: Path) -> None:
    first = await _serve_and_record(_gateway(tmp_path, ledger_origin=ORIGIN), 2)
    assert first["type"] == "lifespan.startup.complete"
    key_file = tmp_path / "consentry-ledger.key"
    key_file.rename(tmp_path / "saved.key")
    generate_ledger_key(key_file, "other.example/ledger")  # a key for another log
    answer = await _serve_and_record(_gateway(tmp_path), 0)
    assert answer["type"] == "lifespan.startup.failed"
    assert f"'{ORIGIN}'" in answer["message"]
    assert "'other.example/ledger'" in answer["message"]


async def test_another_key_for_the_same_origin_refuses_to_start(tmp_path: Path) -> None:
    first = await _serve_and_record(_gateway(tmp_path, ledger_origin=ORIGIN), 2)
    assert first["type"] == "lifespan.startup.complete"
    (tmp_path / "consentry-ledger.key").unlink()
    answer = await _serve_and_record(_gateway(tmp_path, ledger_origin=ORIGIN), 0)
    assert answer["type"] == "lifespan.startup.failed"
    assert "is signed by" in answer["message"]
    assert "ledger_key_file" in answer["message"]


def _serve(tmp_path: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """``consentry serve`` with ``config`` on the store in ``tmp_path``; one that starts
    serving instead of stopping fails the test by its timeout."""
    argv = [sys.executable, "-m", "middleware.cli", "serve", "--upstream", UPSTREAM]
    argv += ["--port", "0", "--store", f"sqlite:{tmp_path / 'consentry.db'}"]
    argv += ["--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_serve_stops_with_the_reason_and_no_traceback(tmp_path: Path) -> None:
    """``consentry serve`` on a log whose key file was replaced (by one created for the
    default origin): a non-zero exit, the reason on standard error, no traceback."""
    asyncio.run(_serve_and_record(_gateway(tmp_path, ledger_origin=ORIGIN), 1))
    (tmp_path / "consentry-ledger.key").unlink()
    config = tmp_path / "consentry.toml"
    config.write_text(f'ledger_key_file = "{tmp_path / "consentry-ledger.key"}"\n')
    done = _serve(tmp_path, config)
    assert done.returncode != 0
    assert "cannot start" in done.stderr
    assert f"the log in the store has the origin '{ORIGIN}'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_configured_origin_other_than_the_key_files_stops_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "consentry-ledger.key"
    assert _cli(capsys, "keys", "generate", "--key-file", key_file, "--origin", ORIGIN)[0] == 0
    config = tmp_path / "consentry.toml"
    config.write_text(f'ledger_key_file = "{key_file}"\nledger_origin = "other.example/l"\n')
    done = _serve(tmp_path, config)
    assert done.returncode == 2
    assert "ledger_origin is 'other.example/l'" in done.stderr
    assert f"'{ORIGIN}'" in done.stderr
    assert "Traceback" not in done.stderr
