"""EventStreams on several PostgreSQL clusters: two real servers, the API emulator, real sidecars.

The session's server is the clusters ``default`` and ``east`` (the same DSN under two names); this
module starts a second server, ``west``, of its own (so stopping it disturbs nobody else). The
operator's cluster map comes from ``EVENTSTORE_DATABASE_CLUSTERS`` through the operator's loader.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import celpy  # type: ignore[import-untyped]
import pytest
import yaml

from k1s0_event_store.sidecar_config import ConfigError, to_yaml
from k1s0_operator._clusters import CnpgRef, SecretRef, parse_clusters
from k1s0_operator._health import REGISTRY
from k1s0_operator._runtime import load_operator
from tests.operator.conftest import (
    EVS,
    SECRETS,
    RunningOperator,
    condition,
    event_stream,
    eventually,
    load_crd,
    operator_running,
)
from tests.operator.test_reconcile import ready, secret_dsn, with_condition
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiError, ApiServer
from tests.support.postgres import LocalPostgres
from tests.support.sidecar import ServedSidecar

SERVICES = ("", "v1", "services")
CNPG_NAMESPACE = "databases"


@pytest.fixture(scope="module")
def west() -> Iterator[LocalPostgres]:
    with LocalPostgres(fsync=False) as server:
        yield server


def started(
    pg: LocalPostgres, west: LocalPostgres, kafka: LocalKafka, namespace: str
) -> AbstractAsyncContextManager[RunningOperator]:
    """The operator with the cluster map of this module (east, west and two references to west)."""
    config, clusters = load_operator(None, {
        "EVENTSTORE_DATABASE_URL": pg.dsn,
        "EVENTSTORE_KAFKA_BROKERS": kafka.bootstrap,
        "EVENTSTORE_AUTH_MODE": "none",
        "EVENTSTORE_DATABASE_CLUSTERS": json.dumps({
            "east": pg.dsn,
            "west": {"url": west.dsn},
            "cnpg-west": {"cnpg": {"cluster": "pg-main", "namespace": CNPG_NAMESPACE, "database": "postgres"}},
            "ref-west": {"secretRef": {"name": "pg-west-admin", "namespace": CNPG_NAMESPACE, "key": "dsn"}},
        }),
    })
    assert clusters.names() == ["cnpg-west", "default", "east", "ref-west", "west"]
    return operator_running(config, [namespace], clusters)


@pytest.fixture
async def operator(
    api: ApiServer, pg: LocalPostgres, west: LocalPostgres, kafka: LocalKafka, namespace: str
) -> AsyncIterator[RunningOperator]:
    await api.create_namespace(namespace)
    await api.create_namespace(CNPG_NAMESPACE)
    async with started(pg, west, kafka, namespace) as op:
        yield op


async def placement(server: LocalPostgres, schema: str) -> tuple[bool, bool]:
    """(schema exists, its role exists) on ``server``."""
    conn = await asyncpg.connect(server.dsn)
    try:
        schema_exists = bool(await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema))
        role_exists = bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", f"{schema}_app"))
        return schema_exists, role_exists
    finally:
        await conn.close()


async def event_count(server: LocalPostgres, schema: str) -> int:
    conn = await asyncpg.connect(server.dsn)
    try:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".events'))
    finally:
        await conn.close()


async def append_and_read(sidecar: ServedSidecar, stream_id: str, event_type: str) -> list[dict[str, Any]]:
    url = f"{sidecar.base_url}/api/v1/streams/{stream_id}/events"
    async with aiohttp.ClientSession() as session:
        body = {"events": [{"event_type": event_type, "payload": {"where": event_type}}]}
        async with session.post(url, json=body) as resp:
            assert resp.status == 201, await resp.text()
        async with session.get(url) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.json()
    events: list[dict[str, Any]] = page["events"]
    return events


async def test_two_streams_on_two_servers_each_on_its_own_only(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, west: LocalPostgres, namespace: str
) -> None:
    # The same schema name on both clusters: the claim (and the conflict check) is per cluster.
    shared = f"{namespace}_same"
    await api.put_object(EVS, namespace, event_stream("on-east", namespace, {"database": {"cluster": "east"}}))
    await api.put_object(EVS, namespace, event_stream("on-west", namespace, {"database": {"cluster": "west"},
                                                                             "deletionPolicy": "Delete"}))
    await api.put_object(EVS, namespace, event_stream("twin-east", namespace, {"database": {"cluster": "east",
                                                                                           "schema": shared}}))
    await api.put_object(EVS, namespace, event_stream("twin-west", namespace, {
        "database": {"cluster": "west", "schema": shared}, "deletionPolicy": "Delete"}))
    on_default = await api.put_object(EVS, namespace, event_stream("on-default", namespace))
    assert on_default["spec"]["database"]["cluster"] == "default"  # the CRD's default

    east_obj = await ready(api, namespace, "on-east")
    west_obj = await ready(api, namespace, "on-west")
    for name in ("twin-east", "twin-west", "on-default"):
        await ready(api, namespace, name)
    assert east_obj["status"]["cluster"] == "east" and west_obj["status"]["cluster"] == "west"
    assert "on cluster west" in condition(west_obj, "SchemaReady")["message"]
    east_schema, west_schema = f"{namespace}_on_east", f"{namespace}_on_west"
    assert await placement(pg, east_schema) == (True, True)
    assert await placement(west, east_schema) == (False, False)
    assert await placement(west, west_schema) == (True, True)
    assert await placement(pg, west_schema) == (False, False)
    assert await placement(pg, shared) == (True, True) and await placement(west, shared) == (True, True)

    # Each Secret points at its stream's server; a sidecar started from it writes there.
    east_dsn = secret_dsn(api, namespace, "on-east-eventstore-db")
    west_dsn = secret_dsn(api, namespace, "on-west-eventstore-db")
    assert urlsplit(east_dsn).port == pg.port and urlsplit(west_dsn).port == west.port
    east_car = ServedSidecar(east_dsn, east_schema, migrate=False)
    west_car = ServedSidecar(west_dsn, west_schema, migrate=False)
    try:
        await asyncio.to_thread(east_car.start)
        await asyncio.to_thread(west_car.start)
        east_events = await append_and_read(east_car, "order-1", "PlacedEast")
        west_events = await append_and_read(west_car, "order-1", "PlacedWest")
    finally:
        east_car.stop()
        west_car.stop()
    assert [e["event_type"] for e in east_events] == ["PlacedEast"]
    assert [e["event_type"] for e in west_events] == ["PlacedWest"]
    assert await event_count(pg, east_schema) == 1 and await event_count(west, west_schema) == 1

    # Deleting a Delete-policy stream drops its schema on its cluster only: the twin on east stays.
    await api.delete_object(EVS, namespace, "twin-west")
    await api.delete_object(EVS, namespace, "on-west")

    async def gone() -> bool:
        return (api.obj(EVS, namespace, "twin-west") is None and api.obj(EVS, namespace, "on-west") is None)

    await eventually(gone, 30, "both west streams to be deleted")
    assert await placement(west, shared) == (False, False)
    assert await placement(west, west_schema) == (False, False)
    assert await placement(pg, shared) == (True, True)
    assert await placement(pg, east_schema) == (True, True)
    dropped = [e for e in api.events_for(namespace, "twin-west") if e["reason"] == "SchemaDropped"]
    assert dropped and "from cluster west" in dropped[0]["message"]


async def test_an_unreachable_cluster_fails_only_its_streams_and_unknown_names_are_refused(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, west: LocalPostgres, namespace: str
) -> None:
    await api.put_object(EVS, namespace, event_stream("stays", namespace, {"database": {"cluster": "east"}}))
    await api.put_object(EVS, namespace, event_stream("waits", namespace, {"database": {"cluster": "west"}}))
    await ready(api, namespace, "stays")
    await ready(api, namespace, "waits")

    unknown = await api.put_object(EVS, namespace, event_stream("typo", namespace, {"database": {"cluster": "wset"}}))
    obj = await with_condition(api, namespace, "typo", "Ready", "UnknownCluster")
    ready_c = condition(obj, "Ready")
    assert ready_c["status"] == "False" and obj["status"]["phase"] == "Failed"
    assert "'wset'" in ready_c["message"] and "cnpg-west, default, east, ref-west, west" in ready_c["message"]
    assert "cluster" not in obj["status"]
    # Not provisioned yet: the name can still be corrected, and then it reconciles.
    assert unknown["metadata"]["generation"] == 1
    await api.patch_object(EVS, namespace, "typo", {"spec": {"database": {"cluster": "west"}}})
    assert (await ready(api, namespace, "typo"))["status"]["cluster"] == "west"

    def unavailable(cluster: str) -> float:
        return REGISTRY.get_sample_value(
            "k1s0_operator_cluster_reconcile_errors_total", {"cluster": cluster, "reason": "DatabaseUnavailable"}
        ) or 0.0

    east_before, west_before = unavailable("east"), unavailable("west")
    west.stop()
    try:
        obj = await with_condition(api, namespace, "waits", "SchemaReady", "DatabaseUnavailable", timeout=30)
        message = condition(obj, "SchemaReady")["message"]
        assert message.startswith("cluster west: PostgreSQL is unavailable")
        # The operator's metrics say which cluster is failing.
        assert unavailable("west") > west_before and unavailable("east") == east_before
        assert condition(obj, "Ready")["status"] == "False"
        # The east stream stays Ready, and east keeps being reconciled: a new stream there gets Ready.
        assert condition(api.obj(EVS, namespace, "stays"), "Ready")["status"] == "True"
        await api.put_object(EVS, namespace, event_stream("fresh", namespace, {"database": {"cluster": "east"}}))
        await ready(api, namespace, "fresh")
        assert condition(api.obj(EVS, namespace, "stays"), "Ready")["status"] == "True"
        assert condition(api.obj(EVS, namespace, "waits"), "Ready")["status"] == "False"
    finally:
        west.start()
    await ready(api, namespace, "waits", timeout=60)


async def test_the_cluster_cannot_change_once_provisioned(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, west: LocalPostgres, namespace: str
) -> None:
    await api.put_object(EVS, namespace, event_stream("pinned", namespace, {"database": {"cluster": "east"}}))
    await ready(api, namespace, "pinned")
    # The CRD's CEL rule refuses it at the API (the emulator runs it); the operator's own check is
    # for a CRD that predates the rule.
    with pytest.raises(ApiError, match="cannot change once the EventStream is provisioned"):
        await api.patch_object(EVS, namespace, "pinned", {"spec": {"database": {"cluster": "west"}}})
    api.cel = False
    await api.patch_object(EVS, namespace, "pinned", {"spec": {"database": {"cluster": "west"}}})
    obj = await with_condition(api, namespace, "pinned", "Ready", "ClusterImmutable")
    assert obj["status"]["phase"] == "Failed" and obj["status"]["cluster"] == "east"
    assert "the operator does not move them" in condition(obj, "Ready")["message"]
    schema = f"{namespace}_pinned"
    assert await placement(pg, schema) == (True, True)
    assert await placement(west, schema) == (False, False)
    assert urlsplit(secret_dsn(api, namespace, "pinned-eventstore-db")).port == pg.port


async def test_a_cloudnativepg_cluster_resolves_from_its_superuser_secret_and_rw_service(
    api: ApiServer, operator: RunningOperator, west: LocalPostgres, namespace: str
) -> None:
    # A password-checked superuser on the west server, as CloudNativePG's `postgres` would be.
    admin, password = f"cnpg_{namespace}", "s3cret/with:odd@chars"
    conn = await asyncpg.connect(west.dsn)
    try:
        await conn.execute(f'CREATE ROLE "{admin}" LOGIN SUPERUSER PASSWORD \'{password}\'')
    finally:
        await conn.close()
    try:
        await api.put_object(EVS, namespace, event_stream("on-cnpg", namespace, {
            "database": {"cluster": "cnpg-west"}, "deletionPolicy": "Delete"}))
        # No superuser Secret yet (CloudNativePG's default): unavailable, and the message says why.
        obj = await with_condition(api, namespace, "on-cnpg", "SchemaReady", "DatabaseUnavailable")
        message = condition(obj, "SchemaReady")["message"]
        assert f"Secret {CNPG_NAMESPACE}/pg-main-superuser not found" in message
        assert "enableSuperuserAccess" in message

        # What CloudNativePG creates: the basic-auth Secret (its host names the Service by short
        # name, useless from another namespace) and the -rw Service.
        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        await api.put_object(SECRETS, CNPG_NAMESPACE, {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
            "metadata": {"name": "pg-main-superuser", "namespace": CNPG_NAMESPACE},
            "data": {"username": b64(admin), "password": b64(password), "host": b64("pg-main-rw"),
                     "port": b64("5432"), "dbname": b64("*")},
        })
        obj = await with_condition(api, namespace, "on-cnpg", "SchemaReady", "DatabaseUnavailable")

        async def service_missing() -> bool:
            current = api.obj(EVS, namespace, "on-cnpg")
            return "Service databases/pg-main-rw not found" in condition(current, "SchemaReady").get("message", "")

        await eventually(service_missing, 20, "the missing Service to be reported")
        await api.put_object(SERVICES, CNPG_NAMESPACE, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "pg-main-rw", "namespace": CNPG_NAMESPACE},
            "spec": {"type": "ClusterIP", "clusterIP": "127.0.0.1",
                     "ports": [{"name": "postgres", "port": west.port, "protocol": "TCP", "targetPort": 5432}]},
        })
        obj = await ready(api, namespace, "on-cnpg")
        assert obj["status"]["cluster"] == "cnpg-west"
        schema = f"{namespace}_on_cnpg"
        assert await placement(west, schema) == (True, True)
        dsn = urlsplit(secret_dsn(api, namespace, "on-cnpg-eventstore-db"))
        assert (dsn.hostname, dsn.port, dsn.path) == ("127.0.0.1", west.port, "/postgres")
        assert dsn.username == f"{schema}_app"

        await api.delete_object(EVS, namespace, "on-cnpg")

        async def deleted() -> bool:
            return api.obj(EVS, namespace, "on-cnpg") is None

        await eventually(deleted, 30, "the CloudNativePG stream to be deleted")
        assert await placement(west, schema) == (False, False)
    finally:
        conn = await asyncpg.connect(west.dsn)
        try:
            await conn.execute(f'DROP ROLE IF EXISTS "{admin}"')
        finally:
            await conn.close()


async def test_moving_a_stream_by_hand_as_documented(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, west: LocalPostgres, namespace: str
) -> None:
    """docs/operator.md, "Moving a stream": pg_dump | psql, delete with Retain, apply on the new cluster."""
    await api.put_object(EVS, namespace, event_stream("mover", namespace, {"database": {"cluster": "east"}}))
    await ready(api, namespace, "mover")
    schema = f"{namespace}_mover"
    before = ServedSidecar(secret_dsn(api, namespace, "mover-eventstore-db"), schema, migrate=False)
    try:
        await asyncio.to_thread(before.start)
        await append_and_read(before, "order-7", "Placed")
        await append_and_read(before, "order-7", "Paid")
    finally:
        before.stop()

    dump = await asyncio.to_thread(subprocess.run, [
        str(pg.bin_dir / "pg_dump"), f"--schema={schema}", "--no-owner", "--no-privileges", f"--dbname={pg.dsn}",
    ], capture_output=True, check=True)
    await asyncio.to_thread(subprocess.run, [
        str(west.bin_dir / "psql"), "-v", "ON_ERROR_STOP=1", "-q", f"--dbname={west.dsn}",
    ], input=dump.stdout, capture_output=True, check=True)

    await api.delete_object(EVS, namespace, "mover")  # deletionPolicy Retain (the default)

    async def gone() -> bool:
        return api.obj(EVS, namespace, "mover") is None

    await eventually(gone, 30, "the stream to be deleted")
    await api.put_object(EVS, namespace, event_stream("mover", namespace, {"database": {"cluster": "west"}}))
    obj = await ready(api, namespace, "mover")
    assert obj["status"]["cluster"] == "west"
    dsn = secret_dsn(api, namespace, "mover-eventstore-db")
    assert urlsplit(dsn).port == west.port
    after = ServedSidecar(dsn, schema, migrate=False)
    try:
        await asyncio.to_thread(after.start)
        events = await append_and_read(after, "order-7", "Shipped")
    finally:
        after.stop()
    assert [(e["event_type"], e["version"]) for e in events] == [("Placed", 1), ("Paid", 2), ("Shipped", 3)]
    assert await event_count(pg, schema) == 2  # the old copy is kept, untouched
    assert await event_count(west, schema) == 3


async def test_a_secret_reference_is_read_at_each_reconciliation(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, west: LocalPostgres, namespace: str
) -> None:
    await api.put_object(EVS, namespace, event_stream("by-ref", namespace, {"database": {"cluster": "ref-west"}}))
    obj = await with_condition(api, namespace, "by-ref", "SchemaReady", "DatabaseUnavailable")
    assert condition(obj, "SchemaReady")["message"] == (
        f"cluster ref-west: Secret {CNPG_NAMESPACE}/pg-west-admin not found"
    )
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg-west-admin", "namespace": CNPG_NAMESPACE},
        "data": {"dsn": base64.b64encode(west.dsn.encode()).decode()},
    }
    await api.put_object(SECRETS, CNPG_NAMESPACE, secret)
    try:
        obj = await ready(api, namespace, "by-ref")
        assert obj["status"]["cluster"] == "ref-west"
        assert await placement(west, f"{namespace}_by_ref") == (True, True)
        assert await placement(pg, f"{namespace}_by_ref") == (False, False)
        assert urlsplit(secret_dsn(api, namespace, "by-ref-eventstore-db")).port == west.port
    finally:
        await api.delete_object(SECRETS, CNPG_NAMESPACE, "pg-west-admin")


# --- the configuration, without servers ------------------------------------------------------


def test_the_cluster_map_from_the_environment_pairs_keeps_multi_host_dsns() -> None:
    multi = "postgresql://admin:pw@h1:5432,h2:5432/events?target_session_attrs=read-write"
    clusters = parse_clusters(None, "postgresql://admin@shared/events", {
        "EVENTSTORE_DATABASE_CLUSTERS": f"east=postgresql://a@east/db?sslmode=require, west={multi}",
    })
    assert clusters.names() == ["default", "east", "west"]
    assert clusters.source("east").dsn == "postgresql://a@east/db?sslmode=require"
    assert clusters.source("west").dsn == multi
    assert clusters.source("default").dsn == "postgresql://admin@shared/events"


def test_the_operator_file_keeps_database_clusters_out_of_the_sidecar_config(tmp_path: Path) -> None:
    path = tmp_path / "operator.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": "postgresql://admin@shared/events", "max_connections": 7, "clusters": {
            "west": {"secretRef": {"name": "pg-west-admin"}},
            "main": {"cnpg": {"cluster": "pg-main", "namespace": "databases"}},
        }},
        "auth": {"mode": "none"},
    }))
    config, clusters = load_operator(str(path), {"EVENTSTORE_NAMESPACE": "k1s0-system"})
    assert config.database.max_connections == 7  # the rest of the file still applies
    assert clusters.source("west").secret == SecretRef("pg-west-admin", "k1s0-system", "uri")
    assert clusters.source("main").cnpg == CnpgRef("pg-main", "databases", "app")
    assert "clusters" not in yaml.safe_load(to_yaml(config))["database"]
    # The environment replaces the file's map, as for every other key.
    _, only_env = load_operator(str(path), {"EVENTSTORE_DATABASE_CLUSTERS": "east=postgresql://a@east/db"})
    assert only_env.names() == ["default", "east"]


@pytest.mark.parametrize(("raw", "url", "message"), [
    ({"East": "postgresql://a@h/db"}, "postgresql://x@h/db", "'East' is not a valid cluster name"),
    ({"east": "mysql://a@h/db"}, "postgresql://x@h/db", "database.clusters.east: must be a postgresql:// DSN"),
    ({"east": {"url": "postgresql://a@h/db", "cnpg": {}}}, "postgresql://x@h/db", "exactly one of"),
    ({"east": {"cnpg": {"cluster": "pg"}}}, "postgresql://x@h/db", "database.clusters.east.cnpg.namespace"),
    ({"east": {"cnpg": {"cluster": "pg", "namespace": "db", "host": "x"}}}, "postgresql://x@h/db",
     "unknown key(s) host"),
    ({"east": {"secretRef": {"name": "s"}}}, "postgresql://x@h/db", "secretRef.namespace: required"),
    ({"default": "postgresql://a@h/db"}, "postgresql://x@h/db", "give one of them, not both"),
    ({"east": "postgresql://a@h/db"}, "", "database.url: the admin DSN of the default PostgreSQL cluster"),
])
def test_a_bad_cluster_map_is_a_configuration_error_naming_the_key(raw: Any, url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_clusters(raw, url, {})
    assert message in str(caught.value)


def test_the_default_cluster_may_be_a_reference_instead_of_database_url() -> None:
    clusters = parse_clusters({"default": {"cnpg": {"cluster": "pg", "namespace": "db"}}}, "", {})
    assert clusters.names() == ["default"] and clusters.source("default").cnpg == CnpgRef("pg", "db", "app")
    with pytest.raises(ConfigError, match="name=postgresql"):
        parse_clusters(None, "postgresql://x@h/db", {"EVENTSTORE_DATABASE_CLUSTERS": "east"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_clusters(None, "postgresql://x@h/db", {"EVENTSTORE_DATABASE_CLUSTERS": "{east"})


def test_the_crd_refuses_a_cluster_change_once_status_cluster_is_set() -> None:
    """The CRD's CEL rule, evaluated by a CEL implementation (the emulator runs it too, on updates)."""
    rules = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    [validation] = [v for v in rules if "status.cluster" in v["rule"]]
    env = celpy.Environment()
    rule = env.program(env.compile(validation["rule"]))

    def allowed(new: str | None, old: dict[str, Any]) -> bool:
        database = {"cluster": new} if new is not None else {}
        activation = {"self": celpy.json_to_cel({"spec": {"database": database}}), "oldSelf": celpy.json_to_cel(old)}
        return bool(rule.evaluate(activation))

    never_provisioned = {"spec": {"database": {"cluster": "wset"}}, "status": {"phase": "Failed"}}
    provisioned = {"spec": {"database": {"cluster": "east"}}, "status": {"cluster": "east"}}
    assert allowed("west", never_provisioned)  # a typo can be fixed before anything exists
    assert allowed("west", {"spec": {"database": {"cluster": "east"}}})
    assert allowed("east", provisioned)
    assert not allowed("west", provisioned)
    assert not allowed(None, provisioned)  # an omitted cluster is "default"
    assert allowed(None, {"spec": {"database": {}}, "status": {"cluster": "default"}})
    assert "cannot change once the EventStream is provisioned" in validation["message"]
