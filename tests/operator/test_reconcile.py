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
from k1s0_sidecar.config import load_config
from tests.operator.conftest import (
    CONFIGMAPS,
    EVS,
    SECRETS,
    RunningOperator,
    condition,
    event_stream,
    eventually,
)
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer
from tests.support.postgres import LocalPostgres


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
    created = await api.put_object(EVS, namespace, event_stream("orders", namespace, {
        "kafka": {"topic": topic, "partitions": 2, "config": {"retention.ms": "3600000"}},
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
    assert status["topics"] == [topic]
    assert status["secretName"] == "orders-eventstore-db"
    assert status["configMapName"] == "orders-eventstore-config"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert [c["type"] for c in status["conditions"]] == ["SchemaReady", "TopicReady", "Ready"]
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
    assert config.kafka.brokers == [kafka.bootstrap]
    assert config.event_store.snapshot_interval == 25
    assert config.event_store.snapshot_retention_days == 30
    assert config.event_store.max_page_size == 500

    # The topic, with the partitions and config of the spec.
    assert await topic_partitions(kafka, topic) == 2
    assert (await topic_config(kafka, topic))["retention.ms"] == "3600000"

    # Kubernetes events for each action.
    expected = {"SchemaCreated", "RoleCreated", "SecretCreated", "ConfigMapCreated", "TopicCreated"}

    async def posted() -> set[str] | None:
        reasons = {e["reason"] for e in api.events_for(namespace, "orders")}
        return reasons if expected <= reasons else None

    await eventually(posted, 10, "the events of each action")
