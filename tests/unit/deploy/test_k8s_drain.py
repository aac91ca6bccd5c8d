"""The Deployment's preStop hook, run for real against a stand-in ``/readyz``: it returns as
soon as the audit outbox is empty (``/readyz`` 200, or 503 with ``audit_outbox: ok`` while
another check fails), waits while rows are in it (each ``/readyz`` call replays them into the
ledger), and gives up after its limit (a ledger that stays down must not keep the pod).

The pod must leave time for it: the grace period covers the hook's whole limit and then an
exchange of the full upstream deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from middleware.settings import Settings
from tests.unit.deploy.files import DEPLOY, k8s_documents

DOCS = k8s_documents(DEPLOY / "k8s")
(DEPLOYMENT,) = [doc for docs in DOCS.values() for doc in docs if doc["kind"] == "Deployment"]
POD: dict[str, Any] = DEPLOYMENT["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]
HOOK: list[str] = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]


class _Gateway(ThreadingHTTPServer):
    """``/readyz`` as the gateway answers it: 200 once nothing waits in the outbox, else 503
    with the checks; ``waiting`` answers before the outbox is empty."""

    def __init__(self, waiting: int, upstream: str = "ok") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.waiting = waiting
        self.upstream = upstream
        self.calls = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Gateway

    def do_GET(self) -> None:
        self.server.calls += 1
        outbox = "ok" if self.server.calls > self.server.waiting else "unavailable"
        checks = {"store": "ok", "audit_outbox": outbox, "upstream": self.server.upstream}
        ready = all(value == "ok" for value in checks.values())
        body = json.dumps({"status": "ready" if ready else "unavailable", "checks": checks})
        self.send_response(200 if ready else 503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextmanager
def _gateway(waiting: int, upstream: str = "ok") -> Iterator[_Gateway]:
    server = _Gateway(waiting, upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _run_hook(port: int, most: str) -> float:
    """The hook's command with no initial wait and ``most`` seconds; how long it took."""
    assert HOOK[:2] == ["python", "-c"]
    argv = [sys.executable, "-c", HOOK[2], "0", most]
    started = time.monotonic()
    done = subprocess.run(
        argv,
        env={**os.environ, "CONSENTRY_PORT": str(port)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("waiting", "upstream", "calls"),
    [
        pytest.param(0, "ok", 1, id="empty-outbox"),
        pytest.param(2, "ok", 3, id="drains-then-returns"),
        pytest.param(2, "unavailable", 3, id="drained-while-upstream-down"),
    ],
)
def test_the_hook_returns_once_the_outbox_is_empty(waiting: int, upstream: str, calls: int) -> None:
    with _gateway(waiting, upstream) as gateway:
        _run_hook(gateway.server_port, "20")
    assert gateway.calls == calls


def test_the_hook_gives_up_after_its_limit() -> None:
    with _gateway(waiting=1000) as gateway:
        took = _run_hook(gateway.server_port, "2")
    assert 2 <= took < 10
    assert gateway.calls >= 2


def test_the_grace_period_covers_the_hook_and_an_exchange() -> None:
    before, most = float(HOOK[3]), float(HOOK[4])
    assert before >= 5  # the endpoint's removal reaches the Service and the ingress first
    deadline = Settings(upstream="http://upstream.test/fhir").upstream_deadline
    assert POD["terminationGracePeriodSeconds"] >= before + most + deadline
