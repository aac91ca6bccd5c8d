"""The deployed gateway writes only to its data directory and ``/tmp``: what lets
``deploy/compose.yaml`` and ``deploy/k8s`` run it on a read-only root filesystem.

No container engine runs in CI, so this runs what the container runs, as a process: the
compose file's key writer makes the key files, then ``consentry serve`` starts with a
replica's environment from ``deploy/compose.yaml`` (its two directories, the key volume
``/etc/consentry/keys`` and the data volume ``/var/lib/consentry``, moved to temporary ones;
the upstream, the store and the addresses the test's own: the real upstream, a fresh
PostgreSQL database), from the data directory as the image's ``WORKDIR``. A Python audit hook
(PEP 578) in the served process records every file opened for writing, every SQLite database
connected, every directory made, file renamed or removed. After a read, a write and the
health endpoints, every recorded path is under the data directory or the temporary one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.shell import clean_env
from tests.support import UpstreamServer
from tests.support.peers import free_port, stop_process
from tests.support.replicas import fresh_database
from tests.unit.deploy.test_compose import COMPOSE, DATA_DIR, KEYS_DIR, key_writer_script

pytestmark = pytest.mark.integration

#: Runs ``consentry serve`` with an audit hook that appends each write-like event, as one
#: JSON line, to the file named by the first argument (opened before the hook is installed;
#: ``os.write`` raises no audit event, so the hook does not record itself).
_SERVE_AUDITED = """
import json, os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = {"sqlite3.connect", "os.mkdir", "os.rename", "os.remove", "os.rmdir",
          "os.truncate", "os.link", "os.symlink", "shutil.rmtree", "tempfile.mkstemp",
          "tempfile.mkdtemp"}

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS)
        if not writes:
            return
    elif event not in EVENTS:
        return
    else:
        path = args[0]
    if isinstance(path, int):
        return
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    path = os.path.abspath(str(path))
    os.write(log, (json.dumps([event, path]) + "\\n").encode())

sys.addaudithook(hook)
from middleware.cli import main
sys.exit(main(["serve"]))
"""


def _replica_env(keys: Path, data: Path, public: str) -> dict[str, str]:
    """A compose replica's environment with its volumes at ``keys`` and ``data``."""
    service = COMPOSE["services"]["gateway-1"]
    env = {}
    for name, value in service["environment"].items():
        text = str(value).replace(KEYS_DIR, str(keys)).replace(DATA_DIR, str(data))
        env[name] = text.replace("http://127.0.0.1:8080", public)
    return env


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(encoding="utf-8", errors="replace")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within 60 s:\n{log.read_text()}")


def test_the_gateway_writes_only_to_its_data_directory_and_tmp(tmp_path: Path) -> None:
    keys, data, scratch = tmp_path / "keys", tmp_path / "data", tmp_path / "tmp"
    for folder in (keys, data, scratch):
        folder.mkdir()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    script = key_writer_script().replace(KEYS_DIR, str(keys))
    script = script.replace("http://127.0.0.1:8080", public)
    subprocess.run(["/bin/sh", "-c", script], env=clean_env({"PATH": str(bin_dir)}), check=True)
    token = subprocess.run(
        [
            str(bin_dir / "consentry"),
            *("token", "issue", "--key-file", str(keys / "dev-issuer.jwk")),
            *("--issuer", f"{public}/dev-issuer", "--audience", f"{public}/fhir"),
            *("--sub", "deploy-check", "--scope", "system/*.cruds"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout.strip()
    record = tmp_path / "writes.jsonl"
    log = tmp_path / "serve.log"
    with UpstreamServer() as upstream, fresh_database() as dsn:
        env = clean_env(
            {
                **_replica_env(keys, data, public),
                "CONSENTRY_UPSTREAM": upstream.base_url,
                "CONSENTRY_STORE": dsn,
                "CONSENTRY_HOST": "127.0.0.1",
                "CONSENTRY_PORT": str(port),
                # Behaviour, not paths: a backend service may read and write without consents.
                "CONSENTRY_CONSENT_JURISDICTION": "opt-out",
                "HOME": str(data),
                "TMPDIR": str(scratch),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", _SERVE_AUDITED, str(record)],
                cwd=data,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_ready(process, f"{public}/readyz", log)
            headers = {"authorization": f"Bearer {token}", "accept": "application/fhir+json"}
            with httpx.Client(base_url=f"{public}/fhir", headers=headers, timeout=30.0) as fhir:
                created = fhir.post(
                    "/Patient",
                    json={"resourceType": "Patient", "name": [{"family": "Readonlyroot"}]},
                    headers={"content-type": "application/fhir+json"},
                )
                assert created.status_code == 201, created.text
                read = fhir.get(f"/Patient/{created.json()['id']}")
                assert read.status_code == 200, read.text
            assert httpx.get(f"{public}/healthz", timeout=5.0).status_code == 200
        finally:
            stop_process(process)
    events = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    # The hook saw the audit outbox (a SQLite file on the data volume): it records.
    assert ["sqlite3.connect", str(data / "outbox.db")] in events, events
    outside = [
        (event, path)
        for event, path in events
        if not any(Path(path).is_relative_to(root) for root in (data, scratch, Path("/dev")))
    ]
    assert outside == [], log.read_text(encoding="utf-8", errors="replace")
