"""The seed 000 REST API, black-box over real HTTP against a served sidecar on real PostgreSQL."""

from __future__ import annotations

import re
import uuid
from typing import Any

import aiohttp
import pytest

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")

SEED_APPEND = {
    "events": [
        {
            "event_type": "OrderPlaced",
            "payload": {
                "order_id": "order-001",
                "tenant_id": "tenant-abc",
                "items": [{"product_id": "prod-001", "quantity": 2, "unit_price": 1500}],
                "total_amount": 3000,
            },
            "metadata": {"actor_id": "user-001", "correlation_id": "corr_01JABCDEF1234567890", "causation_id": None},
        }
    ],
    "expected_version": 0,
}
SEED_SNAPSHOT = {
    "snapshot_version": 2,
    "aggregate_type": "Order",
    "state": {"order_id": "order-001", "status": "shipped", "tenant_id": "tenant-abc", "total_amount": 3000,
              "tracking_number": "TRK-12345"},
}


async def _call(http: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    async with http.request(method, path, **kw) as r:
        body = await r.json(content_type=None)
        return r.status, body, r.headers


def assert_error(status: int, body: Any, headers: Any, expected_status: int, code: str) -> dict[str, Any]:
    assert status == expected_status, body
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"code", "message", "request_id", "details"}
    assert err["code"] == code and err["message"] and isinstance(err["details"], list)
    assert err["request_id"] == headers["X-Request-Id"]
    return dict(err)


async def test_seed_append_example_round_trips_field_by_field(http: aiohttp.ClientSession) -> None:
    status, body, _ = await _call(http, "POST", "/api/v1/streams/order-order-001/events", json=SEED_APPEND)
    assert status == 201
    assert set(body) == {"stream_id", "events", "current_version"}
    assert body["stream_id"] == "order-order-001" and body["current_version"] == 1
    (event,) = body["events"]
    sent = SEED_APPEND["events"][0]  # type: ignore[index]
    assert event["stream_id"] == "order-order-001" and event["version"] == 1 and event["sequence"] >= 1
    assert event["event_type"] == sent["event_type"]
    assert event["payload"] == sent["payload"]
    assert event["metadata"] == sent["metadata"]
    assert RFC3339_MS.match(event["occurred_at"]) and RFC3339_MS.match(event["stored_at"])
    uuid.UUID(event["event_id"])
    # Read it back: the list body of the seed, with pagination.
    status, listing, _ = await _call(http, "GET", "/api/v1/streams/order-order-001/events")
    assert status == 200
    assert set(listing) == {"stream_id", "events", "current_version", "pagination"}
    assert listing["events"] == [event]
    assert listing["pagination"] == {"total_count": 1, "page": 1, "page_size": 50, "has_next": False}
    # By sequence.
    status, one, _ = await _call(http, "GET", f"/api/v1/streams/order-order-001/events/{event['sequence']}")
    assert status == 200 and one == event
    # The seed's 409 body.
    status, conflict, headers = await _call(http, "POST", "/api/v1/streams/order-order-001/events", json=SEED_APPEND)
    err = assert_error(status, conflict, headers, 409, "SYS_EVSTORE_VERSION_CONFLICT")
    assert err["message"] == "version conflict for stream order-order-001: expected 0, actual 1"
    assert err["details"] == [
        {"field": "expected_version", "message": "0"},
        {"field": "actual_version", "message": "1"},
    ]


async def test_snapshots_seed_examples(http: aiohttp.ClientSession, stream: str) -> None:
    status, body, headers = await _call(http, "POST", f"/api/v1/streams/{stream}/snapshots", json=SEED_SNAPSHOT)
    assert_error(status, body, headers, 404, "SYS_EVSTORE_STREAM_NOT_FOUND")
    status, body, headers = await _call(http, "GET", f"/api/v1/streams/{stream}/snapshots/latest")
    err = assert_error(status, body, headers, 404, "SYS_EVSTORE_SNAPSHOT_NOT_FOUND")
    assert err["message"] == f"no snapshot found for stream: {stream}"
    two = {"events": [{"event_type": "A", "payload": {}}, {"event_type": "B", "payload": {}}]}
    assert (await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=two))[0] == 201
    status, created, _ = await _call(http, "POST", f"/api/v1/streams/{stream}/snapshots", json=SEED_SNAPSHOT)
    assert status == 201
    assert set(created) == {"id", "stream_id", "snapshot_version", "aggregate_type", "created_at"}
    assert created["stream_id"] == stream and created["snapshot_version"] == 2 and created["aggregate_type"] == "Order"
    assert created["id"].startswith("snap_") and RFC3339_MS.match(created["created_at"])
    status, latest, _ = await _call(http, "GET", f"/api/v1/streams/{stream}/snapshots/latest")
    assert status == 200 and latest == {**created, "state": SEED_SNAPSHOT["state"]}
    too_high = {**SEED_SNAPSHOT, "snapshot_version": 3}
    status, body, headers = await _call(http, "POST", f"/api/v1/streams/{stream}/snapshots", json=too_high)
    err = assert_error(status, body, headers, 400, "SYS_EVSTORE_VALIDATION_ERROR")
    assert err["details"][0]["field"] == "snapshot_version"


async def test_delete_stream(http: aiohttp.ClientSession, stream: str) -> None:
    await _call(http, "POST", f"/api/v1/streams/{stream}/events", json={"events": [{"event_type": "A", "payload": 1}]})
    status, body, _ = await _call(http, "DELETE", f"/api/v1/streams/{stream}")
    assert status == 200
    assert body["success"] is True and body["message"] == f"stream {stream} and all related data deleted"
    status, body, headers = await _call(http, "GET", f"/api/v1/streams/{stream}/events")
    err = assert_error(status, body, headers, 404, "SYS_EVSTORE_STREAM_NOT_FOUND")
    assert err["message"] == f"stream not found: {stream}"
    status, body, headers = await _call(http, "DELETE", f"/api/v1/streams/{stream}")
    assert_error(status, body, headers, 404, "SYS_EVSTORE_STREAM_NOT_FOUND")


async def test_expected_version_codes(http: aiohttp.ClientSession, stream: str) -> None:
    one = {"events": [{"event_type": "A", "payload": {}}], "expected_version": -1}
    assert (await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=one))[0] == 201
    status, body, headers = await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=one)
    assert_error(status, body, headers, 409, "SYS_EVSTORE_STREAM_ALREADY_EXISTS")
    anyv = {"events": [{"event_type": "A", "payload": {}}]}
    status, body, _ = await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=anyv)
    assert status == 201 and body["current_version"] == 2


async def test_event_by_sequence_of_another_stream_is_not_found(http: aiohttp.ClientSession, stream: str) -> None:
    other = stream + "-other"
    _, body, _ = await _call(http, "POST", f"/api/v1/streams/{other}/events",
                             json={"events": [{"event_type": "A", "payload": {}}]})
    seq = body["events"][0]["sequence"]
    await _call(http, "POST", f"/api/v1/streams/{stream}/events", json={"events": [{"event_type": "A", "payload": {}}]})
    status, body, headers = await _call(http, "GET", f"/api/v1/streams/{stream}/events/{seq}")
    assert_error(status, body, headers, 404, "SYS_EVSTORE_EVENT_NOT_FOUND")
    status, body, headers = await _call(http, "GET", f"/api/v1/streams/{stream}/events/abc")
    assert_error(status, body, headers, 400, "SYS_EVSTORE_VALIDATION_ERROR")


async def test_query_parameters_and_pages(http: aiohttp.ClientSession, stream: str) -> None:
    events = [{"event_type": "Even" if i % 2 == 0 else "Odd", "payload": {"i": i}} for i in range(1, 13)]
    await _call(http, "POST", f"/api/v1/streams/{stream}/events", json={"events": events})
    base = f"/api/v1/streams/{stream}/events"
    _, body, _ = await _call(http, "GET", base, params={"from_version": 3, "to_version": 9, "page_size": 3, "page": 2})
    assert [e["version"] for e in body["events"]] == [6, 7, 8]
    assert body["pagination"] == {"total_count": 7, "page": 2, "page_size": 3, "has_next": True}
    assert body["current_version"] == 12
    _, body, _ = await _call(http, "GET", base, params={"event_type": "Odd", "page_size": 4, "page": 2})
    assert [e["version"] for e in body["events"]] == [9, 11]
    assert body["pagination"] == {"total_count": 6, "page": 2, "page_size": 4, "has_next": False}
    for params, field in [
        ({"page_size": 201}, "page_size"),
        ({"page_size": 0}, "page_size"),
        ({"page": 0}, "page"),
        ({"from_version": -1}, "from_version"),
        ({"from_version": "x"}, "from_version"),
        ({"from_version": 5, "to_version": 4}, "to_version"),
    ]:
        status, body, headers = await _call(http, "GET", base, params=params)
        err = assert_error(status, body, headers, 400, "SYS_EVSTORE_VALIDATION_ERROR")
        assert err["details"][0]["field"] == field, params


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": []}, "events"),
        ({}, "events"),
        ({"events": "x"}, "events"),
        ({"events": [{"payload": {}}]}, "events[0].event_type"),
        ({"events": [{"event_type": "A"}]}, "events[0].payload"),
        ({"events": [{"event_type": 5, "payload": {}}]}, "events[0].event_type"),
        ({"events": [{"event_type": "", "payload": {}}]}, "events[0].event_type"),
        ({"events": [{"event_type": "A", "payload": {}, "metadata": []}]}, "events[0].metadata"),
        ({"events": [{"event_type": "A", "payload": {}, "event_id": "nope"}]}, "events[0].event_id"),
        ({"events": [{"event_type": "A", "payload": {}, "occurred_at": "yesterday"}]}, "events[0].occurred_at"),
        ({"events": [{"event_type": "A", "payload": {}, "occurred_at": "2026-01-01T00:00:00"}]},
         "events[0].occurred_at"),
        ({"events": [{"event_type": "A", "payload": {"s": "a\u0000b"}}]}, "events[0].payload"),
        ({"events": [{"event_type": "A", "payload": {}}], "expected_version": "0"}, "expected_version"),
        ({"events": [{"event_type": "A", "payload": {}}], "expected_version": -2}, "expected_version"),
        ({"events": [{"event_type": "A", "payload": {}}], "expected_versoin": 3}, "body.expected_versoin"),
        ({"events": [{"event_type": "A", "payload": {}, "extra": 1}]}, "events[0].extra"),
        ({"events": [{"event_type": "A", "payload": {}}] * 101}, "events"),
        ([1, 2], "body"),
    ],
)
async def test_bad_append_bodies(http: aiohttp.ClientSession, stream: str, body: Any, field: str) -> None:
    status, resp, headers = await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=body)
    err = assert_error(status, resp, headers, 400, "SYS_EVSTORE_VALIDATION_ERROR")
    assert err["details"] and err["details"][0]["field"] == field
    status, _, _ = await _call(http, "GET", f"/api/v1/streams/{stream}/events")
    assert status == 404, "nothing was written"


async def test_malformed_json_and_large_bodies(http: aiohttp.ClientSession, stream: str) -> None:
    path = f"/api/v1/streams/{stream}/events"
    status, body, headers = await _call(http, "POST", path, data=b"{not json")
    assert_error(status, body, headers, 400, "SYS_EVSTORE_VALIDATION_ERROR")
    status, body, headers = await _call(http, "POST", path, data=b"")
    assert_error(status, body, headers, 400, "SYS_EVSTORE_VALIDATION_ERROR")
    big = {"events": [{"event_type": "A", "payload": {"x": "y" * 70_000}}]}
    status, body, headers = await _call(http, "POST", path, json=big)
    assert_error(status, body, headers, 413, "SYS_EVSTORE_PAYLOAD_TOO_LARGE")


async def test_unknown_routes_and_methods_use_the_error_format(http: aiohttp.ClientSession) -> None:
    status, body, headers = await _call(http, "GET", "/api/v1/nothing")
    assert_error(status, body, headers, 404, "SYS_EVSTORE_ROUTE_NOT_FOUND")
    status, body, headers = await _call(http, "PUT", "/api/v1/streams/x-y/events")
    assert_error(status, body, headers, 405, "SYS_EVSTORE_METHOD_NOT_ALLOWED")


async def test_request_id_is_taken_from_the_client(http: aiohttp.ClientSession, stream: str) -> None:
    status, body, headers = await _call(
        http, "GET", f"/api/v1/streams/{stream}/events", headers={"X-Request-Id": "req_client_123"}
    )
    assert status == 404 and headers["X-Request-Id"] == "req_client_123"
    assert body["error"]["request_id"] == "req_client_123"
    _, _, headers = await _call(http, "GET", "/healthz")
    assert headers["X-Request-Id"].startswith("req_")


async def test_idempotent_retry_over_rest(http: aiohttp.ClientSession, stream: str) -> None:
    eid = str(uuid.uuid4())
    req = {"events": [{"event_type": "A", "payload": {"n": 1}, "event_id": eid}], "expected_version": 0}
    s1, first, _ = await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=req)
    s2, again, _ = await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=req)
    assert s1 == s2 == 201 and first == again
    other = {"events": [{"event_type": "A", "payload": {"n": 2}, "event_id": eid}]}
    status, body, headers = await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=other)
    assert_error(status, body, headers, 409, "SYS_EVSTORE_EVENT_ID_CONFLICT")


async def test_read_all_by_sequence(http: aiohttp.ClientSession, stream: str) -> None:
    _, a, _ = await _call(http, "POST", f"/api/v1/streams/{stream}/events",
                          json={"events": [{"event_type": "X1", "payload": {}}]})
    seq = a["events"][0]["sequence"]
    x2 = {"events": [{"event_type": "X2", "payload": {}}]}
    await _call(http, "POST", f"/api/v1/streams/{stream}/events", json=x2)
    status, body, _ = await _call(http, "GET", "/api/v1/events",
                                  params={"after_sequence": seq - 1, "stream_prefix": stream})
    assert status == 200 and [e["event_type"] for e in body["events"]] == ["X1", "X2"]
    assert body["head_sequence"] >= seq + 1


async def test_health_metrics_openapi(http: aiohttp.ClientSession) -> None:
    for path in ("/healthz", "/health/live"):
        status, body, _ = await _call(http, "GET", path)
        assert status == 200 and body["status"] == "ok"
    for path in ("/readyz", "/health/ready"):
        status, body, _ = await _call(http, "GET", path)
        assert status == 200 and body["status"] == "ready" and body["checks"]["database"] == "ok"
    async with http.get("/metrics") as r:
        text = await r.text()
    for name in ("eventstore_events_appended_total", "eventstore_append_duration_seconds_bucket",
                 "eventstore_http_requests_total", "eventstore_group_commit_batch_size_bucket",
                 "eventstore_db_pool_in_use", "eventstore_snapshots_created_total", "eventstore_streams"):
        assert name in text, name


async def test_every_route_is_in_the_openapi_document(http: aiohttp.ClientSession) -> None:
    from k1s0_sidecar._rest import RestApi

    status, doc, _ = await _call(http, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    api = RestApi.__new__(RestApi)
    declared = {(r.method.lower(), r.path) for r in RestApi.routes.fget(api)}  # type: ignore[attr-defined]
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert declared <= documented, declared - documented
