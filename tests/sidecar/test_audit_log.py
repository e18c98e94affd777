"""The audit log, read from a served sidecar's real stdout: one JSON record per write, on REST and
gRPC, for accepted and refused writes alike, and never a payload, metadata, state or token.

The sidecar runs with ``auth.mode: jwt`` against a real key server, so refusals include 401 and
403. Each call carries its own request id; the records are found by it in the process's output.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from tests.auth.support import CLIENT_ID, JwksServer, SigningKey, claims, jwt_env
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar, served_schema

AUDIT_LOGGER = "k1s0_sidecar.audit"
#: Every audit record has these keys, whatever the operation and outcome.
COMMON = {"time", "level", "logger", "message", "audit", "operation", "protocol", "request_id", "client_address",
          "subject", "roles", "role", "stream_id", "expected_version", "resulting_version", "event_count",
          "first_event_id", "last_event_id", "event_ids", "outcome", "error_code", "duration_ms"}
#: Text that only ever travels in payloads, metadata and snapshot state: it must never be logged.
SECRET = f"do-not-log-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.ec("audit-ec")


@pytest.fixture(scope="module")
async def sidecar(pg: LocalPostgres, key: SigningKey) -> AsyncIterator[ServedSidecar]:
    async with JwksServer.serving(key) as keys, served_schema(pg.dsn, "audit", env=jwt_env(keys.url)) as served:
        yield served  # app.log_format is not set: JSON is the default


@pytest.fixture(scope="module")
def tokens(key: SigningKey) -> dict[str, str]:
    return {
        "auditor": key.sign(claims("auditor-1", ["sys_auditor", "offline_access"])),
        "operator": key.sign(claims("operator-1", ["sys_operator"])),
        "admin": key.sign(claims("admin-1", [], client_roles={CLIENT_ID: ["sys_admin"]})),
    }


def records(sidecar: ServedSidecar) -> list[dict[str, Any]]:
    out = []
    for line in sidecar.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))  # a line that looks like JSON must be JSON
    return out


def audit_of(sidecar: ServedSidecar, request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The one audit record of a request (polled: the line is written as the answer goes out)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in records(sidecar) if r.get("logger") == AUDIT_LOGGER and r.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(found) == 1, f"{len(found)} audit records for {request_id}"
    record = found[0]
    assert record.keys() >= COMMON, COMMON - record.keys()
    assert record["level"] == "INFO" and record["audit"] == "write"
    assert datetime.fromisoformat(record["time"]).tzinfo is not None
    assert record["client_address"].startswith("127.0.0.1:")
    assert record["duration_ms"] >= 0
    return record


def rid() -> str:
    return f"req-audit-{uuid.uuid4().hex[:16]}"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def md(token: str | None, request_id: str) -> tuple[tuple[str, str], ...]:
    return ((("authorization", f"Bearer {token}"),) if token else ()) + (("x-request-id", request_id),)


async def rest(http: aiohttp.ClientSession, method: str, path: str, token: str | None, body: Any = None,
               ) -> tuple[int, str]:
    request_id = rid()
    async with http.request(method, path, json=body, headers={**bearer(token), "X-Request-Id": request_id}) as r:
        await r.read()
        return r.status, request_id


def events(n: int) -> tuple[list[dict[str, Any]], list[str]]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    return [{"event_type": "OrderPlaced", "event_id": i, "payload": {"card": SECRET},
             "metadata": {"actor_id": "user-001", "note": SECRET}} for i in ids], ids


async def test_rest_writes_accepted_and_refused(
    sidecar: ServedSidecar, http: aiohttp.ClientSession, tokens: dict[str, str]
) -> None:
    stream = f"order-{uuid.uuid4().hex[:12]}"
    path = f"/api/v1/streams/{stream}/events"
    body, ids = events(3)
    status, request_id = await rest(http, "POST", path, tokens["operator"], {"events": body, "expected_version": -1})
    assert status == 201
    r = audit_of(sidecar, request_id)
    assert {k: r[k] for k in ("operation", "protocol", "subject", "roles", "role", "stream_id", "expected_version",
                              "resulting_version", "event_count", "first_event_id", "last_event_id", "event_ids",
                              "outcome", "error_code", "http_status")} == {
        "operation": "append", "protocol": "rest", "subject": "operator-1", "roles": ["sys_operator"],
        "role": "sys_operator", "stream_id": stream, "expected_version": -1, "resulting_version": 3,
        "event_count": 3, "first_event_id": ids[0], "last_event_id": ids[-1], "event_ids": ids,
        "outcome": "success", "error_code": None, "http_status": 201}

    # any version: expected_version null
    status, request_id = await rest(http, "POST", path, tokens["operator"], {"events": events(1)[0]})
    r = audit_of(sidecar, request_id)
    assert status == 201 and r["expected_version"] is None and r["resulting_version"] == 4

    # 409: the conflict names what was expected and what was found; nothing resulted
    status, request_id = await rest(http, "POST", path, tokens["operator"],
                                    {"events": events(1)[0], "expected_version": 1})
    r = audit_of(sidecar, request_id)
    assert status == 409
    assert (r["outcome"], r["error_code"], r["http_status"]) == ("failure", "SYS_EVSTORE_VERSION_CONFLICT", 409)
    assert (r["expected_version"], r["actual_version"], r["resulting_version"]) == (1, 4, None)

    # 400: refused before anything is known about the events
    status, request_id = await rest(http, "POST", path, tokens["operator"], {"events": [{"payload": SECRET}]})
    r = audit_of(sidecar, request_id)
    assert status == 400 and (r["outcome"], r["error_code"]) == ("failure", "SYS_EVSTORE_VALIDATION_ERROR")
    assert r["stream_id"] == stream and r["subject"] == "operator-1"

    # 403: authenticated, role too low; 401: no token at all
    status, request_id = await rest(http, "POST", path, tokens["auditor"], {"events": body})
    r = audit_of(sidecar, request_id)
    assert status == 403 and (r["error_code"], r["http_status"]) == ("SYS_EVSTORE_PERMISSION_DENIED", 403)
    assert (r["subject"], r["roles"], r["role"]) == ("auditor-1", ["offline_access", "sys_auditor"], "sys_auditor")
    assert r["event_count"] is None  # the body was never read
    status, request_id = await rest(http, "DELETE", f"/api/v1/streams/{stream}", None)
    r = audit_of(sidecar, request_id)
    assert status == 401 and (r["operation"], r["error_code"], r["subject"]) == (
        "delete_stream", "SYS_EVSTORE_UNAUTHENTICATED", None)

    # snapshot and deletion
    status, request_id = await rest(http, "POST", f"/api/v1/streams/{stream}/snapshots", tokens["operator"],
                                    {"snapshot_version": 2, "state": {"card": SECRET}})
    r = audit_of(sidecar, request_id)
    assert status == 201 and (r["operation"], r["snapshot_version"], r["outcome"]) == (
        "create_snapshot", 2, "success")
    assert r["snapshot_id"].startswith("snap_")
    status, request_id = await rest(http, "DELETE", f"/api/v1/streams/{stream}", tokens["admin"])
    r = audit_of(sidecar, request_id)
    assert status == 200 and (r["operation"], r["deleted_events"], r["subject"]) == ("delete_stream", 4, "admin-1")

    # reads are not writes: no audit record
    status, request_id = await rest(http, "GET", f"/api/v1/streams/{stream}/events", tokens["auditor"])
    assert status == 404
    assert not [x for x in records(sidecar) if x.get("request_id") == request_id]


async def grpc_call(call: Any) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"


async def test_grpc_writes_accepted_and_refused(sidecar: ServedSidecar, stub: Any, tokens: dict[str, str]) -> None:
    stream = f"order-{uuid.uuid4().hex[:12]}"
    ids = [str(uuid.uuid4()) for _ in range(2)]
    data = [pb.EventData(event_type="OrderPlaced", payload_json=json.dumps({"card": SECRET}).encode(), event_id=i,
                         metadata=pb.EventMetadata(correlation_id=SECRET)) for i in ids]

    async def append(token: str, expected: int | None, events: list[pb.EventData] | None = None,
                     ) -> tuple[str, dict[str, Any]]:
        """Without ``events``: one new event (fresh id: a repeated id would be an idempotent replay)."""
        request_id = rid()
        request = pb.AppendEventsRequest(
            stream_id=stream, events=events or [pb.EventData(event_type="A", payload_json=b"{}")])
        if expected is not None:
            request.expected_version = expected
        code = await grpc_call(stub.AppendEvents(request, metadata=md(token, request_id)))
        return code, audit_of(sidecar, request_id)

    code, r = await append(tokens["operator"], None, data)  # unset: version 0, a new stream
    assert code == "OK"
    assert {k: r[k] for k in ("operation", "protocol", "subject", "stream_id", "expected_version",
                              "resulting_version", "event_count", "event_ids", "outcome", "grpc_status")} == {
        "operation": "append", "protocol": "grpc", "subject": "operator-1", "stream_id": stream,
        "expected_version": 0, "resulting_version": 2, "event_count": 2, "event_ids": ids, "outcome": "success",
        "grpc_status": "OK"}
    code, r = await append(tokens["operator"], pb.EXPECTED_VERSION_ANY)
    assert code == "OK" and r["expected_version"] is None and r["resulting_version"] == 3
    code, r = await append(tokens["operator"], 0)
    assert code == "ABORTED" and (r["outcome"], r["error_code"], r["actual_version"]) == (
        "failure", "SYS_EVSTORE_VERSION_CONFLICT", 3)
    code, r = await append(tokens["operator"], -5)
    assert code == "INVALID_ARGUMENT" and r["error_code"] == "SYS_EVSTORE_VALIDATION_ERROR"
    code, r = await append(tokens["auditor"], None)
    assert code == "PERMISSION_DENIED" and (r["error_code"], r["subject"]) == (
        "SYS_EVSTORE_PERMISSION_DENIED", "auditor-1")

    request_id = rid()
    code = await grpc_call(stub.CreateSnapshot(pb.CreateSnapshotRequest(
        stream_id=stream, snapshot_version=3, state_json=json.dumps({"card": SECRET}).encode()),
        metadata=md(tokens["operator"], request_id)))
    r = audit_of(sidecar, request_id)
    assert code == "OK" and (r["operation"], r["snapshot_version"], r["outcome"]) == ("create_snapshot", 3, "success")

    request_id = rid()
    older = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    code = await grpc_call(stub.PruneSnapshots(pb.PruneSnapshotsRequest(older_than=older),
                                               metadata=md(tokens["admin"], request_id)))
    r = audit_of(sidecar, request_id)
    assert code == "OK" and (r["operation"], r["stream_id"], r["subject"]) == ("prune_snapshots", None, "admin-1")
    assert r["removed_snapshots"] == 0 and datetime.fromisoformat(r["older_than"]) > datetime.now(UTC)

    request_id = rid()
    code = await grpc_call(stub.DeleteStream(pb.DeleteStreamRequest(stream_id=stream),
                                             metadata=md(tokens["operator"], request_id)))
    r = audit_of(sidecar, request_id)
    assert code == "PERMISSION_DENIED" and (r["operation"], r["error_code"]) == (
        "delete_stream", "SYS_EVSTORE_PERMISSION_DENIED")
    request_id = rid()
    code = await grpc_call(stub.DeleteStream(pb.DeleteStreamRequest(stream_id=stream),
                                             metadata=md(None, request_id)))
    r = audit_of(sidecar, request_id)
    assert code == "UNAUTHENTICATED" and (r["error_code"], r["subject"]) == ("SYS_EVSTORE_UNAUTHENTICATED", None)


async def test_no_payload_metadata_state_or_token_is_ever_logged(
    sidecar: ServedSidecar, http: aiohttp.ClientSession, stub: Any, tokens: dict[str, str]
) -> None:
    """Writes whose payloads, metadata and state carry ``SECRET``, accepted and refused, with good,
    forged and garbage tokens on both protocols: none of it is anywhere in the process's output
    (which holds everything the other tests here logged too)."""
    stream = f"order-{uuid.uuid4().hex[:12]}"
    body = {"events": events(2)[0]}
    assert (await rest(http, "POST", f"/api/v1/streams/{stream}/events", tokens["operator"], body))[0] == 201
    assert (await rest(http, "POST", f"/api/v1/streams/{stream}/events", tokens["operator"],
                       {"events": events(1)[0], "expected_version": 0}))[0] == 409
    assert (await rest(http, "POST", f"/api/v1/streams/{stream}/snapshots", tokens["admin"],
                       {"snapshot_version": 1, "state": {"card": SECRET}}))[0] == 201
    metadata = pb.EventMetadata(actor_id=SECRET, extra_json=json.dumps({"k": SECRET}).encode())
    secret_event = pb.EventData(event_type="A", payload_json=json.dumps([SECRET]).encode(), metadata=metadata)
    append = pb.AppendEventsRequest(stream_id=stream, events=[secret_event], expected_version=pb.EXPECTED_VERSION_ANY)
    assert await grpc_call(stub.AppendEvents(append, metadata=md(tokens["operator"], rid()))) == "OK"
    assert await grpc_call(stub.AppendEvents(append, metadata=md(tokens["auditor"], rid()))) == "PERMISSION_DENIED"
    forged = tokens["operator"][:-6] + "AAAAAA"
    for token in (forged, f"{SECRET}.{SECRET}.{SECRET}"):
        assert (await rest(http, "POST", f"/api/v1/streams/{stream}/events", token, body))[0] == 401
        assert await grpc_call(stub.AppendEvents(append, metadata=md(token, rid()))) == "UNAUTHENTICATED"
    ours = [r for r in records(sidecar) if r.get("logger") == AUDIT_LOGGER and r["stream_id"] == stream]
    assert len(ours) == 9, "every write above was audited"
    output = sidecar.log_path.read_text(errors="replace")
    assert SECRET not in output
    for token in (*tokens.values(), forged):
        for part in token.split("."):
            assert part not in output


async def test_json_mode_has_no_access_log(sidecar: ServedSidecar, http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as r:
        assert r.status == 200
    assert not [r for r in records(sidecar) if r.get("logger") == "k1s0_sidecar.access"]


async def test_text_mode_logs_every_request_and_each_write(pg: LocalPostgres) -> None:
    """``app.log_format: text`` (``make run``): readable lines, one access line per request on both
    protocols, and the audit record of each write as a sentence."""
    stream = f"order-{uuid.uuid4().hex[:12]}"
    async with served_schema(pg.dsn, "audtxt", env={"EVENTSTORE_APP_LOG_FORMAT": "text"}) as sidecar:
        async with aiohttp.ClientSession(base_url=sidecar.base_url) as http:
            async with http.get("/healthz?probe=1") as r:
                assert r.status == 200
            async with http.post(f"/api/v1/streams/{stream}/events",
                                 json={"events": [{"event_type": "A", "payload": {"card": SECRET}}]}) as r:
                assert r.status == 201
        async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
            stub = pb_grpc.EventStoreServiceStub(channel)
            await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream))
            assert await grpc_call(stub.AppendEvents(pb.AppendEventsRequest(
                stream_id=stream, events=[pb.EventData(event_type="A", payload_json=b"{}")]))) == "ABORTED"
            # a subscriber that goes away: logged as cancelled, and the sidecar lives on
            call = stub.SubscribeToStream(pb.SubscribeToStreamRequest(stream_id=stream))
            assert (await call.read()).event.version == 1
            call.cancel()
            await stub.ReadEvents(pb.ReadEventsRequest(stream_id=stream))
        wanted = [
            "k1s0_sidecar.access: GET /healthz 200 ",  # the query is not logged
            f"k1s0_sidecar.access: POST /api/v1/streams/{stream}/events 201 ",
            f"k1s0_sidecar.audit: append {stream} by anonymous: 1 event, now at version 1",
            "k1s0_sidecar.access: gRPC ReadEvents OK ",
            "k1s0_sidecar.access: gRPC AppendEvents ABORTED ",
            f"k1s0_sidecar.audit: append {stream} by anonymous: failure SYS_EVSTORE_VERSION_CONFLICT",
            "k1s0_sidecar.access: gRPC SubscribeToStream CANCELLED ",
        ]
        deadline = time.monotonic() + 10
        while True:
            lines = sidecar.log_path.read_text(errors="replace").splitlines()
            missing = [w for w in wanted if not any(w in line for line in lines)]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert not missing, "\n".join(lines[-20:])
        assert all(" INFO " in line for line in lines if "k1s0_sidecar.access:" in line)
        assert not [line for line in lines if line.startswith("{")]
        assert SECRET not in "\n".join(lines) and "probe=1" not in "\n".join(lines)


def test_log_format_is_validated() -> None:
    from k1s0_event_store.sidecar_config import ConfigError, load_config

    assert load_config(env={"EVENTSTORE_AUTH_MODE": "none"}).app.log_format == "json"
    text = {"EVENTSTORE_AUTH_MODE": "none", "EVENTSTORE_APP_LOG_FORMAT": "text"}
    assert load_config(env=text).app.log_format == "text"
    with pytest.raises(ConfigError, match=r"app\.log_format"):
        load_config(env={**text, "EVENTSTORE_APP_LOG_FORMAT": "xml"})


def test_the_sidecars_own_writes_are_audited(caplog: pytest.LogCaptureFixture) -> None:
    """Snapshot retention (the maintenance task) prunes without a request: audited all the same."""
    from k1s0_event_store import UnavailableError
    from k1s0_sidecar import _audit as audit

    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        with audit.system_write("prune_snapshots", "snapshot-retention"):
            audit.note(older_than=datetime(2026, 1, 1, tzinfo=UTC), removed_snapshots=3)
        with pytest.raises(UnavailableError), audit.system_write("prune_snapshots", "snapshot-retention"):
            raise UnavailableError("database unreachable")
    done, failed = [r.__dict__ for r in caplog.records if r.name == AUDIT_LOGGER]
    assert (done["protocol"], done["subject"], done["outcome"], done["removed_snapshots"], done["older_than"]) == (
        "maintenance", "system:snapshot-retention", "success", 3, "2026-01-01T00:00:00.000+00:00")
    assert (failed["outcome"], failed["error_code"]) == ("failure", "SYS_EVSTORE_UNAVAILABLE")
    assert audit.note(removed_snapshots=1) is None  # no record open any more: a no-op


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:127.0.0.1:5000", "127.0.0.1:5000"),  # gRPC's peer strings
    ("ipv6:%5B::1%5D:5000", "[::1]:5000"),
    (("10.1.2.3", 443), "10.1.2.3:443"),  # a socket's peer name (REST)
    (("::1", 8080, 0, 0), "[::1]:8080"),
    (None, None),
])
def test_client_address(peer: Any, address: str | None) -> None:
    from k1s0_sidecar._audit import peer_address

    assert peer_address(peer) == address
