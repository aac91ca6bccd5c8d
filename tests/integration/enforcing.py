"""Helpers of the enforcement tests: callers with their tokens, the upstream's own view of
who owns what, the consents they make, and a record of every request sent to the gateway.

:class:`Calls` is an httpx request hook (and a counter for the other client libraries): each
request to the gateway gets its own ``X-Request-Id`` (``it-enf-00001``...), so that the test
can find it again in the ledger's evidence (the sealed audit facts carry it).
:class:`Universe` reads every carebundle-type resource straight from the upstream and names the
patient each belongs to, independently of the gateway's own compartment code: the expected
answers are built from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from tests.support import GatewayServer

__all__ = [
    "FHIR_JSON",
    "GENERIC_NOT_FOUND",
    "PATIENT_DATA_TYPES",
    "Caller",
    "Calls",
    "Universe",
    "deny_actor",
    "deny_by_own_consent",
    "direct_found",
    "refs",
]

FHIR_JSON: Final = {"content-type": "application/fhir+json"}
#: The one 404 the gateway answers for a denied, a missing and a deleted record alike.
GENERIC_NOT_FOUND: Final = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "not-found", "diagnostics": "not found"}],
}
#: The carebundle's patient-data types (each names its patient in ``subject`` or ``patient``).
PATIENT_DATA_TYPES: Final = (
    "Patient",
    "Observation",
    "Encounter",
    "DiagnosticReport",
    "Condition",
    "MedicationRequest",
    "AllergyIntolerance",
)
_PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


@dataclass
class Calls:
    """Every request this module sent to the gateway at ``gateway_base``: ``count`` of them
    all, and the request ids of those the proxy answers (the consent API records its own
    attempts without the request id)."""

    gateway_base: str
    count: int = 0
    request_ids: list[str] = field(default_factory=list)

    def hook(self, request: httpx.Request) -> None:
        """httpx ``request`` event hook: number the request and tag it with its id."""
        if not str(request.url).startswith(self.gateway_base):
            return
        self.count += 1
        rid = f"it-enf-{self.count:05d}"
        request.headers["x-request-id"] = rid
        consent_api = urlsplit(self.gateway_base).path + "/Consent"
        if not request.url.path.startswith(consent_api):
            self.request_ids.append(rid)

    def counted(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """A ``requests`` response hook (fhirclient): count the request."""
        self.count += 1


@dataclass(frozen=True)
class Caller:
    """One caller of the gateway: the module's recorded client and its bearer header."""

    http: httpx.Client
    base: str
    headers: Mapping[str, str]

    @property
    def authorization(self) -> str:
        return self.headers["authorization"]

    def get(self, path: str) -> httpx.Response:
        return self.http.get(_url(self.base, path), headers=dict(self.headers))

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST FHIR JSON (``json=``), or a form (``data=``, its own content type)."""
        headers = dict(self.headers) if "data" in kwargs else {**FHIR_JSON, **self.headers}
        return self.http.post(_url(self.base, path), headers=headers, **kwargs)

    def pages(self, path: str) -> Iterator[Any]:
        """Every page of a search, following the gateway's ``next`` links; each must be a
        gateway URL carrying a cursor, never the upstream's paging state."""
        return _pages(self.http, _url(self.base, path), self.base, dict(self.headers), cursors=True)

    def found(self, path: str) -> list[tuple[str, str]]:
        """``(search mode, Type/id)`` of every entry of every page of a search."""
        return [found for page in self.pages(path) for found in _entries(page)]


def direct_found(direct: httpx.Client, upstream_base: str, path: str) -> list[tuple[str, str]]:
    """:meth:`Caller.found` asked of the upstream directly (no token, its own paging)."""
    pages = _pages(direct, _url(upstream_base, path), upstream_base, {})
    return [found for page in pages for found in _entries(page)]


def refs(found: list[tuple[str, str]], mode: str | None = None) -> set[str]:
    """The ``Type/id`` of :meth:`Caller.found` entries (only ``mode`` ones when given)."""
    return {ref for entry_mode, ref in found if mode is None or entry_mode == mode}


@dataclass(frozen=True)
class Universe:
    """What the upstream holds, read directly: ``owner`` maps ``Type/id`` of every resource
    of :data:`PATIENT_DATA_TYPES` to its patient's id (None when it names none)."""

    owner: Mapping[str, str | None]

    @classmethod
    def read(cls, direct: httpx.Client, upstream_base: str) -> Universe:
        owner: dict[str, str | None] = {}
        for rtype in PATIENT_DATA_TYPES:
            url = _url(upstream_base, f"{rtype}?_count=500")
            for page in _pages(direct, url, upstream_base, {}):
                for resource in (entry["resource"] for entry in page.get("entry", [])):
                    owner[f"{rtype}/{resource['id']}"] = _patient_of(resource)
        return cls(owner)

    def of(self, patient: str, rtype: str | None = None) -> set[str]:
        """Everything of ``patient`` (of type ``rtype``)."""
        return {ref for ref, pid in self.owner.items() if pid == patient and _is(ref, rtype)}

    def of_type(self, rtype: str) -> set[str]:
        return {ref for ref in self.owner if _is(ref, rtype)}

    def without_patient(self, rtype: str) -> set[str]:
        """Resources of ``rtype`` that name no patient (other tests' records): the gateway
        releases them to ``system`` callers only."""
        return {ref for ref, pid in self.owner.items() if pid is None and _is(ref, rtype)}


def deny_actor(patient: str, actor: str) -> dict[str, Any]:
    """An R5 Consent of ``patient``: permit by default, deny to ``actor`` (a provision at
    depth 1 negates the base decision, R5 Consent.provision)."""
    role = {"coding": [{"system": _PARTICIPATION, "code": "IRCP"}]}
    return {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": f"Patient/{patient}"},
        "decision": "permit",
        "provision": [{"actor": [{"role": role, "reference": {"reference": actor}}]}],
    }


def deny_by_own_consent(
    gateway: GatewayServer, http: httpx.Client, patient: str, actor: str
) -> None:
    """Record :func:`deny_actor` of ``patient`` and ``actor`` through the gateway with the
    patient's own token (a patient consenting for itself); asserts it was created."""
    own = gateway.bearer(f"user-{patient}", "launch/patient patient/Consent.cruds", patient=patient)
    created = http.post(
        f"{gateway.base_url}/Consent",
        json=deny_actor(patient, actor),
        headers={**FHIR_JSON, **own},
    )
    assert created.status_code == 201, created.text


def _patient_of(resource: Mapping[str, Any]) -> str | None:
    if resource["resourceType"] == "Patient":
        return str(resource["id"])
    for element in ("subject", "patient"):
        reference = (resource.get(element) or {}).get("reference", "")
        if reference.startswith("Patient/"):
            return str(reference.removeprefix("Patient/"))
    return None


def _is(ref: str, rtype: str | None) -> bool:
    return rtype is None or ref.startswith(f"{rtype}/")


def _url(base: str, path: str) -> str:
    """``path`` (``Patient/1``, ``""`` for the base, or absolute) resolved on ``base``."""
    if path.startswith(("http:", "https:")):
        return path
    return f"{base}/{path}" if path else base


def _pages(
    http: httpx.Client, url: str, base: str, headers: dict[str, str], *, cursors: bool = False
) -> Iterator[dict[str, Any]]:
    next_url: str | None = url
    while next_url is not None:
        response = http.get(next_url, headers=headers)
        assert response.status_code == 200, response.text
        page: dict[str, Any] = response.json()
        assert page["resourceType"] == "Bundle"
        yield page
        links = {link["relation"]: link["url"] for link in page.get("link", [])}
        next_url = links.get("next")
        assert next_url is None or next_url.startswith(base + "/"), next_url
        if cursors and next_url is not None:
            assert "_cursor=" in next_url, next_url
            assert "_offset=" not in next_url, next_url


def _entries(page: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for entry in page.get("entry", []):
        resource = entry["resource"]
        mode = entry.get("search", {}).get("mode", "match")
        yield mode, f"{resource['resourceType']}/{resource['id']}"
