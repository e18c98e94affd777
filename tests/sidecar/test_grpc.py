"""The gRPC API over real gRPC: same semantics and codes as REST, rich status with ErrorInfo."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_sidecar._errors import error_info_from_call
from k1s0_sidecar._grpc_api import RPC_ROLES
from tests.support.sidecar import ServedSidecar


def data(kind: str = "OrderPlaced", payload: object = None, **meta: str) -> pb.EventData:
    return pb.EventData(
        event_type=kind,
        payload_json=json.dumps(payload if payload is not None else {"n": 1}).encode(),
        metadata=pb.EventMetadata(**meta),
    )


def _plain(e: pb.StoredEvent) -> tuple[object, ...]:
    """Payload JSON is equal as JSON, not necessarily as bytes: reads return PostgreSQL's jsonb text
    (normalised key order and spacing), appends echo what was sent."""
    copy = pb.StoredEvent()
    copy.CopyFrom(e)
    payload = json.loads(copy.payload_json)
    copy.ClearField("payload_json")
    return (copy.SerializeToString(deterministic=True), payload)


async def expect_error(call: object, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call  # type: ignore[misc]
    assert exc.value.code() == code, exc.value.details()
    info = error_info_from_call(exc.value)
    assert info is not None and info.reason == reason and info.domain == "eventstore.k1s0.io"
    assert info.metadata["request_id"]
    return exc.value


async def test_append_read_and_by_sequence(stub: pb_grpc.EventStoreServiceStub, stream: str) -> None:
    resp = await stub.AppendEvents(
        pb.AppendEventsRequest(
            stream_id=stream,
            events=[data(actor_id="user-001", correlation_id="corr_1"), data("OrderShipped", {"t": "TRK"})],
            expected_version=0,
        )
    )
    assert resp.stream_id == stream and resp.current_version == 2
    assert [e.version for e in resp.events] == [1, 2]
    first = resp.events[0]
    assert first.metadata.actor_id == "user-001" and first.metadata.correlation_id == "corr_1"
    assert not first.metadata.HasField("causation_id")
    assert json.loads(first.payload_json) == {"n": 1} and uuid.UUID(first.event_id)
    # Proto3 zero values mean the REST defaults: from_version 0 -> 1, page 0 -> 1, page_size 0 -> 50.
    read = await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream))
    assert [e.version for e in read.events] == [1, 2] and read.total_count == 2 and not read.has_next
    assert read.page == 1 and read.page_size == 50 and read.current_version == 2
    assert [_plain(e) for e in read.events] == [_plain(e) for e in resp.events]
    ranged = await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream, from_version=2, to_version=2))
    assert [e.event_type for e in ranged.events] == ["OrderShipped"]
    typed = await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream, event_type="OrderPlaced"))
    assert [e.version for e in typed.events] == [1]
    paged = await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream, page=1, page_size=1))
    assert paged.has_next and len(paged.events) == 1
    one = await stub.ReadEventBySequence(pb.ReadEventBySequenceRequest(stream_id=stream, sequence=first.sequence))
    assert _plain(one.event) == _plain(first)


async def test_conflict_details(stub: pb_grpc.EventStoreServiceStub, stream: str) -> None:
    await stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=[data(), data(), data()]))
    err = await expect_error(
        stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=[data()], expected_version=1)),
        grpc.StatusCode.ABORTED, "SYS_EVSTORE_VERSION_CONFLICT",
    )
    info = error_info_from_call(err)
    assert info is not None and info.metadata["expected_version"] == "1" and info.metadata["actual_version"] == "3"


async def test_not_found_codes(stub: pb_grpc.EventStoreServiceStub, stream: str) -> None:
    await expect_error(stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream)), grpc.StatusCode.NOT_FOUND,
                       "SYS_EVSTORE_STREAM_NOT_FOUND")
    await expect_error(stub.GetLatestSnapshot(pb.GetLatestSnapshotRequest(stream_id=stream)),
                       grpc.StatusCode.NOT_FOUND, "SYS_EVSTORE_SNAPSHOT_NOT_FOUND")
    await expect_error(stub.ReadEventBySequence(pb.ReadEventBySequenceRequest(stream_id=stream, sequence=10**9)),
                       grpc.StatusCode.NOT_FOUND, "SYS_EVSTORE_EVENT_NOT_FOUND")
    await expect_error(stub.DeleteStream(pb.DeleteStreamRequest(stream_id=stream)), grpc.StatusCode.NOT_FOUND,
                       "SYS_EVSTORE_STREAM_NOT_FOUND")


@pytest.mark.parametrize(
    "request_",
    [
        pb.AppendEventsRequest(stream_id="", events=[data()]),
        pb.AppendEventsRequest(stream_id="order-x", events=[]),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="A", payload_json=b"{bad")]),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="A", payload_json=b"")]),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="", payload_json=b"{}")]),
        pb.AppendEventsRequest(stream_id="order-x", events=[data()], expected_version=-5),
        pb.AppendEventsRequest(stream_id="order-x", events=[data()] * 101),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="A", payload_json=b"{}",
                                                                         event_id="not-a-uuid")]),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(
            event_type="A", payload_json=b"{}", metadata=pb.EventMetadata(extra_json=b"[1]"))]),
        # JSON that Python parses but jsonb refuses: refused before the append joins a batch
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="A", payload_json=b'{"a":NaN}')]),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="A", payload_json=b"-Infinity")]),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="A", payload_json=b'"\\u0000"')]),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="A", payload_json=b'["\\ud800"]')]),
        pb.AppendEventsRequest(stream_id="order-x", events=[pb.EventData(event_type="A", payload_json=b"\xff")]),
    ],
)
async def test_invalid_appends(stub: pb_grpc.EventStoreServiceStub, request_: pb.AppendEventsRequest) -> None:
    await expect_error(stub.AppendEvents(request_), grpc.StatusCode.INVALID_ARGUMENT, "SYS_EVSTORE_VALIDATION_ERROR")


async def test_append_echoes_payload_bytes_and_bad_neighbours_do_not_fail_it(
    stub: pb_grpc.EventStoreServiceStub, stream: str
) -> None:
    """The answer carries the request's own payload text (spacing, escapes); reads return jsonb's
    rendering of the same JSON. Bad appends sent at the same moment (so they may share a group-commit
    batch) fail alone."""
    import asyncio

    text = b'{ "b" : [1, 2.50],\n "a": "caf\\u00e9" }'
    bad = [pb.AppendEventsRequest(stream_id=f"{stream}-bad{i}", events=[pb.EventData(
        event_type="A", payload_json=body)]) for i, body in enumerate((b'["\\ud800"]', b'"\\u0000"', b"NaN"))]
    good = pb.AppendEventsRequest(stream_id=stream, events=[pb.EventData(event_type="A", payload_json=text)])
    results = await asyncio.gather(*(stub.AppendEvents(r) for r in [*bad, good, *bad]), return_exceptions=True)
    answer = results[len(bad)]
    assert isinstance(answer, pb.AppendEventsResponse), answer
    assert answer.events[0].payload_json == text
    for failed in results[:len(bad)] + results[len(bad) + 1:]:
        assert isinstance(failed, grpc.aio.AioRpcError) and failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    page = await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream))
    assert [json.loads(e.payload_json) for e in page.events] == [{"a": "café", "b": [1, 2.5]}]


async def test_invalid_reads(stub: pb_grpc.EventStoreServiceStub, stream: str) -> None:
    await stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=[data()]))
    await expect_error(stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream, page_size=201)),
                       grpc.StatusCode.INVALID_ARGUMENT, "SYS_EVSTORE_VALIDATION_ERROR")
    await expect_error(stub.ReadEventBySequence(pb.ReadEventBySequenceRequest(stream_id=stream, sequence=0)),
                       grpc.StatusCode.INVALID_ARGUMENT, "SYS_EVSTORE_VALIDATION_ERROR")


async def test_snapshots_and_delete(stub: pb_grpc.EventStoreServiceStub, stream: str) -> None:
    await expect_error(
        stub.CreateSnapshot(pb.CreateSnapshotRequest(stream_id=stream, snapshot_version=1, state_json=b"{}")),
        grpc.StatusCode.NOT_FOUND, "SYS_EVSTORE_STREAM_NOT_FOUND",
    )
    await stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=[data(), data()]))
    created = await stub.CreateSnapshot(pb.CreateSnapshotRequest(
        stream_id=stream, snapshot_version=2, aggregate_type="Order", state_json=b'{"status":"shipped"}'))
    assert created.id.startswith("snap_") and created.snapshot_version == 2 and created.created_at
    latest = await stub.GetLatestSnapshot(pb.GetLatestSnapshotRequest(stream_id=stream))
    assert latest.snapshot.id == created.id and json.loads(latest.snapshot.state_json) == {"status": "shipped"}
    assert latest.snapshot.aggregate_type == "Order"
    await expect_error(
        stub.CreateSnapshot(pb.CreateSnapshotRequest(stream_id=stream, snapshot_version=3, state_json=b"{}")),
        grpc.StatusCode.INVALID_ARGUMENT, "SYS_EVSTORE_VALIDATION_ERROR",
    )
    await expect_error(
        stub.CreateSnapshot(pb.CreateSnapshotRequest(stream_id=stream, snapshot_version=1, state_json=b"nope")),
        grpc.StatusCode.INVALID_ARGUMENT, "SYS_EVSTORE_VALIDATION_ERROR",
    )
    deleted = await stub.DeleteStream(pb.DeleteStreamRequest(stream_id=stream))
    assert deleted.success and deleted.deleted_events == 2
    assert deleted.message == f"stream {stream} and all related data deleted"


async def test_metadata_round_trip_keeps_extra_keys_and_nulls(stub: pb_grpc.EventStoreServiceStub,
                                                              stream: str) -> None:
    extra = {"trace_id": "abc123", "causation_id": None, "n": 5}
    ev = pb.EventData(event_type="A", payload_json=b"[1,2]",
                      metadata=pb.EventMetadata(actor_id="u1", extra_json=json.dumps(extra).encode()))
    resp = await stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=[ev]))
    stored = resp.events[0]
    assert stored.metadata.actor_id == "u1"
    assert json.loads(stored.metadata.extra_json) == extra
    assert json.loads(stored.payload_json) == [1, 2]


async def test_read_all(stub: pb_grpc.EventStoreServiceStub, stream: str) -> None:
    a = await stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=[data("First")]))
    await stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=[data("Second")],
                                                   expected_version=pb.EXPECTED_VERSION_ANY))
    resp = await stub.ReadAll(pb.ReadAllRequest(after_sequence=a.events[0].sequence - 1, stream_prefixes=[stream]))
    assert [e.event_type for e in resp.events] == ["First", "Second"]
    assert resp.head_sequence >= resp.events[-1].sequence


async def test_health_and_reflection(sidecar: ServedSidecar) -> None:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "k1s0.system.eventstore.v1.EventStoreService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for r in responses:
            names = {s.name for s in r.list_services_response.service}
            assert "k1s0.system.eventstore.v1.EventStoreService" in names
            break


def test_every_rpc_has_an_authorisation_rule() -> None:
    service = pb.DESCRIPTOR.services_by_name["EventStoreService"]
    assert {m.name for m in service.methods} == set(RPC_ROLES)
