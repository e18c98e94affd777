"""One reconciliation of one EventStream, and its deletion: the order of steps and what they report.

``reconcile`` is idempotent and is what create, resume, update and the drift timer all run:

1. parse the spec (invalid: ``InvalidSpec``, permanent) and refuse a schema rename
   (``SchemaImmutable``, permanent);
2. PostgreSQL: claim the schema (another owner: ``Conflict``, permanent until it is released),
   migrate it, create or repair the role ``<schema>_app`` with the password kept in the Secret;
3. Kubernetes: the Secret (role DSN) and the ConfigMap (sidecar config.yaml), owned by the stream;
4. Kafka: every topic, created or brought to the spec as far as the broker can;
5. status: conditions, phase, schema, topics, Secret and ConfigMap names.

PostgreSQL, Kafka or API-server failures raise ``kopf.TemporaryError`` with an exponential delay
after writing *why* into the conditions. Messages name hosts and objects, never credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import kopf

from . import _kafka, _postgres
from ._clusters import UnknownCluster
from ._resources import KubernetesUnavailable, config_map_body, secret_body, sidecar_config
from ._runtime import Runtime
from ._spec import DEFAULT_CLUSTER, DEFAULT_TOPIC, SpecError, StreamSpec, parse_spec, validate_topic
from ._status import (
    PROVISIONED,
    READY,
    SCHEMA_READY,
    TOPIC_READY,
    Condition,
    merge_conditions,
    phase_of,
    ready_from,
)


class _Reporter:
    """Writes conditions and the other status fields into Kopf's patch."""

    def __init__(self, body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch) -> None:
        self.body = body
        self.previous = status.get("conditions") or []
        self.patch = patch
        generation = body.get("metadata", {}).get("generation")
        self.generation = int(generation) if generation is not None else None

    def write(
        self, schema_c: Condition, topic_c: Condition, ready: Condition | None = None,
        provisioned: Condition | None = None, **fields: Any,
    ) -> None:
        ready = ready or ready_from(schema_c, topic_c)
        updates = [schema_c, topic_c, ready, *([provisioned] if provisioned else [])]
        self.patch.status["conditions"] = merge_conditions(self.previous, updates, self.generation)
        self.patch.status["observedGeneration"] = self.generation
        self.patch.status["phase"] = phase_of(ready)
        for key, value in fields.items():
            self.patch.status[key] = value

    def refuse(self, reason: str, message: str) -> kopf.PermanentError:
        unknown = f"not reconciled: {message}"
        self.write(
            Condition(SCHEMA_READY, "Unknown" if reason != "Conflict" else "False", reason, unknown),
            Condition(TOPIC_READY, "Unknown", reason, unknown),
            Condition(READY, "False", reason, message),
        )
        kopf.warn(self.body, reason=reason, message=message)
        return kopf.PermanentError(message)

    def retry(
        self, runtime: Runtime, retry: int, schema: Condition, topic: Condition,
        provisioned: Condition | None = None, fields: Mapping[str, Any] | None = None,
    ) -> kopf.TemporaryError:
        failing = schema if schema.status != "True" else topic
        self.write(schema, topic, provisioned=provisioned, **(fields or {}))
        delay = runtime.backoff(retry)
        kopf.warn(self.body, reason=failing.reason, message=f"{failing.message}; retrying in {delay:g}s")
        return kopf.TemporaryError(failing.message, delay=delay)


def _spec_or_refuse(body: kopf.Body, reporter: _Reporter) -> StreamSpec:
    meta = body.get("metadata", {})
    try:
        return parse_spec(meta.get("namespace", ""), meta.get("name", ""), body.get("spec") or {})
    except SpecError as exc:
        raise reporter.refuse("InvalidSpec", str(exc)) from None


async def reconcile(
    *, body: kopf.Body, status: Mapping[str, Any], patch: kopf.Patch, runtime: Runtime, retry: int
) -> None:
    reporter = _Reporter(body, status, patch)
    s = _spec_or_refuse(body, reporter)
    recorded = status.get("schema")
    if recorded and recorded != s.schema:
        raise reporter.refuse(
            "SchemaImmutable",
            f"spec.database.schema cannot change from {recorded!r} to {s.schema!r}: the events live in "
            f"{recorded!r}; create a new EventStream to use another schema",
        )
    # A stream provisioned before clusters existed has no status.cluster: it lives on the default.
    recorded_cluster = status.get("cluster") or (DEFAULT_CLUSTER if recorded else None)
    if recorded_cluster and recorded_cluster != s.cluster:
        raise reporter.refuse(
            "ClusterImmutable",
            f"spec.database.cluster cannot change from {recorded_cluster!r} to {s.cluster!r}: the events live on "
            f"{recorded_cluster!r}; the operator does not move them (see docs/operator.md, moving a stream)",
        )
    repaired: list[str] = []
    was_provisioned = bool(recorded)

    # --- PostgreSQL ----------------------------------------------------------------------------
    pending_topic = Condition(TOPIC_READY, "Unknown", "Pending", "waiting for the schema")
    try:
        admin_dsn = await runtime.cluster_set.admin_dsn(s.cluster, runtime.kube.core)
        secret_dsn = await runtime.kube.read_secret_dsn(s.namespace, s.secret_name)
        conn = await _postgres.connect(admin_dsn)
        try:
            before = await _postgres.inspect(conn, s.schema, s.role)
            password = _postgres.password_from_dsn(secret_dsn) if secret_dsn else None
            if password is None or _user_of(secret_dsn) != s.role:
                password = _postgres.new_password()
            applied = await _postgres.provision(conn, s.schema, s.role, password, s.owner)
        finally:
            await conn.close()
    except UnknownCluster as exc:
        raise reporter.refuse("UnknownCluster", str(exc)) from None
    except _postgres.SchemaConflict as exc:
        raise reporter.refuse("Conflict", f"{exc} on cluster {s.cluster}; this EventStream does not use it") from None
    except _postgres.DatabaseUnavailable as exc:
        message = str(exc) if str(exc).startswith("cluster ") else f"cluster {s.cluster}: {exc}"
        raise reporter.retry(
            runtime, retry, Condition(SCHEMA_READY, "False", "DatabaseUnavailable", message), pending_topic
        ) from None
    except KubernetesUnavailable as exc:
        raise reporter.retry(
            runtime, retry, Condition(SCHEMA_READY, "Unknown", "KubernetesUnavailable", str(exc)), pending_topic
        ) from None
    if was_provisioned and not before.exists:
        repaired.append(f"schema {s.schema} was missing and was re-created (its events are gone)")
    elif applied and before.exists:
        kopf.info(body, reason="SchemaMigrated", message=f"schema {s.schema}: applied migrations {applied}")
    if not was_provisioned and applied:
        kopf.info(body, reason="SchemaCreated", message=f"schema {s.schema} created (migrations {applied})")
    if was_provisioned and not before.role_exists:
        repaired.append(f"role {s.role} was missing and was re-created")
    elif not before.role_exists:
        kopf.info(body, reason="RoleCreated", message=f"role {s.role} created with the sidecar's privileges")
    level = max(applied or [before.version])
    schema_ok = Condition(
        SCHEMA_READY, "True", "SchemaReady",
        f"schema {s.schema} at migration {level}, role {s.role}, on cluster {s.cluster}",
    )
    # Recorded as soon as the schema exists (even if Kafka fails next): it pins the stream's cluster.
    patch.status["cluster"] = s.cluster

    # --- Kubernetes objects --------------------------------------------------------------------
    dsn = _postgres.role_dsn(admin_dsn, s.role, password)
    try:
        secret_result = await runtime.kube.apply(secret_body(s, dsn, body))
        config_result = await runtime.kube.apply(config_map_body(s, sidecar_config(runtime.config, s), body))
    except KubernetesUnavailable as exc:
        raise reporter.retry(
            runtime, retry, Condition(SCHEMA_READY, "False", "KubernetesUnavailable", str(exc)), pending_topic
        ) from None
    results = (("Secret", s.secret_name, secret_result), ("ConfigMap", s.config_map_name, config_result))
    for kind, name, result in results:
        if result == "created" and was_provisioned and (kind != "Secret" or secret_dsn is None):
            extra = " with a new password for the role" if kind == "Secret" else ""
            repaired.append(f"{kind} {name} was missing and was re-created{extra}")
        elif result != "unchanged":
            kopf.info(body, reason=f"{kind}{result.capitalize()}", message=f"{kind} {name} {result}")

    # The sidecar can serve from here on (it needs neither Kafka nor the operator): recorded now, so
    # a broker that is down at creation does not keep the stream's pods out.
    provisioned = Condition(
        PROVISIONED, "True", "Provisioned", f"schema {s.schema}, role {s.role}, Secret {s.secret_name} and "
        f"ConfigMap {s.config_map_name} exist: pods can get the sidecar",
    )
    placed: dict[str, Any] = {
        "schema": s.schema, "cluster": s.cluster, "secretName": s.secret_name, "configMapName": s.config_map_name,
    }

    # --- Kafka ---------------------------------------------------------------------------------
    topic_names = [t.name for t in s.topics]
    if not runtime.brokers:
        topic_cond = Condition(
            TOPIC_READY, "True", "KafkaDisabled", "no Kafka brokers configured: events are not forwarded"
        )
    else:
        try:
            async with _kafka.Admin(runtime.brokers, runtime.config.kafka.security) as admin:
                existing = await admin.existing()
                outcomes = [await admin.ensure(t, existing) for t in s.topics]
        except _kafka.BrokerUnavailable as exc:
            raise reporter.retry(
                runtime, retry, schema_ok, Condition(TOPIC_READY, "False", "BrokerUnavailable", str(exc)),
                provisioned, placed,
            ) from None
        known = set(status.get("topics") or [])
        for o in outcomes:
            if o.created and o.name in known:
                repaired.append(f"topic {o.name} was missing and was re-created with {o.partitions} partitions")
            elif o.created:
                kopf.info(body, reason="TopicCreated", message=o.message)
            elif not o.ok:
                kopf.warn(body, reason=o.reason, message=o.message)
        ok, reason, message, _ = _kafka.summarize(outcomes)
        topic_cond = Condition(TOPIC_READY, "True" if ok else "False", reason, message)

    for message in repaired:
        kopf.warn(body, reason="DriftRepaired", message=message)
    reporter.write(schema_ok, topic_cond, provisioned=provisioned, topics=topic_names, **placed)


def _user_of(dsn: str | None) -> str | None:
    if not dsn:
        return None
    try:
        user = urlsplit(dsn).username
    except ValueError:
        return None
    return unquote(user) if user else None


async def delete(*, body: kopf.Body, runtime: Runtime, retry: int) -> None:
    """The finalizer's work: keep everything (Retain) or remove what this EventStream owns (Delete)."""
    meta = body.get("metadata", {})
    try:
        s = parse_spec(meta.get("namespace", ""), meta.get("name", ""), body.get("spec") or {})
    except SpecError as exc:
        kopf.warn(body, reason="NothingToDelete", message=f"invalid spec, nothing was provisioned: {exc}")
        return
    claimed = body.get("status", {}).get("schema")
    # The cluster the schema was provisioned on (status), not what the spec says now.
    cluster = body.get("status", {}).get("cluster") or DEFAULT_CLUSTER
    if s.deletion_policy == "Retain":
        kopf.info(
            body, reason="Retained",
            message=f"deletionPolicy Retain: schema {s.schema}, role {s.role} and topics "
            f"{', '.join(t.name for t in s.topics)} are kept",
        )
        return
    try:
        if claimed == s.schema:
            try:
                admin_dsn = await runtime.cluster_set.admin_dsn(cluster, runtime.kube.core)
            except UnknownCluster:
                # Blocking the deletion until the configuration changes helps nobody: say what is kept.
                admin_dsn = None
                kopf.warn(
                    body, reason="ClusterUnknown",
                    message=f"cluster {cluster} is no longer configured: schema {s.schema} and role {s.role} "
                    "on it are kept",
                )
            if admin_dsn is not None:
                conn = await _postgres.connect(admin_dsn)
                try:
                    dropped = await _postgres.deprovision(conn, s.schema, s.role, s.owner)
                finally:
                    await conn.close()
                if dropped:
                    kopf.info(
                        body, reason="SchemaDropped",
                        message=f"schema {s.schema} and role {s.role} dropped from cluster {cluster}",
                    )
                else:
                    kopf.warn(
                        body, reason="SchemaNotOwned",
                        message=f"schema {s.schema} on cluster {cluster} belongs to another EventStream; kept",
                    )
        for kind, name in (("Secret", s.secret_name), ("ConfigMap", s.config_map_name)):
            if await runtime.kube.delete(kind, s.namespace, name):
                kopf.info(body, reason=f"{kind}Deleted", message=f"{kind} {name} deleted")
        mine = {t.name for t in s.topics}
        in_use = _topics_used_by_others(await runtime.kube.eventstreams(), meta.get("uid"))
        kept = sorted(mine & in_use)
        if runtime.brokers and claimed == s.schema:
            async with _kafka.Admin(runtime.brokers, runtime.config.kafka.security) as admin:
                deleted = await admin.delete(mine - in_use)
            if deleted:
                kopf.info(body, reason="TopicsDeleted", message=f"topics {', '.join(deleted)} deleted")
        if kept:
            kopf.info(
                body, reason="TopicsKept", message=f"topics {', '.join(kept)} are still used by other EventStreams"
            )
    except (_postgres.DatabaseUnavailable, _kafka.BrokerUnavailable, KubernetesUnavailable) as exc:
        delay = runtime.backoff(retry)
        kopf.warn(body, reason="DeletionRetry", message=f"{exc}; retrying in {delay:g}s")
        raise kopf.TemporaryError(str(exc), delay=delay) from None


def _topics_used_by_others(items: list[dict[str, Any]], uid: str | None) -> set[str]:
    used: set[str] = set()
    for item in items:
        meta = item.get("metadata", {})
        if meta.get("uid") == uid:
            continue
        kafka = (item.get("spec") or {}).get("kafka") or {}
        try:
            used.add(validate_topic(kafka.get("topic") or DEFAULT_TOPIC))
            used.update(validate_topic(t) for t in (kafka.get("routes") or {}).values())
        except SpecError:
            continue
    return used
