"""OpenTelemetry for the library's clients, through the API only, and only if it is installed.

The library never configures tracing: an application that set up the OpenTelemetry SDK gets the
trace context carried by ``GrpcEventStore`` and continued by ``EventConsumer``; without the SDK the
API is a no-op, and without ``opentelemetry-api`` installed nothing is imported at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the API is optional
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]

#: The Kafka headers a consumer reads the trace context from (W3C trace context and baggage).
_CONTEXT_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})


def context_metadata() -> tuple[tuple[str, str], ...]:
    """The caller's trace context as gRPC metadata (``traceparent``, ``tracestate``, ``baggage``)."""
    if propagate is None:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


@contextmanager
def consumer_span(record: Any, group_id: str) -> Iterator[Any]:
    """A CONSUMER span around the handling of one Kafka record, continuing the trace whose context
    the record's headers carry (the forwarder's producer span)."""
    if trace is None:
        yield None
        return
    carrier = {k: v.decode("latin-1") for k, v in (record.headers or ()) if k in _CONTEXT_HEADERS and v}
    parent = propagate.extract(carrier)
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
