"""Traces over OTLP/HTTP from a real gateway process: ``consentry serve`` in front of the real
upstream, ``otlp_endpoint`` and ``otlp_headers`` from its settings, a collector on a socket
decoding what it receives as OTLP protobuf. The client's trace continues in the gateway's
spans, the stage spans are there, and neither the patient's id and name nor the token is
anywhere in the bytes exported.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Final

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support import GatewayServer, UpstreamServer

FAMILY: Final = "Quarrelsome-Ogg"
CLIENT_TRACE: Final = "5cf92f3577b34da6a3ce929d0e0e4799"
TRACEPARENT: Final = f"00-{CLIENT_TRACE}-10f067aa0ba902b7-01"
COLLECTOR_KEY: Final = "collector-key-81"


class Collector(BaseHTTPRequestHandler):
    """``POST /v1/traces``: keeps each request's decompressed body and headers."""

    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def collector() -> Iterator[str]:
    Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def patient_id(upstream: UpstreamServer) -> str:
    """A patient written straight to the upstream, named so that it can be looked for."""
    patient = {"resourceType": "Patient", "name": [{"family": FAMILY, "given": ["Gytha"]}]}
    created = httpx.post(
        f"{upstream.base_url}/Patient",
        json=patient,
        headers={"content-type": "application/fhir+json"},
        timeout=30.0,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def spans_of(received: list[tuple[dict[str, str], bytes]]) -> list[Any]:
    spans = []
    for _headers, body in received:
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
    return spans


def test_a_served_gateway_exports_its_traces_over_otlp_without_phi(
    upstream: UpstreamServer, collector: str, patient_id: str
) -> None:
    env = {"CONSENTRY_OTLP_HEADERS": json.dumps({"x-collector-key": COLLECTOR_KEY})}
    with GatewayServer(
        upstream.base_url,
        consent_jurisdiction="opt-out",
        settings={"otlp_endpoint": collector},
        env=env,
    ) as gateway:
        bearer = gateway.system_bearer()
        with httpx.Client(headers=bearer, timeout=30.0) as client:
            read = client.get(
                f"{gateway.base_url}/Patient/{patient_id}", headers={"traceparent": TRACEPARENT}
            )
            found = client.get(f"{gateway.base_url}/Patient", params={"family": FAMILY})
        assert read.status_code == 200, read.text
        assert found.status_code == 200, found.text
        assert read.json()["name"][0]["family"] == FAMILY
        ends = time.monotonic() + 20  # the batch processor exports every 2 s
        while len(spans_of(Collector.received)) < 10 and time.monotonic() < ends:
            time.sleep(0.2)
    # Stopped: whatever was still queued went out at shutdown.
    assert Collector.received
    assert all(h.get("x-collector-key") == COLLECTOR_KEY for h, _ in Collector.received)
    token = bearer["authorization"].removeprefix("Bearer ")
    for _headers, body in Collector.received:
        for secret in (patient_id, FAMILY, "Gytha", token, token.split(".")[1]):
            assert secret.encode() not in body, secret
    spans = spans_of(Collector.received)
    continued = [s for s in spans if s.trace_id.hex() == CLIENT_TRACE]
    names = {s.name for s in continued}
    assert {"request", "classify", "identify", "decide", "forward", "filter", "audit"} <= names
    (request,) = (s for s in continued if s.name == "request")
    attributes = {a.key: a.value for a in request.attributes}
    assert attributes["fhir.interaction"].string_value == "read"
    assert attributes["fhir.resource_type"].string_value == "Patient"
    assert attributes["http.response.status_code"].int_value == 200
    searched = [s for s in spans if s.name == "request" and s.trace_id.hex() != CLIENT_TRACE]
    assert len(searched) == 1  # the search: a trace of its own
