"""``deploy/haproxy.cfg``: HAProxy accepts it (``haproxy -c``, Debian's haproxy, which
scripts/test.sh installs); it balances round robin over exactly the compose file's gateway
replicas, checking ``/readyz``, Bulk Data export requests too (no backend of their own: the
jobs are in the shared store), retries a refused connection on another replica and adds the
client's address to ``X-Forwarded-For``.
Run for real in front of three small local servers (addresses and check interval rewritten,
everything else as written): it sends requests only to the replicas whose ``/readyz``
answers 200, in turn, and takes a replica back once it does; export requests are balanced
like any other; a replica stopped between two checks
costs no request; the replica sees the balancer's ``X-Forwarded-For`` line after the
client's own.
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


def section(text: str, name: str) -> str:
    """The lines of one section (``backend gateways``) up to the next section."""
    match = re.search(rf"^{re.escape(name)}\n((?:[ \t].*\n|\n)*)", text + "\n", re.MULTILINE)
    return match.group(1) if match else ""


def _servers(backend: str) -> dict[str, str]:
    """Each server's name and the rest of its line."""
    return dict(re.findall(r"^\s+server (\S+) (.+)$", backend, re.MULTILINE))


def _checks_readyz(backend: str) -> bool:
    return bool(
        re.search(r"^\s+http-check send meth GET uri /readyz$", backend, re.MULTILINE)
        and re.search(r"^\s+http-check expect status 200$", backend, re.MULTILINE)
    )


def shape_problems(text: str) -> list[str]:
    problems: list[str] = []
    backend = section(text, "backend gateways")
    defaults = section(text, "defaults")
    if not re.search(r"^\s+balance roundrobin$", backend, re.MULTILINE):
        problems.append("backend: expected balance roundrobin")
    if not _checks_readyz(backend):
        problems.append("backend: expected a GET /readyz health check wanting 200")
    replicas = sorted(
        name
        for name, service in COMPOSE["services"].items()
        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
        and name.startswith("gateway")
    )
    servers = _servers(backend)
    if servers != {name: f"{name}:8080" for name in replicas}:
        problems.append(f"backend: servers {servers} are not the replicas {replicas}")
    # Export jobs are in the shared store: no request is pinned to one replica.
    frontend = section(text, "frontend fhir")
    if re.search(r"^\s+use_backend ", frontend, re.MULTILINE) or re.search(
        r"^backend (?!gateways$)", text, re.MULTILINE
    ):
        problems.append("frontend: every request goes to backend gateways (no pinning)")
    for needed in ("retries 2", "option redispatch", "option forwardfor"):
        if not re.search(rf"^\s+{needed}$", defaults, re.MULTILINE):
            problems.append(f"defaults: expected {needed}")
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
        pytest.param(
            CONFIG.replace(
                "    default_backend gateways",
                "    acl bulk_export path_beg '/fhir/$export-status/'\n"
                "    use_backend exports if bulk_export\n    default_backend gateways",
            ),
            "pinning",
            id="export-pinning",
        ),
        pytest.param(CONFIG.replace("    retries 2\n", ""), "retries", id="no-retries"),
        pytest.param(CONFIG.replace("option redispatch", ""), "redispatch", id="no-redispatch"),
        pytest.param(CONFIG.replace("option forwardfor", ""), "forwardfor", id="no-forwardfor"),
    ],
)
def test_a_configuration_of_another_shape_is_refused(broken: str, problem: str) -> None:
    found = shape_problems(broken)
    assert any(problem in line for line in found), found


# -- run for real ---------------------------------------------------------------------------


class _Replica(ThreadingHTTPServer):
    """A stand-in gateway: ``/readyz`` answers 200 while ``ready``, else 503; any other path
    answers 200 with the replica's name, and the ``X-Forwarded-For`` lines it received in
    the ``x-seen-forwarded-for`` header (likewise ``x-seen-x-forwarded-proto``,
    ``-x-forwarded-host`` and ``-forwarded``)."""

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
        seen = self.headers.get_all("x-forwarded-for") or []
        self.send_header("x-seen-forwarded-for", " | ".join(seen))
        for name in ("x-forwarded-proto", "x-forwarded-host", "forwarded"):
            self.send_header(f"x-seen-{name}", " | ".join(self.headers.get_all(name) or []))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


NAMES = ["gateway-1", "gateway-2", "gateway-3"]


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


@contextmanager
def _balancing(
    tmp_path: Path, replicas: dict[str, _Replica], client: httpx.Client, *, interval: str = ""
) -> Iterator[str]:
    """HAProxy running the configuration in front of ``replicas`` (checks every 100 ms, or
    at the shipped ``interval`` when given), every replica taking requests; its base URL."""
    port, monitor = free_port(), free_port()
    text = _local(CONFIG, port, monitor, replicas)
    if interval:
        text = text.replace("inter 100ms", f"inter {interval}")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text, encoding="utf-8")
    process = subprocess.Popen(
        [_haproxy(), "-db", "-f", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def monitor_up() -> bool:
            try:
                return client.get(f"http://127.0.0.1:{monitor}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        url = f"http://127.0.0.1:{port}"
        _until(monitor_up, "haproxy's monitor never answered")
        _until(
            lambda: set(_answers(client, f"{url}/fhir/metadata", 9)) == set(replicas),
            "not every replica got requests",
        )
        yield url
    finally:
        stop_process(process)


def test_haproxy_sends_requests_only_to_ready_replicas_in_turn(tmp_path: Path) -> None:
    with (
        _replicas(NAMES) as replicas,
        httpx.Client(timeout=5.0) as client,
        _balancing(tmp_path, replicas, client) as base,
    ):
        url = f"{base}/fhir/metadata"

        def spread() -> Counter[str]:
            return Counter(_answers(client, url, 30))

        assert spread() == Counter(dict.fromkeys(NAMES, 10))  # round robin: in turn

        replicas["gateway-2"].ready = False  # /readyz 503: no more requests for it
        _until(lambda: "gateway-2" not in spread(), "a replica not ready kept requests")
        assert spread() == Counter({"gateway-1": 15, "gateway-3": 15})

        replicas["gateway-2"].ready = True
        _until(lambda: set(spread()) == set(NAMES), "the ready replica was not taken back")


#: Bulk Data requests (kick-offs at the three levels, a job's status and a file).
EXPORTS = [
    "/fhir/$export",
    "/fhir/Patient/$export?_type=Observation",
    "/fhir/Group/g-1/$export",
    "/fhir/$export-status/0123abcd",
    "/fhir/$export-file/0123abcd/0",
]


def test_bulk_export_requests_are_balanced_like_any_other(tmp_path: Path) -> None:
    """A job is in the shared store, so any replica answers it: the kick-off, the status
    polls and the downloads reach every replica in turn (they all went to gateway-1 while
    jobs lived in one replica's memory)."""
    with (
        _replicas(NAMES) as replicas,
        httpx.Client(timeout=5.0) as client,
        _balancing(tmp_path, replicas, client) as base,
    ):
        for path in EXPORTS:
            assert set(_answers(client, base + path, 3)) == set(NAMES), path


def test_a_stopped_replica_costs_no_request(tmp_path: Path) -> None:
    """A replica stops (a crash, a restart) between two health checks (the shipped 5 s): the
    connections it refuses are retried on another replica, so no request fails or waits
    (red without ``retries`` and ``option redispatch``: a 503 after a 3 s stall)."""
    with (
        _replicas(NAMES) as replicas,
        httpx.Client(timeout=10.0) as client,
        _balancing(tmp_path, replicas, client, interval="5s") as base,
    ):
        stopped = replicas["gateway-2"]
        stopped.shutdown()
        stopped.server_close()
        answers: Counter[tuple[int, str]] = Counter()
        slowest = 0.0
        for _ in range(30):
            started = time.monotonic()
            response = client.get(f"{base}/fhir/metadata")
            slowest = max(slowest, time.monotonic() - started)
            answers[response.status_code, response.text] += 1
        assert set(answers) == {(200, "gateway-1"), (200, "gateway-3")}, answers
        assert slowest < 1.0, slowest


def test_haproxy_adds_the_clients_address_after_any_the_client_sent(tmp_path: Path) -> None:
    """``option forwardfor``: the replica sees the client's own line, then the balancer's
    with the address it took the connection from (the gateway takes the rightmost)."""
    with (
        _replicas(NAMES) as replicas,
        httpx.Client(timeout=5.0) as client,
        _balancing(tmp_path, replicas, client) as base,
    ):
        spoofed = client.get(f"{base}/fhir/Patient", headers={"x-forwarded-for": "203.0.113.7"})
        plain = client.get(f"{base}/fhir/Patient")
    assert spoofed.headers["x-seen-forwarded-for"] == "203.0.113.7 | 127.0.0.1"
    assert plain.headers["x-seen-forwarded-for"] == "127.0.0.1"


def test_haproxy_passes_on_no_scheme_or_host_the_client_wrote(tmp_path: Path) -> None:
    """The replica sees the scheme HAProxy was reached by (plain HTTP here), never the
    client's own X-Forwarded-Proto, X-Forwarded-Host or Forwarded."""
    claimed = {
        "x-forwarded-proto": "https",
        "x-forwarded-host": "bank.example",
        "forwarded": "for=127.0.0.1;proto=https;host=bank.example",
    }
    with (
        _replicas(NAMES) as replicas,
        httpx.Client(timeout=5.0) as client,
        _balancing(tmp_path, replicas, client) as base,
    ):
        seen = client.get(f"{base}/fhir/Patient", headers=claimed).headers
    assert seen["x-seen-x-forwarded-proto"] == "http"
    assert seen["x-seen-x-forwarded-host"] == ""
    assert seen["x-seen-forwarded"] == ""
