"""Traces of FHIR requests (OpenTelemetry), with no PHI in them by construction.

The only module that imports ``opentelemetry`` (an import-linter contract keeps it so). The
stages use three helpers and never see a span:

- :meth:`Tracing.request` opens a request's server span (at the ASGI edge), continuing the
  client's trace when its W3C ``traceparent`` is well formed (Trace Context §3.2; anything
  else starts a new trace, never an error);
- :func:`stage` opens a child span named after one stage of :data:`STAGES`;
- :func:`inject` writes the current span's ``traceparent`` into the headers of the upstream
  request (so the upstream's spans hang under the gateway's ``forward`` span).

**The client's ``tracestate`` is dropped**, never exported nor forwarded: it is free text a
caller chooses (it could carry PHI), and a participant may start a fresh one (Trace Context
§3.3.1.1, §3.5: ours is empty). **Callers do not decide sampling**: each request is sampled at
``sample_ratio`` by a random draw, whatever the ``traceparent``'s sampled flag or trace id
(:class:`_Draw`); an unauthenticated caller can neither force tracing nor hide from it.
OpenTelemetry's own stdlib log lines (which can quote a header) go through
:func:`middleware.logging.quiet_library`, never to stderr.

**No PHI.** A span's name is one of :data:`STAGES`; its attributes are set through
:meth:`Marks.set`, which accepts only the keys of :data:`WORDS` (each with a closed vocabulary:
an interaction, a resource *type*, a method, a decision effect, an audit phase; any other
value becomes ``other``) and :data:`COUNTS` (non-negative integers: status codes, counts).
No id, query, reference, token, URL, subject or client id can be expressed. Exceptions are
never recorded as events (their messages may quote a request); a failing stage's status is
ERROR without a description. Span events and links are limited to zero.

**Off costs nothing.** Without a :class:`Tracing` (``otlp_endpoint`` empty, the default) the
edge opens no span and :func:`stage` returns one shared no-op context manager after a single
context-variable read. Settings come from :mod:`middleware.settings` only: every SDK and
exporter parameter that would fall back on an ``OTEL_*`` variable is passed explicitly (the
OTLP exporter alone still reads its TLS-file and extra-header variables when it is built).
"""

from __future__ import annotations

import contextvars
import random
import threading
from collections.abc import Mapping, MutableSequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Final, Literal, get_args

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from middleware.errors import GatewayError, SettingsError
from middleware.fhir.request import Interaction
from middleware.fhir.resource_types import RESOURCE_TYPES
from middleware.logging import quiet_library

__all__ = [
    "COUNTS",
    "STAGES",
    "WORDS",
    "Marks",
    "Tracing",
    "current",
    "inject",
    "stage",
    "tracing_from",
    "untraced",
]

Stage = Literal["request", "classify", "identify", "decide", "forward", "filter", "map", "audit"]
#: Every span name there is.
STAGES: Final = frozenset(get_args(Stage))

Word = Literal[
    "fhir.interaction",
    "fhir.resource_type",
    "http.request.method",
    "consentry.decision",
    "consentry.audit.phase",
]
Count = Literal[
    "http.response.status_code",
    "consentry.patients",
    "consentry.resources.kept",
    "consentry.resources.withheld",
]
#: Word-valued attributes and their whole vocabulary (anything else is recorded as ``other``).
WORDS: Final[Mapping[str, frozenset[str]]] = {
    "fhir.interaction": frozenset(i.value for i in Interaction),
    "fhir.resource_type": RESOURCE_TYPES,
    "http.request.method": frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}),
    "consentry.decision": frozenset({"permit", "deny"}),
    "consentry.audit.phase": frozenset({"exchange", "decision", "outcome"}),
}
#: Integer-valued attributes (0 <= value < 2**31; anything else is dropped).
COUNTS: Final = frozenset(get_args(Count))

#: The tracer of the request being handled, when it is traced and sampled (its stages trace).
_TRACER: contextvars.ContextVar[trace.Tracer | None] = contextvars.ContextVar(
    "consentry_tracer", default=None
)
#: Whether the request being handled is traced (sampled or not: its context goes upstream).
_PROPAGATING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "consentry_propagating", default=False
)
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_TRACE_HEADERS: Final = frozenset({"traceparent", "tracestate"})
#: The SDK's own bound on a traceparent it parses (longer ones it logs about, then ignores).
_TRACEPARENT_MAX: Final = 512
_LIMITS: Final = SpanLimits(
    max_attributes=16,
    max_events=0,
    max_links=0,
    max_span_attributes=16,
    max_event_attributes=0,
    max_link_attributes=0,
    max_attribute_length=64,
    max_span_attribute_length=64,
)


class Marks:
    """The attributes of one span, set only through the allow-list (module docstring)."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span | None) -> None:
        self._span = span

    def set(self, key: Word | Count, value: str | int) -> None:
        """Record ``key`` (one of :data:`WORDS` or :data:`COUNTS`); anything else is dropped."""
        span = self._span
        if span is None:
            return
        if key in COUNTS:
            if type(value) is int and 0 <= value < 2**31:
                span.set_attribute(key, value)
                if key == "http.response.status_code" and value >= 500:
                    span.set_status(StatusCode.ERROR)
            return
        vocabulary = WORDS.get(key)
        if vocabulary is not None and isinstance(value, str):
            span.set_attribute(key, value if value in vocabulary else "other")


_NO_MARKS: Final = Marks(None)


class _Off(AbstractContextManager[Marks]):
    """The stage of a request that is not traced: one shared, stateless instance."""

    __slots__ = ()

    def __enter__(self) -> Marks:
        return _NO_MARKS

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


_OFF: Final = _Off()


def stage(name: Stage, *, client: bool = False) -> AbstractContextManager[Marks]:
    """A child span of the current request's, named ``name`` (``client``: a call to another
    service, the upstream); a no-op when the request is not traced or not sampled."""
    tracer = _TRACER.get()
    if tracer is None:
        return _OFF
    if name not in STAGES:  # Literal is checked by mypy only: a name is never data
        raise ValueError("not a stage name")
    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    return _Open(tracer.start_span(name, kind=kind))


def current() -> Marks:
    """The current span's marks (the request span's, outside any :func:`stage`); no-op when
    the request is not traced or not sampled."""
    if _TRACER.get() is None:
        return _NO_MARKS
    return Marks(trace.get_current_span())


def inject(headers: MutableSequence[tuple[str, str]]) -> None:
    """Put the current span's W3C trace context in ``headers`` (lower-case pairs), replacing
    any there (a ``tracestate`` too: none is sent); nothing when the request is not traced. A
    request traced but not sampled still passes its trace on (flags ``00``, Trace Context
    §3.2.2.5), naming the request span."""
    if not _PROPAGATING.get():
        return
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if carrier:
        headers[:] = [(k, v) for k, v in headers if k not in _TRACE_HEADERS]
        headers.extend(carrier.items())


def untraced() -> contextvars.Context:
    """A copy of the current context outside any request's trace: for a task a request starts
    that outlives it (a bulk export job), whose work is no part of that request's trace."""
    copied = contextvars.copy_context()
    copied.run(_leave_trace)
    return copied


def _leave_trace() -> None:
    _TRACER.set(None)
    _PROPAGATING.set(False)
    context.attach(Context())  # this copy's OTel context: empty (never detached: it is a copy)


class _Open(AbstractContextManager[Marks]):
    """A started span made current until the block ends (a class, not two generator-based
    context managers: this is the per-stage cost when tracing is on)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: contextvars.Token[Context] | None = None

    def __enter__(self) -> Marks:
        self._enter()
        self._token = context.attach(trace.set_span_in_context(self._span))
        return Marks(self._span)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            # A refusal (4xx) is the stage working; only failures mark the span, and never
            # with the exception's message or an exception event: messages may quote the
            # request.
            if error is not None and not (isinstance(error, GatewayError) and error.status < 500):
                self._span.set_status(StatusCode.ERROR)
        finally:
            try:
                if self._token is not None:
                    context.detach(self._token)
                self._span.end()
            finally:
                self._exit()

    def _enter(self) -> None:
        """Set before the span is made current (a subclass's context variables)."""

    def _exit(self) -> None:
        """Undo :meth:`_enter`, last, whatever went before."""


class _Request(_Open):
    """The request's server span, and the context variables that let its stages trace."""

    __slots__ = ("_propagating", "_tracer", "_tracing")

    def __init__(self, span: trace.Span, tracer: trace.Tracer) -> None:
        super().__init__(span)
        self._tracer = tracer if span.is_recording() else None  # unsampled: no stage spans
        self._tracing: contextvars.Token[trace.Tracer | None] | None = None
        self._propagating: contextvars.Token[bool] | None = None

    def _enter(self) -> None:
        self._tracing = _TRACER.set(self._tracer)
        self._propagating = _PROPAGATING.set(True)

    def _exit(self) -> None:
        if self._propagating is not None:
            _PROPAGATING.reset(self._propagating)
        if self._tracing is not None:
            _TRACER.reset(self._tracing)


class Tracing:
    """The gateway's tracer: built once at wiring time and handed to the ASGI edge, which
    opens each request's span with :meth:`request`. ``provider`` is not made global."""

    def __init__(self, provider: TracerProvider, *, shutdown_seconds: float = 2.0) -> None:
        quiet_library("opentelemetry")
        self.provider = provider
        self._shutdown_seconds = shutdown_seconds
        self.tracer = provider.get_tracer("consentry")

    @classmethod
    def exporting(
        cls, exporter: SpanExporter, *, batch: bool = True, sample_ratio: float = 1.0
    ) -> Tracing:
        """Spans sent to ``exporter``: through a batch processor (a background thread, the
        request path only queues), or synchronously (``batch=False``, for tests). Requests
        are sampled at ``sample_ratio``, continued traces too (module docstring); a stage
        follows its request."""
        draw = _Draw(sample_ratio)
        provider = TracerProvider(
            sampler=sampling.ParentBased(
                draw, remote_parent_sampled=draw, remote_parent_not_sampled=draw
            ),
            resource=Resource({"service.name": "consentry"}),  # not Resource.create: no env
            span_limits=_LIMITS,
            shutdown_on_exit=False,
            meter_provider=NoOpMeterProvider(),
        )
        quiet = NoOpMeterProvider()
        processor = (
            BatchSpanProcessor(
                exporter,
                max_queue_size=2048,
                schedule_delay_millis=2000,
                max_export_batch_size=512,
                export_timeout_millis=10_000,
                meter_provider=quiet,
            )
            if batch
            else SimpleSpanProcessor(exporter, meter_provider=quiet)
        )
        provider.add_span_processor(processor)
        return cls(provider)

    def request(self, headers: Mapping[str, str]) -> AbstractContextManager[Marks]:
        """The server span of one request (``headers``: lower-case names), current until it
        closes; the client's trace is continued when its ``traceparent`` is valid. Its
        ``tracestate`` is not read (module docstring)."""
        traceparent = headers.get("traceparent", "")
        carrier = {"traceparent": traceparent} if len(traceparent) <= _TRACEPARENT_MAX else {}
        parent = _PROPAGATOR.extract(carrier)
        span = self.tracer.start_span("request", context=parent, kind=SpanKind.SERVER)
        return _Request(span, self.tracer)

    def shutdown(self) -> None:
        """Export what is queued and stop, waiting at most ``shutdown_seconds`` (blocking:
        call it off the event loop, last, after the stores have closed). The SDK's shutdown
        would wait up to 30 s for an unreachable collector; it runs on a daemon thread, left
        behind when the time is up (its spans are lost; the process may exit)."""
        closing = threading.Thread(
            target=self.provider.shutdown, name="consentry-tracing-shutdown", daemon=True
        )
        closing.start()
        closing.join(self._shutdown_seconds)


class _Draw(sampling.Sampler):
    """Sample a request at ``ratio`` by a random draw. Not ``TraceIdRatioBased``: that one
    reads the trace id's low bits, which a client continuing its trace chooses."""

    def __init__(self, ratio: float) -> None:
        self._ratio = ratio

    def should_sample(  # noqa: PLR0917 (the SDK's signature)
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: object = None,
        trace_state: object = None,
    ) -> sampling.SamplingResult:
        # trace_state None: the span's is empty, never the parent's (the client's).
        sampled = random.random() < self._ratio  # noqa: S311 (a share, not a secret)
        return sampling.SamplingResult(
            sampling.Decision.RECORD_AND_SAMPLE if sampled else sampling.Decision.DROP
        )

    def get_description(self) -> str:
        return f"Draw{{{self._ratio}}}"


def tracing_from(
    endpoint: str, *, headers: Mapping[str, str], sample_ratio: float, timeout: float = 10.0
) -> Tracing | None:
    """The tracing the settings ask for: ``None`` (off) when ``endpoint`` is empty, else spans
    batched to the OTLP/HTTP ``endpoint`` (the full URL, ``.../v1/traces``)."""
    if not endpoint:
        return None
    try:
        import requests  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
    except ImportError as exc:  # the optional extra: refuse to start rather than trace nothing
        raise SettingsError(
            "otlp_endpoint: the OTLP exporter is not installed (pip install 'consentry[otlp]')"
        ) from exc
    # Every parameter given, so that the exporter falls back on no OTEL_EXPORTER_OTLP_*
    # variable for them; the session given too, so that no credential-provider plugin is
    # loaded by name from the environment. (It still reads its TLS-file and extra-header
    # variables when built: docs/configuration.md says to leave them unset.)
    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        headers=dict(headers),
        timeout=timeout,
        compression=Compression.Gzip,
        session=requests.Session(),
        meter_provider=NoOpMeterProvider(),
    )
    return Tracing.exporting(exporter, sample_ratio=sample_ratio)
