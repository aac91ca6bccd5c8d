"""Several gateway replicas on one PostgreSQL database, behind a real HAProxy.

The deployment ``docs/operations.md`` describes for more than one machine: stateless
``consentry serve`` processes (here each ``--workers 1``, on its own port) sharing one
PostgreSQL store, one settings file (one public URL, one ledger key file, one data secret,
one token issuer), and Debian's HAProxy (``/usr/sbin/haproxy``, installed by
``scripts/test.sh``) in front: round robin, each server health-checked with ``GET /readyz``.
HAProxy tags each answer with the name of the server that gave it (``x-served-by``), so a
test can see the rotation rather than assume it.

::

    with fresh_database() as dsn, ReplicaSet(upstream.base_url, dsn, workdir, 3) as replicas:
        with HAProxy(replicas.gateways, workdir) as lb:
            httpx.get(f"{lb.base_url}/Patient/1", headers=replicas.bearer(...))

:func:`fresh_database` creates a database of its own (dropped afterwards) on the test server
(``$TEST_POSTGRES_DSN``, default ``postgresql://127.0.0.1:5432/test``): ``consentry serve``
keeps its tables in the ``public`` schema of the database its DSN names, so a fresh database
is what isolates one run. Nothing here imports pytest (benchmarks use it too); failures raise
:class:`~tests.support.peers.PeerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs
import httpx

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.support.peers import (
    HOST,
    GatewayServer,
    PeerError,
    Running,
    free_port,
    stop_process,
)

__all__ = ["HAPROXY", "PUBLIC", "HAProxy", "ReplicaSet", "fresh_database"]

#: Debian's HAProxy (scripts/test.sh installs it).
HAPROXY: Final = Path("/usr/sbin/haproxy")
#: The public FHIR base every replica names in links and expects as the tokens' audience.
PUBLIC: Final = "http://consentry.replicas.test/fhir"
ISSUER: Final = "http://consentry.replicas.test/dev-issuer"
ORIGIN: Final = "consentry.replicas.test/fhir/ledger"
BTG_SCOPE: Final = "consentry/break-glass"
_DEFAULT_DSN: Final = "postgresql://127.0.0.1:5432/test"
_JSON: Final = {"accept": "application/fhir+json"}


@contextlib.contextmanager
def fresh_database(dsn: str | None = None) -> Iterator[str]:
    """A new, empty database on ``dsn``'s server (``$TEST_POSTGRES_DSN`` by default); yields
    its DSN and drops it afterwards (``WITH (FORCE)``: a replica killed mid-connection does
    not keep it alive). An unreachable server raises :class:`PeerError`."""
    admin = dsn or os.environ.get("TEST_POSTGRES_DSN", _DEFAULT_DSN)
    name = f"consentry_r_{secrets.token_hex(6)}"
    _admin_sql(admin, f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        _admin_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin_sql(dsn: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise PeerError(f"PostgreSQL at {dsn}: {type(exc).__name__}: {exc}") from exc


class ReplicaSet(Running):
    """``count`` gateways (``consentry serve --workers 1``) on the PostgreSQL ``dsn``, one
    settings file in ``workdir`` (which also holds the ledger key and the issuer's key).

    They start one after the other: the first creates the ledger key file the others read.
    ``settings`` adds top-level TOML lines (e.g. ``consent_jurisdiction = "opt-out"``);
    ``env(n)`` is replica ``n``'s extra environment (as :class:`GatewayServer` takes it).
    """

    def __init__(
        self,
        upstream: str,
        dsn: str,
        workdir: Path,
        count: int = 3,
        *,
        settings: Sequence[str] = (),
        env: Callable[[int], Mapping[str, str]] | None = None,
    ) -> None:
        self.upstream, self.dsn, self.workdir, self.count = upstream, dsn, workdir, count
        self.env = env
        self.config = workdir / "consentry.toml"
        self.key_file = workdir / "ledger.key"
        self.extra = list(settings)
        self.gateways: list[GatewayServer] = []
        self.issuer: UnsafeDevelopmentIssuer | None = None

    def start(self) -> Self:
        """Start the replicas one after the other; all stopped if one fails to start."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._settings(), encoding="utf-8")
        self.issuer = UnsafeDevelopmentIssuer.from_key_file(
            self.workdir / "dev.jwk", ISSUER, enabled=True
        )
        try:
            for n in range(self.count):
                env = self.env(n) if self.env is not None else None
                gateway = GatewayServer(
                    self.upstream, args=self.args(), env=env, startup_timeout=60.0
                )
                self.gateways.append(gateway.start())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every replica started (each by its pid)."""
        gateways, self.gateways = self.gateways, []
        for gateway in gateways:
            gateway.stop()

    def args(self) -> list[str]:
        """The ``serve`` arguments every replica gets (after GatewayServer's own)."""
        return ["--config", str(self.config), "--store", self.dsn, "--workers", "1"]

    def _settings(self) -> str:
        lines = [
            f'public_url = "{PUBLIC}"',
            f'ledger_key_file = "{self.key_file}"',
            f'ledger_origin = "{ORIGIN}"',
            "break_glass_minutes = 10",
            *self.extra,
            "",
            "[auth]",
            "dev_issuer_enabled = true",
            f'dev_issuer_url = "{ISSUER}"',
            f'dev_issuer_key_file = "{self.workdir / "dev.jwk"}"',
            f'audiences = ["{PUBLIC}"]',
            f'break_glass_scope = "{BTG_SCOPE}"',
        ]
        return "\n".join(lines) + "\n"

    def bearer(self, sub: str, scopes: str, **claims: Any) -> dict[str, str]:
        """FHIR JSON headers with a token every replica accepts (audience :data:`PUBLIC`)."""
        if self.issuer is None:
            raise PeerError("the replicas have not been started")
        token = self.issuer.issue(sub, scopes=scopes, audience=PUBLIC, **claims)
        return {**_JSON, "authorization": f"Bearer {token}"}

    def consentry(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``consentry *argv`` run beside the first replica."""
        if not self.gateways:
            raise PeerError("the replicas have not been started")
        return self.gateways[0].consentry(*argv, timeout=timeout)


class HAProxy(Running):
    """HAProxy in front of ``gateways``: round robin, ``GET /readyz`` health checks every
    ``check_ms`` (one failure takes a server out, one success brings it back), a refused
    connection retried on another server, ``x-served-by: r<n>`` (n: the gateway's position)
    on every answer. ``unchecked`` positions get no health check (always taken for up).
    Foreground (``-db``), its config and log in ``workdir``; stopped by pid."""

    def __init__(
        self,
        gateways: Sequence[GatewayServer],
        workdir: Path,
        *,
        check_ms: int = 500,
        ready: Sequence[int] | None = None,
        unchecked: Sequence[int] = (),
    ) -> None:
        if not HAPROXY.exists():
            raise PeerError(f"{HAPROXY} is missing (scripts/test.sh installs Debian's haproxy)")
        self.gateways = list(gateways)
        self.workdir = workdir
        self.check_ms = check_ms
        self.ready = range(len(self.gateways)) if ready is None else ready
        self.unchecked = set(unchecked)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """The FHIR base through the balancer."""
        return self.root_url + "/fhir"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise PeerError("haproxy is not running")
        return self._process.pid

    def config(self) -> str:
        """The haproxy.cfg: one frontend, one backend of the replicas."""
        check = f" check inter {self.check_ms}ms rise 1 fall 1"
        servers = [
            f"    server r{n} {HOST}:{gateway.port}" + ("" if n in self.unchecked else check)
            for n, gateway in enumerate(self.gateways)
        ]
        return "\n".join(
            [
                "global",
                "    maxconn 4096",
                "defaults",
                "    mode http",
                "    timeout connect 5s",
                "    timeout client 60s",
                "    timeout server 60s",
                "    option http-keep-alive",
                # A connection a stopped replica refuses is retried on another: no request
                # reached it, so this is safe for writes too (HAProxy's redispatch).
                "    retries 2",
                "    option redispatch",
                "frontend fhir",
                f"    bind {HOST}:{self.port}",
                "    default_backend replicas",
                "backend replicas",
                "    balance roundrobin",
                "    option httpchk",
                "    http-check send meth GET uri /readyz",
                "    http-check expect status 200",
                "    http-response set-header x-served-by %[srv_name]",
                *servers,
                "",
            ]
        )

    def start(self) -> Self:
        """Start HAProxy on a free port; ready once each replica of ``ready`` (positions;
        default all) answered through it."""
        self.port = free_port()
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(self.config(), encoding="utf-8")
        check = subprocess.run(
            [str(HAPROXY), "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise PeerError(f"haproxy refused its config: {check.stderr[-2000:]}")
        log = (self.workdir / "haproxy.log").open("wb")
        with log:
            self._process = subprocess.Popen(
                [str(HAPROXY), "-db", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_serving({f"r{n}" for n in self.ready})
        except BaseException:
            self.stop()
            raise
        return self

    def names(self) -> list[str]:
        """The server names, in the gateways' order."""
        return [f"r{n}" for n in range(len(self.gateways))]

    def wait_serving(self, names: set[str], timeout: float = 30.0) -> None:
        """Until each of ``names`` has answered ``/healthz`` through the balancer."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while not names <= seen:
                if self._process is None or self._process.poll() is not None:
                    raise PeerError(f"haproxy exited: {self.log_tail()}")
                if time.monotonic() > deadline:
                    raise PeerError(f"haproxy served only {sorted(seen)}: {self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    answer = client.get(f"{self.root_url}/healthz")
                    if answer.status_code == 200:
                        seen.add(answer.headers.get("x-served-by", ""))
                        continue
                time.sleep(0.05)

    def log_tail(self, chars: int = 2000) -> str:
        path = self.workdir / "haproxy.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)
