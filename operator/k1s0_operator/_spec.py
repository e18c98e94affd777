"""What an EventStream asks for: its spec parsed into one immutable value, or a clear refusal.

The API server already enforces the CRD's ``openAPIV3Schema`` (types, patterns, minimums,
defaults); this module repeats the checks that matter for safety (identifiers that reach SQL,
topic names that reach the broker) because the operator must not trust that every cluster runs
with the same CRD, and derives what the schema cannot express (the default schema name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from k1s0_event_store.schema import validate_identifier

GROUP = "eventstore.k1s0.io"
VERSION = "v1"
PLURAL = "eventstreams"
KIND = "EventStream"
SHORT_NAME = "evs"

#: A pod carrying this label (value: the EventStream's name) gets the sidecar.
STREAM_LABEL = f"{GROUP}/stream"
#: ``"true"`` stops reconciliation of one EventStream.
PAUSE_ANNOTATION = f"{GROUP}/paused"

DEFAULT_TOPIC = "k1s0.system.eventstore.event.published.v1"
ROLE_SUFFIX = "_app"
#: The role is ``<schema>_app`` and must itself be a valid identifier (at most 63 characters).
MAX_SCHEMA_LENGTH = 63 - len(ROLE_SUFFIX)

DEFAULT_CLUSTER = "default"
_CLUSTER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_TOPIC = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_TOPIC_CONFIG_KEY = re.compile(r"^[a-z0-9.]+$")
_NON_IDENT = re.compile(r"[^a-z0-9_]+")


class SpecError(ValueError):
    """The spec cannot be reconciled as written; the message names the field."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamSpec:
    namespace: str
    name: str
    schema: str
    topic: str
    partitions: int
    replication_factor: int
    topic_config: Mapping[str, str]
    routes: Mapping[str, str]
    snapshot_interval: int
    snapshot_retention_days: int
    max_events_per_append: int
    max_page_size: int
    deletion_policy: Literal["Retain", "Delete"]
    sidecar_image: str | None
    sidecar_resources: Mapping[str, Any]
    #: The operator's PostgreSQL cluster holding the schema (``_clusters.py``); fixed once provisioned.
    cluster: str = DEFAULT_CLUSTER

    @property
    def role(self) -> str:
        return self.schema + ROLE_SUFFIX

    @property
    def topics(self) -> tuple[TopicSpec, ...]:
        """The published topic first, then every distinct routed topic, all with the same settings."""
        names = [self.topic, *sorted(set(self.routes.values()) - {self.topic})]
        return tuple(TopicSpec(n, self.partitions, self.replication_factor, self.topic_config) for n in names)

    @property
    def secret_name(self) -> str:
        return f"{self.name}-eventstore-db"

    @property
    def config_map_name(self) -> str:
        return f"{self.name}-eventstore-config"

    @property
    def owner(self) -> str:
        """Who claims the schema in the database (namespace/name: a re-created resource re-attaches)."""
        return f"{self.namespace}/{self.name}"


def default_schema(namespace: str, name: str) -> str:
    """``<namespace>_<name>`` made into an identifier: lower case, runs of other characters -> ``_``."""
    raw = _NON_IDENT.sub("_", f"{namespace}_{name}".lower()).strip("_")
    if not raw or raw[0].isdigit():
        raw = "es_" + raw
    if raw.startswith("pg_"):
        raw = "es_" + raw
    return raw[:MAX_SCHEMA_LENGTH].rstrip("_")


def validate_topic(name: object, what: str = "topic") -> str:
    if not isinstance(name, str) or not _TOPIC.fullmatch(name) or name in {".", ".."}:
        raise SpecError(
            f"{what} {name!r} is not a valid Kafka topic name: use 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-'"
        )
    return name


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.{key} must be an object")
    return value


def _int(section: Mapping[str, Any], key: str, where: str, default: int, minimum: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}.{key} must be an integer (got {value!r})")
    if value < minimum:
        raise SpecError(f"{where}.{key} must be >= {minimum} (got {value})")
    return value


def parse_spec(namespace: str, name: str, spec: Mapping[str, Any]) -> StreamSpec:
    """The EventStream's spec as a value, or SpecError naming the offending field."""
    database = _section(spec, "database")
    kafka = _section(spec, "kafka")
    snapshots = _section(spec, "snapshots")
    limits = _section(spec, "limits")
    sidecar = _section(spec, "sidecar")

    schema = database.get("schema") or default_schema(namespace, name)
    try:
        validate_identifier(schema, "spec.database.schema")
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if len(schema) > MAX_SCHEMA_LENGTH:
        raise SpecError(
            f"spec.database.schema {schema!r} is too long: at most {MAX_SCHEMA_LENGTH} characters "
            f"(the role is the schema name plus {ROLE_SUFFIX!r})"
        )

    cluster = database.get("cluster") or DEFAULT_CLUSTER
    if not isinstance(cluster, str) or not _CLUSTER.fullmatch(cluster):
        raise SpecError(
            f"spec.database.cluster {cluster!r} is not a cluster name: lower-case letters, digits and '-', "
            "at most 63 characters"
        )

    topic = validate_topic(kafka.get("topic") or DEFAULT_TOPIC, "spec.kafka.topic")
    config_raw = kafka.get("config") or {}
    if not isinstance(config_raw, Mapping):
        raise SpecError("spec.kafka.config must be an object of strings")
    topic_config: dict[str, str] = {}
    for key, value in config_raw.items():
        if not isinstance(key, str) or not _TOPIC_CONFIG_KEY.fullmatch(key):
            raise SpecError(f"spec.kafka.config key {key!r} is not a Kafka config name")
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise SpecError(f"spec.kafka.config.{key} must be a string (got {value!r})")
        topic_config[key] = str(value)
    routes_raw = kafka.get("routes") or {}
    if not isinstance(routes_raw, Mapping):
        raise SpecError("spec.kafka.routes must be an object mapping event types to topics")
    routes = {str(k): validate_topic(v, f"spec.kafka.routes.{k}") for k, v in routes_raw.items()}

    policy = spec.get("deletionPolicy", "Retain")
    if policy not in ("Retain", "Delete"):
        raise SpecError(f"spec.deletionPolicy must be Retain or Delete (got {policy!r})")
    image = sidecar.get("image")
    if image is not None and not isinstance(image, str):
        raise SpecError("spec.sidecar.image must be a string")
    resources = sidecar.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise SpecError("spec.sidecar.resources must be an object")

    return StreamSpec(
        namespace=namespace,
        name=name,
        schema=schema,
        topic=topic,
        partitions=_int(kafka, "partitions", "spec.kafka", 3, 1),
        replication_factor=_int(kafka, "replicationFactor", "spec.kafka", 1, 1),
        topic_config=topic_config,
        routes=routes,
        snapshot_interval=_int(snapshots, "interval", "spec.snapshots", 100, 0),
        snapshot_retention_days=_int(snapshots, "retentionDays", "spec.snapshots", 30, 0),
        max_events_per_append=_int(limits, "maxEventsPerAppend", "spec.limits", 100, 1),
        max_page_size=_int(limits, "maxPageSize", "spec.limits", 200, 1),
        deletion_policy=policy,
        sidecar_image=image,
        sidecar_resources=dict(resources),
        cluster=cluster,
    )
