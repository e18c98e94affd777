"""OpenTelemetry tracing for the sidecar: on only when the standard ``OTEL_*`` variables ask for it.

Switch: tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) or
``OTEL_TRACES_EXPORTER`` is set, unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``.
Everything else (service name, resource attributes, sampler, batch processor, exporter endpoint,
headers, protocol) is read by the SDK itself from its standard variables. When off, nothing of
OpenTelemetry is imported or installed: the hot paths test one module flag (``ENABLED``) and do
nothing more, so the cost is one attribute read per request.

What is traced when on:

* a server span per REST route (the aiohttp-server instrumentation) and per gRPC method (the grpc
  instrumentation), continuing an incoming W3C ``traceparent``; health, readiness and /metrics
  are left out (they are polled every few seconds and say nothing about a request);
* attributes on that span: ``eventstore.stream_id``, ``eventstore.event_count``,
  ``eventstore.expected_version``, ``eventstore.result_version``, ``eventstore.error_code``;
* one span per group-commit transaction (``group_commit``), a child of the first request in the
  batch and linked to every request in it, with the database spans (asyncpg instrumentation)
  below it;
* the request's trace context is stored with each appended event, in its metadata under
  ``$traceparent`` / ``$tracestate`` (unless the caller set those keys), so the forwarder can
  continue the trace later: it sends a producer span's context as the Kafka headers
  ``traceparent``/``tracestate``;
* log lines written while a span is active end with ``trace_id=… span_id=…``.

Database queries that belong to no request (the forwarder's and the subscription reader's polls,
maintenance) would each start a trace of their own; the sampler drops those root query spans.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from k1s0_event_store import AppendRequest, AppendResult

log = logging.getLogger("k1s0_sidecar.tracing")  # the name people filter on; the module is private

#: Metadata keys under which an appended event keeps the trace context of the request that wrote it.
TRACEPARENT_KEY = "$traceparent"
TRACESTATE_KEY = "$tracestate"
#: The REST routes left out of tracing unless ``OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS`` (or
#: ``OTEL_PYTHON_EXCLUDED_URLS``) says otherwise: probes and scrapes, polled all day long.
DEFAULT_EXCLUDED_URLS = r"^/(healthz|readyz|health/live|health/ready|metrics)$"
SERVICE_NAME_DEFAULT = "k1s0-eventstore"

#: True once ``setup`` configured the SDK. Read at call time (``tracing.ENABLED``), never copied.
ENABLED = False
_tracer: Any = None
_provider: Any = None
_OFF = nullcontext()  # reusable: the batch "span" while tracing is off costs a call and a with


def requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (the switch described above)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(env: Mapping[str, str] | None = None) -> bool:
    """Configure the SDK and the instrumentations from ``OTEL_*`` if asked to; True when on.

    Called once per process, before the sidecar builds its servers (the aiohttp instrumentation
    patches ``web.Application``)."""
    global ENABLED, _tracer, _provider
    env = os.environ if env is None else env
    if ENABLED or not requested(env):
        return ENABLED
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OTEL_* variables ask for traces but OpenTelemetry is not installed (%s): tracing is off;"
                    " install k1s0-eventstore[otel]", exc)
        return False
    exporter = _exporter(env)
    if exporter is None:
        return False
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if "OTEL_SERVICE_NAME" not in env and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE_NAME_DEFAULT}))
    provider = TracerProvider(resource=resource, sampler=_NoOrphanQueries.wrap())
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* tune it
    trace.set_tracer_provider(provider)
    if not (env.get("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS") or env.get("OTEL_PYTHON_EXCLUDED_URLS")):
        os.environ["OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS"] = DEFAULT_EXCLUDED_URLS
    AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    _provider = provider
    _tracer = provider.get_tracer("k1s0_sidecar")
    ENABLED = True
    _log_trace_ids()
    log.info("tracing on: exporting spans (%s) as %s", type(exporter).__name__,
             resource.attributes.get(SERVICE_NAME))
    return True


def _exporter(env: Mapping[str, str]) -> Any:
    """The span exporter ``OTEL_TRACES_EXPORTER`` names (otlp by default, or console); OTLP over
    ``http/protobuf`` (the specification's default) or ``grpc`` per ``OTEL_EXPORTER_OTLP_PROTOCOL``."""
    name = (env.get("OTEL_TRACES_EXPORTER", "") or "otlp").split(",")[0].strip().lower()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console or none): tracing is off", name)
        return None
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (http/protobuf or grpc): tracing is off",
                    protocol)
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def shutdown() -> None:
    """Flush and stop the exporter (the SDK also does this at interpreter exit)."""
    if _provider is not None:
        _provider.shutdown()


def grpc_interceptors() -> list[Any]:
    """The gRPC server interceptor (first in the chain, so our edge runs inside its span); none
    when off. Health checks and reflection are left out, like the REST probes."""
    if not ENABLED:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    return [aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_provider,
        filter_=filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))),
    )]


class _NoOrphanQueries:
    """The sampler from ``OTEL_TRACES_SAMPLER``, except that a database query with no parent span
    (a background poll) is dropped instead of starting a trace of its own."""

    @classmethod
    def wrap(cls) -> Any:
        from opentelemetry.sdk.trace import sampling

        base = sampling._get_from_env_or_default()  # the SDK's own reading of OTEL_TRACES_SAMPLER(_ARG)

        class NoOrphanQueries(sampling.Sampler):
            def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                              attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
                if attributes and ("db.system" in attributes or "db.system.name" in attributes):
                    from opentelemetry import trace

                    if not trace.get_current_span(parent_context).get_span_context().is_valid:
                        return sampling.SamplingResult(sampling.Decision.DROP)
                return base.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

            def get_description(self) -> str:
                return f"NoOrphanQueries({base.get_description()})"

        return NoOrphanQueries()


# -- the request's span --------------------------------------------------------------------------


def stamp(request: AppendRequest) -> AppendRequest:
    """Annotate the current span with the append and store its trace context with each event
    (metadata ``$traceparent``/``$tracestate``) unless the caller set them. Call only when ENABLED."""
    from opentelemetry import trace

    span = trace.get_current_span()
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return request
    span.set_attributes({
        "eventstore.stream_id": str(request.stream_id),
        "eventstore.event_count": len(request.events),
    })
    if request.expected_version is not None:
        span.set_attribute("eventstore.expected_version", request.expected_version)
    carrier: dict[str, str] = {}
    from opentelemetry.propagators.textmap import default_setter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    TraceContextTextMapPropagator().inject(carrier, setter=default_setter)
    extra = {TRACEPARENT_KEY: carrier["traceparent"]}
    if carrier.get("tracestate"):
        extra[TRACESTATE_KEY] = carrier["tracestate"]
    events = []
    for p in request.events:
        if TRACEPARENT_KEY in p.metadata:
            events.append(p)
            continue
        metadata = {**p.metadata, **extra}
        events.append(p._replace(
            metadata=metadata, metadata_json=json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
        ))
    return AppendRequest(request.stream_id, tuple(events), request.expected_version)


def appended(result: AppendResult) -> None:
    """The version the append reached, on the current span. Call only when ENABLED."""
    from opentelemetry import trace

    trace.get_current_span().set_attribute("eventstore.result_version", result.current_version)


def stream(stream_id: str) -> None:
    """The stream a read or delete is about, on the current span. Call only when ENABLED."""
    from opentelemetry import trace

    trace.get_current_span().set_attribute("eventstore.stream_id", stream_id)


def error(code: str) -> None:
    """The error code a request was answered with, on the current span. Call only when ENABLED."""
    from opentelemetry import trace

    trace.get_current_span().set_attribute("eventstore.error_code", code)


def grpc_code(code: Any) -> None:
    """The gRPC status of a failed call, on the current (server) span: ``abort_with_status`` goes
    around the instrumentation's context wrapper, which would otherwise record it. Server-side
    faults (INTERNAL, UNAVAILABLE, …) mark the span as an error, as the semantic conventions say."""
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code.name in _GRPC_SERVER_FAULTS:
        span.set_status(Status(StatusCode.ERROR, code.name))


_GRPC_SERVER_FAULTS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
                                 "DATA_LOSS"})


# -- group commit --------------------------------------------------------------------------------


def current_link() -> Any:
    """The current span's context, to link a batch to the request (None if there is no span)."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid else None


def batch_span(links: Sequence[Any], size: int) -> AbstractContextManager[Any]:
    """The group-commit transaction's span: a child of the first sampled request of the batch (so a
    lone append is one trace from the server span to the database) and linked to every request."""
    if not ENABLED:
        return _OFF
    from opentelemetry import trace

    contexts = [c for c in links if c is not None]
    parent = next((c for c in contexts if c.trace_flags.sampled), contexts[0] if contexts else None)
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None
    return _tracer.start_as_current_span(  # type: ignore[no-any-return]
        "group_commit", context=context, links=[trace.Link(c) for c in contexts],
        attributes={"eventstore.batch_size": size},
    )


# -- forwarder ------------------------------------------------------------------------------------


def kafka_headers(metadata: object, topic: str, key: str, sequence: int, spans: list[Any]) -> list[tuple[str, bytes]]:
    """The ``traceparent``/``tracestate`` headers for an event's Kafka message.

    When on, a producer span continues the trace stored with the event (it is ended by
    ``end_spans`` when the broker acknowledged the round, or it failed) and the headers carry that
    span. When off, the stored context is passed on as it is, so consumers still join the trace.
    Each attempt to send is a span of its own: a round sent again, or a record left for the next
    round because this one was full (rare: rounds are sized to the rows read), gets a new one."""
    if not isinstance(metadata, dict):
        return []
    traceparent = metadata.get(TRACEPARENT_KEY)
    if not ENABLED:
        if not isinstance(traceparent, str):
            return []
        headers = [("traceparent", traceparent.encode())]
        state = metadata.get(TRACESTATE_KEY)
        if isinstance(state, str) and state:
            headers.append(("tracestate", state.encode()))
        return headers
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import default_setter
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    stored = {"traceparent": traceparent} if isinstance(traceparent, str) else {}
    if stored and isinstance(metadata.get(TRACESTATE_KEY), str):
        stored["tracestate"] = metadata[TRACESTATE_KEY]
    parent = propagator.extract(stored, context=Context())
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return []  # an event appended without a trace: no root span per forwarded event
    span = _tracer.start_span(
        f"send {topic}", context=parent, kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "kafka", "messaging.operation.type": "send",
                    "messaging.destination.name": topic, "messaging.kafka.message.key": key,
                    "eventstore.sequence": sequence},
    )
    spans.append(span)
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=trace.set_span_in_context(span), setter=default_setter)
    return [(k, v.encode()) for k, v in carrier.items()]


def end_spans(spans: list[Any], failure: str | None = None) -> None:
    """End the producer spans of a round (with the failure, if it failed) and forget them."""
    if not spans:
        return
    from opentelemetry.trace import Status, StatusCode

    for span in spans:
        if failure is not None:
            span.set_status(Status(StatusCode.ERROR, failure))
        span.end()
    spans.clear()


# -- logs ---------------------------------------------------------------------------------------


class _TraceIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from opentelemetry import trace

        ctx = trace.get_current_span().get_span_context()
        record.trace_ids = f" trace_id={ctx.trace_id:032x} span_id={ctx.span_id:016x}" if ctx.is_valid else ""
        return True


def _log_trace_ids(handlers: Sequence[logging.Handler] | None = None) -> None:
    """Every root handler's lines end with the trace and span id when a span is active."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        handler.addFilter(_TraceIds())
        fmt = getattr(handler.formatter, "_fmt", None) or "%(message)s"
        handler.setFormatter(logging.Formatter(fmt + "%(trace_ids)s"))
