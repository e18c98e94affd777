"""The gRPC edge (grpc.aio): the same service and the same error map as REST.

One interceptor authenticates, authorises (``RPC_ROLES``), times and renders errors for every
method, unary or streaming; servicer methods only convert protobuf to calls and back.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from k1s0_event_store import (
    MAX_JSON_DEPTH,
    AppendRequest,
    AppendResult,
    EncodedEvent,
    EventEnvelope,
    PermissionDeniedError,
    PreparedEvent,
    ReadForm,
    Snapshot,
    ValidationError,
    decode_json_text,
    encode_event,
    parse_json,
    prepare_json_event,
    rfc3339,
)
from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_event_store.protocol import metadata_from_pb, metadata_to_pb

from . import _audit as audit
from . import _tracing as tracing
from . import _wire as wire
from ._authz import Authenticator, Principal, Role, check
from ._errors import error_code, grpc_code, grpc_status, new_request_id
from ._metrics import Metrics
from ._service import EventStoreService, audit_subject, audited_metadata, time_texts
from ._subscriptions import BATCH_LIMIT, Batch

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EventStoreService"].full_name
_PREFIX = f"/{SERVICE_NAME}/"

#: The role each RPC needs. Every method of the service must be listed (a test enforces it).
RPC_ROLES: dict[str, Role | None] = {
    "AppendEvents": Role.SYS_OPERATOR,
    "ReadEvents": Role.SYS_AUDITOR,
    "ReadEventBySequence": Role.SYS_AUDITOR,
    "CreateSnapshot": Role.SYS_OPERATOR,
    "GetLatestSnapshot": Role.SYS_AUDITOR,
    "DeleteStream": Role.SYS_ADMIN,
    "ReadAll": Role.SYS_AUDITOR,
    "SubscribeToStream": Role.SYS_AUDITOR,
    "SubscribeToAll": Role.SYS_AUDITOR,
    "PruneSnapshots": Role.SYS_ADMIN,
    "ListStreams": Role.SYS_AUDITOR,
}
#: Services outside ours (health, reflection) are open, like /healthz.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current_principal() -> Principal | None:
    return _principal.get()


# -- conversions -------------------------------------------------------------------------------

def _json_bytes(raw: bytes, field: str, max_depth: int) -> Any:
    if not raw:
        raise ValidationError(f"{field} is required (JSON text)", field=field)
    return parse_json(decode_json_text(raw, field), field, max_depth)


_NO_METADATA = pb.EventMetadata()


def _metadata_pb(metadata_json: str) -> pb.EventMetadata:
    # Most events carry no metadata: skip the parse (a hot path of every read).
    return _NO_METADATA if metadata_json == "{}" else metadata_to_pb(json.loads(metadata_json))


def event_to_pb(e: EncodedEvent | EventEnvelope) -> pb.StoredEvent:
    encoded = encode_event(e) if isinstance(e, EventEnvelope) else e
    metadata = _metadata_pb(encoded.metadata_json)
    return pb.StoredEvent(
        stream_id=encoded.stream_id,
        sequence=encoded.sequence,
        event_type=encoded.event_type,
        version=encoded.version,
        payload_json=encoded.payload_json.encode(),
        metadata=metadata,
        occurred_at=encoded.occurred_at,
        stored_at=encoded.stored_at,
        event_id=encoded.event_id,
    )


def add_events_pb(into: Any, events: Iterable[EncodedEvent]) -> None:
    """Append events to a repeated ``StoredEvent`` field, each built in place by ``add``.

    The hot loop of every gRPC read: building each message and then copying it into the page
    (``event_to_pb`` in a list) costs about 2.5 times as much per event."""
    add = into.add
    for e in events:
        add(stream_id=e.stream_id, sequence=e.sequence, event_type=e.event_type, version=e.version,
            payload_json=e.payload_json.encode(), metadata=_metadata_pb(e.metadata_json),
            occurred_at=e.occurred_at, stored_at=e.stored_at, event_id=e.event_id)


def prepared_from_pb(
    d: pb.EventData, index: int, subject: str | None, now: datetime, max_depth: int = MAX_JSON_DEPTH
) -> PreparedEvent:
    """An appended event straight from the wire: its payload JSON text is validated and kept."""
    where = f"events[{index}]"
    text = decode_json_text(d.payload_json, f"{where}.payload_json")
    metadata = metadata_from_pb(d.metadata, f"{where}.metadata", max_depth) if d.HasField("metadata") else None
    if subject is not None:
        metadata = audited_metadata(dict(metadata or {}), subject)
    return prepare_json_event(
        d.event_type, text, metadata, index,
        event_id=wire.parse_uuid(d.event_id, f"{where}.event_id") if d.event_id else None,
        occurred_at=wire.parse_time(d.occurred_at, f"{where}.occurred_at") if d.occurred_at else None,
        default_time=now,
        max_depth=max_depth,
    )


def add_appended_pb(
    into: Any, request: AppendRequest, result: AppendResult, data: Sequence[pb.EventData], audited: bool
) -> None:
    """Add the stored events of an append to a repeated ``StoredEvent`` field, answered from the
    request itself: its payload bytes and metadata message are echoed, not re-encoded (each message
    built in place, as in ``add_events_pb``). An idempotent replay answers what was stored."""
    when = time_texts()
    add = into.add
    sid = result.stream_id.value
    for stored, p, d in zip(result.events, request.events, data, strict=False):
        if stored.payload is not p.payload:
            into.append(event_to_pb(stored))
            continue
        # audited: the stored metadata carries the subject, so it differs from the request's
        metadata = (
            metadata_to_pb(p.metadata) if audited else d.metadata if d.HasField("metadata") else _NO_METADATA
        )
        add(stream_id=sid, sequence=stored.sequence or 0, event_type=p.event_type,
            version=stored.version or 0, payload_json=d.payload_json, metadata=metadata,
            occurred_at=when(p.occurred_at), stored_at=when(stored.stored_at), event_id=str(p.event_id))


def expected_version_from_pb(value: int) -> int | None:
    """The design's int64 ``expected_version`` as the service takes it: unset is 0 (new or empty),
    as a client generated from the design's proto means it; only ``EXPECTED_VERSION_ANY`` (-2),
    sent on purpose, turns the check off (None)."""
    if value == pb.EXPECTED_VERSION_ANY:
        return None
    if value < pb.EXPECTED_VERSION_NO_STREAM:
        raise ValidationError(
            f"expected_version must be -2 (any version), -1 (no stream), 0 or a positive version (got {value})",
            field="expected_version",
        )
    return value


def snapshot_to_pb(s: Snapshot) -> pb.Snapshot:
    return pb.Snapshot(
        id=s.id,
        stream_id=str(s.stream_id),
        snapshot_version=s.version,
        aggregate_type=s.aggregate_type,
        state_json=json.dumps(s.state, ensure_ascii=False).encode(),
        created_at=rfc3339(s.taken_at),
    )


# -- servicer ------------------------------------------------------------------------------------


def _notification(e: EncodedEvent) -> pb.EventNotification:
    """A subscription's message for one event; built once and sent to every subscriber (read-only)."""
    return pb.EventNotification(event=event_to_pb(e))


async def _notifications(batches: AsyncIterator[Batch], max_batch: int) -> AsyncIterator[pb.EventNotification]:
    """A subscription's messages: one per event, or (``max_batch`` > 1) up to ``max_batch`` events each.

    grpc.aio sends one message per write and each write is a round of its own through grpc's core
    and poller thread, so one message per event is what made a subscriber fall behind under load;
    a batch is whatever the hub had ready (never waited for), so batching adds no latency. Each
    event's ``StoredEvent`` is rendered once and shared by every subscriber (upb copies it in)."""
    limit = min(max_batch, BATCH_LIMIT)
    async for batch in batches:
        if not batch:
            continue  # a keep-alive: HTTP/2 has its own
        if limit <= 1:
            for delivery in batch:
                yield delivery.render(_notification)
            continue
        for start in range(0, len(batch), limit):
            notification = pb.EventNotification()
            notification.events.extend([d.render(event_to_pb) for d in batch[start:start + limit]])
            yield notification


class EventStoreServicer(pb_grpc.EventStoreServiceServicer):
    def __init__(self, service: EventStoreService) -> None:
        self.service = service

    async def AppendEvents(self, request: pb.AppendEventsRequest, context: Any) -> pb.AppendEventsResponse:
        subject = audit_subject(current_principal())
        data = request.events
        appended = await self.service.append(
            request.stream_id, data, expected_version_from_pb(request.expected_version), subject, prepared_from_pb
        )
        result = appended.result
        response = pb.AppendEventsResponse(stream_id=result.stream_id.value, current_version=result.current_version)
        # audited or traced: the stored metadata differs from the request's, so it is what is echoed
        add_appended_pb(response.events, appended.request, result, data, subject is not None or tracing.ENABLED)
        return response

    async def ReadEvents(self, request: pb.ReadEventsRequest, context: Any) -> pb.ReadEventsResponse:
        page = await self.service.read_stream(
            request.stream_id,
            ReadForm.ENCODED,
            from_version=request.from_version or None,
            to_version=request.to_version if request.HasField("to_version") else None,
            event_type=request.event_type if request.HasField("event_type") else None,
            page=request.page or None,
            page_size=request.page_size or None,
        )
        response = pb.ReadEventsResponse(
            stream_id=str(page.page.stream_id),
            current_version=page.page.current_version,
            total_count=page.page.total_count,
            has_next=page.has_next,
            page=page.number,
            page_size=page.size,
        )
        add_events_pb(response.events, page.page.events)
        return response

    async def ReadEventBySequence(
        self, request: pb.ReadEventBySequenceRequest, context: Any
    ) -> pb.ReadEventBySequenceResponse:
        event = await self.service.get_event(request.stream_id, request.sequence)
        return pb.ReadEventBySequenceResponse(event=event_to_pb(event))

    async def CreateSnapshot(self, request: pb.CreateSnapshotRequest, context: Any) -> pb.CreateSnapshotResponse:
        state = _json_bytes(request.state_json, "state_json", self.service.settings.max_json_depth)
        snap = await self.service.create_snapshot(
            request.stream_id, request.snapshot_version, request.aggregate_type or None, state
        )
        return pb.CreateSnapshotResponse(
            id=snap.id,
            stream_id=str(snap.stream_id),
            snapshot_version=snap.version,
            created_at=rfc3339(snap.taken_at),
        )

    async def GetLatestSnapshot(
        self, request: pb.GetLatestSnapshotRequest, context: Any
    ) -> pb.GetLatestSnapshotResponse:
        snap = await self.service.latest_snapshot(request.stream_id)
        return pb.GetLatestSnapshotResponse(snapshot=snapshot_to_pb(snap))

    async def DeleteStream(self, request: pb.DeleteStreamRequest, context: Any) -> pb.DeleteStreamResponse:
        removed = await self.service.delete_stream(request.stream_id)
        return pb.DeleteStreamResponse(
            success=True,
            message=f"stream {request.stream_id} and all related data deleted",
            deleted_events=removed,
        )

    async def ReadAll(self, request: pb.ReadAllRequest, context: Any) -> pb.ReadAllResponse:
        events, head = await self.service.read_all(
            ReadForm.ENCODED,
            request.after_sequence, request.limit or None, list(request.stream_prefixes), list(request.event_types)
        )
        response = pb.ReadAllResponse(head_sequence=head)
        add_events_pb(response.events, events)
        return response

    async def ListStreams(self, request: pb.ListStreamsRequest, context: Any) -> pb.ListStreamsResponse:
        listed = await self.service.list_streams(request.prefix, request.after or None, request.limit or None)
        response = pb.ListStreamsResponse(next_after=listed.next_after or "")
        add = response.streams.add
        for s in listed.streams:
            add(stream_id=str(s.stream_id), aggregate_type=s.aggregate_type, current_version=s.current_version,
                updated_at=rfc3339(s.updated_at))
        return response

    async def PruneSnapshots(self, request: pb.PruneSnapshotsRequest, context: Any) -> pb.PruneSnapshotsResponse:
        removed = await self.service.prune_snapshots(wire.parse_time(request.older_than, "older_than"))
        return pb.PruneSnapshotsResponse(removed=removed)

    async def SubscribeToStream(  # type: ignore[override]
        self, request: pb.SubscribeToStreamRequest, context: Any
    ) -> AsyncIterator[pb.EventNotification]:
        batches = self.service.hub().stream(request.stream_id, request.after_version, request.from_end)
        async for notification in _notifications(batches, request.max_batch):
            yield notification

    async def SubscribeToAll(  # type: ignore[override]
        self, request: pb.SubscribeToAllRequest, context: Any
    ) -> AsyncIterator[pb.EventNotification]:
        batches = self.service.hub().all(
            request.after_sequence, list(request.stream_prefixes), list(request.event_types), request.from_end
        )
        async for notification in _notifications(batches, request.max_batch):
            yield notification


# -- interceptor ---------------------------------------------------------------------------------


class _Undecodable:
    """A request message protobuf could not parse (e.g. a string field that is not UTF-8)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The method's deserializer, answering an unparsable message with ``_Undecodable`` instead of
    raising: grpc would render that as UNKNOWN, but it is the client's bad input (400)."""
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return parse


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise ValidationError(f"the request is not a valid message: {request.reason}", field="request")


def _metadata(context: Any, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return str(v)
    return None


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """Auth, role check, error rendering and metrics for every RPC of our service."""

    def __init__(self, authenticator: Authenticator, metrics: Metrics) -> None:
        self.authenticator = authenticator
        self.metrics = metrics
        # The wrapped handler of each method, built on its first call: wrapping per call cost about
        # a tenth of an empty RPC's CPU. Keyed by the inner handler, which the servicer's generic
        # handler returns unchanged for every call of a method.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method_path: str = handler_call_details.method
        if handler is None or not method_path.startswith(_PREFIX):
            return handler
        cached = self._wrapped.get(method_path)
        if cached is None or cached[0] is not handler:
            cached = self._wrapped[method_path] = (handler, self._wrap(method_path[len(_PREFIX):], handler))
        return cached[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        if method not in RPC_ROLES:  # fail closed: an RPC without a rule is refused
            return grpc.unary_unary_rpc_method_handler(self._refuse(method))
        required = RPC_ROLES[method]
        ok = self.metrics.grpc_requests.labels(method, "OK")  # (labels() per call is a lookup with a lock)
        latency = self.metrics.grpc_latency.labels(method)
        operation = audit.GRPC_OPERATIONS.get(method)  # every write is audited
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                started = time.perf_counter()
                request_id = _metadata(context, "x-request-id") or new_request_id()
                # (the peer is looked up only when a line will name it: reads are the hot path; and
                # only now, while the call is live: grpc's peer() on a cancelled call crashes the process)
                client = audit.peer_address(context.peer()) if operation or audit.access_on() else None
                opened = (
                    audit.begin(operation, "grpc", request_id, client, getattr(request, "stream_id", None))
                    if operation is not None else None
                )
                try:
                    token = _principal.set(await self._authorize(context, required))
                    try:
                        _check_decoded(request)
                        response = await inner(request, context)
                    finally:
                        _principal.reset(token)
                except Exception as exc:
                    code = self._code(exc, context)
                    if opened is not None:
                        audit.finish(*opened, audit.FAILURE, error_code(exc), grpc_status=code)
                    audit.access("grpc", "gRPC", method, code, started, request_id, client)
                    await self._abort(context, exc, request_id, method, started)
                    raise
                except BaseException:  # cancelled by the client: the write may or may not have happened
                    if opened is not None:
                        audit.finish(*opened, audit.CANCELLED, grpc_status="CANCELLED")
                    audit.access("grpc", "gRPC", method, "CANCELLED", started, request_id, client)
                    raise
                if opened is not None:
                    audit.finish(*opened, audit.SUCCESS, grpc_status="OK")
                audit.access("grpc", "gRPC", method, "OK", started, request_id, client)
                ok.inc()
                latency.observe(time.perf_counter() - started)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                started = time.perf_counter()
                request_id = _metadata(context, "x-request-id") or new_request_id()
                # Asked now, while the call is live: grpc's peer() on a cancelled call crashes the process.
                client = audit.peer_address(context.peer()) if audit.access_on() else None
                try:
                    token = _principal.set(await self._authorize(context, required))
                    try:
                        _check_decoded(request)
                        async for item in inner_stream(request, context):
                            yield item
                    finally:
                        # A cancelled call's generator is closed from another context, where the token
                        # cannot be reset (and need not be); raising here would hide the cancellation.
                        with contextlib.suppress(ValueError):
                            _principal.reset(token)
                except Exception as exc:
                    audit.access("grpc", "gRPC", method, self._code(exc, context), started, request_id, client)
                    await self._abort(context, exc, request_id, method, started)
                    raise
                except BaseException:  # the subscriber went away
                    audit.access("grpc", "gRPC", method, "CANCELLED", started, request_id, client)
                    raise
                audit.access("grpc", "gRPC", method, "OK", started, request_id, client)
                ok.inc()
                latency.observe(time.perf_counter() - started)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=_lenient(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _refuse(self, method: str) -> Callable[[Any, Any], Awaitable[Any]]:
        async def refuse(request: Any, context: Any) -> Any:
            await self._abort(context, PermissionDeniedError(f"no authorisation rule for {method}"),
                              new_request_id(), method, time.perf_counter())

        return refuse

    async def _authorize(self, context: Any, required: Role | None) -> Principal | None:
        if required is None:
            return None
        principal = await self.authenticator.authenticate(_metadata(context, "authorization"))
        audit.note_principal(principal)
        check(principal, required)
        return principal

    @staticmethod
    def _code(exc: BaseException, context: Any) -> str:
        """The gRPC status name ``exc`` is answered with (as ``grpc_status`` renders it)."""
        if isinstance(exc, grpc.aio.AbortError):  # the handler aborted with a status of its own
            return str(getattr(context.code(), "name", "UNKNOWN"))
        return grpc_code(exc).name

    async def _abort(self, context: Any, exc: BaseException, request_id: str, method: str, started: float) -> None:
        if isinstance(exc, grpc.aio.AbortError):
            return
        status = grpc_status(exc, request_id)
        if tracing.ENABLED:
            tracing.grpc_code(status.code)
        self._observe(method, status.code.name, started)
        await context.abort_with_status(status)

    def _observe(self, method: str, code: str, started: float) -> None:
        self.metrics.grpc_requests.labels(method, code).inc()
        self.metrics.grpc_latency.labels(method).observe(time.perf_counter() - started)
