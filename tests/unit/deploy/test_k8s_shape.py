"""``deploy/k8s``, the shape the gateway needs beyond schema validity: the probes it answers,
a hardened pod, writable volumes only where it writes, objects that select the same pods,
a NetworkPolicy that lets in only the ingress controller, a Secret that is a template.

Each rule is a function returning its problems, run on the manifests (no problem) and on a
copy broken in one way (that problem), so each rule can fail.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from middleware.ledger.errors import MalformedError
from middleware.ledger.keyfile import parse_ledger_key
from tests.unit.deploy.files import DEPLOY, Docs, k8s_documents, one_of_kind, pod_spec

DOCS = k8s_documents(DEPLOY / "k8s")
WRITABLE = ("/var/lib/consentry", "/tmp")


def _container(docs: Docs) -> dict[str, Any]:
    (container,) = pod_spec(docs)["containers"]
    result: dict[str, Any] = container
    return result


def deployment_problems(docs: Docs) -> list[str]:
    problems: list[str] = []
    deployment = one_of_kind(docs, "Deployment")
    if deployment["spec"].get("replicas") != 3:
        problems.append("replicas: expected 3")
    pod, container = pod_spec(docs), _container(docs)
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        if container.get(probe, {}).get("httpGet", {}).get("path") != path:
            problems.append(f"{probe}: expected an httpGet of {path}")
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True or security.get("runAsNonRoot") is False:
        problems.append("runAsNonRoot: expected true")
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile: expected RuntimeDefault")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem: expected true")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation: expected false")
    if security.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities: expected drop ALL")
    resources = container.get("resources", {})
    if not {"cpu", "memory"} <= set(resources.get("requests", {})):
        problems.append("resources: expected cpu and memory requests")
    if "memory" not in resources.get("limits", {}):
        problems.append("resources: expected a memory limit")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        writable = not mount.get("readOnly", False)
        if writable and mount["mountPath"] not in WRITABLE:
            problems.append(f"volumeMounts: {mount['mountPath']} writable")
        if writable and "emptyDir" not in volumes[mount["name"]]:
            problems.append(f"volumeMounts: {mount['mountPath']} is not a pod-local volume")
    mounted = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
    if not set(WRITABLE) <= mounted:
        problems.append(f"volumeMounts: expected writable volumes at {', '.join(WRITABLE)}")
    return problems


def selection_problems(docs: Docs) -> list[str]:
    """The Service, the PodDisruptionBudget, the HorizontalPodAutoscaler and the
    NetworkPolicy act on the Deployment's pods."""
    problems: list[str] = []
    labels = one_of_kind(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], what: str) -> None:
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{what}: does not select the gateway's pods")

    selects(one_of_kind(docs, "Service")["spec"]["selector"], "Service")
    selects(one_of_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], "PDB")
    selects(
        one_of_kind(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], "NetworkPolicy"
    )
    ports = {p["name"] for p in _container(docs)["ports"]}
    if any(p["targetPort"] not in ports for p in one_of_kind(docs, "Service")["spec"]["ports"]):
        problems.append("Service: targetPort names no container port")
    hpa = one_of_kind(docs, "HorizontalPodAutoscaler")["spec"]
    target = hpa["scaleTargetRef"]
    if (target["kind"], target["name"]) != (
        "Deployment",
        one_of_kind(docs, "Deployment")["metadata"]["name"],
    ):
        problems.append("HPA: does not scale the Deployment")
    if hpa["minReplicas"] <= one_of_kind(docs, "PodDisruptionBudget")["spec"]["minAvailable"]:
        problems.append("HPA: minReplicas at or below the PDB's minAvailable blocks every drain")
    return problems


#: Where cluster DNS answers (kube-dns's pods; CoreDNS keeps the label).
KUBE_DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


def destinations(docs: Docs) -> list[tuple[str, str, int]]:
    """What the gateway connects to, from its settings (the ConfigMap's TOML, the Secret's
    store DSN): (what, host, port) for the store, the upstream and each issuer's JWKS."""
    settings = tomllib.loads(one_of_kind(docs, "ConfigMap")["data"]["consentry.toml"])
    urls = [
        ("store", one_of_kind(docs, "Secret")["stringData"]["store"]),
        ("upstream", settings["upstream"]),
    ]
    urls += [("jwks", issuer["jwks_url"]) for issuer in settings["auth"]["issuers"]]
    found = []
    for what, url in urls:
        parts = urlsplit(url)
        default = {"https": 443, "http": 80, "postgresql": 5432}[parts.scheme]
        found.append((what, parts.hostname or "", parts.port or default))
    return found


def _reaches(rule: dict[str, Any], host: str, port: int) -> bool:
    """Whether an egress rule lets a connection to ``host:port`` out: a Service's name
    (``<service>.<namespace>.svc...``) by its namespace, any other host by an address block."""
    if not any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule["ports"]):
        return False
    labels = host.split(".")
    if len(labels) > 2 and labels[2] == "svc":
        namespace = labels[1]
        return any(
            to.get("namespaceSelector", {})
            .get("matchLabels", {})
            .get("kubernetes.io/metadata.name")
            == namespace
            and to.get("podSelector", {}).get("matchLabels")
            for to in rule["to"]
        )
    return any("ipBlock" in to for to in rule["to"])


def network_problems(docs: Docs) -> list[str]:
    problems: list[str] = []
    spec = one_of_kind(docs, "NetworkPolicy")["spec"]
    if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append("policyTypes: expected Ingress and Egress")
    for rule in spec.get("ingress", []):
        sources = rule.get("from", [])
        if not sources or any("ipBlock" in s or "podSelector" not in s for s in sources):
            problems.append("ingress: only from the ingress controller's pods")
    if not rule_ports_closed(spec):
        problems.append("egress: a rule without ports opens every port")
        return problems
    egress = spec.get("egress", [])
    for what, host, port in destinations(docs):
        if not any(_reaches(rule, host, port) for rule in egress):
            problems.append(f"egress: nothing lets the {what} out ({host}:{port})")
    dns = [
        rule
        for rule in egress
        if any(p["port"] == 53 for p in rule["ports"])  # what answers port 53 is cluster DNS
    ]
    allowed = {(p.get("protocol", "TCP"), p["port"]) for rule in dns for p in rule["ports"]}
    for needed in (("UDP", 53), ("TCP", 53)):
        if needed not in allowed:
            problems.append(f"egress: {needed[1]}/{needed[0]} missing")
    if any(to != KUBE_DNS for rule in dns for to in rule["to"]):
        problems.append("egress: port 53 open to something other than kube-dns")
    return problems


def rule_ports_closed(spec: dict[str, Any]) -> bool:
    return all(rule.get("ports") and rule.get("to") for rule in spec.get("egress", []))


def _edit(change: Callable[[Docs], None]) -> Docs:
    docs = copy.deepcopy(DOCS)
    change(docs)
    return docs


RULES = (deployment_problems, selection_problems, network_problems)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_manifests_pass(rule: Callable[[Docs], list[str]]) -> None:
    assert rule(DOCS) == []


def _security(docs: Docs) -> dict[str, Any]:
    security: dict[str, Any] = _container(docs)["securityContext"]
    return security


def _egress(docs: Docs) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one_of_kind(docs, "NetworkPolicy")["spec"]["egress"]
    return rules


def _settings(docs: Docs, old: str, new: str) -> None:
    data = one_of_kind(docs, "ConfigMap")["data"]
    assert old in data["consentry.toml"], old
    data["consentry.toml"] = data["consentry.toml"].replace(old, new)


def _mount(docs: Docs, path: str) -> dict[str, Any]:
    return next(m for m in _container(docs)["volumeMounts"] if m["mountPath"] == path)


@pytest.mark.parametrize(
    ("rule", "broken", "problem"),
    [
        # -- the pod
        (deployment_problems, _edit(lambda d: one_of_kind(d, "Deployment")["spec"].update(replicas=1)), "replicas"),
        (deployment_problems, _edit(lambda d: _container(d)["readinessProbe"]["httpGet"].update(path="/healthz")), "readinessProbe"),
        (deployment_problems, _edit(lambda d: _container(d).pop("livenessProbe")), "livenessProbe"),
        (deployment_problems, _edit(lambda d: _security(d).update(readOnlyRootFilesystem=False)), "readOnlyRootFilesystem"),
        (deployment_problems, _edit(lambda d: _security(d)["capabilities"].update(drop=["NET_RAW"])), "drop ALL"),
        (deployment_problems, _edit(lambda d: _security(d).update(allowPrivilegeEscalation=True)), "allowPrivilegeEscalation"),
        (deployment_problems, _edit(lambda d: pod_spec(d)["securityContext"].pop("runAsNonRoot")), "runAsNonRoot"),
        (deployment_problems, _edit(lambda d: pod_spec(d)["securityContext"].pop("seccompProfile")), "seccompProfile"),
        (deployment_problems, _edit(lambda d: _container(d)["resources"].pop("limits")), "memory limit"),
        (deployment_problems, _edit(lambda d: _mount(d, "/etc/consentry/keys").pop("readOnly")), "/etc/consentry/keys writable"),
        (deployment_problems, _edit(lambda d: _container(d)["volumeMounts"].remove(_mount(d, "/tmp"))), "writable volumes at"),
        # -- what acts on the pods
        (selection_problems, _edit(lambda d: one_of_kind(d, "Service")["spec"]["selector"].update({"app.kubernetes.io/name": "other"})), "Service"),
        (selection_problems, _edit(lambda d: one_of_kind(d, "HorizontalPodAutoscaler")["spec"].update(minReplicas=2)), "minReplicas"),
        (selection_problems, _edit(lambda d: one_of_kind(d, "Service")["spec"]["ports"][0].update(targetPort="web")), "targetPort"),
        # -- the network
        (network_problems, _edit(lambda d: one_of_kind(d, "NetworkPolicy")["spec"]["ingress"][0].update({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})), "ingress"),
        (network_problems, _edit(lambda d: one_of_kind(d, "NetworkPolicy")["spec"]["egress"][0].pop("ports")), "every port"),
        (network_problems, _edit(lambda d: one_of_kind(d, "NetworkPolicy")["spec"]["egress"].pop()), "53/UDP"),
        (network_problems, _edit(lambda d: _egress(d).remove(_egress(d)[1])), "the upstream"),
        (network_problems, _edit(lambda d: _egress(d)[1]["ports"][0].update(port=9999)), "the upstream"),
        (network_problems, _edit(lambda d: _egress(d)[0]["to"][0]["namespaceSelector"]["matchLabels"].update({"kubernetes.io/metadata.name": "other"})), "the store"),
        (network_problems, _edit(lambda d: _egress(d)[2]["ports"][0].update(port=8443)), "the jwks"),
        (network_problems, _edit(lambda d: _egress(d)[3].update(to=[{"podSelector": {"matchLabels": {"x": "y"}}}])), "other than kube-dns"),
        (network_problems, _edit(lambda d: _egress(d)[3].update(to=[{"ipBlock": {"cidr": "0.0.0.0/0"}}])), "other than kube-dns"),
        (network_problems, _edit(lambda d: _settings(d, "fhir-server.fhir.svc", "fhir-server.records.svc")), "the upstream"),
        (network_problems, _edit(lambda d: _settings(d, "idp.example.org/realms/clinic/protocol", "idp.example.org:8443/realms/clinic/protocol")), "the jwks"),
    ],
)  # fmt: skip
def test_a_broken_manifest_is_refused(
    rule: Callable[[Docs], list[str]], broken: Docs, problem: str
) -> None:
    found = rule(broken)
    assert any(problem in line for line in found), found


def test_the_secret_is_a_template_without_key_material() -> None:
    """The Secret's values are placeholders: the ledger key file is no key, the store DSN has
    no password; and no file under deploy/ holds a C2SP private key."""
    secret = one_of_kind(DOCS, "Secret")["stringData"]
    assert all("REPLACE" in value for value in secret.values())
    with pytest.raises(MalformedError):
        parse_ledger_key(secret["consentry-ledger.key"])
    private = re.compile(r"PRIVATE\+KEY\+\S+\+[0-9a-f]{8}\+\S+")
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert not private.search(path.read_text(encoding="utf-8")), path


def test_the_key_file_is_mounted_read_only_from_the_secret() -> None:
    """Every replica reads the one key file; none can create or replace it (the gateway
    creates a missing key file, which here would be a second log identity)."""
    keys = _mount(DOCS, "/etc/consentry/keys")
    volume = next(v for v in pod_spec(DOCS)["volumes"] if v["name"] == keys["name"])
    assert keys["readOnly"] is True
    assert volume["secret"]["secretName"] == one_of_kind(DOCS, "Secret")["metadata"]["name"]
    assert PurePosixPath(keys["mountPath"]) == PurePosixPath("/etc/consentry/keys")
