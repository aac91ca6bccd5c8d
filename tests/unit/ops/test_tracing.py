"""The tracing helpers: only allow-listed attributes reach a span, off is a shared no-op,
W3C trace context in and out (the client's ``tracestate`` neither exported nor forwarded),
the gateway (not the client) decides sampling, OpenTelemetry's own log lines never quote a
header, shutdown is bounded when the collector hangs, and no ``OTEL_*`` variable changes what
the settings say."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from middleware.errors import Forbidden, SettingsError
from middleware.ops.tracing import COUNTS, STAGES, WORDS, Tracing, current, inject, stage
from middleware.ops.tracing import tracing_from as build

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
#: A valid tracestate (every member well formed) full of PHI, and an invalid one (which the
#: SDK's parser would log, quoting it).
PHI_TRACESTATE = "usr=patient-123,mrn=987654,nm=esmeralda"
BAD_TRACESTATE = "a=1,Patient/123 John Smith SSN 123-45-6789"
PHI_WORDS = ("patient-123", "987654", "esmeralda", "John Smith", "123-45-6789")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    traced = Tracing.exporting(exporter, batch=False)
    yield traced
    traced.shutdown()


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


# -- the allow-list --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "recorded"),
    [
        ("fhir.interaction", "read", "read"),
        ("fhir.resource_type", "Observation", "Observation"),
        ("fhir.resource_type", "Patient/pat-123", "other"),  # never a reference
        ("fhir.resource_type", "Esmeralda", "other"),
        ("http.request.method", "GET", "GET"),
        ("http.request.method", "BREW", "other"),
        ("consentry.decision", "deny", "deny"),
        ("consentry.audit.phase", "outcome", "outcome"),
        ("http.response.status_code", 404, 404),
        ("consentry.resources.kept", 3, 3),
        ("consentry.resources.withheld", -1, None),  # not a count
        ("consentry.patients", True, None),  # a bool is not a count
        ("consentry.patients", "2", None),
        ("fhir.interaction", 7, None),
        ("patient.id", "pat-123", None),  # not an allowed key
        ("url.full", "http://upstream/fhir/Patient/pat-123", None),
        ("enduser.id", "dr-who", None),
    ],
    ids=str,
)
def test_a_span_carries_only_allow_listed_keys_and_values(
    tracing: Tracing, exporter: InMemorySpanExporter, key: str, value: object, recorded: object
) -> None:
    with tracing.request({}) as marks:
        marks.set(key, value)  # type: ignore[arg-type]
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {}).get(key) == recorded
    assert set(span.attributes or {}) <= set(WORDS) | COUNTS


def test_span_names_are_the_stages_only(tracing: Tracing) -> None:
    with tracing.request({}), pytest.raises(ValueError, match="not a stage"):  # noqa: SIM117
        with stage("Patient/pat-123"):  # type: ignore[arg-type]
            pass


def test_a_failing_stage_is_an_error_without_its_message_and_a_refusal_is_not(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.request({}), pytest.raises(RuntimeError):  # noqa: SIM117
        with stage("forward"):
            raise RuntimeError("Patient/pat-123 Esmeralda Weatherwax")
    with tracing.request({}), pytest.raises(Forbidden):  # noqa: SIM117
        with stage("decide"):
            raise Forbidden("Patient/pat-123")
    failed, _, refused, _ = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description is None
    assert not failed.events
    assert refused.status.status_code is StatusCode.UNSET
    for span in exporter.get_finished_spans():
        assert "pat-123" not in (span.to_json() or "")


def test_a_5xx_status_marks_the_span_an_error(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.request({}) as marks:
        marks.set("http.response.status_code", 503)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR


# -- off ---------------------------------------------------------------------------------------


def test_off_every_stage_is_one_shared_no_op() -> None:
    first, second = stage("decide"), stage("forward", client=True)
    assert first is second
    with first as marks:
        marks.set("fhir.interaction", "read")  # accepted and dropped
    headers = [("accept", "application/fhir+json")]
    inject(headers)
    assert headers == [("accept", "application/fhir+json")]
    current().set("consentry.decision", "deny")


def test_tracing_from_an_empty_endpoint_is_off() -> None:
    assert build("", headers={}, sample_ratio=1.0) is None


def test_tracing_from_an_endpoint_builds_an_otlp_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Built from the settings alone: a credential-provider plugin named in the environment
    is not looked up (the exporter would load that entry point, or fail without it)."""
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "no-such-plugin")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://elsewhere:4318/v1/traces")
    traced = build("http://127.0.0.1:9/v1/traces", headers={"x-k": "v"}, sample_ratio=0.5)
    assert traced is not None
    traced.shutdown()  # nothing queued: no export attempted


# -- W3C trace context -------------------------------------------------------------------------


def test_a_valid_traceparent_continues_the_clients_trace_and_stages_hang_under_the_request(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.request({"traceparent": TRACEPARENT, "tracestate": PHI_TRACESTATE}):
        with stage("classify"):
            pass
        with stage("forward", client=True):
            sent: list[tuple[str, str]] = [("traceparent", "00-stale-from-settings-01")]
            inject(sent)
    spans = by_name(exporter)
    request, forward = spans["request"], spans["forward"]
    assert request.kind is SpanKind.SERVER
    assert forward.kind is SpanKind.CLIENT
    assert request.context is not None
    assert request.parent is not None
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE
    assert f"{request.parent.span_id:016x}" == CLIENT_SPAN
    for name in ("classify", "forward"):
        parent = spans[name].parent
        assert parent is not None
        assert parent.span_id == request.context.span_id
    assert forward.context is not None
    # Out: exactly one traceparent, naming the forward span of the same trace; the client's
    # tracestate neither goes upstream nor is on any span (OTLP exports a span's trace_state).
    assert sent == [("traceparent", f"00-{CLIENT_TRACE}-{forward.context.span_id:016x}-01")]
    for span in exporter.get_finished_spans():
        assert span.context is not None
        assert not span.context.trace_state
        assert span.parent is None or not span.parent.trace_state
        for word in PHI_WORDS:
            assert word not in (span.to_json() or "")


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-Esmeralda-Weatherwax-01",
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # all-zero trace id is invalid
        f"00-{CLIENT_TRACE}-{'0' * 16}-01",
        f"zz-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
        f"00-{CLIENT_TRACE.upper()}-{CLIENT_SPAN}-01",
        "",
    ],
    ids=["garbage", "zero-trace", "zero-span", "bad-version", "upper-case", "empty"],
)
def test_a_malformed_traceparent_starts_a_new_trace(
    tracing: Tracing, exporter: InMemorySpanExporter, traceparent: str
) -> None:
    with tracing.request({"traceparent": traceparent}):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context is not None
    assert f"{span.context.trace_id:032x}" != CLIENT_TRACE


# -- settings only -----------------------------------------------------------------------------


def test_otel_environment_variables_change_nothing(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    """The SDK would read these when a parameter is left out; every one is passed."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "0")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "Patient-pat-123")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "patient=pat-123")
    traced = Tracing.exporting(exporter, batch=False)
    with traced.request({}) as marks:
        marks.set("fhir.interaction", "read")
    traced.shutdown()
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {}) == {"fhir.interaction": "read"}
    assert dict(span.resource.attributes) == {"service.name": "consentry"}


def test_stage_names_cover_the_pipeline() -> None:
    assert {"request", "classify", "identify", "decide", "forward", "filter", "map", "audit"} == (
        STAGES
    )


def test_a_missing_exporter_is_a_settings_error_not_silence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(SettingsError, match="consentry\\[otlp\\]"):
        build("http://127.0.0.1:9/v1/traces", headers={}, sample_ratio=1.0)


def test_an_unsampled_request_makes_no_stage_spans_and_still_passes_its_trace_on(
    exporter: InMemorySpanExporter,
) -> None:
    traced = Tracing.exporting(exporter, batch=False, sample_ratio=0.0)
    sent: list[tuple[str, str]] = []
    with traced.request({}):
        assert stage("decide") is stage("filter")  # the shared no-op
        inject(sent)
    with traced.request({"traceparent": TRACEPARENT.removesuffix("01") + "00"}):
        continued: list[tuple[str, str]] = []
        inject(continued)
    traced.shutdown()
    assert exporter.get_finished_spans() == ()
    (name, value), (_, value2) = *sent, *continued
    assert name == "traceparent"
    assert int(value[-2:], 16) & 1 == 0  # the sampled flag is off
    assert value2.startswith(f"00-{CLIENT_TRACE}-")
    assert int(value2[-2:], 16) & 1 == 0


# -- the gateway samples, not the client -------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "flags", "spans"),
    [
        (0.0, "01", 0),  # a client's sampled flag does not force tracing
        (1.0, "00", 2),  # nor does its unsampled flag hide its requests
        (0.0, "00", 0),
        (1.0, "01", 2),
    ],
    ids=["ratio-0-client-01", "ratio-1-client-00", "ratio-0-client-00", "ratio-1-client-01"],
)
def test_the_sample_ratio_applies_whatever_the_clients_flag(
    exporter: InMemorySpanExporter, ratio: float, flags: str, spans: int
) -> None:
    traced = Tracing.exporting(exporter, batch=False, sample_ratio=ratio)
    with traced.request({"traceparent": TRACEPARENT.removesuffix("01") + flags}), stage("classify"):
        pass
    traced.shutdown()
    assert len(exporter.get_finished_spans()) == spans


def test_a_client_chosen_trace_id_does_not_force_sampling(exporter: InMemorySpanExporter) -> None:
    """A trace id whose low 64 bits are zero is below every ratio's bound in the SDK's
    ``TraceIdRatioBased``: at 1%, 200 such requests are all sampled there, ~2 here."""
    traced = Tracing.exporting(exporter, batch=False, sample_ratio=0.01)
    low = f"00-{'7' * 16}{'0' * 15}1-{CLIENT_SPAN}-01"
    for _ in range(200):
        with traced.request({"traceparent": low}):
            pass
    traced.shutdown()
    assert len(exporter.get_finished_spans()) < 50


# -- OpenTelemetry's own logs --------------------------------------------------------------------


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_malicious_trace_headers_print_nothing_quoting_them(
    tracing: Tracing, capfd: pytest.CaptureFixture[str]
) -> None:
    """Nothing reaches the root logger (whatever handles it in production: pytest's caplog
    cannot tell, it hooks non-propagating loggers too) nor stderr."""
    root = logging.getLogger()
    kept = _Kept()
    root.addHandler(kept)
    try:
        for traceparent in (TRACEPARENT, f"00-{CLIENT_TRACE}-John Smith-01", "John Smith" * 60):
            for tracestate in (BAD_TRACESTATE, PHI_TRACESTATE, "x" * 9000 + "John Smith"):
                with tracing.request({"traceparent": traceparent, "tracestate": tracestate}):
                    pass
        # Whatever the library logs is never its message: one fixed line at most.
        logging.getLogger("opentelemetry.sdk.trace").warning("Member %s", BAD_TRACESTATE)
    finally:
        root.removeHandler(kept)
    out, err = capfd.readouterr()
    assert not kept.lines
    for word in PHI_WORDS:
        assert word not in out
        assert word not in err


# -- shutdown ------------------------------------------------------------------------------------


def test_shutdown_with_a_collector_that_never_answers_is_bounded() -> None:
    """The collector accepts the connection (the listen backlog) and never answers: the
    SDK's own shutdown would wait 30 s for the export."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        port = blackhole.getsockname()[1]
        traced = build(
            f"http://127.0.0.1:{port}/v1/traces", headers={}, sample_ratio=1.0, timeout=3.0
        )
        assert traced is not None
        with traced.request({}), stage("classify"):
            pass
        started = time.perf_counter()
        traced.shutdown()
        elapsed = time.perf_counter() - started
    assert elapsed < 2.9  # bounded (2 s), not the exporter's own timeout (3 s here)
    for thread in threading.enumerate():  # the export gives up once its timeout passes
        if thread.name.startswith(("OtelBatch", "consentry-tracing")):
            thread.join(10)
