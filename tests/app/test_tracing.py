"""Traces of real requests through the gateway: the stage spans of one trace, W3C trace
context in (a client's trace continues, its ``tracestate`` is dropped) and out (the upstream
request names the gateway's ``forward`` span), no PHI anywhere in what is exported, and a
shutdown that closes the stores before the traces, bounded when the collector hangs.

The gateway is built with an in-memory exporter (``create_app(tracing=...)``); requests are
full of patient ids, names, references, codes and tokens, and every exported span, rendered
whole as OTLP JSON (name, attributes, events, status, resource, trace state), is searched for
each of them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import respx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from middleware.app import Gateway, create_app
from middleware.ledger.signing import SigningKey
from middleware.ops.tracing import COUNTS, STAGES, WORDS, Tracing, tracing_from
from middleware.settings import Settings
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import FakeClock, WallClock, raw_asgi_request
from tests.app.consenting import Tokens, auth_settings

PATIENT: Final = "pat-7Q3XZ"
NAME: Final = "Weatherwax"
GIVEN: Final = "Esmeralda"
CODE: Final = "LOINCX-8867"
REQUEST_ID: Final = "rid-Weatherwax-42"
CLIENT_TRACE: Final = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN: Final = "00f067aa0ba902b7"
TRACEPARENT: Final = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
#: A well-formed tracestate a client filled with PHI (each member valid, so the SDK keeps it).
TRACESTATE: Final = f"usr={PATIENT.lower()},nm={NAME.lower()}"


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": PATIENT,
        "name": [{"family": NAME, "given": [GIVEN]}],
        "birthDate": "1961-04-01",
    }


def observation(oid: str = "obs-Q1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": CODE}], "text": GIVEN},
        "subject": {"reference": f"Patient/{PATIENT}", "display": f"{GIVEN} {NAME}"},
    }


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": r, "search": {"mode": "match"}, "fullUrl": f"urn:x:{r['id']}"}
            for r in resources
        ],
    }


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def gateway(
    make_settings: Callable[..., Settings],
    router: respx.Router,
    store: MemoryLogStore,
    signer: SigningKey,
    wall: WallClock,
    clock: FakeClock,
    dev_key_file: Path,
) -> Callable[..., Gateway]:
    """A gateway over the respx upstream (an injected transport, so that the test sees the
    headers sent upstream); ``tracing`` None: off, as configured by default."""

    def make(tracing: Tracing | None, **overrides: Any) -> Gateway:
        overrides.setdefault("consent_jurisdiction", "opt-out")
        settings = make_settings(auth=auth_settings(dev_key_file), **overrides)
        return create_app(
            settings,
            upstream=httpx.MockTransport(router.async_handler),
            store=store,
            signer=signer,
            wall_clock=wall,
            clock=clock,
            tracing=tracing,
        )

    return make


def client_of(app: Gateway, headers: dict[str, str]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test", headers=headers)


def secrets_of(headers: dict[str, str]) -> list[str]:
    """What must never reach a span: ids, names, codes, the request id, the token and its
    parts (the JWT's payload and signature name the subject and prove it)."""
    token = headers["authorization"].removeprefix("Bearer ")
    _head, payload, signature = token.split(".")
    return [
        PATIENT,
        NAME,
        GIVEN,
        CODE,
        REQUEST_ID,
        "obs-Q1",
        token,
        payload,
        signature,
        *(secret.lower() for secret in (PATIENT, NAME)),  # as the tracestate spells them
    ]


def assert_no_phi(spans: Sequence[ReadableSpan], secrets: list[str]) -> None:
    assert spans
    for span in spans:
        assert span.name in STAGES
        assert set(span.attributes or {}) <= set(WORDS) | COUNTS
        assert not span.events
        assert span.status.description is None
        rendered = span.to_json()
        for secret in secrets:
            assert secret not in rendered, (span.name, secret)


def named(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def test_a_read_is_one_trace_of_stage_spans_continuing_the_clients_and_sent_upstream(
    gateway: Callable[..., Gateway],
    router: respx.Router,
    exporter: InMemorySpanExporter,
    tokens: Tokens,
) -> None:
    route = router.get(f"/Patient/{PATIENT}").respond(200, json=patient())
    headers = tokens.bearer(f"user-{PATIENT}", "user/*.rs", fhir_user="Practitioner/dr")
    app = gateway(Tracing.exporting(exporter, batch=False))
    async with client_of(app, headers) as client:
        answer = await client.get(
            f"/fhir/Patient/{PATIENT}",
            params={"_elements": "name"},
            headers={
                "traceparent": TRACEPARENT,
                "tracestate": TRACESTATE,
                "x-request-id": REQUEST_ID,
            },
        )
    assert answer.status_code == 200, answer.text
    spans = exporter.get_finished_spans()
    assert_no_phi(spans, secrets_of(headers))
    by = named(spans)
    assert {"request", "classify", "identify", "decide", "forward", "filter", "audit"} <= set(by)
    request = by["request"]
    assert request.kind is SpanKind.SERVER
    assert request.context is not None
    assert request.parent is not None
    # In: the client's trace continues, the request span a child of the client's span.
    assert {f"{s.context.trace_id:032x}" for s in spans if s.context} == {CLIENT_TRACE}
    assert f"{request.parent.span_id:016x}" == CLIENT_SPAN
    for name in ("classify", "identify", "decide", "forward", "filter", "audit"):
        parent = by[name].parent
        assert parent is not None
        assert parent.span_id == request.context.span_id, name
    assert request.attributes == {
        "http.request.method": "GET",
        "fhir.interaction": "read",
        "fhir.resource_type": "Patient",
        "http.response.status_code": 200,
        "consentry.patients": 1,
        "consentry.decision": "permit",
    }
    forward = by["forward"]
    assert forward.kind is SpanKind.CLIENT
    assert forward.context is not None
    assert forward.attributes == {"http.request.method": "GET", "http.response.status_code": 200}
    assert by["filter"].attributes == {
        "consentry.resources.kept": 1,
        "consentry.resources.withheld": 0,
    }
    # Out: the upstream request names the gateway's forward span, in the same trace.
    sent = route.calls.last.request.headers
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{forward.context.span_id:016x}-01"
    assert "tracestate" not in sent  # the client's is dropped, and the gateway has none


async def test_a_denied_search_full_of_phi_records_the_decision_and_counts_only(
    gateway: Callable[..., Gateway],
    router: respx.Router,
    exporter: InMemorySpanExporter,
    tokens: Tokens,
) -> None:
    """Opt-in without a consent: the EHR's search finds the patient's observations, and the
    gateway withholds them. The query names the patient, a code and a name."""
    router.get("/Observation").respond(200, json=searchset(observation(), observation("obs-Q2")))
    headers = tokens.bearer(f"user-{PATIENT}", "user/*.rs", fhir_user="Practitioner/dr")
    app = gateway(Tracing.exporting(exporter, batch=False), consent_jurisdiction="opt-in")
    query = {
        "subject": f"Patient/{PATIENT}",
        "code": f"http://loinc.org|{CODE}",
        "_content": f"{GIVEN} {NAME}",
    }
    async with client_of(app, headers) as client:
        answer = await client.get(
            "/fhir/Observation", params=query, headers={"x-request-id": REQUEST_ID}
        )
    assert answer.status_code == 200, answer.text
    assert "entry" not in answer.json()
    spans = exporter.get_finished_spans()
    assert_no_phi(spans, [*secrets_of(headers), "obs-Q2"])
    by = named(spans)
    assert by["request"].attributes is not None
    assert by["request"].attributes["consentry.decision"] == "deny"
    assert by["request"].attributes["fhir.interaction"] == "search-type"
    assert by["filter"].attributes == {
        "consentry.resources.kept": 0,
        "consentry.resources.withheld": 2,
    }


async def test_an_upstream_failure_is_an_error_span_without_the_librarys_message(
    gateway: Callable[..., Gateway],
    router: respx.Router,
    exporter: InMemorySpanExporter,
    tokens: Tokens,
) -> None:
    router.get(f"/Patient/{PATIENT}").mock(
        side_effect=httpx.ConnectError(f"cannot reach Patient/{PATIENT} for {GIVEN} {NAME}")
    )
    headers = tokens.bearer(f"user-{PATIENT}", "user/*.rs", fhir_user="Practitioner/dr")
    app = gateway(Tracing.exporting(exporter, batch=False))
    async with client_of(app, headers) as client:
        answer = await client.get(f"/fhir/Patient/{PATIENT}")
    assert answer.status_code == 502
    spans = exporter.get_finished_spans()
    assert_no_phi(spans, secrets_of(headers))
    by = named(spans)
    assert by["forward"].status.status_code is StatusCode.ERROR
    assert by["request"].status.status_code is StatusCode.ERROR
    assert by["request"].attributes is not None
    assert by["request"].attributes["http.response.status_code"] == 502


async def test_a_patient_callers_refused_and_malformed_requests_leave_no_phi(
    gateway: Callable[..., Gateway],
    router: respx.Router,
    exporter: InMemorySpanExporter,
    tokens: Tokens,
) -> None:
    """A patient-context token (its subject and patient claim name the patient), a read of
    another patient (404 without forwarding), a malformed traceparent carrying a name (a new
    trace, not an error), a path trick and a POST _search whose form names the patient."""
    router.post("/Observation/_search").respond(200, json=searchset(observation()))
    router.get("/Observation").respond(200, json=searchset(observation()))
    headers = tokens.patient(PATIENT, scopes="patient/*.rs")
    app = gateway(Tracing.exporting(exporter, batch=False))
    async with client_of(app, headers) as client:
        other = await client.get(
            "/fhir/Patient/pat-OTHER-Weatherwax",
            headers={"traceparent": f"00-{GIVEN}-{NAME}-01", "tracestate": f"a=1,{GIVEN} {NAME}"},
        )
        posted = await client.post(
            "/fhir/Observation/_search",
            content=f"code={CODE}&subject=Patient/{PATIENT}".encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    trick, _ = await raw_asgi_request(
        app,
        "GET",
        f"/fhir/Patient/{PATIENT}/%2e%2e/%2e%2e/Observation?name={NAME}".encode(),
        [(b"host", b"gateway.test"), (b"authorization", headers["authorization"].encode())],
    )
    assert other.status_code == 404
    assert trick == 400
    assert posted.status_code == 200, posted.text
    spans = exporter.get_finished_spans()
    assert_no_phi(spans, [*secrets_of(headers), "pat-OTHER"])
    roots = [s for s in spans if s.name == "request"]
    assert len(roots) == 3
    assert all(s.parent is None for s in roots)  # no client trace: each request its own
    assert len({s.context.trace_id for s in roots if s.context}) == 3


async def test_off_no_span_and_no_trace_context_crosses_the_gateway(
    gateway: Callable[..., Gateway],
    router: respx.Router,
    tokens: Tokens,
) -> None:
    """The default (``otlp_endpoint`` empty): a client's traceparent is not passed upstream
    (headers cross on an allow-list) and the gateway adds none."""
    route = router.get(f"/Patient/{PATIENT}").respond(200, json=patient())
    headers = tokens.bearer("dr", "user/*.rs", fhir_user="Practitioner/dr")
    app = gateway(None)
    assert app.proxy.tracing is None
    async with client_of(app, headers) as client:
        answer = await client.get(
            f"/fhir/Patient/{PATIENT}",
            headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"},
        )
    assert answer.status_code == 200
    sent = route.calls.last.request.headers
    assert "traceparent" not in sent
    assert "tracestate" not in sent


async def test_a_bulk_export_job_runs_outside_its_kick_offs_trace(
    gateway: Callable[..., Gateway],
    router: respx.Router,
    exporter: InMemorySpanExporter,
    tokens: Tokens,
) -> None:
    """The job outlives the kick-off's request: its upstream pages are not forward spans of
    that (ended) request, nor does its upstream traffic carry that trace."""
    pages = router.get("/Patient").respond(200, json=searchset(patient()))
    headers = tokens.bearer("dr", "user/*.rs", fhir_user="Practitioner/dr")
    app = gateway(Tracing.exporting(exporter, batch=False))
    async with client_of(app, headers) as client:
        kick = await client.get(
            "/fhir/Patient/$export?_type=Patient",
            headers={"prefer": "respond-async", "traceparent": TRACEPARENT},
        )
        assert kick.status_code == 202, kick.text
        for _ in range(500):
            status = await client.get(kick.headers["content-location"])
            if status.status_code != 202:
                break
            await asyncio.sleep(0.005)
        assert status.status_code == 200, status.text
    await app.aclose()
    assert pages.called
    assert all("traceparent" not in call.request.headers for call in pages.calls)
    in_trace = [
        s
        for s in exporter.get_finished_spans()
        if s.context and s.context.trace_id == int(CLIENT_TRACE, 16)
    ]
    (kick_off,) = (s for s in in_trace if s.name == "request")
    assert kick_off.end_time is not None
    assert all(s.start_time is not None and s.start_time <= kick_off.end_time for s in in_trace)


async def test_shutdown_closes_the_stores_first_and_waits_little_for_a_hung_collector(
    gateway: Callable[..., Gateway],
    router: respx.Router,
    store: MemoryLogStore,
    tokens: Tokens,
) -> None:
    """The collector accepts connections (the listen backlog) and never answers: the
    gateway closes its ledger store before the traces, and the traces within ~2 s (the SDK's
    own shutdown waits 30 s; the exporter's timeout here is 3 s)."""
    router.get(f"/Patient/{PATIENT}").respond(200, json=patient())
    headers = tokens.bearer("dr", "user/*.rs", fhir_user="Practitioner/dr")
    seen: list[bool] = []

    class Watched(Tracing):
        def shutdown(self) -> None:
            seen.append(store.available)
            super().shutdown()

    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        endpoint = f"http://127.0.0.1:{blackhole.getsockname()[1]}/v1/traces"
        built = tracing_from(endpoint, headers={}, sample_ratio=1.0, timeout=3.0)
        assert built is not None
        app = gateway(Watched(built.provider))
        async with client_of(app, headers) as client:
            answer = await client.get(f"/fhir/Patient/{PATIENT}")
        assert answer.status_code == 200
        started = time.perf_counter()
        await app.aclose()
        elapsed = time.perf_counter() - started
    assert seen == [False]  # the ledger's store was closed when tracing shut down
    assert elapsed < 2.9
    for thread in threading.enumerate():  # the export gives up once its timeout passes
        if thread.name.startswith(("OtelBatch", "consentry-tracing")):
            thread.join(10)
