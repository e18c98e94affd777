"""Tracing end to end, with real processes: a sidecar exporting OTLP/HTTP to a receiver started by
the test, PostgreSQL, a Kafka-protocol broker and a consuming application in its own process."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys

import aiohttp
import grpc
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from k1s0_event_store import ConcurrencyError, EventEnvelope, GrpcEventStore
from k1s0_sidecar import _tracing as tracing
from tests.conftest import create_schema, drop_schema
from tests.forwarding.support import TopicReader
from tests.support.kafka import LocalKafka
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar

from .otlp import OtlpGrpcReceiver, OtlpReceiver, ReceivedSpan, exporter_env

GRPC_APPEND = "/k1s0.system.eventstore.v1.EventStoreService/AppendEvents"


def one(spans: list[ReceivedSpan], what: str) -> ReceivedSpan:
    assert len(spans) == 1, f"{what}: {spans}"
    return spans[0]


async def test_one_append_is_one_trace_from_the_request_to_the_consumer(
    traced: ServedSidecar, receiver: OtlpReceiver, kafka: LocalKafka, topic: str, pg: LocalPostgres
) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    stream = f"order-{secrets.token_hex(4)}"
    async with aiohttp.ClientSession() as http, http.post(
        f"{traced.base_url}/api/v1/streams/{stream}/events",
        json={"events": [{"event_type": "OrderPlaced", "payload": {"total": 12}}], "expected_version": 0},
        headers={"traceparent": f"00-{trace_id}-{caller}-01"},
    ) as r:
        assert r.status == 201, await r.text()
        body = await r.json()
    stored = body["events"][0]["metadata"]
    assert stored["$traceparent"].split("-")[1] == trace_id  # kept with the event

    def server(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.trace_id == trace_id and s.kind == "SERVER"]

    srv = one(await receiver.wait_for(server, "server span"), "server span")
    assert srv.parent_span_id == caller and srv.service == "sidecar-under-test"
    assert srv.name == "POST /api/v1/streams/{stream_id}/events"
    assert srv.attributes["eventstore.stream_id"] == stream
    assert srv.attributes["eventstore.event_count"] == 1
    assert srv.attributes["eventstore.expected_version"] == 0
    assert srv.attributes["eventstore.result_version"] == 1
    assert stored["$traceparent"] == f"00-{trace_id}-{srv.span_id}-01"  # the server span's context

    def batch(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.trace_id == trace_id and s.name == "group_commit"]

    commit = one(await receiver.wait_for(batch, "group-commit span"), "group-commit span")
    assert commit.parent_span_id == srv.span_id and (trace_id, srv.span_id) in commit.links
    assert commit.attributes["eventstore.batch_size"] == 1

    def database(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans
                if s.trace_id == trace_id and s.kind == "CLIENT" and s.parent_span_id == commit.span_id]

    queries = await receiver.wait_for(database, "database spans under the group-commit span")
    assert all(q.attributes.get("db.system") == "postgresql" for q in queries)

    # The forwarder: a producer span in the same trace, whose context the Kafka message carries.
    def producer(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.trace_id == trace_id and s.kind == "PRODUCER"]

    send = one(await receiver.wait_for(producer, "producer span"), "producer span")
    assert send.parent_span_id == srv.span_id and send.name == f"send {topic}"
    assert send.attributes["messaging.destination.name"] == topic
    async with TopicReader(kafka.bootstrap, topic) as reader:
        await reader.until(lambda ms: any(m.key == stream for m in ms), 30, "the forwarded event")
        [message] = [m for m in reader.messages if m.key == stream]
    assert message.headers["traceparent"] == f"00-{trace_id}-{send.span_id}-01".encode()

    # A consuming application (its own SDK set-up) continues the trace with a consumer span.
    schema = await create_schema(pg.dsn, "otelc")
    env = {**os.environ, **exporter_env(receiver, "consumer-app")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.observability.consumer_app", kafka.bootstrap, topic,
        f"g-{secrets.token_hex(4)}", pg.dsn, schema, env=env, stderr=subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await drop_schema(pg.dsn, schema)

    def consumer(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.trace_id == trace_id and s.kind == "CONSUMER"]

    # (the consumer reads the topic from the start: other tests' events have other traces)
    got = one(await receiver.wait_for(consumer, "consumer span"), "consumer span")
    assert got.parent_span_id == send.span_id and got.service == "consumer-app"
    assert got.attributes["eventstore.consumer.outcome"] == "handled"


async def test_grpc_client_context_and_error_code(traced: ServedSidecar, receiver: OtlpReceiver) -> None:
    """GrpcEventStore sends the caller's context; the gRPC server span continues it and carries
    the error code of a refused append."""
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    parent = SpanContext(int(trace_id, 16), int(caller, 16), is_remote=False, trace_flags=TraceFlags(1))
    store = GrpcEventStore(traced.grpc_target)
    stream = f"cart-{secrets.token_hex(4)}"
    try:
        with trace.use_span(NonRecordingSpan(parent)):
            assert await store.append(stream, [EventEnvelope("CartOpened", {"id": 1})], 0) == 1
            with pytest.raises(ConcurrencyError):
                await store.append(stream, [EventEnvelope("CartOpened", {"id": 2})], 0)
    finally:
        await store.close()

    def appends(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        found = [s for s in spans if s.trace_id == trace_id and s.kind == "SERVER" and s.name == GRPC_APPEND]
        return found if len(found) == 2 else []

    first, second = sorted(await receiver.wait_for(appends, "two gRPC server spans"),
                           key=lambda s: "eventstore.error_code" in s.attributes)
    assert first.parent_span_id == caller and second.parent_span_id == caller
    assert first.attributes["eventstore.result_version"] == 1
    assert "eventstore.error_code" not in first.attributes
    assert second.attributes["eventstore.error_code"] == "SYS_EVSTORE_VERSION_CONFLICT"
    assert second.attributes["eventstore.stream_id"] == stream
    assert second.attributes["rpc.grpc.status_code"] == grpc.StatusCode.ABORTED.value[0]
    assert not second.error  # a refused append is the client's outcome, not a server fault


async def test_tracing_off_stores_no_trace_context(pg: LocalPostgres, receiver: OtlpReceiver) -> None:
    """Without OTEL_* variables nothing is traced: the incoming traceparent is not stored."""
    schema = await create_schema(pg.dsn, "otel0")
    sidecar = ServedSidecar(pg.dsn, schema).start()
    try:
        trace_id = secrets.token_hex(16)
        async with aiohttp.ClientSession() as http, http.post(
            f"{sidecar.base_url}/api/v1/streams/s-1/events",
            json={"events": [{"event_type": "E", "payload": {}}]},
            headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        ) as r:
            assert r.status == 201
            assert (await r.json())["events"][0]["metadata"] == {}
        assert "tracing on" not in sidecar.log()
    finally:
        sidecar.stop()
        await drop_schema(pg.dsn, schema)
    assert not receiver.in_trace(trace_id)


def test_the_switch_is_the_standard_variables() -> None:
    assert not tracing.requested({})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.requested({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.requested({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.requested({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})


def test_log_lines_carry_the_active_span() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        tracing._log_trace_ids([handler])
        logger = logging.getLogger("k1s0_sidecar.test")
        logger.warning("outside")
        ctx = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
        with trace.use_span(NonRecordingSpan(ctx)):
            logger.warning("inside")
    finally:
        root.removeHandler(handler)
    assert records == ["outside", f"inside trace_id={0xABC:032x} span_id={0xDEF:016x}"]


async def test_otlp_over_grpc(pg: LocalPostgres) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the same spans reach an OTLP/gRPC receiver."""
    receiver = await OtlpGrpcReceiver().start()
    schema = await create_schema(pg.dsn, "otelg")
    sidecar = ServedSidecar(pg.dsn, schema, env=exporter_env(receiver, "grpc-export")).start()
    try:
        trace_id = secrets.token_hex(16)
        async with aiohttp.ClientSession() as http, http.post(
            f"{sidecar.base_url}/api/v1/streams/g-1/events", json={"events": [{"event_type": "E", "payload": {}}]},
            headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        ) as r:
            assert r.status == 201

        def exported(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
            names = {s.name for s in spans if s.trace_id == trace_id}
            return spans if {"POST /api/v1/streams/{stream_id}/events", "group_commit"} <= names else []

        spans = await receiver.wait_for(exported, "server and group-commit spans over OTLP/gRPC")
        assert {s.service for s in spans if s.trace_id == trace_id} == {"grpc-export"}
    finally:
        sidecar.stop()
        await receiver.stop()
        await drop_schema(pg.dsn, schema)
