"""``deploy/haproxy.cfg``: HAProxy accepts it (``haproxy -c``, Debian's haproxy, which
scripts/test.sh installs); it balances round robin over exactly the compose file's gateway
replicas, checking ``/readyz``; and, run for real in front of three small local servers
(addresses and check interval rewritten, everything else as written), it sends requests only
to the replicas whose ``/readyz`` answers 200, in turn, and takes a replica back once it does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.peers import free_port, stop_process
from tests.unit.deploy.files import DEPLOY

CONFIG = (DEPLOY / "haproxy.cfg").read_text(encoding="utf-8")
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
#: A server named by a compose service the checker cannot resolve is started in maintenance
#: (``init-addr none``) until Compose's DNS resolves it: the one warning `haproxy -c` may give.
UNRESOLVED = re.compile(r"could not resolve address '[\w-]+', disabling server")


def _haproxy() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    assert found, "haproxy missing: scripts/test.sh installs Debian's (apt-get install haproxy)"
    return found


def check_problems(text: str, tmp_path: Path) -> list[str]:
    """``haproxy -c``'s alerts and warnings for the configuration ``text``."""
    path = tmp_path / "haproxy.cfg"
    path.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [_haproxy(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    lines = (done.stdout + done.stderr).splitlines()
    problems = [
        line
        for line in lines
        if ("[ALERT]" in line or "[WARNING]" in line) and not UNRESOLVED.search(line)
    ]
    if done.returncode != 0:
        problems.append(f"haproxy -c exited {done.returncode}")
    return problems


def shape_problems(text: str) -> list[str]:
    problems: list[str] = []
    backend = text.split("\nbackend gateways", 1)[-1] if "\nbackend gateways" in text else ""
    if not re.search(r"^\s+balance roundrobin$", backend, re.MULTILINE):
        problems.append("backend: expected balance roundrobin")
    if not re.search(r"^\s+http-check send meth GET uri /readyz$", backend, re.MULTILINE):
        problems.append("backend: expected a GET /readyz health check")
    if not re.search(r"^\s+http-check expect status 200$", backend, re.MULTILINE):
        problems.append("backend: expected the check to want status 200")
    servers = dict(re.findall(r"^\s+server (\S+) (\S+)", backend, re.MULTILINE))
    replicas = {
        name
        for name, service in COMPOSE["services"].items()
        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
        and name.startswith("gateway")
    }
    if servers != {name: f"{name}:8080" for name in replicas}:
        problems.append(f"backend: servers {servers} are not the replicas {sorted(replicas)}")
    return problems


def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    assert check_problems(CONFIG, tmp_path) == []


def test_the_configuration_balances_over_the_replicas() -> None:
    assert shape_problems(CONFIG) == []
    balancer = COMPOSE["services"]["loadbalancer"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in balancer["volumes"]


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        pytest.param(CONFIG.replace("monitor-uri", "monitor-url"), "unknown keyword", id="typo"),
        pytest.param(CONFIG.replace("timeout client 70s", "timeout client"), "ALERT", id="value"),
    ],
)
def test_haproxy_refuses_a_broken_configuration(broken: str, problem: str, tmp_path: Path) -> None:
    found = check_problems(broken, tmp_path)
    assert any(problem in line for line in found), found


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        pytest.param(CONFIG.replace("roundrobin", "leastconn"), "roundrobin", id="balance"),
        pytest.param(CONFIG.replace("uri /readyz", "uri /healthz"), "/readyz", id="liveness"),
        pytest.param(
            CONFIG.replace("    server gateway-3 gateway-3:8080\n", ""), "replicas", id="server"
        ),
    ],
)
def test_a_configuration_of_another_shape_is_refused(broken: str, problem: str) -> None:
    found = shape_problems(broken)
    assert any(problem in line for line in found), found


# -- run for real ---------------------------------------------------------------------------


class _Replica(ThreadingHTTPServer):
    """A stand-in gateway: ``/readyz`` answers 200 while ``ready``, else 503; any other path
    answers 200 with the replica's name."""

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.ready = True


class _Handler(BaseHTTPRequestHandler):
    server: _Replica

    def do_GET(self) -> None:
        if self.path == "/readyz":
            status, body = (200 if self.server.ready else 503), b"{}"
        else:
            status, body = 200, self.server.name.encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextmanager
def _replicas(names: list[str]) -> Iterator[dict[str, _Replica]]:
    servers = {name: _Replica(name) for name in names}
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers.values()]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)


def _local(config: str, port: int, monitor: int, replicas: dict[str, _Replica]) -> str:
    """The configuration with local addresses and a short check interval; nothing else."""
    text = config.replace("bind :8080", f"bind 127.0.0.1:{port}")
    text = text.replace("bind :8404", f"bind 127.0.0.1:{monitor}")
    text = re.sub(r"\binter \d+s\b", "inter 100ms", text)
    for name, server in replicas.items():
        text = text.replace(
            f"server {name} {name}:8080", f"server {name} 127.0.0.1:{server.server_port}"
        )
    assert "gateway-1:8080" not in text
    return text


def _answers(client: httpx.Client, url: str, count: int) -> list[str]:
    return [client.get(url).text for _ in range(count)]


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15.0
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_haproxy_sends_requests_only_to_ready_replicas_in_turn(tmp_path: Path) -> None:
    names = ["gateway-1", "gateway-2", "gateway-3"]
    with _replicas(names) as replicas, httpx.Client(timeout=5.0) as client:
        port, monitor = free_port(), free_port()
        path = tmp_path / "haproxy.cfg"
        path.write_text(_local(CONFIG, port, monitor, replicas), encoding="utf-8")
        process = subprocess.Popen(
            [_haproxy(), "-db", "-f", str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}/fhir/metadata"

            def spread() -> Counter[str]:
                return Counter(_answers(client, url, 30))

            def monitor_up() -> bool:
                try:
                    return client.get(f"http://127.0.0.1:{monitor}/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            _until(monitor_up, "haproxy's monitor never answered")
            _until(lambda: set(spread()) == set(names), "not every replica got requests")
            assert spread() == Counter(dict.fromkeys(names, 10))  # round robin: in turn

            replicas["gateway-2"].ready = False  # /readyz 503: no more requests for it
            _until(lambda: "gateway-2" not in spread(), "a replica not ready kept requests")
            assert spread() == Counter({"gateway-1": 15, "gateway-3": 15})

            replicas["gateway-2"].ready = True
            _until(lambda: set(spread()) == set(names), "the ready replica was not taken back")
        finally:
            stop_process(process)
