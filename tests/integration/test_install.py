"""The package as a user gets it: the wheel built from pyproject.toml alone, installed into an
empty virtual environment (no editable checkout, no test extra, no site-packages of the
machine), passes ``pip check``, imports every module of ``middleware``, holds every file of the
package's source tree, and runs the README's run command, ``consentry serve --upstream URL``,
in front of the real upstream, answering one authenticated request.

A third-party import that ``dependencies`` does not declare fails the import test with
``ModuleNotFoundError`` (``joserfc`` and ``cryptography`` once did: the test environment had
them installed by hand). The wheel is built from the files ``deploy/Dockerfile`` copies into its
build stage, so a file the image leaves out fails here too.

Slow (a wheel, a virtual environment and its dependencies from the package index): the
environment is built once per module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.shell import clean_env
from tests.support import UpstreamServer, free_port
from tests.support.peers import repo_root, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

_HOST = "127.0.0.1"
_BIN = "Scripts" if sys.platform == "win32" else "bin"


@dataclass(frozen=True)
class Installed:
    """An empty virtual environment with the built wheel installed in it."""

    wheel: Path
    venv: Path
    workdir: Path

    def executable(self, name: str) -> Path:
        return self.venv / _BIN / name


def _run(argv: Sequence[str | Path], cwd: Path, timeout: float = 600.0) -> str:
    """Run ``argv`` in ``cwd`` with :func:`clean_env`; its output, or a failure naming it."""
    done = subprocess.run(
        [str(arg) for arg in argv],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}:\n{output}"
    return done.stdout


def _dockerfile_sources() -> list[str]:
    """The paths the Dockerfile's build stage copies from the build context (its ``COPY``
    lines without ``--from``, before the second ``FROM``)."""
    sources: list[str] = []
    stages = 0
    for line in (repo_root() / "deploy" / "Dockerfile").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "FROM":
            stages += 1
        elif words[0] == "COPY" and stages == 1 and not words[1].startswith("--"):
            sources += words[1:-1]
    return sources


def _source_files() -> set[str]:
    """Every file of the ``middleware`` package in the checkout (caches aside), repo-relative."""
    root = repo_root()
    return {
        path.relative_to(root).as_posix()
        for path in (root / "middleware").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    context = base / "context"
    context.mkdir()
    sources = _dockerfile_sources()
    assert "pyproject.toml" in sources, sources
    for name in sources:
        source = repo_root() / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, context / name)
    wheels = base / "wheels"
    # pip wheel, as the Dockerfile does; build isolation gets the build-system requirements.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, context], base)
    (wheel,) = wheels.glob("consentry-*.whl")
    venv = base / "venv"
    # The interpreter that runs the tests, without its packages (no --system-site-packages).
    _run([sys.executable, "-m", "venv", venv], base)
    python = venv / _BIN / "python"
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel], base)
    workdir = base / "work"
    workdir.mkdir()
    return Installed(wheel, venv, workdir)


def test_installed_requirements_are_consistent(installed: Installed) -> None:
    """``pip check``: every installed distribution's requirements are met."""
    _run([installed.executable("python"), "-m", "pip", "check"], installed.workdir)


_IMPORT_ALL = """
import importlib, pkgutil, sys
import middleware
def fail(name):
    raise SystemExit(f"cannot import {name}")
names = ["middleware"]
for info in pkgutil.walk_packages(middleware.__path__, "middleware.", onerror=fail):
    importlib.import_module(info.name)
    names.append(info.name)
print(middleware.__file__)
print("\\n".join(sorted(names)))
"""


def test_every_module_of_the_package_imports_in_the_empty_environment(
    installed: Installed,
) -> None:
    """Each module imports with the declared dependencies only; the package imported is the
    installed one, and it has every module of the checkout."""
    # -I: no PYTHONPATH, no user site-packages, no current directory on sys.path.
    printed = _run([installed.executable("python"), "-I", "-c", _IMPORT_ALL], installed.workdir)
    location, *names = printed.split()
    assert Path(location).is_relative_to(installed.venv), location
    expected = {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in _source_files()
        if name.endswith(".py")
    }
    assert set(names) == expected


def test_the_wheel_holds_every_file_of_the_package(installed: Installed) -> None:
    """Data files (``py.typed`` and any other non-Python file) are shipped, not only code:
    the wheel's ``middleware/`` is the checkout's, file for file."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        shipped = {name for name in wheel.namelist() if name.startswith("middleware/")}
    assert shipped == _source_files()
    assert "middleware/py.typed" in shipped


@pytest.fixture(scope="module")
def own_upstream() -> Iterator[UpstreamServer]:
    """An upstream of this module's own (the session's is shared with other tests' data)."""
    with UpstreamServer() as server:
        yield server


def _settings(workdir: Path, root: str) -> str:
    """A local development configuration: the development issuer (its key file shared with
    ``consentry token issue``), a ledger key, and the opt-out jurisdiction so that a backend
    service may read a record without consents on file."""
    return f"""\
ledger_key_file = "{workdir / "ledger.key"}"
ledger_origin = "consentry.install-check/fhir/ledger"
consent_jurisdiction = "opt-out"
store = "sqlite:{workdir / "consentry.db"}"

[auth]
dev_issuer_enabled = true
dev_issuer_url = "{root}/dev-issuer"
dev_issuer_key_file = "{workdir / "dev-issuer.jwk"}"
audiences = ["{root}/fhir"]
"""


@dataclass(frozen=True)
class Serving:
    """``consentry serve`` of the installed package, live on ``port``."""

    port: int
    token: str
    log: Path

    @property
    def root(self) -> str:
        return f"http://{_HOST}:{self.port}"


@contextmanager
def _serve(installed: Installed, upstream: str, workdir: Path) -> Iterator[Serving]:
    """Run the README's run command (``consentry serve --upstream URL``, with a settings file
    and a free port) from the installed package, and a backend token of the installed
    ``consentry token issue`` that it trusts; stop it by pid afterwards."""
    workdir.mkdir()
    port = free_port()
    root = f"http://{_HOST}:{port}"
    config = workdir / "consentry.toml"
    config.write_text(_settings(workdir, root), encoding="utf-8")
    consentry = installed.executable("consentry")
    token = _run(
        [
            consentry,
            *("token", "issue", "--sub", "install-check", "--scope", "system/*.rs"),
            *("--key-file", workdir / "dev-issuer.jwk", "--new-key"),
            *("--issuer", f"{root}/dev-issuer", "--audience", f"{root}/fhir"),
        ],
        workdir,
    ).strip()
    log = workdir / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(consentry),
                *("serve", "--upstream", upstream),
                *("--host", _HOST, "--port", str(port), "--config", str(config)),
            ],
            cwd=workdir,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_live(process, f"{root}/healthz", log)
        yield Serving(port, token, log)
    finally:
        stop_process(process)


def _wait_live(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60.0
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            status = process.poll()
            assert status is None, f"consentry serve exited {status}:\n{log.read_text()}"
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer 200 within 60 s:\n{log.read_text()}")


def test_the_readme_run_command_serves_an_authenticated_request(
    installed: Installed, own_upstream: UpstreamServer
) -> None:
    """``consentry serve --upstream URL`` from the installed package, in front of the real
    upstream, trusts a token of the installed ``consentry token issue`` and forwards a read."""
    created = httpx.post(
        f"{own_upstream.base_url}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Installcheck"}]},
        headers={"content-type": "application/fhir+json"},
        timeout=30.0,
    )
    assert created.status_code == 201, created.text
    patient_id = created.json()["id"]

    with _serve(installed, own_upstream.base_url, installed.workdir / "read") as gateway:
        answer = httpx.get(
            f"{gateway.root}/fhir/Patient/{patient_id}",
            headers={"authorization": f"Bearer {gateway.token}", "accept": "application/fhir+json"},
            timeout=30.0,
        )
        assert answer.status_code == 200, f"{answer.text}\n{gateway.log.read_text()}"
    body = answer.json()
    assert (body["resourceType"], body["id"]) == ("Patient", patient_id)
    assert body["name"] == [{"family": "Installcheck"}]


def _healthcheck_command() -> list[str]:
    """The exec-form ``CMD`` of the Dockerfile's ``HEALTHCHECK`` (continuation lines joined)."""
    text = (repo_root() / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    instruction = next(
        part for part in text.replace("\\\n", " ").splitlines() if part.startswith("HEALTHCHECK")
    )
    command: list[str] = json.loads(instruction.split(" CMD ", 1)[1])
    return command


def test_the_image_healthcheck_fails_while_the_gateway_cannot_serve(
    installed: Installed, tmp_path: Path
) -> None:
    """The image's HEALTHCHECK command, run against the installed gateway, passes while the
    upstream answers and fails once it is gone (the gateway still lives: liveness would pass)."""
    command = _healthcheck_command()
    assert command[0] == "python", command
    upstream = UpstreamServer().start()
    try:
        with _serve(installed, upstream.base_url, installed.workdir / "health") as gateway:
            argv = [str(installed.executable("python")), *command[1:]]
            env = clean_env({"CONSENTRY_PORT": str(gateway.port)})

            def check() -> int:
                return subprocess.run(
                    argv, env=env, cwd=tmp_path, capture_output=True, timeout=30, check=False
                ).returncode

            assert check() == 0, gateway.log.read_text()
            upstream.stop()
            # /readyz answers from one check for ready_cache_seconds (1 s): the next check
            # after that must see the upstream gone.
            deadline = time.monotonic() + 10.0
            while check() == 0:
                assert time.monotonic() < deadline, "the healthcheck kept passing"
                time.sleep(0.5)
            assert httpx.get(f"{gateway.root}/healthz", timeout=5.0).status_code == 200
    finally:
        upstream.stop()
