"""What the gateway adds or refuses at its edge: its own base in every URL it hands out, the
client's request id echoed, paths it cannot classify refused before the upstream sees them,
decimals passed through as the upstream wrote them, and its own CapabilityStatement."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import httpx
import pytest

from middleware.fhir.resource_types import RESOURCE_TYPES
from tests.integration.sides import Sides, bundle_urls
from tests.support import GatewayServer

pytestmark = pytest.mark.integration

_FHIR_JSON = "application/fhir+json"


def _upstream_calls(gateway: GatewayServer) -> int:
    """How many requests the gateway has sent upstream (from its /metrics)."""
    text = httpx.get(f"{gateway.root_url}/metrics").text
    counts = re.findall(r"^consentry_upstream_duration_seconds_count\{.*\} (\d+)$", text, re.M)
    return sum(int(count) for count in counts)


def _raw_get(gateway: GatewayServer, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (httpx would resolve dot segments first)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# --- URLs -------------------------------------------------------------------------------


def test_paging_history_and_batch_urls_are_on_the_gateway(sides: Sides, patient_id: str) -> None:
    """Every URL in a search page, a history and a batch answer is on the gateway. Under
    enforcement paging links are the gateway's own opaque cursors (``_cursor=``), so the
    upstream's paging state (Medplum's ``_offset=``) must not appear at all."""
    answers = [
        sides.gateway.get(
            f"{sides.gateway_base}/Observation?subject=Patient/{patient_id}&_count=3"
        ),
        sides.gateway.get(f"{sides.gateway_base}/Patient/{patient_id}/_history"),
        sides.gateway.post(
            sides.gateway_base,
            json={
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {"request": {"method": "GET", "url": f"Patient/{patient_id}"}},
                    {"request": {"method": "GET", "url": "Encounter?_count=2"}},
                ],
            },
            headers={"content-type": _FHIR_JSON},
        ),
    ]
    urls = [url for answer in answers for url in bundle_urls(answer.json())]
    assert any("_cursor=" in url for url in urls)  # a next link was among them
    assert not any("_offset=" in url for url in urls)
    for answer in answers:
        assert answer.status_code == 200
        sides.check_gateway_answer(answer)
    for url in urls:
        assert not url.startswith(sides.upstream_base)


def test_capability_statement_names_the_gateway(sides: Sides) -> None:
    answer = sides.gateway.get(f"{sides.gateway_base}/metadata")
    sides.check_gateway_answer(answer)
    capability = answer.json()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["implementation"]["url"] == sides.gateway_base
    direct = sides.direct.get(f"{sides.upstream_base}/metadata").json()
    # The upstream's resources the gateway routes keep their interactions and search
    # parameters; Consent and AuditEvent are the gateway's own APIs (the consent API, the
    # audit record repository answering ITI-81 from the ledger), advertised with the gateway's
    # interactions, never the upstream's; the upstream's custom types are dropped.
    own = {"Consent", "AuditEvent"}
    via = {r["type"]: r for r in capability["rest"][0]["resource"]}
    upstream = {
        r["type"]: r
        for r in direct["rest"][0]["resource"]
        if r["type"] in RESOURCE_TYPES and r["type"] not in own
    }
    assert set(via) == {*upstream, *own}
    assert {i["code"] for i in via["AuditEvent"]["interaction"]} == {"read", "search-type"}
    for rtype, resource in upstream.items():
        assert via[rtype]["interaction"] == resource["interaction"], rtype
        assert via[rtype].get("searchParam") == resource.get("searchParam"), rtype
    # JSON, and XML converted at the gateway's edge (fhir.xmlcodec): the upstream speaks JSON
    assert capability["format"] == ["application/fhir+json", "json", "application/fhir+xml", "xml"]


# --- request id -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "Patient/{id}"),
        ("GET", "Observation?subject=Patient/{id}&_count=2"),  # a rebased body
        ("GET", "Patient/no-such-id"),  # the upstream's 404
        ("GET", "patient/{id}"),  # the gateway's own refusal
    ],
    ids=["read", "search", "upstream-404", "refused"],
)
def test_client_request_id_comes_back(
    sides: Sides, patient_id: str, method: str, path: str
) -> None:
    answer = sides.gateway.request(
        method,
        sides.url(sides.gateway_base, path.format(id=patient_id)),
        headers={"x-request-id": "it-req.42"},
    )
    assert answer.headers["x-request-id"] == "it-req.42"


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/fhir/patient/1", 404),  # resource types are case-exact
        ("/fhir/Patient/1/", 400),  # trailing slash
        ("/fhir//Patient", 400),  # empty segment
        ("/fhir/Patient/../Patient/1", 400),  # dot segment, sent as-is
        ("/fhir/Patient%2F1", 400),  # encoded slash
    ],
    ids=["lowercase-type", "trailing-slash", "empty-segment", "dot-segment", "encoded-slash"],
)
def test_unclassifiable_paths_are_refused_before_the_upstream(
    gateway: GatewayServer, path: str, status: int
) -> None:
    before = _upstream_calls(gateway)
    answer_status, body = _raw_get(gateway, path)
    assert answer_status == status
    assert json.loads(body)["resourceType"] == "OperationOutcome"
    assert _upstream_calls(gateway) == before


def test_refused_write_does_not_reach_the_upstream(sides: Sides, gateway: GatewayServer) -> None:
    count = f"{sides.upstream_base}/Patient?family=NeverStored&_count=0"
    answer = sides.gateway.post(
        f"{gateway.root_url}/fhir/patient",
        json={"resourceType": "Patient", "name": [{"family": "NeverStored"}]},
        headers={"content-type": _FHIR_JSON},
    )
    assert answer.status_code == 404
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert sides.direct.get(count).json()["total"] == 0


# --- decimals ---------------------------------------------------------------------------

_DECIMALS = (b"5.40", b"12345678901234567890.1", b"0.00000012")
_OBSERVATION = (
    b'{"resourceType":"Observation","status":"final","code":{"text":"decimal precision"},'
    b'"valueQuantity":{"value":%s,"unit":"mg"},"component":['
    b'{"code":{"text":"long"},"valueQuantity":{"value":%s}},'
    b'{"code":{"text":"small"},"valueQuantity":{"value":%s}}]}' % _DECIMALS
)
_VALUE = re.compile(rb'"value":\s*(-?[0-9][0-9.eE+\-]*)')


def _values(body: bytes) -> list[bytes]:
    return _VALUE.findall(body)


def _observation(patient_id: str) -> bytes:
    """The Observation of ``patient_id``: a record without a patient would be withheld (its
    patient cannot be determined, denied by default)."""
    subject = b'"subject":{"reference":"Patient/%s"},' % patient_id.encode()
    return _OBSERVATION.replace(b'"status":"final",', b'"status":"final",' + subject, 1)


def test_decimals_pass_through_as_the_upstream_writes_them(sides: Sides, patient_id: str) -> None:
    """Invariant 6: the gateway changes no number. The upstream (JavaScript) may itself
    shorten decimals; whatever text it answers, the gateway answers the same text, on a
    plain read (bytes passed through) and in a searchset it rebases (decoded and
    re-encoded)."""
    created = sides.gateway.post(
        f"{sides.gateway_base}/Observation",
        content=_observation(patient_id),
        headers={"content-type": _FHIR_JSON},
    )
    assert created.status_code == 201, created.text
    observation_id = created.json()["id"]
    for path in (f"Observation/{observation_id}", f"Observation?_id={observation_id}"):
        via, direct = sides.both("GET", path)
        assert len(_values(direct.content)) == 3
        assert _values(via.content) == _values(direct.content)
        if b"5.40" in direct.content:  # only when the upstream itself keeps the precision
            assert b"5.40" in via.content
    assert _values(created.content) == _values(
        sides.direct.get(f"{sides.upstream_base}/Observation/{observation_id}").content
    )


def test_decimal_text_of_a_direct_write_reads_the_same_through_the_gateway(
    sides: Sides, patient_id: str
) -> None:
    created: Any = sides.direct.post(
        f"{sides.upstream_base}/Observation",
        content=_observation(patient_id),
        headers={"content-type": _FHIR_JSON},
    ).json()
    via, direct = sides.both("GET", f"Observation?_id={created['id']}&_count=1")
    assert _values(via.content) == _values(direct.content)
