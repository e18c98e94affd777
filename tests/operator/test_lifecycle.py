"""Drift repair, deletion under both policies, and PostgreSQL going away during a create."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

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
from tests.operator.test_reconcile import ready, secret_dsn, topic_partitions, with_condition
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer
from tests.support.postgres import LocalPostgres


async def pg_has(pg_dsn: str, query: str, *args: Any) -> bool:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return bool(await conn.fetchval(query, *args))
    finally:
        await conn.close()


async def schema_exists(pg_dsn: str, schema: str) -> bool:
    return await pg_has(pg_dsn, "SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)


async def role_exists(pg_dsn: str, role: str) -> bool:
    return await pg_has(pg_dsn, "SELECT 1 FROM pg_roles WHERE rolname = $1", role)


async def provisioned(api: ApiServer, namespace: str, name: str, partitions: int) -> tuple[str, str]:
    """An EventStream with a topic of its own, once Ready: (that topic, its schema)."""
    topic = f"{namespace}.{name}.v1"
    spec = {"kafka": {"topic": topic, "partitions": partitions}}
    await api.put_object(EVS, namespace, event_stream(name, namespace, spec))
    obj = await ready(api, namespace, name)
    return topic, obj["status"]["schema"]


async def events_with(api: ApiServer, namespace: str, name: str, reason: str, count: int = 1) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        found = [e for e in api.events_for(namespace, name) if e["reason"] == reason]
        return found if len(found) >= count else None

    return await eventually(check, 15, f"{count} event(s) {reason} on {namespace}/{name}")


async def gone(api: ApiServer, namespace: str, name: str) -> None:
    async def check() -> bool:
        return api.obj(EVS, namespace, name) is None

    await eventually(check, 20, f"EventStream {namespace}/{name} to be deleted")


async def test_drift_is_repaired_and_reported(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, kafka: LocalKafka, namespace: str
) -> None:
    topic, schema = await provisioned(api, namespace, "drift", partitions=2)
    role = f"{schema}_app"
    old_dsn = secret_dsn(api, namespace, "drift-eventstore-db")

    # Out of band: the topic, the role and the Secret disappear.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg.dsn)
    try:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await conn.execute(f'DROP ROLE "{role}"')
    finally:
        await conn.close()
    await api.delete_object(SECRETS, namespace, "drift-eventstore-db")
    assert await topic_partitions(kafka, topic) == 0

    # The timer puts everything back and says so.
    repaired = await events_with(api, namespace, "drift", "DriftRepaired", 3)
    messages = " | ".join(e["message"] for e in repaired)
    assert f"topic {topic} was missing" in messages
    assert f"role {role} was missing" in messages
    assert "Secret drift-eventstore-db was missing" in messages
    assert all(e["type"] == "Warning" for e in repaired)
    assert await topic_partitions(kafka, topic) == 2
    assert await role_exists(pg.dsn, role)
    new_dsn = secret_dsn(api, namespace, "drift-eventstore-db")
    assert new_dsn != old_dsn  # a new password, and it is the one the role has
    app = await asyncpg.connect(new_dsn)
    try:
        assert await app.fetchval(f"SELECT count(*) FROM {schema}.events") == 0
    finally:
        await app.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(old_dsn)
    assert condition(api.obj(EVS, namespace, "drift"), "Ready")["status"] == "True"


async def test_delete_with_retain_keeps_schema_role_and_topic(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, kafka: LocalKafka, namespace: str
) -> None:
    topic, schema = await provisioned(api, namespace, "kept", partitions=1)
    await api.delete_object(EVS, namespace, "kept")
    await gone(api, namespace, "kept")
    retained = await events_with(api, namespace, "kept", "Retained")
    assert f"schema {schema}" in retained[0]["message"]
    assert await schema_exists(pg.dsn, schema)
    assert await role_exists(pg.dsn, f"{schema}_app")
    assert await topic_partitions(kafka, topic) == 1

    # Applied again, it re-attaches to its retained schema (same owner: namespace/name).
    await api.put_object(EVS, namespace, event_stream("kept", namespace, {"kafka": {"topic": topic, "partitions": 1}}))
    again = await ready(api, namespace, "kept")
    assert again["status"]["schema"] == schema


async def test_delete_with_delete_drops_everything_but_a_topic_still_in_use(
    api: ApiServer, operator: RunningOperator, pg: LocalPostgres, kafka: LocalKafka, namespace: str
) -> None:
    shared = f"{namespace}.shared.v1"
    spec = {"kafka": {"topic": shared, "partitions": 1}, "deletionPolicy": "Delete"}
    await api.put_object(EVS, namespace, event_stream("one", namespace, spec))
    await api.put_object(EVS, namespace, event_stream("two", namespace, spec))
    one = await ready(api, namespace, "one")
    two = await ready(api, namespace, "two")

    await api.delete_object(EVS, namespace, "one")
    await gone(api, namespace, "one")
    assert not await schema_exists(pg.dsn, one["status"]["schema"])
    assert not await role_exists(pg.dsn, one["status"]["schema"] + "_app")
    assert api.obj(SECRETS, namespace, "one-eventstore-db") is None
    assert api.obj(CONFIGMAPS, namespace, "one-eventstore-config") is None
    kept = await events_with(api, namespace, "one", "TopicsKept")
    assert shared in kept[0]["message"]
    await events_with(api, namespace, "one", "SchemaDropped")
    assert await topic_partitions(kafka, shared) == 1
    assert await schema_exists(pg.dsn, two["status"]["schema"])

    await api.delete_object(EVS, namespace, "two")
    await gone(api, namespace, "two")
    deleted = await events_with(api, namespace, "two", "TopicsDeleted")
    assert shared in deleted[0]["message"]
    assert await topic_partitions(kafka, shared) == 0
    assert not await schema_exists(pg.dsn, two["status"]["schema"])


ADMIN_PASSWORD = "adm1n-s3cret-never-shown"


@pytest.fixture
async def flaky_pg() -> AsyncIterator[LocalPostgres]:
    """A PostgreSQL of its own (the test stops it) with a password-protected admin role."""
    server = LocalPostgres()
    await asyncio.to_thread(server.start)
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(f"CREATE ROLE k1s0admin SUPERUSER LOGIN PASSWORD '{ADMIN_PASSWORD}'")
    finally:
        await conn.close()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.destroy)


async def test_postgres_down_during_create_is_retried_then_ready_and_credentials_never_leak(
    api: ApiServer, flaky_pg: LocalPostgres, kafka: LocalKafka, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await api.create_namespace(namespace)
    admin_dsn = flaky_pg.dsn_for("k1s0admin", ADMIN_PASSWORD)
    await asyncio.to_thread(flaky_pg.stop)
    async with operator_running(operator_config(admin_dsn, kafka.bootstrap), [namespace]):
        await api.put_object(EVS, namespace, event_stream("late", namespace, {"kafka": {"topic": f"{namespace}.late"}}))
        obj = await with_condition(api, namespace, "late", "SchemaReady", "DatabaseUnavailable")
        assert condition(obj, "SchemaReady")["status"] == "False"
        assert "PostgreSQL is unavailable" in condition(obj, "SchemaReady")["message"]
        assert condition(obj, "Ready")["status"] == "False"
        retries = await events_with(api, namespace, "late", "DatabaseUnavailable", 2)
        assert "retrying in" in retries[0]["message"]

        await asyncio.to_thread(flaky_pg.start)
        obj = await ready(api, namespace, "late")
        assert obj["status"]["phase"] == "Ready"

    # The admin password is nowhere: not in the status, not in events, not in any log line
    # (the capture does see the operator thread's logs, retries included).
    assert any(r.name.startswith("kopf") and "DatabaseUnavailable" in r.getMessage() for r in caplog.records) or any(
        r.name.startswith("kopf") and "PostgreSQL is unavailable" in r.getMessage() for r in caplog.records
    )
    assert ADMIN_PASSWORD not in json.dumps(api.obj(EVS, namespace, "late"))
    assert ADMIN_PASSWORD not in json.dumps(api.events_for(namespace, "late"))
    assert ADMIN_PASSWORD not in caplog.text
    assert "k1s0admin:" not in caplog.text


async def test_a_restarted_operator_resumes_and_repairs(
    api: ApiServer, pg: LocalPostgres, kafka: LocalKafka, namespace: str
) -> None:
    await api.create_namespace(namespace)
    config = operator_config(pg.dsn, kafka.bootstrap)
    async with operator_running(config, [namespace]):
        await api.put_object(EVS, namespace, event_stream("resumed", namespace, {"kafka": {"topic": f"{namespace}.r"}}))
        await ready(api, namespace, "resumed")
    # While no operator runs, the ConfigMap is deleted.
    await api.delete_object(CONFIGMAPS, namespace, "resumed-eventstore-config")
    async with operator_running(config, [namespace]):
        async def configmap_back() -> bool:
            return api.obj(CONFIGMAPS, namespace, "resumed-eventstore-config") is not None

        await eventually(configmap_back, 15, "the ConfigMap to be re-created on resume")
        repaired = await events_with(api, namespace, "resumed", "DriftRepaired")
        assert "ConfigMap resumed-eventstore-config was missing" in repaired[0]["message"]
