"""OpenTelemetry spans for requests (``otel: true``; the ``sluiceway[otel]``
extra installs the SDK and the OTLP/HTTP exporter).

Each request becomes a SERVER span named after its method, a child of the
client's ``traceparent`` when it sent a valid one (W3C Trace Context), with
the usual HTTP attributes (``http.request.method``, ``url.path``,
``http.response.status_code``, ``server.address``, ``client.address``,
``network.protocol.version``, ``error.type``). The span's context goes
upstream as a new ``traceparent`` (``tracestate`` is forwarded as
received). Sampling: a parent's decision is followed; a trace that starts
here is recorded with ``otel_sample_ratio``'s odds. Spans are exported in
batches by the SDK's BatchSpanProcessor (a thread of its own per worker),
never on the event loop.

Without ``otel``, the proxy forwards ``traceparent`` and ``tracestate``
untouched, like any other header.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("sluiceway.error")

_provider = None
_tracer = None
_pid = 0


def _setup(conf):
    global _provider, _tracer, _pid
    if _tracer is not None and _pid == os.getpid():
        return _tracer
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise RuntimeError("otel: true needs the OpenTelemetry SDK and its OTLP/HTTP exporter: "
                           "pip install 'sluiceway[otel]'") from exc
    provider = TracerProvider(resource=Resource.create({"service.name": conf.otel_service_name}),
                              sampler=ParentBased(TraceIdRatioBased(conf.otel_sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=conf.otel_endpoint),
                                                   schedule_delay_millis=500))
    _provider, _tracer, _pid = provider, provider.get_tracer("sluiceway"), os.getpid()
    return _tracer


def attach(engine, conf) -> None:
    """Make ``engine`` start and end a span per request."""
    engine.set_tracer(_Tracing(_setup(conf)))


def shutdown() -> None:
    """Export what is left (a worker's stop)."""
    global _provider, _tracer
    if _provider is not None and _pid == os.getpid():
        try:
            _provider.shutdown()
        except Exception:
            log.exception("sluiceway: exporting the last spans failed")
    _provider = _tracer = None


class _Tracing:
    """What the engine calls: ``start(session)`` when the request head is
    parsed (returns the span, kept on the session) and ``end(session,
    span)`` when the request is over."""

    def __init__(self, tracer) -> None:
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self.kind = SpanKind.SERVER
        self.prop = TraceContextTextMapPropagator()

    def start(self, session):
        hdr = session.req_header
        carrier = {}
        tp = hdr.headers.get("traceparent")
        if tp is not None:
            carrier["traceparent"] = tp
            ts = hdr.headers.get("tracestate")
            if ts is not None:
                carrier["tracestate"] = ts
        parent = self.prop.extract(carrier) if carrier else None
        method = hdr.method
        span = self.tracer.start_span(method, context=parent, kind=self.kind, attributes={
            "http.request.method": method, "url.path": hdr.path,
            "network.protocol.version": "1.1" if hdr.version == "1.1" else "1.0",
        })
        sc = span.get_span_context()
        if sc.is_valid:
            # The upstream sees this span as its parent.
            hdr.headers["traceparent"] = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-" \
                                         f"{int(sc.trace_flags):02x}"
        return span

    def end(self, session, span) -> None:
        from opentelemetry.trace import Status, StatusCode

        status = session.status
        if session.response_written and status:
            span.set_attribute("http.response.status_code", status)
        host = session.req_header.headers.get("host")
        if host:
            span.set_attribute("server.address", host.rsplit(":", 1)[0] if not
                               host.endswith("]") else host)
        addr = session.client_addr
        if isinstance(addr, tuple):
            span.set_attribute("client.address", addr[0])
        if session.peer is not None:
            span.set_attribute("sluiceway.upstream", str(session.peer))
        if session.error is not None:
            span.set_attribute("error.type", type(session.error).__name__)
            span.set_status(Status(StatusCode.ERROR, getattr(session.error, "message", None)
                                   or str(session.error)))
        elif status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("sluiceway.request_id", session.request_id)
        span.end()
