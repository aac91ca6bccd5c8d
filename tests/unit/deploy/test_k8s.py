"""``deploy/k8s``: every manifest against the Kubernetes JSON schemas (strict: an unknown or
misspelt field fails; bundled by kubernetes-validate, so the check runs offline), the
settings a pod gets (the ConfigMap's TOML, the image's and the container's environment)
through the gateway's own loader, and the shape the gateway needs: probes, a hardened
security context, writable volumes only where it writes, one key file for every replica.

No cluster runs in CI: what a kubelet or an admission controller would add is not tested.
"""

from __future__ import annotations

import copy
import ipaddress
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from middleware.errors import SettingsError
from middleware.settings import ENV_PREFIX, Settings
from middleware.storage.audit_outbox import outbox_path
from tests.unit.deploy.files import (
    DEPLOY,
    Docs,
    image_env,
    k8s_documents,
    load_with,
    one_of_kind,
    pod_spec,
    service_link_env,
)

K8S = DEPLOY / "k8s"
DOCS = k8s_documents(K8S)
#: The oldest Kubernetes the manifests are checked against, and the newest bundled schemas.
VERSIONS = ("1.29.0", kv_utils.latest_version())


# -- schemas --------------------------------------------------------------------------------


def schema_problems(docs: Docs, version: str) -> list[str]:
    problems = []
    for name, file in docs.items():
        for doc in file:
            if doc.get("apiVersion", "").startswith("kustomize.config.k8s.io/"):
                continue  # kustomize's own file, not an API object
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except (kubernetes_validate.ValidationError, kv_utils.SchemaNotFoundError) as exc:
                problems.append(f"{name}: {getattr(exc, 'message', exc)!s}")
    return problems


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    assert schema_problems(DOCS, version) == []


def _misspell(docs: Docs) -> None:
    security = pod_spec(docs)["containers"][0]["securityContext"]
    security["readOnlyRootFilesytem"] = security.pop("readOnlyRootFilesystem")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(_misspell, "'readOnlyRootFilesytem' was unexpected", id="misspelt-field"),
        pytest.param(
            lambda d: one_of_kind(d, "Deployment")["spec"].update(replicas="3"),
            "'3' is not of type 'integer'",
            id="wrong-type",
        ),
        pytest.param(
            lambda d: one_of_kind(d, "HorizontalPodAutoscaler").update(
                apiVersion="autoscaling/v2beta1"
            ),
            "hpa.yaml",  # removed in Kubernetes 1.25: no schema
            id="removed-api",
        ),
    ],
)
def test_a_manifest_the_schemas_refuse(change: Callable[[Docs], None], problem: str) -> None:
    found = schema_problems(_edit(change), VERSIONS[-1])
    assert any(problem in line for line in found), found


#: The Secret's example: created by hand (docs/deploy.md), never applied with the rest.
SECRET_EXAMPLE = "secret.example.yaml"


def test_kustomization_applies_every_manifest_but_the_secrets_example() -> None:
    """``kubectl apply -k`` after ``kubectl create secret`` must not overwrite the real
    Secret with the example's placeholders: no Secret is a resource of the kustomization."""
    (kustomization,) = DOCS["kustomization.yaml"]
    assert set(kustomization["resources"]) == set(DOCS) - {"kustomization.yaml", SECRET_EXAMPLE}
    applied = [doc for name in kustomization["resources"] for doc in DOCS[name]]
    assert all(doc["kind"] != "Secret" for doc in applied)
    assert [doc["kind"] for doc in DOCS[SECRET_EXAMPLE]] == ["Secret"]


# -- the settings a pod gets ----------------------------------------------------------------


def pod_settings(docs: Docs, workdir: Path) -> Settings:
    """The settings a gateway pod loads: ``--config`` names the mounted ConfigMap's TOML; the
    environment is the image's, the container's (secrets resolved from the Secret) and, with
    service links on, the variables Kubernetes adds for each Service."""
    pod = pod_spec(docs)
    (container,) = pod["containers"]
    args = container["args"]
    config = PurePosixPath(args[args.index("--config") + 1])
    mount = next(
        m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == config.parent
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = one_of_kind(docs, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    toml = configmap["data"][config.name]
    secret = one_of_kind(docs, "Secret")
    env = image_env((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], ref
            env[var["name"]] = secret["stringData"][ref["key"]]
    if pod.get("enableServiceLinks", True):
        services = [doc for file in docs.values() for doc in file if doc["kind"] == "Service"]
        env.update(service_link_env(services))
    return load_with(toml, env, workdir)


def test_the_pods_settings_load_with_the_gateways_own_loader(tmp_path: Path) -> None:
    """The settings are the gateway's: the replicas share the PostgreSQL store and the one
    ledger key file (mounted from the Secret), and the audit outbox is on the pod's own
    writable data volume."""
    settings = pod_settings(DOCS, tmp_path)
    assert settings.store.startswith("postgresql://")
    (container,) = pod_spec(DOCS)["containers"]
    mounts = {m["name"]: PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(DOCS)["volumes"]}
    key = PurePosixPath(settings.ledger_key_file)
    keys = next(name for name, path in mounts.items() if key.parent == path)
    assert [item["path"] for item in volumes[keys]["secret"]["items"]] == [key.name]
    outbox = PurePosixPath(outbox_path(settings.audit_outbox, settings.store))
    data = next(name for name, path in mounts.items() if outbox.is_relative_to(path))
    assert "emptyDir" in volumes[data]
    assert settings.port == next(p["containerPort"] for p in container["ports"])


def test_the_gateway_trusts_forwarded_addresses_from_the_ingress_only(tmp_path: Path) -> None:
    """Behind the ingress controller every client would share its address: the pods take the
    forwarded one, from the pod network only, which the NetworkPolicy admits the ingress
    controller's pods from and nothing else."""
    settings = pod_settings(DOCS, tmp_path)
    assert settings.forwarded_allow_ips
    networks = [ipaddress.ip_network(n.strip()) for n in settings.forwarded_allow_ips.split(",")]
    assert all(network.prefixlen >= 8 and not network.is_global for network in networks)


#: Memory of the gateway itself beside its exports: an allowance (the process, its pools, a
#: download's batch), not a measurement.
GATEWAY_MIB = 384


def export_memory_problems(docs: Docs, workdir: Path) -> list[str]:
    """On PostgreSQL a Bulk export's files live in the pod's memory: the running jobs at their
    byte limit, the /tmp tmpfs (memory-backed) and the gateway must fit the memory limit."""
    settings = pod_settings(docs, workdir)
    pod = pod_spec(docs)
    (container,) = pod["containers"]
    tmp = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    tmpfs = next(v["emptyDir"] for v in pod["volumes"] if v["name"] == tmp)
    mib = 1024 * 1024
    exports = settings.export_max_running * settings.export_max_bytes // mib
    tmp_mib = _mebibytes(tmpfs["sizeLimit"]) if tmpfs.get("medium") == "Memory" else 0
    limit = _mebibytes(container["resources"]["limits"]["memory"])
    if exports + tmp_mib + GATEWAY_MIB > limit:
        return [f"exports {exports} MiB + /tmp {tmp_mib} MiB + {GATEWAY_MIB} MiB > {limit} MiB"]
    return []


def _mebibytes(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(float(quantity[:-2]) * units[quantity[-2:]])


def test_two_export_jobs_fit_the_pods_memory(tmp_path: Path) -> None:
    assert export_memory_problems(DOCS, tmp_path) == []
    # The default export_max_bytes (256 MiB) would not.
    broken = _edit(lambda d: _setting(d, "export_max_bytes = 268435456"))
    toml = one_of_kind(broken, "ConfigMap")["data"]["consentry.toml"]
    one_of_kind(broken, "ConfigMap")["data"]["consentry.toml"] = toml.replace(
        "export_max_bytes = 134217728\n", ""
    )
    assert export_memory_problems(broken, tmp_path) != []


def _edit(change: Callable[[Docs], None]) -> Docs:
    docs = copy.deepcopy(DOCS)
    change(docs)
    return docs


def _setting(docs: Docs, line: str) -> None:
    one_of_kind(docs, "ConfigMap")["data"]["consentry.toml"] = (
        line + "\n" + one_of_kind(docs, "ConfigMap")["data"]["consentry.toml"]
    )


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        pytest.param(
            _edit(lambda d: _setting(d, 'ledger_keyfile = "/etc/consentry/keys/k"')),
            "unknown setting 'ledger_keyfile'",
            id="misspelt-setting",
        ),
        pytest.param(
            _edit(lambda d: _setting(d, "cursor_ttl_seconds = 0")),
            "cursor_ttl_seconds: expected",
            id="bad-value",
        ),
        # Kubernetes' service links give CONSENTRY_SERVICE_HOST, CONSENTRY_PORT=tcp://...
        # for the Service named consentry: unknown settings, a port that is no number.
        pytest.param(
            _edit(lambda d: pod_spec(d).pop("enableServiceLinks")),
            "CONSENTRY_SERVICE_HOST",
            id="service-links-on",
        ),
    ],
)
def test_a_broken_configuration_stops_the_gateway(
    broken: Docs, problem: str, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError, match=problem):
        pod_settings(broken, tmp_path)


def shadowed_settings(docs: Docs) -> set[str]:
    """Settings of the ConfigMap's TOML that the pod's environment overrides (the environment
    wins): a value there that does nothing."""
    toml = tomllib.loads(one_of_kind(docs, "ConfigMap")["data"]["consentry.toml"])
    (container,) = pod_spec(docs)["containers"]
    env = set(image_env((DEPLOY / "Dockerfile").read_text(encoding="utf-8")))
    env |= {var["name"] for var in container.get("env", [])}
    return {name for name in toml if f"{ENV_PREFIX}{name.upper()}" in env}


def test_no_setting_of_the_configmap_is_overridden_by_the_environment() -> None:
    assert shadowed_settings(DOCS) == set()
    assert shadowed_settings(_edit(lambda d: _setting(d, "port = 9090"))) == {"port"}
