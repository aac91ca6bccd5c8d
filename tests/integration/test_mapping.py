"""Mapping end to end against the real upstream, with the hospital-a profile from ``mappings/``.

The upstream holds its own records, written to it directly: Observations coded with the
hospital's local lab codes and subjects identified by an OID MRN system. Through a gateway
running that profile, a client that speaks LOINC and the URL MRN system finds them, sees a
marked LOINC coding beside each local one, and writes back without polluting the upstream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from middleware.mapping import MARKER_URL
from tests.support import GatewayServer, UpstreamServer

PROFILE = Path(__file__).resolve().parents[2] / "mappings" / "profiles" / "hospital-a.json"
LOCAL = "http://hospital-a.example/CodeSystem/lab"
LOINC = "http://loinc.org"
FHIR_JSON = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def mapped(upstream: UpstreamServer) -> Iterator[GatewayServer]:
    with GatewayServer(
        upstream.base_url,
        consent_jurisdiction="opt-out",
        settings={"mapping_profile": str(PROFILE)},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def records(upstream: UpstreamServer) -> dict[str, str]:
    """A patient and its glucose Observation, written straight to the upstream in its own
    codes (a unique MRN per run: the upstream is shared by the session)."""
    mrn = uuid.uuid4().hex[:12]
    with httpx.Client(headers=FHIR_JSON, timeout=30.0) as direct:
        patient = direct.post(
            f"{upstream.base_url}/Patient",
            json={
                "resourceType": "Patient",
                "identifier": [{"system": "urn:oid:1.2.3.4.5", "value": mrn}],
                "name": [{"family": "Mapped"}],
            },
        ).json()
        observation = direct.post(
            f"{upstream.base_url}/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOCAL, "code": "GLU", "display": "Glucose"}]},
                "subject": {"reference": f"Patient/{patient['id']}"},
                "valueQuantity": {"value": 5.40, "unit": "mmol/L"},
            },
        ).json()
    return {"patient": patient["id"], "observation": observation["id"], "mrn": mrn}


def client(gateway: GatewayServer) -> httpx.Client:
    return httpx.Client(headers={**FHIR_JSON, **gateway.system_bearer()}, timeout=30.0)


def test_a_search_by_loinc_finds_the_locally_coded_result(
    mapped: GatewayServer, records: dict[str, str]
) -> None:
    with client(mapped) as c:
        answer = c.get(
            f"{mapped.base_url}/Observation",
            params={"subject": f"Patient/{records['patient']}", "code": f"{LOINC}|2345-7"},
        )
    assert answer.status_code == 200, answer.text
    found = [e["resource"] for e in answer.json().get("entry", [])]
    assert [r["id"] for r in found] == [records["observation"]]
    coding = found[0]["code"]["coding"]
    assert coding[0] == {"system": LOCAL, "code": "GLU", "display": "Glucose"}
    assert coding[1]["system"] == LOINC
    assert coding[1]["code"] == "2345-7"
    assert coding[1]["extension"][0]["url"] == MARKER_URL
    assert answer.headers["x-consentry-mapping"] == "hospital-a"


def test_the_mrn_system_is_the_clients_both_ways(
    mapped: GatewayServer, records: dict[str, str]
) -> None:
    with client(mapped) as c:
        answer = c.get(
            f"{mapped.base_url}/Patient",
            params={"identifier": f"http://hospital-a.example/mrn|{records['mrn']}"},
        )
    assert answer.status_code == 200, answer.text
    (patient,) = [e["resource"] for e in answer.json()["entry"]]
    assert patient["id"] == records["patient"]
    assert patient["identifier"][0]["system"] == "http://hospital-a.example/mrn"


def test_a_write_back_leaves_the_upstream_clean(
    mapped: GatewayServer, upstream: UpstreamServer, records: dict[str, str]
) -> None:
    """The client reads (LOINC added), changes the status and writes it all back: the
    upstream's copy holds its own local coding only, and the value keeps its precision."""
    url = f"{mapped.base_url}/Observation/{records['observation']}"
    with client(mapped) as c:
        read: Any = c.get(url).json()
        assert len(read["code"]["coding"]) == 2
        written = c.put(url, json={**read, "status": "amended"})
    assert written.status_code == 200, written.text
    stored = httpx.get(
        f"{upstream.base_url}/Observation/{records['observation']}", headers=FHIR_JSON
    ).json()
    assert stored["status"] == "amended"
    assert stored["code"]["coding"] == [{"system": LOCAL, "code": "GLU", "display": "Glucose"}]
    assert not any(
        ext.get("url") == MARKER_URL
        for coding in stored["code"]["coding"]
        for ext in coding.get("extension", [])
    )


# --- an R5 client in front of the R4 upstream -----------------------------------------------------

R5_PROFILE = PROFILE.parent / "r5-client-r4-server.json"


@pytest.fixture(scope="module")
def r5_gateway(upstream: UpstreamServer) -> Iterator[GatewayServer]:
    with GatewayServer(
        upstream.base_url,
        consent_jurisdiction="opt-out",
        settings={"mapping_profile": str(R5_PROFILE)},
    ) as server:
        yield server


def test_an_r5_client_reads_and_writes_the_r4_upstream(
    r5_gateway: GatewayServer, upstream: UpstreamServer, records: dict[str, str]
) -> None:
    """An Encounter stored by the R4 upstream reads as R5 (``class`` a list of concepts,
    ``actualPeriod``), and the R5 client's update is stored as R4 again."""
    with httpx.Client(headers=FHIR_JSON, timeout=30.0) as direct:
        stored = direct.post(
            f"{upstream.base_url}/Encounter",
            json={
                "resourceType": "Encounter",
                "status": "in-progress",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": {"reference": f"Patient/{records['patient']}"},
                "period": {"start": "2024-03-01T08:00:00Z"},
            },
        ).json()
    url = f"{r5_gateway.base_url}/Encounter/{stored['id']}"
    with client(r5_gateway) as c:
        read: Any = c.get(url).json()
        assert read["class"][0]["coding"][0]["code"] == "AMB"
        assert read["actualPeriod"]["start"] == "2024-03-01T08:00:00Z"
        written = c.put(url, json={**read, "status": "completed"})
    assert written.status_code == 200, written.text
    assert written.json()["status"] == "completed"  # the answer is R5 again
    again = httpx.get(f"{upstream.base_url}/Encounter/{stored['id']}", headers=FHIR_JSON).json()
    assert again["status"] == "finished"
    assert again["class"]["code"] == "AMB"
    assert again["period"]["start"].startswith("2024-03-01T08:00:00")
    assert "actualPeriod" not in again
