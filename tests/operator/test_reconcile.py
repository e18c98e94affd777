"""Create, update, conflicts and refusals, seen from the API server, PostgreSQL and the broker."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from k1s0_event_store.schema import LATEST_VERSION, applied_version
from k1s0_event_store.sidecar_config import load_config
from tests.operator.conftest import (
    CONFIGMAPS,
    EVS,
    SECRETS,
    RunningOperator,
    condition,
    event_stream,
    eventually,
    operator_config,
    operator_running,
)
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiError, ApiServer
from tests.support.postgres import LocalPostgres, free_port


async def ready(api: ApiServer, namespace: str, name: str, timeout: float = 30) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        obj = api.obj(EVS, namespace, name)
        return obj if condition(obj, "Ready").get("status") == "True" else None

    return await eventually(check, timeout, f"EventStream {namespace}/{name} to be Ready")


async def with_condition(
    api: ApiServer, namespace: str, name: str, type_: str, reason: str, timeout: float = 30
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        obj = api.obj(EVS, namespace, name)
        return obj if condition(obj, type_).get("reason") == reason else None

    return await eventually(check, timeout, f"{type_} reason {reason} on {namespace}/{name}")


async def topic_partitions(kafka: LocalKafka, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return 0
        described = await admin.describe_topics([topic])
        return len(described[0]["partitions"])
    finally:
        await admin.close()


async def topic_config(kafka: LocalKafka, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {e[0]: e[1] for r in responses for res in r.resources for e in res[4]}
    finally:
        await admin.close()


def secret_dsn(api: ApiServer, namespace: str, name: str) -> str:
    secret = api.obj(SECRETS, namespace, name)
    assert secret is not None
    return base64.b64decode(secret["data"]["EVENTSTORE_DATABASE_URL"]).decode()


async def test_create_provisions_schema_role_secret_configmap_topic(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, kafka: LocalKafka, namespace: str,
    tmp_path: Path,
) -> None:
    topic = f"{namespace}.orders.v1"
    routed = f"{namespace}.orders.shipped.v1"
    created = await api.put_object(EVS, namespace, event_stream("orders", namespace, {
        "kafka": {"topic": topic, "partitions": 2, "config": {"retention.ms": "3600000"},
                  "routes": {"OrderShipped": routed}},
        "snapshots": {"interval": 25},
        "limits": {"maxPageSize": 500},
    }))
    # The API server applied the CRD's defaults.
    assert created["spec"]["deletionPolicy"] == "Retain"
    assert created["spec"]["kafka"]["replicationFactor"] == 1
    assert created["spec"]["snapshots"]["retentionDays"] == 30

    obj = await ready(api, namespace, "orders")
    status = obj["status"]
    schema = f"{namespace}_orders"
    assert status["phase"] == "Ready"
    assert status["schema"] == schema
    assert status["topics"] == [topic, routed]
    assert status["secretName"] == "orders-eventstore-db"
    assert status["configMapName"] == "orders-eventstore-config"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert [c["type"] for c in status["conditions"]] == ["SchemaReady", "TopicReady", "Ready", "Provisioned"]
    for c in status["conditions"]:
        assert c["status"] == "True"
        assert c["reason"] and c["message"] and c["lastTransitionTime"]
        assert c["observedGeneration"] == obj["metadata"]["generation"]
    assert "eventstore.k1s0.io/finalizer" in obj["metadata"]["finalizers"]

    # PostgreSQL: the schema at the latest migration, claimed by this EventStream, and its role.
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert await applied_version(conn, schema) == LATEST_VERSION
        comment = await conn.fetchval(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1", schema
        )
        assert comment == f"k1s0-eventstream:{namespace}/orders"
        assert await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", f"{schema}_app")
    finally:
        await conn.close()

    # The Secret: the role's DSN, owned by the EventStream.
    secret = api.obj(SECRETS, namespace, "orders-eventstore-db")
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert secret["metadata"]["labels"]["eventstore.k1s0.io/stream"] == "orders"
    dsn = secret_dsn(api, namespace, "orders-eventstore-db")
    assert urlsplit(dsn).username == f"{schema}_app"
    assert urlsplit(dsn).port == pg.port

    # The role can append and read, and really cannot UPDATE or DELETE events.
    app = await asyncpg.connect(dsn)
    try:
        await app.execute(f"INSERT INTO {schema}.event_streams (id, aggregate_type) VALUES ('s-1', 'Order')")
        await app.execute(
            f"INSERT INTO {schema}.events (event_id, stream_id, version, event_type, payload)"
            " VALUES (gen_random_uuid(), 's-1', 1, 'OrderPlaced', '{}')"
        )
        assert await app.fetchval(f"SELECT count(*) FROM {schema}.events") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(f"UPDATE {schema}.events SET event_type = 'X'")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(f"DELETE FROM {schema}.events")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(f"TRUNCATE {schema}.events")
        # Deletion only through the stream-deletion path.
        assert await app.fetchval(f"SELECT {schema}.delete_stream('s-1')") == 1
    finally:
        await app.close()

    # The ConfigMap: a config.yaml the sidecar's own loader accepts, without credentials.
    cm = api.obj(CONFIGMAPS, namespace, "orders-eventstore-config")
    assert cm is not None
    assert cm["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    text = cm["data"]["config.yaml"]
    raw = yaml.safe_load(text)
    assert set(raw) == {"app", "server", "database", "kafka", "auth", "event_store"}
    assert raw["database"]["url"] == ""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = load_config(path, env={"EVENTSTORE_DATABASE_URL": dsn})
    assert config.database.schema == schema
    assert config.kafka.topic_published == topic
    assert config.kafka.routes == {"OrderShipped": routed}
    assert config.kafka.brokers == [kafka.bootstrap]
    assert config.event_store.snapshot_interval == 25
    assert config.event_store.snapshot_retention_days == 30
    assert config.event_store.max_page_size == 500

    # The topic, with the partitions and config of the spec.
    for name in (topic, routed):
        assert await topic_partitions(kafka, name) == 2
        assert (await topic_config(kafka, name))["retention.ms"] == "3600000"

    # Kubernetes events for each action.
    expected = {"SchemaCreated", "RoleCreated", "SecretCreated", "ConfigMapCreated", "TopicCreated"}

    async def posted() -> set[str] | None:
        reasons = {e["reason"] for e in api.events_for(namespace, "orders")}
        return reasons if expected <= reasons else None

    await eventually(posted, 10, "the events of each action")


async def test_partitions_grow_is_reported_when_the_broker_cannot_and_shrink_is_refused(
    api: ApiServer, operator: RunningOperator, kafka: LocalKafka, namespace: str
) -> None:
    topic = f"{namespace}.grow.v1"
    await api.put_object(EVS, namespace, event_stream("grow", namespace, {"kafka": {"topic": topic, "partitions": 2}}))
    await ready(api, namespace, "grow")

    # Up: the operator asks for CreatePartitions; Tansu does not implement it (IncompatibleBrokerVersion),
    # and the TopicReady condition says so, naming the partitions, instead of pretending.
    await api.patch_object(EVS, namespace, "grow", {"spec": {"kafka": {"partitions": 4}}})
    obj = await with_condition(api, namespace, "grow", "TopicReady", "PartitionIncreaseUnsupported")
    topic_ready = condition(obj, "TopicReady")
    assert topic_ready["status"] == "False"
    assert f"topic {topic} has 2 partitions; the spec asks for 4" in topic_ready["message"]
    assert "CreatePartitions" in topic_ready["message"]
    assert condition(obj, "Ready")["status"] == "False"
    assert obj["status"]["phase"] == "Degraded"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    assert await topic_partitions(kafka, topic) == 2

    # Down: refused in the status, never attempted.
    # The CRD's CEL rule refuses the shrink at the API; the operator's own check is for a cluster
    # whose CRD predates the rule.
    with pytest.raises(ApiError, match="never shrink"):
        await api.patch_object(EVS, namespace, "grow", {"spec": {"kafka": {"partitions": 1}}})
    api.cel = False
    await api.patch_object(EVS, namespace, "grow", {"spec": {"kafka": {"partitions": 1}}})
    obj = await with_condition(api, namespace, "grow", "TopicReady", "PartitionShrinkRefused")
    message = condition(obj, "TopicReady")["message"]
    assert "has 2 partitions; the spec asks for 1, and partitions can only grow" in message
    assert await topic_partitions(kafka, topic) == 2

    # Back to what the topic has: Ready again, and the transition time of Ready moved.
    await api.patch_object(EVS, namespace, "grow", {"spec": {"kafka": {"partitions": 2}}})
    obj = await ready(api, namespace, "grow")
    assert obj["status"]["observedGeneration"] == 4


async def test_schema_rename_is_refused_and_the_old_schema_kept(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, namespace: str
) -> None:
    await api.put_object(EVS, namespace, event_stream("named", namespace, {"database": {"schema": f"{namespace}_one"}}))
    await ready(api, namespace, "named")
    with pytest.raises(ApiError, match="cannot change once set"):  # the CRD's CEL rule
        await api.patch_object(EVS, namespace, "named", {"spec": {"database": {"schema": f"{namespace}_two"}}})
    api.cel = False  # a CRD that predates the rule: the operator's own check
    await api.patch_object(EVS, namespace, "named", {"spec": {"database": {"schema": f"{namespace}_two"}}})
    obj = await with_condition(api, namespace, "named", "Ready", "SchemaImmutable")
    assert obj["status"]["phase"] == "Failed"
    assert obj["status"]["schema"] == f"{namespace}_one"
    conn = await asyncpg.connect(pg.dsn)
    try:
        rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", f"{namespace}_%")
        names = {r[0] for r in rows}
    finally:
        await conn.close()
    assert names == {f"{namespace}_one"}


async def test_a_second_claim_on_a_schema_is_a_conflict_not_a_merge(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, namespace: str
) -> None:
    await api.put_object(EVS, namespace, event_stream("first", namespace))
    first = await ready(api, namespace, "first")
    schema = first["status"]["schema"]
    await api.put_object(EVS, namespace, event_stream("second", namespace, {"database": {"schema": schema}}))
    second = await with_condition(api, namespace, "second", "Ready", "Conflict")
    ready_cond = condition(second, "Ready")
    assert ready_cond["status"] == "False"
    assert f"owned by EventStream {namespace}/first" in ready_cond["message"]
    assert second["status"]["phase"] == "Failed"
    assert "schema" not in second["status"]
    # The second one got no credentials and the first is untouched.
    assert api.obj(SECRETS, namespace, "second-eventstore-db") is None
    assert condition(api.obj(EVS, namespace, "first"), "Ready")["status"] == "True"
    conn = await asyncpg.connect(pg.dsn)
    try:
        comment = await conn.fetchval(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1", schema
        )
    finally:
        await conn.close()
    assert comment == f"k1s0-eventstream:{namespace}/first"


async def test_an_invalid_spec_the_schema_lets_through_is_a_permanent_failure(
    api: ApiServer, operator: RunningOperator, namespace: str
) -> None:
    # Matches the CRD's pattern, but pg_ names are reserved by PostgreSQL.
    await api.put_object(EVS, namespace, event_stream("reserved", namespace, {"database": {"schema": "pg_events"}}))
    obj = await with_condition(api, namespace, "reserved", "Ready", "InvalidSpec")
    assert "reserved by PostgreSQL" in condition(obj, "Ready")["message"]
    assert obj["status"]["phase"] == "Failed"


async def test_the_api_server_refuses_bad_specs(api: ApiServer, namespace: str) -> None:
    await api.create_namespace(namespace)
    url = f"/apis/eventstore.k1s0.io/v1/namespaces/{namespace}/eventstreams"
    bad_specs: list[dict[str, Any]] = [
        {"kafka": {"partitions": 0}},
        {"kafka": {"topic": "no spaces allowed"}},
        {"database": {"schema": "Upper-Case"}},
        {"deletionPolicy": "Keep"},
        {"snapshots": {"interval": -1}},
        {"limits": {"maxPageSize": "many"}},
    ]
    for spec in bad_specs:
        async with api.post(url, json=event_stream("bad", namespace, spec)) as response:
            body = await response.json()
            assert response.status == 422, (spec, body)
            assert body["reason"] == "Invalid"
    async with api.post(url, json=event_stream("good", namespace, {"kafka": {"partitions": 5}})) as response:
        assert response.status == 201
        created = await response.json()
    assert created["metadata"]["namespace"] == namespace
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    async with api.post(url, json=event_stream("good", namespace)) as response:
        assert response.status == 409


async def test_a_paused_event_stream_is_left_alone_until_resumed(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, namespace: str
) -> None:
    paused = {"eventstore.k1s0.io/paused": "true"}
    await api.put_object(EVS, namespace, event_stream("held", namespace, annotations=paused))

    async def phase_paused() -> bool:
        obj = api.obj(EVS, namespace, "held")
        return bool(obj and (obj.get("status") or {}).get("phase") == "Paused")

    await eventually(phase_paused, 10, "phase Paused")
    conn = await asyncpg.connect(pg.dsn)
    try:
        assert not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", f"{namespace}_held")
    finally:
        await conn.close()
    assert api.obj(SECRETS, namespace, "held-eventstore-db") is None

    await api.patch_object(EVS, namespace, "held", {"metadata": {"annotations": {"eventstore.k1s0.io/paused": None}}})
    await ready(api, namespace, "held")


async def test_a_topic_config_change_the_broker_cannot_apply_is_reported(
    api: ApiServer, operator: RunningOperator, kafka: LocalKafka, namespace: str
) -> None:
    topic = f"{namespace}.conf.v1"
    spec = {"kafka": {"topic": topic, "partitions": 1, "config": {"retention.ms": "1000"}}}
    await api.put_object(EVS, namespace, event_stream("conf", namespace, spec))
    await ready(api, namespace, "conf")
    await api.patch_object(EVS, namespace, "conf", {"spec": {"kafka": {"config": {"retention.ms": "2000"}}}})
    obj = await with_condition(api, namespace, "conf", "TopicReady", "ConfigChangeUnsupported")
    message = condition(obj, "TopicReady")["message"]
    assert f"topic {topic}: config retention.ms differs from the spec" in message
    assert "AlterConfigs" in message
    assert (await topic_config(kafka, topic))["retention.ms"] == "1000"


async def test_an_unreachable_broker_is_retried_with_the_reason_in_the_status(
    api: ApiServer, pg: LocalPostgres, namespace: str
) -> None:
    await api.create_namespace(namespace)
    async with operator_running(operator_config(pg.dsn, f"127.0.0.1:{free_port()}"), [namespace]):
        await api.put_object(EVS, namespace, event_stream("nobroker", namespace))
        obj = await with_condition(api, namespace, "nobroker", "TopicReady", "BrokerUnavailable", timeout=60)
        assert condition(obj, "TopicReady")["status"] == "False"
        assert "Kafka is unavailable" in condition(obj, "TopicReady")["message"]
        assert condition(obj, "SchemaReady")["status"] == "True"
        assert condition(obj, "Ready")["status"] == "False"

        async def retried() -> list[dict[str, Any]] | None:
            found = [e for e in api.events_for(namespace, "nobroker") if e["reason"] == "BrokerUnavailable"]
            return found or None

        retries = await eventually(retried, 10, "a BrokerUnavailable event")
        assert "retrying in" in retries[0]["message"]


async def test_reconciling_again_changes_nothing(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, namespace: str
) -> None:
    """The drift timer re-runs every step; on an unchanged world it must be a no-op."""
    await api.put_object(EVS, namespace, event_stream("idem", namespace, {"kafka": {"topic": f"{namespace}.idem"}}))
    obj = await ready(api, namespace, "idem")
    secret = api.obj(SECRETS, namespace, "idem-eventstore-db")
    cm = api.obj(CONFIGMAPS, namespace, "idem-eventstore-config")
    assert secret is not None and cm is not None
    events_before = sorted(e["reason"] for e in api.events_for(namespace, "idem"))
    status_path = f"/apis/eventstore.k1s0.io/v1/namespaces/{namespace}/eventstreams/idem/status"

    def status_patches() -> int:
        return sum(1 for r in list(api) if r.url.path == status_path and str(r.method.value) == "PATCH")

    start = status_patches()

    async def timer_ran_twice() -> bool:
        return status_patches() >= start + 2

    await eventually(timer_ran_twice, 15, "two drift-timer runs")
    after = api.obj(EVS, namespace, "idem")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]  # identical status: no-op
    assert api.obj(SECRETS, namespace, "idem-eventstore-db") == secret
    assert api.obj(CONFIGMAPS, namespace, "idem-eventstore-config") == cm
    assert sorted(e["reason"] for e in api.events_for(namespace, "idem")) == events_before
    app = await asyncpg.connect(secret_dsn(api, namespace, "idem-eventstore-db"))
    await app.close()
