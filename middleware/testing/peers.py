"""Real peers as subprocesses: the shared upstream FHIR server and the gateway.

The upstream is Medplum's FHIR router behind ``<shared>/peers/medplum-server.mjs`` (see
``<shared>/peers/README.md``); the gateway is ``python -m middleware.cli serve``. Each runs on a
free port of 127.0.0.1, is ready once its ``/healthz`` answers 200, writes stdout and stderr to
a temporary log file (its tail is in every :class:`PeerError`), and is stopped by pid:
terminate, then kill. Both are context managers::

    with UpstreamServer() as upstream, GatewayServer(upstream.base_url) as gateway:
        with httpx.Client() as client:
            ids = load_carebundle(gateway.base_url, client)

``<shared>`` is ``$CONSENTRY_SHARED`` or, by default, ``../shared`` beside the repository.
Failures raise :class:`PeerError` (never skip): a test that needs a peer must fail without one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from middleware.fhir import jsoncodec

__all__ = [
    "GatewayServer",
    "PeerError",
    "UpstreamServer",
    "carebundle_dir",
    "free_port",
    "install_upstream",
    "load_carebundle",
    "repo_root",
    "shared_dir",
]

HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3


class PeerError(RuntimeError):
    """A peer could not be installed, started or used."""


def repo_root() -> Path:
    """The repository holding the ``middleware`` package (the parent of its directory)."""
    return Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The shared folder: ``$CONSENTRY_SHARED``, else ``<repo root>/../shared``."""
    configured = os.environ.get("CONSENTRY_SHARED")
    path = Path(configured) if configured else repo_root().parent / "shared"
    if not (path / "peers").is_dir():
        raise PeerError(f"shared folder not found at {path} (set CONSENTRY_SHARED)")
    return path.resolve()


def carebundle_dir() -> Path:
    """The ten synthetic patients (transaction Bundles) under ``<shared>/data/carebundle-10``."""
    return shared_dir() / "data" / "carebundle-10"


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def install_upstream(peers_dir: Path | None = None) -> Path:
    """Run ``install-upstream.sh`` (idempotent) and return the npm prefix holding Medplum.

    ``peers_dir`` defaults to ``$PEERS_DIR``, else ``/tmp/peers``.
    """
    # The shared install script's own default; the server is test tooling, not a secret.
    peers = peers_dir or Path(os.environ.get("PEERS_DIR", "/tmp/peers"))  # noqa: S108
    bash = _which("bash")
    _which("node")
    script = shared_dir() / "peers" / "install-upstream.sh"
    try:
        result = subprocess.run(  # noqa: S603 - our own argv, no shell
            [bash, str(script)],
            env={**os.environ, "PEERS_DIR": str(peers)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{script} did not finish in {exc.timeout} s") from exc
    if result.returncode != 0:
        output = _tail(result.stdout + result.stderr)
        raise PeerError(f"{script} failed with status {result.returncode}:\n{output}")
    return peers / "medplum"


class _Peer:
    """A child process with a log file, ready when ``/healthz`` answers, stopped by pid."""

    name = "peer"

    def __init__(self, startup_timeout: float) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self.log_path: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The child's process id (for ``/proc/<pid>/stat`` accounting)."""
        if self._process is None:
            raise PeerError(f"{self.name} is not running")
        return self._process.pid

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>``, where ``/healthz`` lives."""
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the child on a free port and wait until it is healthy."""
        raise NotImplementedError

    def _launch(
        self, argv: Callable[[int], list[str]], env: Mapping[str, str], cwd: Path | None = None
    ) -> None:
        """Spawn ``argv(port)`` and wait for health, retrying on a port taken meanwhile."""
        for attempt in range(_PORT_ATTEMPTS):
            self.port = free_port()
            fd, log_name = tempfile.mkstemp(prefix=f"consentry-{self.name}-", suffix=".log")
            self._discard_log()
            self.log_path = Path(log_name)
            with os.fdopen(fd, "wb") as log:
                self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                    argv(self.port),
                    env={**env, "PORT": str(self.port)},
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                self._wait_healthy()
            except PeerError:
                in_use = "address already in use" in self.log_tail().lower()
                self.stop(keep_log=True)
                if in_use and attempt + 1 < _PORT_ATTEMPTS:
                    continue
                raise
            return

    def _wait_healthy(self) -> None:
        url = f"{self.root_url}/healthz"
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                assert self._process is not None
                status = self._process.poll()
                if status is not None:
                    raise PeerError(
                        f"{self.name} exited with status {status} before {url} answered; "
                        f"log {self.log_path}, tail:\n{self.log_tail()}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise PeerError(
                        f"{self.name} did not answer {url} within {self.startup_timeout} s; "
                        f"log {self.log_path}, tail:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the child's combined stdout and stderr."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return _tail(self.log_path.read_text(errors="replace"), chars)

    def stop(self, *, keep_log: bool = False) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 10 s) and remove its log."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if not keep_log:
            self._discard_log()

    def _discard_log(self) -> None:
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None


class UpstreamServer(_Peer):
    """The shared upstream FHIR server (Medplum router under node), on a free port.

    ``seed_dir``: a folder of Bundles loaded at start (``SEED_DIR``); ``env``: more server
    settings (see the peers README). Installing the server on first use may take ~30 s.
    """

    name = "upstream"

    def __init__(
        self,
        *,
        seed_dir: Path | None = None,
        peers_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.seed_dir = seed_dir
        self.peers_dir = peers_dir
        self.env = dict(env or {})

    @property
    def base_url(self) -> str:
        """The FHIR base, ``http://127.0.0.1:<port>/fhir``."""
        return self.root_url + self.env.get("BASE_PATH", "/fhir")

    def start(self) -> Self:
        prefix = install_upstream(self.peers_dir)
        script = shared_dir() / "peers" / "medplum-server.mjs"
        env = {**os.environ, "MEDPLUM_PREFIX": str(prefix), "HOST": HOST, "ACCESS_LOG": "0"}
        if self.seed_dir is not None:
            env["SEED_DIR"] = str(self.seed_dir)
        env.update(self.env)
        node = _which("node")
        self._launch(lambda _port: [node, str(script)], env)
        return self

    def reset(self) -> None:
        """Empty the upstream's store (``POST /__admin/reset``)."""
        response = httpx.post(f"{self.root_url}/__admin/reset", timeout=30.0)
        if response.status_code >= 300:
            raise PeerError(f"upstream reset answered {response.status_code}")


class GatewayServer(_Peer):
    """The gateway (``python -m middleware.cli serve``) in front of ``upstream``, on a free port.

    It uses the ``memory:`` store unless ``args`` say otherwise (later flags win); ``env`` adds
    ``CONSENTRY_*`` settings, e.g. ``{"CONSENTRY_ACCESS_LOG": "0"}``.
    """

    name = "gateway"

    def __init__(
        self,
        upstream: str,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        base_path: str = "/fhir",
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.upstream = upstream
        self.args = list(args)
        self.env = dict(env or {})
        self.base_path = base_path

    @property
    def base_url(self) -> str:
        """The gateway's FHIR base, ``http://127.0.0.1:<port>/fhir``."""
        return self.root_url + self.base_path

    def start(self) -> Self:
        def argv(port: int) -> list[str]:
            return [
                sys.executable,
                "-m",
                "middleware.cli",
                "serve",
                *("--upstream", self.upstream, "--host", HOST, "--port", str(port)),
                *("--base-path", self.base_path, "--store", "memory:"),
                *self.args,
            ]

        # Its own working directory: the SQLite file and the ledger key it may create land
        # there, never in the checkout. PYTHONPATH keeps this checkout's package first.
        workdir = Path(tempfile.mkdtemp(prefix="consentry-gateway-"))
        env = {**os.environ, "PYTHONPATH": str(repo_root()), **self.env}
        self._launch(argv, env, cwd=workdir)
        return self


def load_carebundle(
    base_url: str, client: httpx.Client, directory: Path | None = None
) -> dict[str, list[str]]:
    """POST each carebundle transaction Bundle to ``base_url``; return what was created.

    The result maps each patient's new id to the ``Type/id`` references of every resource its
    Bundle created, in entry order (from ``entry.response.location`` of the
    transaction-response). Raises :class:`PeerError` unless every entry was created.
    """
    created: dict[str, list[str]] = {}
    files = sorted((directory or carebundle_dir()).glob("*.json"))
    if not files:
        raise PeerError(f"no Bundles in {directory or carebundle_dir()}")
    for path in files:
        response = client.post(
            base_url,
            content=path.read_bytes(),
            headers={"content-type": "application/fhir+json", "accept": "application/fhir+json"},
        )
        if response.status_code != 200:
            raise PeerError(f"{path.name}: transaction answered {response.status_code}")
        references = [_reference(entry, path.name) for entry in _entries(response.content)]
        patients = [ref.split("/")[1] for ref in references if ref.startswith("Patient/")]
        if len(patients) != 1:
            raise PeerError(f"{path.name}: expected one Patient, created {len(patients)}")
        created[patients[0]] = references
    return created


def _entries(body: bytes) -> list[Any]:
    document = jsoncodec.decode(body)
    if not isinstance(document, dict) or document.get("type") != "transaction-response":
        raise PeerError("the answer is not a transaction-response Bundle")
    entries = document.get("entry")
    return entries if isinstance(entries, list) else []


def _reference(entry: Any, source: str) -> str:
    """``Type/id`` from a response entry's location (relative or absolute, with _history)."""
    response = entry.get("response") if isinstance(entry, dict) else None
    status = response.get("status", "") if isinstance(response, dict) else ""
    location = response.get("location") if isinstance(response, dict) else None
    if not str(status).startswith("201") or not isinstance(location, str):
        raise PeerError(f"{source}: an entry was not created (status {status!r})")
    resource_type, resource_id = location.split("/_history/")[0].rstrip("/").split("/")[-2:]
    return f"{resource_type}/{resource_id}"


def _which(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise PeerError(f"{tool!r} is not on PATH: the upstream FHIR server needs node and npm")
    return path


def _tail(text: str, chars: int = 4000) -> str:
    return text[-chars:]
