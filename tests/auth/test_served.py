"""Authentication and RBAC end to end: a served sidecar process (``k1s0-eventstore serve``) on a
real PostgreSQL with ``auth.mode: jwt``, a real JWKS server, real tokens, real HTTP and real gRPC.

Every REST route and every RPC is called as {no token, sys_auditor, sys_operator, sys_admin}.
The expected role of each comes from seed 000's table, written out here independently of the
server's own tables, so a changed rule in the code fails a test.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_sidecar._authz import Role
from k1s0_sidecar._errors import error_info_from_call
from tests.auth.support import CLIENT_ID, JwksServer, SigningKey, claims, forge, jwt_env
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar, served_schema

#: The generated stub as grpc.aio uses it (its type stubs describe the blocking API).
AioStub = Any

CALLERS: dict[str, Role | None] = {
    "anonymous": None,
    "auditor": Role.SYS_AUDITOR,
    "operator": Role.SYS_OPERATOR,
    "admin": Role.SYS_ADMIN,
}


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {"rsa": SigningKey.rsa("served-rsa"), "ec": SigningKey.ec("served-ec")}


@pytest.fixture(scope="module")
async def key_server(keys: dict[str, SigningKey]) -> AsyncIterator[JwksServer]:
    async with JwksServer.serving(*keys.values()) as server:
        yield server


@pytest.fixture(scope="module")
async def sidecar(pg: LocalPostgres, key_server: JwksServer) -> AsyncIterator[ServedSidecar]:
    env = jwt_env(
        key_server.url,
        # rotation and outage tests must not wait out the refetch interval
        EVENTSTORE_AUTH_JWKS_REFETCH_SECONDS="0",
        EVENTSTORE_AUTH_JWKS_TIMEOUT_SECONDS="2",
    )
    async with served_schema(pg.dsn, "auth", env=env) as served:
        yield served


def token_for(keys: dict[str, SigningKey], caller: str) -> str | None:
    """auditor and operator get realm roles (RS256 and ES256); admin a client role."""
    if caller == "anonymous":
        return None
    if caller == "auditor":
        return f"Bearer {keys['rsa'].sign(claims(f'{caller}-1', ['sys_auditor', 'offline_access']))}"
    if caller == "operator":
        return f"Bearer {keys['ec'].sign(claims(f'{caller}-1', ['sys_operator']))}"
    return f"Bearer {keys['rsa'].sign(claims(f'{caller}-1', [], client_roles={CLIENT_ID: ['sys_admin']}))}"


def headers(token: str | None) -> dict[str, str]:
    return {"Authorization": token} if token else {}


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", token),) if token else ()


@dataclass(frozen=True)
class Prepared:
    """A stream with two events and a snapshot at version 1, made by an administrator."""

    stream: str
    first_sequence: int


async def prepare(http: aiohttp.ClientSession, keys: dict[str, SigningKey]) -> Prepared:
    stream = f"order-{uuid.uuid4().hex[:12]}"
    admin = headers(token_for(keys, "admin"))
    body = {"events": [{"event_type": "OrderPlaced", "payload": {"n": 1}},
                       {"event_type": "OrderPaid", "payload": {"n": 2}}], "expected_version": -1}
    async with http.post(f"/api/v1/streams/{stream}/events", json=body, headers=admin) as r:
        assert r.status == 201, await r.text()
        first = (await r.json())["events"][0]["sequence"]
    snap = {"snapshot_version": 1, "aggregate_type": "Order", "state": {"n": 1}}
    async with http.post(f"/api/v1/streams/{stream}/snapshots", json=snap, headers=admin) as r:
        assert r.status == 201, await r.text()
    return Prepared(stream, first)


async def unchanged(http: aiohttp.ClientSession, keys: dict[str, SigningKey], p: Prepared) -> None:
    """After a refused call, the stream is exactly as prepared."""
    admin = headers(token_for(keys, "admin"))
    async with http.get(f"/api/v1/streams/{p.stream}/events", headers=admin) as r:
        assert r.status == 200
        assert (await r.json())["current_version"] == 2
    async with http.get(f"/api/v1/streams/{p.stream}/snapshots/latest", headers=admin) as r:
        assert r.status == 200
        assert (await r.json())["snapshot_version"] == 1


# -- REST: every route by every caller -------------------------------------------------------------


@dataclass(frozen=True)
class RestCase:
    method: str
    path: str  # {stream} and {seq} are filled in from Prepared
    required: Role | None
    ok: int = 200
    body: Any = None
    sse: bool = False


#: Seed 000's table (plus the read-all, subscription and OpenAPI routes), keyed by route name.
REST_CASES: dict[str, RestCase] = {
    "append_events": RestCase(
        "POST", "/api/v1/streams/{stream}/events", Role.SYS_OPERATOR, 201,
        {"events": [{"event_type": "OrderShipped", "payload": {}}], "expected_version": 2},
    ),
    "read_events": RestCase("GET", "/api/v1/streams/{stream}/events", Role.SYS_AUDITOR),
    "read_event_by_sequence": RestCase("GET", "/api/v1/streams/{stream}/events/{seq}", Role.SYS_AUDITOR),
    "create_snapshot": RestCase(
        "POST", "/api/v1/streams/{stream}/snapshots", Role.SYS_OPERATOR, 201,
        {"snapshot_version": 2, "aggregate_type": "Order", "state": {"n": 2}},
    ),
    "get_latest_snapshot": RestCase("GET", "/api/v1/streams/{stream}/snapshots/latest", Role.SYS_AUDITOR),
    "delete_stream": RestCase("DELETE", "/api/v1/streams/{stream}", Role.SYS_ADMIN),
    "read_all": RestCase("GET", "/api/v1/events?limit=1", Role.SYS_AUDITOR),
    "list_streams": RestCase("GET", "/api/v1/streams?limit=1", Role.SYS_AUDITOR),
    "subscribe_stream": RestCase("GET", "/api/v1/streams/{stream}/subscribe", Role.SYS_AUDITOR, sse=True),
    "subscribe_all": RestCase("GET", "/api/v1/subscribe", Role.SYS_AUDITOR, sse=True),
    "healthz": RestCase("GET", "/healthz", None),
    "readyz": RestCase("GET", "/readyz", None),
    "health_live": RestCase("GET", "/health/live", None),
    "health_ready": RestCase("GET", "/health/ready", None),
    "metrics": RestCase("GET", "/metrics", None),
    "openapi": RestCase("GET", "/openapi.json", None),
    "forwarder_status": RestCase("GET", "/api/v1/forwarder/status", None),
    "console": RestCase("GET", "/ui/", None),
    "console_asset": RestCase("GET", "/ui/app.js", None),
    "console_redirect": RestCase("GET", "/ui", None),
}


def allowed(caller: str, required: Role | None) -> bool:
    role = CALLERS[caller]
    return required is None or (role is not None and role >= required)


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("route", list(REST_CASES))
async def test_rest_route_by_caller(
    http: aiohttp.ClientSession, keys: dict[str, SigningKey], route: str, caller: str
) -> None:
    case = REST_CASES[route]
    p = await prepare(http, keys)
    path = case.path.format(stream=p.stream, seq=p.first_sequence)
    async with http.request(case.method, path, json=case.body, headers=headers(token_for(keys, caller))) as r:
        if allowed(caller, case.required):
            if case.sse:
                assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                assert await r.content.readline() == b": subscribed\n"
            else:
                assert r.status == case.ok, await r.text()
            return
        body = await r.json()
    if caller == "anonymous":
        assert r.status == 401
        assert body["error"]["code"] == "SYS_EVSTORE_UNAUTHENTICATED"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    else:
        assert r.status == 403
        assert body["error"]["code"] == "SYS_EVSTORE_PERMISSION_DENIED"
        assert case.required is not None and case.required.claim in body["error"]["message"]
        assert "WWW-Authenticate" not in r.headers
    assert body["error"]["request_id"] == r.headers["X-Request-Id"]
    await unchanged(http, keys, p)


# -- gRPC: every RPC by every caller -------------------------------------------------------------


Call = Callable[[AioStub, Prepared, tuple[tuple[str, str], ...]], Awaitable[Any]]


async def _first(call: Any) -> Any:
    """The first message of a server stream, then cancel it."""
    try:
        return await call.read()
    finally:
        call.cancel()


GRPC_CASES: dict[str, tuple[Role | None, Call]] = {
    "AppendEvents": (Role.SYS_OPERATOR, lambda s, p, md: s.AppendEvents(pb.AppendEventsRequest(
        stream_id=p.stream, expected_version=2,
        events=[pb.EventData(event_type="OrderShipped", payload_json=b"{}")]), metadata=md)),
    "ReadEvents": (Role.SYS_AUDITOR, lambda s, p, md: s.ReadEvents(
        pb.ReadEventsRequest(stream_id=p.stream), metadata=md)),
    "ReadEventBySequence": (Role.SYS_AUDITOR, lambda s, p, md: s.ReadEventBySequence(
        pb.ReadEventBySequenceRequest(stream_id=p.stream, sequence=p.first_sequence), metadata=md)),
    "CreateSnapshot": (Role.SYS_OPERATOR, lambda s, p, md: s.CreateSnapshot(pb.CreateSnapshotRequest(
        stream_id=p.stream, snapshot_version=2, aggregate_type="Order", state_json=b'{"n": 2}'), metadata=md)),
    "GetLatestSnapshot": (Role.SYS_AUDITOR, lambda s, p, md: s.GetLatestSnapshot(
        pb.GetLatestSnapshotRequest(stream_id=p.stream), metadata=md)),
    "DeleteStream": (Role.SYS_ADMIN, lambda s, p, md: s.DeleteStream(
        pb.DeleteStreamRequest(stream_id=p.stream), metadata=md)),
    "ReadAll": (Role.SYS_AUDITOR, lambda s, p, md: s.ReadAll(pb.ReadAllRequest(limit=1), metadata=md)),
    "ListStreams": (Role.SYS_AUDITOR, lambda s, p, md: s.ListStreams(pb.ListStreamsRequest(limit=1), metadata=md)),
    "PruneSnapshots": (Role.SYS_ADMIN, lambda s, p, md: s.PruneSnapshots(
        pb.PruneSnapshotsRequest(older_than="2000-01-01T00:00:00Z"), metadata=md)),
    "SubscribeToStream": (Role.SYS_AUDITOR, lambda s, p, md: _first(s.SubscribeToStream(
        pb.SubscribeToStreamRequest(stream_id=p.stream), metadata=md))),
    "SubscribeToAll": (Role.SYS_AUDITOR, lambda s, p, md: _first(s.SubscribeToAll(
        pb.SubscribeToAllRequest(after_sequence=p.first_sequence - 1), metadata=md))),
}


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("rpc", list(GRPC_CASES))
async def test_rpc_by_caller(
    http: aiohttp.ClientSession, stub: AioStub, keys: dict[str, SigningKey], rpc: str,
    caller: str,
) -> None:
    required, call = GRPC_CASES[rpc]
    p = await prepare(http, keys)
    md = metadata(token_for(keys, caller))
    if allowed(caller, required):
        response = await call(stub, p, md)
        if rpc.startswith("Subscribe"):
            assert response.event.stream_id == p.stream and response.event.version == 1
        return
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(stub, p, md)
    expected = ("UNAUTHENTICATED", "SYS_EVSTORE_UNAUTHENTICATED") if caller == "anonymous" else (
        "PERMISSION_DENIED", "SYS_EVSTORE_PERMISSION_DENIED")
    assert info.value.code() == getattr(grpc.StatusCode, expected[0]), info.value.details()
    error = error_info_from_call(info.value)
    assert error is not None and error.reason == expected[1]
    await unchanged(http, keys, p)


# -- invalid tokens over both protocols ----------------------------------------------------------


def bad_tokens(keys: dict[str, SigningKey]) -> dict[str, str]:
    rsa = keys["rsa"]
    admin = claims("admin-1", ["sys_admin"])
    return {
        "expired": rsa.sign(claims("admin-1", ["sys_admin"], exp_in=-600)),
        "not yet valid": rsa.sign(claims("admin-1", ["sys_admin"], nbf_in=600)),
        "wrong issuer": rsa.sign(claims("admin-1", ["sys_admin"], iss="https://evil.test")),
        "wrong audience": rsa.sign(claims("admin-1", ["sys_admin"], aud="another-service")),
        "bad signature": SigningKey.rsa(rsa.kid).sign(admin),
        "alg none": forge({"alg": "none", "kid": rsa.kid}, admin),
        "HS256 with the public key": forge({"alg": "HS256", "kid": rsa.kid}, admin, hmac_secret=rsa.public_pem()),
        "unknown kid": SigningKey.rsa("nobody-knows").sign(admin),
        "garbage": "not.a.token",
    }


async def test_invalid_tokens_are_401_and_unauthenticated(
    http: aiohttp.ClientSession, stub: AioStub, keys: dict[str, SigningKey]
) -> None:
    p = await prepare(http, keys)
    for what, token in bad_tokens(keys).items():
        async with http.delete(f"/api/v1/streams/{p.stream}", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 401, (what, await r.text())
            assert (await r.json())["error"]["code"] == "SYS_EVSTORE_UNAUTHENTICATED", what
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), what
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DeleteStream(pb.DeleteStreamRequest(stream_id=p.stream), metadata=metadata(f"Bearer {token}"))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, what
        error = error_info_from_call(info.value)
        assert error is not None and error.reason == "SYS_EVSTORE_UNAUTHENTICATED", what
    async with http.get(f"/api/v1/streams/{p.stream}/events", headers={"Authorization": "Basic YTpi"}) as r:
        assert r.status == 401
    await unchanged(http, keys, p)


async def test_token_without_an_event_store_role_is_403(
    http: aiohttp.ClientSession, stub: AioStub, keys: dict[str, SigningKey]
) -> None:
    p = await prepare(http, keys)
    nobody = f"Bearer {keys['rsa'].sign(claims('viewer-1', ['offline_access'], client_roles={'other': ['sys_admin']}))}"
    async with http.get(f"/api/v1/streams/{p.stream}/events", headers={"Authorization": nobody}) as r:
        assert r.status == 403 and (await r.json())["error"]["code"] == "SYS_EVSTORE_PERMISSION_DENIED"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ReadEvents(pb.ReadEventsRequest(stream_id=p.stream), metadata=metadata(nobody))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- the key server: rotation and outage, seen through the served sidecar ---------------------------


async def test_rotated_key_is_accepted_then_outage_fails_closed(
    http: aiohttp.ClientSession, stub: AioStub, keys: dict[str, SigningKey],
    key_server: JwksServer,
) -> None:
    p = await prepare(http, keys)
    rotated = SigningKey.ec(f"rotated-{uuid.uuid4().hex[:6]}")
    reader = f"Bearer {rotated.sign(claims('auditor-2', ['sys_auditor']))}"
    path = f"/api/v1/streams/{p.stream}/events"
    async with http.get(path, headers={"Authorization": reader}) as r:
        assert r.status == 401 and "unknown key" in (await r.json())["error"]["message"]
    key_server.publish(*keys.values(), rotated)
    async with http.get(path, headers={"Authorization": reader}) as r:
        assert r.status == 200
    # the key server goes down: keys already cached keep working on both protocols ...
    await key_server.stop()
    try:
        for caller in ("auditor", "operator"):
            async with http.get(path, headers=headers(token_for(keys, caller))) as r:
                assert r.status == 200
        await stub.ReadEvents(pb.ReadEventsRequest(stream_id=p.stream), metadata=metadata(reader))
        # ... and a token needing a key we do not have fails closed with a 503-class error
        newer = f"Bearer {SigningKey.rsa('after-outage').sign(claims('admin-1', ['sys_admin']))}"
        async with http.delete(f"/api/v1/streams/{p.stream}", headers={"Authorization": newer}) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "SYS_EVSTORE_UNAVAILABLE"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.DeleteStream(pb.DeleteStreamRequest(stream_id=p.stream), metadata=metadata(newer))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        error = error_info_from_call(info.value)
        assert error is not None and error.reason == "SYS_EVSTORE_UNAVAILABLE"
    finally:
        key_server.publish(*keys.values())
        await key_server.start()
    await unchanged(http, keys, p)


# -- audit: who appended -----------------------------------------------------------------------------


async def stored_metadata(http: aiohttp.ClientSession, keys: dict[str, SigningKey], stream: str) -> list[Any]:
    async with http.get(f"/api/v1/streams/{stream}/events", headers=headers(token_for(keys, "auditor"))) as r:
        assert r.status == 200
        return [e["metadata"] for e in (await r.json())["events"]]


async def test_rest_append_records_the_authenticated_subject(
    http: aiohttp.ClientSession, keys: dict[str, SigningKey]
) -> None:
    stream = f"audit-{uuid.uuid4().hex[:12]}"
    events = [
        {"event_type": "A", "payload": {}},
        {"event_type": "B", "payload": {}, "metadata": {"correlation_id": "corr-1"}},
        {"event_type": "C", "payload": {}, "metadata": {"actor_id": "user-001"}},
        {"event_type": "D", "payload": {}, "metadata": {"actor_id": "user-002", "authenticated_subject": "admin-9"}},
    ]
    async with http.post(f"/api/v1/streams/{stream}/events", json={"events": events},
                         headers=headers(token_for(keys, "operator"))) as r:
        assert r.status == 201, await r.text()
        echoed = [e["metadata"] for e in (await r.json())["events"]]
    stored = await stored_metadata(http, keys, stream)
    assert echoed == stored
    assert [m["actor_id"] for m in stored] == ["operator-1", "operator-1", "user-001", "user-002"]
    assert [m["authenticated_subject"] for m in stored] == ["operator-1"] * 4
    assert stored[1]["correlation_id"] == "corr-1"


async def test_grpc_append_records_the_authenticated_subject(
    http: aiohttp.ClientSession, stub: AioStub, keys: dict[str, SigningKey]
) -> None:
    stream = f"audit-{uuid.uuid4().hex[:12]}"
    forged = json.dumps({"authenticated_subject": "someone-else"}).encode()
    resp = await stub.AppendEvents(
        pb.AppendEventsRequest(stream_id=stream, events=[
            pb.EventData(event_type="A", payload_json=b"{}"),
            pb.EventData(event_type="B", payload_json=b"{}",
                         metadata=pb.EventMetadata(actor_id="user-001", extra_json=forged)),
        ]),
        metadata=metadata(token_for(keys, "admin")),
    )
    assert [e.metadata.actor_id for e in resp.events] == ["admin-1", "user-001"]
    stored = await stored_metadata(http, keys, stream)
    assert [m["actor_id"] for m in stored] == ["admin-1", "user-001"]
    assert [m["authenticated_subject"] for m in stored] == ["admin-1", "admin-1"]


# -- open endpoints and readiness ----------------------------------------------------------------


async def test_readyz_reports_jwt_mode(http: aiohttp.ClientSession, sidecar: ServedSidecar) -> None:
    async with http.get("/readyz") as r:
        body = await r.json()
    assert r.status == 200 and body["auth_mode"] == "jwt" and "warnings" not in body


async def test_grpc_health_is_open(sidecar: ServedSidecar) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(sidecar.grpc_target) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


# -- the library's gRPC client with a token source --------------------------------------------------


async def test_grpc_client_sends_tokens_and_raises_library_errors(
    sidecar: ServedSidecar, keys: dict[str, SigningKey]
) -> None:
    from k1s0_event_store import (
        EventEnvelope,
        GrpcEventStore,
        PermissionDeniedError,
        UnauthenticatedError,
    )

    stream = f"client-{uuid.uuid4().hex[:12]}"
    caller = {"name": "anonymous"}
    issued: list[str] = []

    def token() -> str:
        value = token_for(keys, caller["name"])
        issued.append(caller["name"])
        return value.removeprefix("Bearer ") if value else ""

    client = GrpcEventStore(sidecar.grpc_target, token=token, retries=0)
    try:
        with pytest.raises(UnauthenticatedError):
            await client.read_stream(stream)
        caller["name"] = "auditor"
        with pytest.raises(PermissionDeniedError):
            await client.append(stream, [EventEnvelope(event_type="A", payload={})])
        caller["name"] = "operator"
        assert await client.append(stream, [EventEnvelope(event_type="A", payload={})]) == 1
        caller["name"] = "auditor"
        page = await client.read_stream(stream)
        assert [e.metadata["actor_id"] for e in page.events] == ["operator-1"]
        assert page.events[0].metadata["authenticated_subject"] == "operator-1"
        assert {"anonymous", "auditor", "operator"} <= set(issued)  # the source is asked per call
    finally:
        await client.close()
