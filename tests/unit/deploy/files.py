"""Reading ``deploy/``: the Dockerfile's instructions, the manifests, and the settings each
deployment hands the gateway, loaded with the gateway's own loader.

No container engine or cluster runs in CI, so these files are checked statically; what makes
the checks worth having is that the settings go through :func:`middleware.settings.load_settings`
(an unknown or renamed setting, a bad value, fails exactly as ``consentry serve`` would fail
at start) and the manifests through published schemas.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from middleware.settings import ENV_PREFIX, Settings, load_settings

__all__ = [
    "DEPLOY",
    "Docs",
    "Instruction",
    "image_env",
    "instructions",
    "k8s_documents",
    "load_with",
    "one_of_kind",
    "pod_spec",
    "service_link_env",
    "stages",
]

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile (comments and blank lines dropped)."""
    joined = re.sub(r"\\\n", " ", text)
    found: list[Instruction] = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, arguments = stripped.partition(" ")
        found.append(Instruction(keyword.upper(), " ".join(arguments.split())))
    return found


def stages(text: str) -> list[list[Instruction]]:
    """The instructions of each build stage, each starting with its ``FROM``."""
    result: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def image_env(text: str) -> dict[str, str]:
    """The ``ENV key=value ...`` pairs the final stage of the Dockerfile sets."""
    env: dict[str, str] = {}
    for instruction in stages(text)[-1]:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.arguments):
                key, sep, value = word.partition("=")
                assert sep, f"ENV in the legacy 'key value' form: {instruction.arguments}"
                env[key] = value
    return env


#: Manifest documents by file name (as :func:`k8s_documents` reads them).
Docs = dict[str, list[dict[str, Any]]]


def k8s_documents(folder: Path) -> Docs:
    """Every YAML document of the manifests in ``folder``, by file name."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
        for path in sorted(folder.glob("*.yaml"))
    }


def one_of_kind(docs: Docs, kind: str) -> dict[str, Any]:
    """The one document of ``kind`` (fails unless there is exactly one)."""
    (found,) = [doc for file in docs.values() for doc in file if doc["kind"] == kind]
    return found


def pod_spec(docs: Docs) -> dict[str, Any]:
    """The Deployment's pod template spec."""
    spec: dict[str, Any] = one_of_kind(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def service_link_env(services: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The variables Kubernetes puts into every container of a pod with service links on
    (``enableServiceLinks``, true by default) for each Service in the namespace: Docker-link
    style ``<NAME>_SERVICE_HOST``, ``<NAME>_PORT``, ``<NAME>_PORT_<port>_<PROTO>``, ... with
    ``NAME`` the Service's name upper-cased, dashes as underscores."""
    env: dict[str, str] = {}
    address = "10.0.0.10"
    for service in services:
        name = service["metadata"]["name"].upper().replace("-", "_")
        ports = service["spec"]["ports"]
        first = ports[0]
        env[f"{name}_SERVICE_HOST"] = address
        env[f"{name}_SERVICE_PORT"] = str(first["port"])
        env[f"{name}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{address}:{first['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            if "name" in port:
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                    port["port"]
                )
            prefix = f"{name}_PORT_{port['port']}_{proto}"
            env[prefix] = f"{proto.lower()}://{address}:{port['port']}"
            env[f"{prefix}_PROTO"] = proto.lower()
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = address
    return env


def load_with(toml: str | None, env: Mapping[str, str], workdir: Path) -> Settings:
    """Settings as ``consentry serve --config FILE`` loads them in an environment ``env``
    (only its ``CONSENTRY_*`` names are read); ``SettingsError`` when they are invalid."""
    config = None
    if toml is not None:
        config = workdir / "consentry.toml"
        config.write_text(toml, encoding="utf-8")
    relevant = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    return load_settings(config_file=config, env=relevant)
