"""Real peers as subprocesses: the shared upstream FHIR server and the gateway.

The upstream is Medplum's FHIR router behind ``<shared>/peers/medplum-server.mjs`` (see
``<shared>/peers/README.md``); the gateway is ``python -m middleware.cli serve``. Each runs on a
free port of 127.0.0.1, is ready once its ``/healthz`` answers 200, writes stdout and stderr to
a temporary log file (its tail is in every :class:`PeerError`), and is stopped by pid:
terminate, then kill. Both are context managers::

    with UpstreamServer() as upstream, GatewayServer(upstream.base_url) as gateway:
        with httpx.Client() as client:
            ids = load_carebundle(gateway, client)  # with a system/*.cruds token
            me = gateway.bearer("dr", "user/*.rs", fhir_user="Practitioner/dr")
            client.get(f"{gateway.base_url}/Patient", headers=me)

The gateway enforces consent on every FHIR request but ``GET /metadata`` (401 without a
token): :class:`GatewayServer` turns on the development token issuer on a key file in its
working directory and mints tokens from the same file (:meth:`GatewayServer.token`).

``<shared>`` is ``$SHARED_DIR`` or, by default, ``../shared`` beside the repository (not a
``CONSENTRY_*`` name: the gateway reads every one of those as a setting and refuses unknown ones).
Failures raise :class:`PeerError` (never skip): a test that needs a peer must fail without one.
"""

from __future__ import annotations

import json
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

from middleware.auth.devissuer import UnsafeDevelopmentIssuer, load_or_create_key
from middleware.fhir import jsoncodec

__all__ = [
    "GatewayServer",
    "SHARED_ENV",
    "SYSTEM_SCOPES",
    "PeerError",
    "Running",
    "UpstreamServer",
    "carebundle_dir",
    "free_port",
    "install_upstream",
    "load_carebundle",
    "repo_root",
    "shared_dir",
    "stop_process",
]

HOST = "127.0.0.1"
#: The environment variable naming the shared folder (see the module docstring).
SHARED_ENV = "SHARED_DIR"
#: The scopes of :meth:`GatewayServer.system_bearer`: every interaction on every type.
SYSTEM_SCOPES = "system/*.cruds"
_PORT_ATTEMPTS = 3
_DEV_KEY = "dev-issuer.jwk"
_LEDGER_KEY = "consentry-ledger.key"


class PeerError(RuntimeError):
    """A peer could not be installed, started or used."""


def repo_root() -> Path:
    """The repository root (this file is tests/support/peers.py in it)."""
    return Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The shared folder: ``$SHARED_DIR``, else ``<repo root>/../shared``."""
    configured = os.environ.get(SHARED_ENV)
    path = Path(configured) if configured else repo_root().parent / "shared"
    if not (path / "peers").is_dir():
        raise PeerError(f"shared folder not found at {path} (set {SHARED_ENV})")
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
    peers = peers_dir or Path(os.environ.get("PEERS_DIR", "/tmp/peers"))
    bash = _which("bash")
    _which("node")
    script = shared_dir() / "peers" / "install-upstream.sh"
    try:
        result = subprocess.run(
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


class Running:
    """Something started by :meth:`start` and stopped by :meth:`stop`; a ``with`` block does
    both (``stop`` also when the block raises)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

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


class _Peer(Running):
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
                self._process = subprocess.Popen(
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
        if process is not None:
            stop_process(process)
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

    Each start gets its own working directory (:attr:`workdir`, removed at :meth:`stop`): the
    ledger key, a SQLite ``store`` given as a relative ``sqlite:`` path, and the settings file
    the gateway reads (``--config``) land there, never in the checkout.

    ``dev_issuer`` (default on) makes the gateway trust the
    :class:`~middleware.auth.devissuer.UnsafeDevelopmentIssuer` whose key is
    ``<workdir>/dev-issuer.jwk``, for tokens naming the gateway's own FHIR base as audience:
    :meth:`token` and :meth:`bearer` mint them from the same key file. Test tooling only: this
    issuer lets anyone who can read the file claim to be anyone. Without it the gateway trusts
    no issuer and answers 401 to everything but ``GET /metadata``.

    ``consent_jurisdiction`` (``opt-in``/``opt-out``; None: the gateway's default, opt-in) and
    ``settings`` (more top-level settings, e.g. ``{"unknown_patient_allowed_for": "system"}``)
    go into the same file. ``store`` defaults to ``memory:``; :meth:`verify_ledger` needs a
    ``sqlite:`` one. ``args`` come last (later flags win): an ``args`` ``--config`` replaces the
    generated file, and then :meth:`token` and :meth:`verify_ledger` refuse to guess. ``env``
    adds ``CONSENTRY_*`` settings, which win over the file (e.g. ``{"CONSENTRY_ACCESS_LOG":
    "0"}``).
    """

    name = "gateway"

    def __init__(
        self,
        upstream: str,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        base_path: str = "/fhir",
        store: str = "memory:",
        dev_issuer: bool = True,
        consent_jurisdiction: str | None = None,
        settings: Mapping[str, str | int | float | bool] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.upstream = upstream
        self.args = list(args)
        self.env = dict(env or {})
        self.base_path = base_path
        self.store = store
        self.dev_issuer = dev_issuer
        self.settings: dict[str, str | int | float | bool] = dict(settings or {})
        if consent_jurisdiction is not None:
            self.settings["consent_jurisdiction"] = consent_jurisdiction
        self.workdir: Path | None = None
        self._issuer: tuple[int, UnsafeDevelopmentIssuer] | None = None

    @property
    def base_url(self) -> str:
        """The gateway's FHIR base, ``http://127.0.0.1:<port>/fhir``: also the audience its
        tokens must name."""
        return self.root_url + self.base_path

    @property
    def issuer_url(self) -> str:
        """The ``iss`` of the development issuer's tokens."""
        return f"{self.root_url}/dev-issuer"

    @property
    def ledger_origin(self) -> str:
        """The checkpoint origin the generated settings give the ledger."""
        return f"consentry.test{self.base_path}/ledger"

    @property
    def store_url(self) -> str:
        """``store`` with a relative ``sqlite:`` path resolved in :attr:`workdir`."""
        if self.store.startswith("sqlite:"):
            path = Path(self.store.removeprefix("sqlite:"))
            if not path.is_absolute():
                return f"sqlite:{self._workdir() / path}"
        return self.store

    def start(self) -> Self:
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="consentry-gateway-"))
        self._issuer = None
        if self.dev_issuer:
            # Created here, before the gateway starts, so both sides read one key.
            load_or_create_key(workdir / _DEV_KEY)
        config = workdir / "consentry.toml"

        def argv(port: int) -> list[str]:
            config.write_text(self._settings_file(port), encoding="utf-8")
            return [
                sys.executable,
                "-m",
                "middleware.cli",
                "serve",
                *("--upstream", self.upstream, "--host", HOST, "--port", str(port)),
                *("--base-path", self.base_path, "--store", self.store),
                *("--config", str(config)),
                *self.args,
            ]

        # PYTHONPATH keeps this checkout's package first.
        env = {**os.environ, "PYTHONPATH": str(repo_root()), **self.env}
        self._launch(argv, env, cwd=workdir)
        return self

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop the gateway; unless ``keep_log``, also remove its working directory."""
        super().stop(keep_log=keep_log)
        if not keep_log and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _settings_file(self, port: int) -> str:
        """The TOML the gateway reads: the ledger and ``settings``, then the ``[auth]`` table
        trusting the development issuer for tokens addressed to ``port``'s FHIR base."""
        root = f"http://{HOST}:{port}"
        top: dict[str, str | int | float | bool] = {
            "ledger_key_file": str(self._workdir() / _LEDGER_KEY),
            "ledger_origin": self.ledger_origin,
            **self.settings,
        }
        lines = [f"{key} = {_toml(value)}" for key, value in top.items()]
        if self.dev_issuer:
            lines += [
                "",
                "[auth]",
                "dev_issuer_enabled = true",
                f"dev_issuer_url = {_toml(root + '/dev-issuer')}",
                f"dev_issuer_key_file = {_toml(str(self._workdir() / _DEV_KEY))}",
                f"audiences = [{_toml(root + self.base_path)}]",
            ]
        return "\n".join(lines) + "\n"

    # -- tokens ------------------------------------------------------------------------------

    def token(self, sub: str, scopes: str | Sequence[str], **claims: Any) -> str:
        """A bearer token the running gateway accepts: ``sub``, SMART ``scopes``, and more
        claims as :meth:`UnsafeDevelopmentIssuer.issue` takes them (``patient``, ``fhir_user``,
        ``roles``, ``purpose_of_use``, ``ttl``, ``client_id``)."""
        return self._dev_issuer().issue(sub, scopes=scopes, audience=self.base_url, **claims)

    def bearer(self, sub: str, scopes: str | Sequence[str], **claims: Any) -> dict[str, str]:
        """``{"authorization": "Bearer <token>"}`` for :meth:`token`'s arguments."""
        return {"authorization": f"Bearer {self.token(sub, scopes, **claims)}"}

    def system_bearer(self, scopes: str = SYSTEM_SCOPES) -> dict[str, str]:
        """The bearer header of a backend service (``system/`` scopes, all by default)."""
        return self.bearer("consentry-test-system", scopes)

    def _dev_issuer(self) -> UnsafeDevelopmentIssuer:
        if not self.dev_issuer or "--config" in self.args:
            raise PeerError("this gateway does not trust the development issuer's key file")
        if self._issuer is None or self._issuer[0] != self.port:
            issuer = UnsafeDevelopmentIssuer.from_key_file(
                self._workdir() / _DEV_KEY, self.issuer_url, enabled=True
            )
            self._issuer = (self.port, issuer)
        return self._issuer[1]

    # -- ledger ------------------------------------------------------------------------------

    def ledger_size(self) -> int:
        """The size of the latest signed checkpoint (``GET /ledger/checkpoint``; 0 without
        one). Every request the gateway answered has been committed by then."""
        response = httpx.get(f"{self.root_url}/ledger/checkpoint", timeout=30.0)
        if response.status_code == 404:
            return 0
        if response.status_code != 200:
            raise PeerError(f"/ledger/checkpoint answered {response.status_code}")
        return int(response.text.splitlines()[1])  # C2SP tlog-checkpoint: origin, size, root

    def consentry(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``python -m middleware.cli *argv`` (the ``consentry`` command) in
        :attr:`workdir`; the result is returned whatever the exit status."""
        env = {**os.environ, "PYTHONPATH": str(repo_root()), **self.env}
        try:
            return subprocess.run(
                [sys.executable, "-m", "middleware.cli", *argv],
                cwd=self._workdir(),
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PeerError(f"consentry {' '.join(argv)} did not finish in {timeout} s") from exc

    @property
    def ledger_key_file(self) -> Path:
        """The gateway's ledger key file (in its workdir): what opens its audit evidence."""
        return self._workdir() / _LEDGER_KEY

    def verify_ledger(self) -> dict[str, Any]:
        """``consentry ledger verify`` on the gateway's SQLite store, trusting the key in its
        workdir (a trust policy from ``consentry keys policy``); the JSON report, whose
        ``ok`` is True exactly when the command exited 0. Raises :class:`PeerError` when a
        command could not run (exit status 2)."""
        if not self.store_url.startswith("sqlite:") or "--config" in self.args:
            raise PeerError("verify_ledger needs the generated settings and a sqlite: store")
        policy = self.consentry(
            "keys",
            "policy",
            *("--key-file", str(self._workdir() / _LEDGER_KEY)),
            *("--origin", self.ledger_origin),
        )
        if policy.returncode != 0:
            raise PeerError(f"consentry keys policy failed: {_tail(policy.stderr)}")
        trust = self._workdir() / "trust.toml"
        trust.write_text(policy.stdout, encoding="utf-8")
        done = self.consentry("ledger", "verify", "--store", self.store_url, "--trust", str(trust))
        if done.returncode not in (0, 1):
            raise PeerError(f"consentry ledger verify failed: {_tail(done.stderr)}")
        report: dict[str, Any] = json.loads(done.stdout)
        if report.get("ok") is not (done.returncode == 0):
            raise PeerError(f"ledger verify exited {done.returncode} with ok={report.get('ok')}")
        return report

    def _workdir(self) -> Path:
        if self.workdir is None:
            raise PeerError("the gateway has not been started")
        return self.workdir


def load_carebundle(
    target: GatewayServer | str, client: httpx.Client, directory: Path | None = None
) -> dict[str, list[str]]:
    """POST each carebundle transaction Bundle to ``target``; return what was created.

    ``target`` is a running :class:`GatewayServer` (the Bundles go to its FHIR base with a
    backend-service token, :meth:`GatewayServer.system_bearer`) or a FHIR base URL (sent
    without a token, e.g. straight to the upstream). The result maps each patient's new id
    to the ``Type/id`` references of every resource its Bundle created, in entry order (from
    ``entry.response.location`` of the transaction-response). Raises :class:`PeerError`
    unless every entry was created.
    """
    headers = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
    if isinstance(target, GatewayServer):
        base_url = target.base_url
        headers.update(target.system_bearer())
    else:
        base_url = target
    created: dict[str, list[str]] = {}
    files = sorted((directory or carebundle_dir()).glob("*.json"))
    if not files:
        raise PeerError(f"no Bundles in {directory or carebundle_dir()}")
    for path in files:
        response = client.post(base_url, content=path.read_bytes(), headers=headers)
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


def _toml(value: str | int | float | bool) -> str:
    """A TOML scalar: JSON's string escapes are TOML basic-string escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate ``process`` if it still runs: SIGTERM, then SIGKILL after 10 s; reaped."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
