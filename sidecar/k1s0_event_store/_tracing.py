"""OpenTelemetry for the library's clients, through the API only, and only if it is installed.

The library never configures tracing: an application that set up the OpenTelemetry SDK gets the
trace context carried by ``GrpcEventStore`` and continued by ``EventConsumer``; without the SDK the
API is a no-op, and without ``opentelemetry-api`` installed nothing is imported at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: The Kafka headers a consumer reads the trace context from (W3C trace context and baggage).
_CONTEXT_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
#: ``opentelemetry`` (the API package) once looked for: imported on first use, so that a process
#: that never makes a client call or consumes (the sidecar) does not load it; False: not installed.
_api: Any = None


def _otel() -> Any:
    global _api
    if _api is None:
        try:
            import opentelemetry.propagate
            import opentelemetry.trace

            _api = opentelemetry
        except ImportError:  # the API is optional
            _api = False
    return _api


def context_metadata() -> tuple[tuple[str, str], ...]:
    """The caller's trace context as gRPC metadata (``traceparent``, ``tracestate``, ``baggage``)."""
    otel = _otel()
    if not otel:
        return ()
    carrier: dict[str, str] = {}
    otel.propagate.inject(carrier)
    return tuple(carrier.items())


@contextmanager
def consumer_span(record: Any, group_id: str) -> Iterator[Any]:
    """A CONSUMER span around the handling of one Kafka record, continuing the trace whose context
    the record's headers carry (the forwarder's producer span)."""
    otel = _otel()
    if not otel:
        yield None
        return
    trace = otel.trace
    carrier = {k: v.decode("latin-1") for k, v in (record.headers or ()) if k in _CONTEXT_HEADERS and v}
    parent = otel.propagate.extract(carrier)
    tracer = trace.get_tracer("k1s0_event_store.consumer")
    attributes = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": group_id,
    }
    with tracer.start_as_current_span(
        f"process {record.topic}", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span
