"""``deploy/compose.yaml``: valid against the compose-spec JSON schema (the copy check-jsonschema
ships, so the check runs offline); the gateways' environment is settings the gateway's own
loader accepts; every container is hardened and health-checked; three replicas share the key
files (read-only) and the store, and keep their own data; they trust ``X-Forwarded-For``
from the load balancer's fixed address only; the one-shot key writer works
(run here for real) and leaves existing keys alone.

No container engine runs in CI: images are not built or pulled, containers not started.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from middleware.errors import SettingsError
from middleware.ledger.keyfile import read_ledger_key
from middleware.settings import Settings
from middleware.storage.audit_outbox import outbox_path
from tests.unit.deploy.files import DEPLOY, image_env, load_with

Compose = dict[str, Any]
COMPOSE: Compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
KEYS_DIR = "/etc/consentry/keys"
DATA_DIR = "/var/lib/consentry"


def _schema() -> dict[str, Any]:
    text = (
        resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    ).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_problems(compose: Compose) -> list[str]:
    schema = _schema()
    validator = jsonschema.validators.validator_for(schema)
    checker = validator(schema, format_checker=validator.FORMAT_CHECKER)
    return [f"{list(e.absolute_path)}: {e.message}" for e in checker.iter_errors(compose)]


def one_shots(compose: Compose) -> set[str]:
    """Services another waits for to exit 0 (``service_completed_successfully``)."""
    return {
        name
        for service in compose["services"].values()
        if isinstance(service.get("depends_on"), dict)
        for name, wait in service["depends_on"].items()
        if wait.get("condition") == "service_completed_successfully"
    }


def gateways(compose: Compose) -> dict[str, dict[str, Any]]:
    """The long-running services built from the gateway's Dockerfile."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
        and name not in one_shots(compose)
    }


def gateway_settings(service: dict[str, Any], workdir: Path) -> Settings:
    """What ``consentry serve`` in that container loads: the image's environment, then the
    service's."""
    env = image_env((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    env.update({k: str(v) for k, v in service["environment"].items()})
    return load_with(None, env, workdir)


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) of the service's short-syntax volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        found[target] = (source, mode[0] if mode else "rw")
    return found


def compose_problems(compose: Compose) -> list[str]:
    problems: list[str] = []
    services = compose["services"]
    for name, service in services.items():
        if service.get("read_only") is not True:
            problems.append(f"{name}: read_only: expected true")
        if service.get("cap_drop") != ["ALL"]:
            problems.append(f"{name}: cap_drop: expected [ALL]")
        user = str(service.get("user", "root"))
        if user.split(":", maxsplit=1)[0] in ("root", "0"):
            problems.append(f"{name}: user: expected a non-root user")
        if name not in one_shots(compose) and (
            "test" not in service.get("healthcheck", {}) or service["healthcheck"].get("disable")
        ):
            problems.append(f"{name}: healthcheck: expected one")
        waits = service.get("depends_on", {})
        if isinstance(waits, list):
            problems.append(f"{name}: depends_on: expected conditions, not a list")
            waits = {}
        for other, wait in waits.items():
            if not isinstance(wait, dict) or "condition" not in wait:
                problems.append(f"{name}: depends_on {other}: expected a condition")
            elif other not in one_shots(compose) and wait["condition"] != "service_healthy":
                problems.append(f"{name}: depends_on {other}: expected service_healthy")
    replicas = gateways(compose)
    if len(replicas) != 3:
        problems.append(f"expected three gateway replicas, got {len(replicas)}")
    if len({json.dumps(s.get("environment"), sort_keys=True) for s in replicas.values()}) > 1:
        problems.append("the replicas' settings differ")
    data_sources = []
    for name, service in replicas.items():
        mounts = _mounts(service)
        if mounts.get(KEYS_DIR, ("", ""))[1] != "ro":
            problems.append(f"{name}: the key files must be mounted read-only at {KEYS_DIR}")
        data_sources.append(mounts.get(DATA_DIR, ("",))[0])
        if "/tmp" not in service.get("tmpfs", []):
            problems.append(f"{name}: /tmp: expected a tmpfs")
        if {KEYS_DIR, DATA_DIR} != set(mounts):
            problems.append(f"{name}: volumes: expected {KEYS_DIR} and {DATA_DIR} only")
    if len(set(data_sources)) != len(data_sources) or "" in data_sources:
        problems.append(f"each replica needs a data volume of its own at {DATA_DIR}")
    keys = {_mounts(services[name]).get(KEYS_DIR, ("",))[0] for name in one_shots(compose)}
    if {_mounts(s).get(KEYS_DIR, ("?",))[0] for s in replicas.values()} != keys:
        problems.append("the replicas must mount the volume the key writer wrote")
    balancer = services.get("loadbalancer", {}).get("depends_on", {})
    if set(balancer) != set(replicas):
        problems.append("loadbalancer: expected to wait for every replica")
    problems += forwarding_problems(compose)
    return problems


def _trust(compose: Compose, proxies: str | None) -> None:
    """Every replica's forwarded_allow_ips set to ``proxies`` (None: unset)."""
    for service in gateways(compose).values():
        service["environment"].pop("CONSENTRY_FORWARDED_ALLOW_IPS", None)
        if proxies is not None:
            service["environment"]["CONSENTRY_FORWARDED_ALLOW_IPS"] = proxies


def forwarding_problems(compose: Compose) -> list[str]:
    """The replicas trust ``X-Forwarded-For`` from the load balancer's fixed address, and
    from nothing else (a wider trust would let any container name any client)."""
    networks = compose["services"]["loadbalancer"].get("networks", {})
    address = networks.get("default", {}).get("ipv4_address", "")
    subnets = [
        ipaddress.ip_network(c["subnet"])
        for c in compose.get("networks", {}).get("default", {}).get("ipam", {}).get("config", [])
    ]
    problems = []
    if not address or not any(ipaddress.ip_address(address) in net for net in subnets):
        problems.append("loadbalancer: expected a fixed address in the default network's subnet")
    for name, service in gateways(compose).items():
        trusted = service["environment"].get("CONSENTRY_FORWARDED_ALLOW_IPS")
        if trusted != address:
            problems.append(f"{name}: forwarded_allow_ips {trusted!r}, expected {address!r}")
    return problems


def test_the_compose_file_is_valid_against_the_compose_spec() -> None:
    assert schema_problems(COMPOSE) == []


def test_the_compose_file_has_the_deployments_shape() -> None:
    assert compose_problems(COMPOSE) == []


def test_the_replicas_settings_load_with_the_gateways_own_loader(tmp_path: Path) -> None:
    """The replicas share the PostgreSQL service as store, the key file the key writer makes
    (for the origin it makes it with), and keep the audit outbox on their data volume."""
    (service, *_) = gateways(COMPOSE).values()
    settings = gateway_settings(service, tmp_path)
    store = urlsplit(settings.store)
    assert (store.scheme, store.hostname) == ("postgresql", "postgres")
    assert urlsplit(settings.upstream).hostname in COMPOSE["services"]
    assert PurePosixPath(settings.ledger_key_file).parent == PurePosixPath(KEYS_DIR)
    outbox = PurePosixPath(outbox_path(settings.audit_outbox, settings.store))
    assert outbox.is_relative_to(DATA_DIR)
    script = key_writer_script()
    assert f"--origin {settings.ledger_origin}" in " ".join(shlex.split(script))
    assert f"--key-file {PurePosixPath(settings.ledger_key_file).name}" in script


def key_writer_script() -> str:
    (name,) = one_shots(COMPOSE)
    service = COMPOSE["services"][name]
    assert service["entrypoint"] == ["sh", "-c"]
    (script,) = service["command"]
    assert isinstance(script, str)
    return script


def test_the_key_writer_writes_the_keys_once(tmp_path: Path) -> None:
    """The key writer's script, run for real (``keys`` directory moved to a temporary one):
    it writes a ledger key file for the replicas' origin, and a second run (a restart of the
    stack) keeps it, so the log's identity never changes under the replicas."""
    script = key_writer_script().replace(KEYS_DIR, str(tmp_path))
    bin_dir = Path(sys.executable).parent
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.defpath}", "HOME": str(tmp_path)}

    def run() -> None:
        done = subprocess.run(
            ["/bin/sh", "-c", script],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    run()
    key_file = tmp_path / "consentry-ledger.key"
    first = key_file.read_text(encoding="ascii")
    run()
    assert key_file.read_text(encoding="ascii") == first
    assert (tmp_path / "dev-issuer.jwk").is_file()
    (service, *_) = gateways(COMPOSE).values()
    origin = service["environment"]["CONSENTRY_LEDGER_ORIGIN"]
    assert read_ledger_key(key_file).origin == origin


def _edit(change: Callable[[Compose], None]) -> Compose:
    compose = copy.deepcopy(COMPOSE)
    change(compose)
    return compose


def _service(name: str) -> Callable[[Compose], dict[str, Any]]:
    def get(compose: Compose) -> dict[str, Any]:
        found: dict[str, Any] = compose["services"][name]
        return found

    return get


_postgres, _gw1, _gw2 = _service("postgres"), _service("gateway-1"), _service("gateway-2")


@pytest.mark.parametrize(
    ("check", "broken", "problem"),
    [
        # -- the compose-spec schema
        (schema_problems, _edit(lambda c: _gw1(c).update(read_onyl=True)), "read_onyl"),
        (schema_problems, _edit(lambda c: _gw1(c).update(tmpfs=42)), "42"),
        # -- hardening and health
        (compose_problems, _edit(lambda c: _postgres(c).pop("read_only")), "postgres: read_only"),
        (compose_problems, _edit(lambda c: _postgres(c).update(user="0:0")), "postgres: user"),
        (compose_problems, _edit(lambda c: _postgres(c).pop("cap_drop")), "postgres: cap_drop"),
        (compose_problems, _edit(lambda c: _postgres(c).pop("healthcheck")), "postgres: health"),
        (compose_problems, _edit(lambda c: _gw1(c).update(depends_on=["postgres"])), "depends_on"),
        # -- the replicas
        (compose_problems, _edit(lambda c: c["services"].pop("gateway-3")), "three gateway"),
        (compose_problems, _edit(lambda c: _gw1(c).update(volumes=["keys:/etc/consentry/keys", "gateway-1-data:/var/lib/consentry"])), "read-only"),
        (compose_problems, _edit(lambda c: _gw2(c).update(volumes=["keys:/etc/consentry/keys:ro", "gateway-1-data:/var/lib/consentry"])), "of its own"),
        (compose_problems, _edit(lambda c: _gw2(c).update(environment={**_gw1(c)["environment"], "CONSENTRY_LOG_LEVEL": "debug"})), "settings differ"),
        (compose_problems, _edit(lambda c: c["services"]["loadbalancer"]["networks"]["default"].update(ipv4_address="172.30.81.10")), "fixed address"),
        (compose_problems, _edit(lambda c: _trust(c, "172.30.80.0/24")), "forwarded_allow_ips"),
        (compose_problems, _edit(lambda c: _trust(c, None)), "forwarded_allow_ips"),
    ],
)  # fmt: skip
def test_a_broken_compose_file_is_refused(
    check: Callable[[Compose], list[str]], broken: Compose, problem: str
) -> None:
    found = check(broken)
    assert any(problem in line for line in found), found


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        pytest.param("CONSENTRY_LEDGER_KEYFILE", "/k", "CONSENTRY_LEDGER_KEYFILE", id="misspelt"),
        pytest.param("CONSENTRY_STORE", "mysql://db", "store: expected", id="bad-store"),
        pytest.param("CONSENTRY_AUTH", '{"dev_issuer": true}', "dev_issuer", id="bad-auth"),
    ],
)
def test_a_broken_gateway_environment_stops_the_gateway(
    name: str, value: str, problem: str, tmp_path: Path
) -> None:
    service = copy.deepcopy(_gw1(COMPOSE))
    service["environment"][name] = value
    with pytest.raises(SettingsError, match=problem):
        gateway_settings(service, tmp_path)
