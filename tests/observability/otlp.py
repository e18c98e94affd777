"""A real OTLP/HTTP trace receiver for the tests: an aiohttp app on a free port that decodes each
``ExportTraceServiceRequest`` (opentelemetry-proto) and keeps the spans."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.postgres import free_port


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str  # SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    service: str
    scope: str
    error: bool = field(default=False)


class OtlpReceiver:
    """``POST /v1/traces`` (protobuf, optionally gzip) like a collector's OTLP/HTTP receiver."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.keep(message)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def keep(self, message: ExportTraceServiceRequest) -> None:
        self.requests += 1
        for rs in message.resource_spans:
            service = str(_attributes(rs.resource.attributes).get("service.name", ""))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(ReceivedSpan(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_span_id=s.parent_span_id.hex(),
                        name=s.name, kind=Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_"),
                        attributes=_attributes(s.attributes),
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        service=service, scope=ss.scope.name, error=s.status.code == 2,
                    ))

    def in_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def wait_for(self, found: Callable[[list[ReceivedSpan]], list[ReceivedSpan]], what: str,
                       timeout: float = 30) -> list[ReceivedSpan]:
        """Poll until ``found(spans)`` is not empty; its result."""
        deadline = time.monotonic() + timeout
        while True:
            result = found(list(self.spans))
            if result:
                return result
            if time.monotonic() > deadline:
                names = sorted({(s.name, s.kind, s.trace_id[:8]) for s in self.spans})
                raise AssertionError(f"no {what} within {timeout}s; received: {names}")
            await asyncio.sleep(0.05)


class OtlpGrpcReceiver(OtlpReceiver):
    """The same over OTLP/gRPC (``TraceService/Export``, grpc.aio)."""

    def __init__(self) -> None:
        super().__init__()
        self._server: grpc.aio.Server | None = None

    async def start(self) -> OtlpGrpcReceiver:
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            async def Export(self, request: ExportTraceServiceRequest, context: Any) -> ExportTraceServiceResponse:
                receiver.keep(request)
                return ExportTraceServiceResponse()

        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)


def exporter_env(receiver: OtlpReceiver, service: str) -> dict[str, str]:
    """The standard variables that turn tracing on and point it at ``receiver`` (exported quickly)."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if isinstance(receiver, OtlpGrpcReceiver) else "http/protobuf",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
