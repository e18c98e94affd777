"""Inputs that once got a 500 (or were silently misread) get a 4xx on REST and gRPC alike; slow,
oversized, malformed and abandoned HTTP requests are bounded and answered without a server error."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
import yarl

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_sidecar._errors import error_info_from_call
from tests.support.bursts import metric, wait_for
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar, served_schema

MAX_INT64 = 2**63 - 1
ANY = pb.EXPECTED_VERSION_ANY  # gRPC appends below go to streams that already have events


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


async def rest(http: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, path, **kw) as r:
        body = await r.json(content_type=None)
        if r.status >= 400:
            assert body["error"]["request_id"] == r.headers["X-Request-Id"], body
        return r.status, body


async def expect_invalid(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    info = error_info_from_call(exc.value)
    assert info is not None and info.reason == "SYS_EVSTORE_VALIDATION_ERROR" and info.metadata["request_id"]
    return str(exc.value.details())


async def append_one(http: aiohttp.ClientSession, stream: str) -> None:
    status, body = await rest(http, "POST", f"/api/v1/streams/{stream}/events",
                              json={"events": [{"event_type": "E", "payload": {}}]})
    assert status == 201, body


# -- numbers in paths and queries --------------------------------------------------------------


@pytest.mark.parametrize("raw", ["\u00b2", "\u0661", "%D9%A1", "1_0", "+1", "%201"])  # ², Arabic-Indic 1
async def test_path_and_query_integers_are_ascii_digits_only(
    raw: str, http: aiohttp.ClientSession, stream: str
) -> None:
    await append_one(http, stream)
    status, body = await rest(http, "GET", f"/api/v1/streams/{stream}/events/{raw}")
    assert status == 400 and body["error"]["code"] == "SYS_EVSTORE_VALIDATION_ERROR", body
    status, body = await rest(http, "GET", f"/api/v1/streams/{stream}/events?page={raw}")
    assert status == 400 and body["error"]["details"][0]["field"] == "page", body


async def test_page_beyond_int64_is_400_on_rest_and_grpc(
    http: aiohttp.ClientSession, stub: pb_grpc.EventStoreServiceStub, stream: str
) -> None:
    await append_one(http, stream)
    for query in (f"from_version={MAX_INT64}&page=2", f"page={MAX_INT64}&page_size=200",
                  f"from_version={MAX_INT64}&page=2&event_type=E", f"to_version={MAX_INT64 + 1}",
                  "page=" + "9" * 5000):
        status, body = await rest(http, "GET", f"/api/v1/streams/{stream}/events?{query}")
        assert status == 400 and body["error"]["code"] == "SYS_EVSTORE_VALIDATION_ERROR", (query, body)
    # The last page that still fits is an ordinary (empty) page.
    status, body = await rest(http, "GET", f"/api/v1/streams/{stream}/events?from_version={MAX_INT64}")
    assert status == 200 and body["events"] == [], body
    await expect_invalid(stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream, from_version=MAX_INT64, page=2)))
    await expect_invalid(stub.ReadEvents(pb.ReadEventsRequest(
        stream_id=stream, from_version=MAX_INT64 - 10, page=2**32 - 1, page_size=200)))
    await expect_invalid(stub.ReadEventBySequence(pb.ReadEventBySequenceRequest(stream_id=stream, sequence=2**64 - 1)))
    await expect_invalid(stub.ReadAll(pb.ReadAllRequest(after_sequence=2**64 - 1)))


# -- snapshots and pruning ------------------------------------------------------------------------


async def test_snapshot_state_depth_is_limited_on_rest_and_grpc(
    http: aiohttp.ClientSession, stub: pb_grpc.EventStoreServiceStub, stream: str
) -> None:
    await append_one(http, stream)
    path = f"/api/v1/streams/{stream}/snapshots"
    for depth in (513, 1000, 30_000):
        text = f'{{"snapshot_version":1,"state":{nested(depth)}}}'
        status, body = await rest(http, "POST", path, data=text, headers={"Content-Type": "application/json"})
        assert status == 400 and body["error"]["code"] == "SYS_EVSTORE_VALIDATION_ERROR", (depth, body)
        await expect_invalid(stub.CreateSnapshot(pb.CreateSnapshotRequest(
            stream_id=stream, snapshot_version=1, state_json=nested(depth).encode())))
    # 512 is the default limit, inclusive, and reads back whole on both protocols.
    text = f'{{"snapshot_version":1,"state":{nested(512)}}}'
    status, body = await rest(http, "POST", path, data=text, headers={"Content-Type": "application/json"})
    assert status == 201, body
    status, body = await rest(http, "GET", f"{path}/latest")
    assert status == 200 and body["state"] == json.loads(nested(512)), body
    await stub.CreateSnapshot(pb.CreateSnapshotRequest(stream_id=stream, snapshot_version=1,
                                                       state_json=nested(512, '"x"').encode()))
    latest = await stub.GetLatestSnapshot(pb.GetLatestSnapshotRequest(stream_id=stream))
    assert json.loads(latest.snapshot.state_json) == json.loads(nested(512, '"x"'))


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_prune_snapshots_out_of_range_is_400(when: str, stub: pb_grpc.EventStoreServiceStub) -> None:
    details = await expect_invalid(stub.PruneSnapshots(pb.PruneSnapshotsRequest(older_than=when)))
    assert "older_than" in details


# -- the same JSON rules on both protocols ---------------------------------------------------------


async def test_depth_limit_is_exact_and_the_same_on_rest_and_grpc(
    http: aiohttp.ClientSession, stub: pb_grpc.EventStoreServiceStub, stream: str
) -> None:
    for depth, accepted in ((512, True), (513, False)):
        for field in ("payload", "metadata"):
            value = nested(depth) if field == "payload" else f'{{"k":{nested(depth - 1)}}}'
            event = f'{{"event_type":"E","payload":{value if field == "payload" else "{}"}'
            event += f',"metadata":{value}}}' if field == "metadata" else "}"
            status, body = await rest(http, "POST", f"/api/v1/streams/{stream}/events",
                                      data=f'{{"events":[{event}]}}', headers={"Content-Type": "application/json"})
            data = pb.EventData(event_type="E", payload_json=value.encode()) if field == "payload" else pb.EventData(
                event_type="E", payload_json=b"{}", metadata=pb.EventMetadata(extra_json=value.encode()))
            call = stub.AppendEvents(pb.AppendEventsRequest(stream_id=stream, events=[data], expected_version=ANY))
            if accepted:
                assert status == 201, (depth, field, body)
                await call
            else:
                # (REST names the body when the body as a whole is too deep, which it is exactly then)
                assert status == 400 and body["error"]["details"][0]["field"] in ("body", f"events[0].{field}"), body
                await expect_invalid(call)


async def test_a_leading_byte_order_mark_is_ignored_on_rest_and_grpc(
    http: aiohttp.ClientSession, stub: pb_grpc.EventStoreServiceStub, stream: str
) -> None:
    bom = "\ufeff".encode()
    status, body = await rest(http, "POST", f"/api/v1/streams/{stream}/events",
                              data=bom + b'{"events":[{"event_type":"E","payload":{"a":1}}]}',
                              headers={"Content-Type": "application/json"})
    assert status == 201 and body["events"][0]["payload"] == {"a": 1}, body
    response = await stub.AppendEvents(pb.AppendEventsRequest(expected_version=ANY,
        stream_id=stream, events=[pb.EventData(event_type="E", payload_json=bom + b'{"a":2}')]))
    read = await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream))
    assert [json.loads(e.payload_json) for e in read.events] == [{"a": 1}, {"a": 2}]
    assert response.current_version == 2
    # Anywhere else it is not JSON, on both.
    status, body = await rest(http, "POST", f"/api/v1/streams/{stream}/events",
                              data=b'{"events":[{"event_type":"E","payload":' + bom + b'{"a":1}}]}',
                              headers={"Content-Type": "application/json"})
    assert status == 400, body
    await expect_invalid(stub.AppendEvents(pb.AppendEventsRequest(expected_version=ANY,
        stream_id=stream, events=[pb.EventData(event_type="E", payload_json=b" " + bom + b'{"a":2}')])))


# -- HTTP itself: oversized, malformed, slow and abandoned requests -----------------------------------


async def exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, then read until the server closes or ``timeout`` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    out += chunk
                    if b"\r\n\r\n" in out and _complete(out):
                        break
        except TimeoutError:
            pass
        return out
    finally:
        writer.close()


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(sidecar: ServedSidecar) -> None:
    started = time.monotonic()
    response = await exchange(sidecar.rest_port, (
        b"POST /api/v1/streams/big-1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n{"))
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert json.loads(response.partition(b"\r\n\r\n")[2])["error"]["code"] == "SYS_EVSTORE_PAYLOAD_TOO_LARGE"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("request_bytes", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /api/v1/streams/s-1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
], ids=["request_line", "content_length", "chunk_size"])
async def test_malformed_http_is_a_400(request_bytes: bytes, sidecar: ServedSidecar) -> None:
    response = await exchange(sidecar.rest_port, request_bytes)
    assert response.split(b" ")[1] == b"400", response[:300]  # aiohttp answers these itself


@pytest.fixture(scope="module")
async def impatient(pg: LocalPostgres) -> AsyncIterator[ServedSidecar]:
    """A sidecar with one-second header and body timeouts."""
    env = {"EVENTSTORE_SERVER_HEADER_TIMEOUT_SECONDS": "1", "EVENTSTORE_SERVER_BODY_TIMEOUT_SECONDS": "1"}
    async with served_schema(pg.dsn, "imp", env=env) as served:
        yield served


async def test_slow_request_headers_are_cut_off(impatient: ServedSidecar) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.rest_port)
    started = time.monotonic()
    closed = False
    try:
        writer.write(b"POST /api/v1/streams/slow-1/events HTTP/1.1\r\n")
        for i in range(60):  # one header byte every 0.1 s: never a complete request
            writer.write(b"X-Slow: 1\r\n"[i % 11:i % 11 + 1])
            try:
                await writer.drain()
                async with asyncio.timeout(0.1):
                    if await reader.read(1024) == b"":
                        closed = True
                        break
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
                break
    finally:
        writer.close()
    assert closed, "the server kept a connection open that never finished its headers"
    assert time.monotonic() - started < 4


async def test_a_slow_body_gets_408_and_normal_clients_are_unaffected(impatient: ServedSidecar) -> None:
    started = time.monotonic()
    response = await exchange(impatient.rest_port, (
        b"POST /api/v1/streams/slow-2/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{\"events\":"), timeout=6)
    assert response.startswith(b"HTTP/1.1 408"), response[:300]
    assert json.loads(response.partition(b"\r\n\r\n")[2])["error"]["code"] == "SYS_EVSTORE_REQUEST_TIMEOUT"
    assert time.monotonic() - started < 4
    async with aiohttp.ClientSession(base_url=impatient.base_url) as http:
        await append_one(http, f"fast-{uuid.uuid4().hex[:8]}")


async def test_a_client_that_goes_away_mid_upload_is_499_not_an_internal_error(impatient: ServedSidecar) -> None:
    async with aiohttp.ClientSession(base_url=impatient.base_url) as http:
        route = "/api/v1/streams/{stream_id}/events"
        before = await metric(http, "eventstore_http_requests_total", route=route, status="499")
        errors = await metric(http, "eventstore_http_requests_total", route=route, status="500")
        _, writer = await asyncio.open_connection("127.0.0.1", impatient.rest_port)
        writer.write(b"POST /api/v1/streams/gone-1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"events\":[")
        await writer.drain()
        await wait_for(lambda: _in_flight_seen(http), 5, "the request to reach the server")
        writer.transport.abort()

        async def counted() -> bool:
            return await metric(http, "eventstore_http_requests_total", route=route, status="499") > before

        await wait_for(counted, 5, "the abandoned request to be counted as 499")
        assert await metric(http, "eventstore_http_requests_total", route=route, status="500") == errors
    log = impatient.log()
    assert "client went away" in log and "internal error" not in log, log


async def _in_flight_seen(http: aiohttp.ClientSession) -> bool:
    # The server's event loop reads sockets in the order their data arrives: once a request sent
    # later on another connection is answered, the earlier request's headers have been parsed.
    async with http.get("/healthz") as r:
        return r.status == 200


@pytest.mark.parametrize("raw", ["%ED%A0%80", "%00", "%FF", "%C0%80", "a%E2%80%A8"])
async def test_undecodable_or_control_text_in_urls_is_never_a_5xx(raw: str, http: aiohttp.ClientSession) -> None:
    for method, path in (("GET", f"/api/v1/streams/s{raw}/events"), ("POST", f"/api/v1/streams/s{raw}/events"),
                         ("GET", f"/api/v1/streams/s-1/events?event_type=E{raw}"),
                         ("GET", f"/api/v1/events?stream_prefix=s{raw}&event_type=E{raw}"),
                         ("GET", f"/api/v1/streams/s{raw}/snapshots/latest"),
                         ("DELETE", f"/api/v1/streams/s{raw}")):
        async with http.request(method, yarl.URL(path, encoded=True),
                                json={"events": [{"event_type": "E", "payload": {}}]}) as r:
            # (a sequence that is not UTF-8 stays percent-encoded in the id, which is then valid text)
            assert r.status < 500, (method, path, r.status)
