"""No route is left out: the routes and RPCs a running sidecar registers each have an
authorisation rule, equal to seed 000's, and each is in the end-to-end matrix of test_served.
Also: both edges refuse a route without a rule, and ``auth.mode: none`` says so loudly."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from k1s0_event_store.sidecar_config import load_config
from k1s0_sidecar._auth import JwtAuthenticator
from k1s0_sidecar._authz import NoAuthenticator
from k1s0_sidecar._errors import error_info_from_call
from k1s0_sidecar._grpc_api import OPEN_SERVICES, RPC_ROLES, SERVICE_NAME, EdgeInterceptor
from k1s0_sidecar._metrics import Metrics
from k1s0_sidecar._runtime import Sidecar
from tests.auth.support import AUDIENCE, CLIENT_ID, ISSUER, JwksServer, SigningKey, claims
from tests.auth.test_served import GRPC_CASES, REST_CASES
from tests.conftest import create_schema, drop_schema
from tests.support.postgres import LocalPostgres

SidecarFactory = Callable[..., Any]


@pytest.fixture
async def start_sidecar(pg: LocalPostgres) -> AsyncIterator[SidecarFactory]:
    """Start in-process sidecars (real PostgreSQL, ports picked by the OS); stopped afterwards."""
    started: list[tuple[Sidecar, str]] = []

    async def start(**auth: Any) -> Sidecar:
        schema = await create_schema(pg.dsn, "rules")
        config = load_config(
            None,
            env={},
            overrides={
                "database": {"url": pg.dsn, "schema": schema, "min_connections": 1},
                "server": {"host": "127.0.0.1", "port": 0, "grpc_port": 0},
                "auth": auth,
            },
        )
        sidecar = Sidecar(config)
        await sidecar.start()
        started.append((sidecar, schema))
        return sidecar

    yield start
    for sidecar, schema in started:
        await sidecar.stop()
        await drop_schema(pg.dsn, schema)


def _jwt(jwks: JwksServer) -> dict[str, Any]:
    return {"mode": "jwt", "jwks_url": jwks.url, "issuer": ISSUER, "audience": AUDIENCE, "client_id": CLIENT_ID}


async def _registered_services(target: str) -> dict[str, list[str]]:
    """Every service the server registers, and the methods of ours, asked of the server itself."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        services: dict[str, list[str]] = {s.name: [] for s in listed.list_services_response.service}
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME))
        files = await call.read()
        await call.done_writing()
        for raw in files.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for service in proto.service:
                full = f"{proto.package}.{service.name}"
                if full in services:
                    services[full] = [m.name for m in service.method]
        call.cancel()
    return services


async def test_every_registered_route_and_rpc_has_a_rule(start_sidecar: SidecarFactory, jwks: JwksServer) -> None:
    sidecar: Sidecar = await start_sidecar(**_jwt(jwks))
    assert isinstance(sidecar.authenticator, JwtAuthenticator)
    # REST: what the running application has registered, not what the table says
    runner: Any = sidecar._runner
    registered = [(route.method, route.resource.canonical) for route in runner.app.router.routes()]
    rules = {(r.method, r.path): r for r in sidecar.rest.routes}
    assert registered and not [key for key in registered if key not in rules], "routes without a rule"
    assert {rules[key].name for key in registered} == set(REST_CASES), "routes missing from the e2e matrix"
    for key in registered:
        assert rules[key].role == REST_CASES[rules[key].name].required, key
    # gRPC: what the running server answers over reflection
    services = await _registered_services(f"127.0.0.1:{sidecar.grpc_port}")
    ours = services.pop(SERVICE_NAME)
    assert set(ours) == set(RPC_ROLES) == set(GRPC_CASES), "RPCs without a rule or missing from the e2e matrix"
    for method in ours:
        assert RPC_ROLES[method] == GRPC_CASES[method][0], method
    open_names = {prefix.strip("/") for prefix in OPEN_SERVICES}
    assert set(services) <= open_names, f"services outside the interceptor's rules: {set(services) - open_names}"


async def test_rest_refuses_a_route_without_a_rule(start_sidecar: SidecarFactory, jwks: JwksServer) -> None:
    sidecar: Sidecar = await start_sidecar(**_jwt(jwks))
    app = sidecar.rest.application()

    async def rogue(request: web.Request) -> web.Response:
        return web.json_response({"leaked": True})

    app.router.add_get("/rogue", rogue)  # registered behind the table's back
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:
            async with http.get("/rogue") as r:
                assert r.status == 403
                assert (await r.json())["error"]["code"] == "SYS_EVSTORE_PERMISSION_DENIED"
            async with http.head("/api/v1/events") as r:  # no HEAD route: 405, never a bypass
                assert r.status == 405
            async with http.get("/api/v1/nowhere") as r:
                assert r.status == 404
    finally:
        await runner.cleanup()


async def test_grpc_refuses_a_method_without_a_rule() -> None:
    async def rogue(request: bytes, context: Any) -> bytes:
        return b"leaked"

    server = grpc.aio.server(interceptors=[EdgeInterceptor(NoAuthenticator(), Metrics())])
    handler: Any = grpc.unary_unary_rpc_method_handler(rogue)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {"Rogue": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_unary(f"/{SERVICE_NAME}/Rogue")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"")
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            error = error_info_from_call(info.value)
            assert error is not None and error.reason == "SYS_EVSTORE_PERMISSION_DENIED"
    finally:
        await server.stop(None)


async def test_auth_mode_none_is_loud(start_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        sidecar: Sidecar = await start_sidecar(mode="none", jwks_url="")
    assert any("AUTHENTICATION IS DISABLED" in r.getMessage() for r in caplog.records)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{sidecar.rest_port}") as http:
        async with http.get("/readyz") as r:
            body = await r.json()
        assert r.status == 200 and body["auth_mode"] == "none"
        assert any("auth.mode: none" in w for w in body["warnings"])
        # everyone is an administrator, and nobody is recorded as the authenticated subject
        one = {"events": [{"event_type": "A", "payload": {}}]}
        async with http.post("/api/v1/streams/dev-1/events", json=one) as r:
            assert r.status == 201
            assert "authenticated_subject" not in (await r.json())["events"][0]["metadata"]
        async with http.delete("/api/v1/streams/dev-1") as r:
            assert r.status == 200


async def test_in_process_jwt_sidecar_accepts_a_real_token(
    start_sidecar: SidecarFactory, jwks: JwksServer, rsa_key: SigningKey
) -> None:
    """The runtime builds its authenticator with make_authenticator from the auth section."""
    sidecar: Sidecar = await start_sidecar(**_jwt(jwks))
    token = f"Bearer {rsa_key.sign(claims('operator-9', ['sys_operator']))}"
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{sidecar.rest_port}") as http:
        body = {"events": [{"event_type": "A", "payload": {}}]}
        async with http.post("/api/v1/streams/jwt-1/events", json=body, headers={"Authorization": token}) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["events"][0]["metadata"]["actor_id"] == "operator-9"
        async with http.get("/readyz") as r:
            assert (await r.json())["auth_mode"] == "jwt"
