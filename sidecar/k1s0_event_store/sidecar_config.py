"""The one configuration loader: seed 000's ``config.yaml`` plus ``EVENTSTORE_<SECTION>_<KEY>``.

Precedence: built-in defaults < the YAML file < environment variables. Every key of every section
can be overridden by an environment variable named after it in upper case
(``database.url`` -> ``EVENTSTORE_DATABASE_URL``, ``event_store.max_page_size`` ->
``EVENTSTORE_EVENT_STORE_MAX_PAGE_SIZE``). Lists are comma-separated, mappings are
``key=value`` pairs separated by commas. An invalid value stops start-up with a ``ConfigError``
that names the key and where it came from. The operator uses this same loader.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from ._json import MAX_JSON_DEPTH_LIMIT
from .kafka_security import KafkaSecurityError, KafkaSecurityKeys
from .schema import validate_identifier

ENV_PREFIX = "EVENTSTORE_"
DEFAULT_TOPIC = "k1s0.system.eventstore.event.published.v1"


class ConfigError(ValueError):
    """An invalid configuration; the message names the key."""


@dataclass(frozen=True)
class AppSection:
    name: str = "event-store"
    version: str = "0.1.0"
    environment: str = "production"
    #: json: one JSON object per line (log pipelines); text: readable lines plus an access log.
    log_format: Literal["json", "text"] = "json"


@dataclass(frozen=True)
class ServerSection:
    host: str = "0.0.0.0"
    port: int = 8080
    grpc_port: int = 9090
    #: A second listener on every interface serving only /healthz and /readyz (0: none), so that
    #: the kubelet's HTTP probes reach a sidecar whose API listens on loopback only.
    health_port: int = 0
    #: Largest accepted REST request body; a larger declared Content-Length is refused unread.
    max_body_bytes: int = 4 * 1024 * 1024
    #: How long a REST connection may take to send a request's headers (counted from when it
    #: opened or its previous response ended); also how long an idle keep-alive connection stays.
    header_timeout_seconds: float = 10.0
    #: How long a REST request may take to send its body.
    body_timeout_seconds: float = 60.0
    #: How long SIGTERM waits for in-flight requests before closing.
    shutdown_grace_seconds: float = 20.0


@dataclass(frozen=True)
class DatabaseSection:
    #: Empty: ``serve`` starts an embedded PostgreSQL (development only).
    url: str = ""
    schema: str = "event_store"
    max_connections: int = 20
    min_connections: int = 5
    connect_timeout_seconds: float = 5.0
    #: Apply migrations at start-up. Off by default with a URL: in a cluster the operator owns them.
    migrate: bool = False
    #: Where the embedded PostgreSQL keeps its data (default: ``./.data/postgres``).
    embedded_data_dir: str = ""


@dataclass(frozen=True)
class KafkaSection(KafkaSecurityKeys):
    """The brokers and topics; the TLS/SASL keys (``security_protocol``, ``ssl_*``, ``sasl_*``)
    are inherited, with their ``security`` builder."""

    #: Empty disables the forwarder.
    brokers: list[str] = field(default_factory=list)
    topic_published: str = DEFAULT_TOPIC
    producer_acks: str = "all"
    producer_retries: int = 3
    enable_idempotence: bool = True
    #: Event type -> topic (seed 003's routing); unlisted types go to ``topic_published``.
    routes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthSection:
    mode: Literal["jwt", "none"] = "jwt"
    jwks_url: str = ""
    issuer: str = ""
    audience: str = ""
    #: The client whose ``resource_access.<client>.roles`` count as roles.
    client_id: str = ""
    leeway_seconds: float = 30.0
    #: Accepted signature algorithms: a subset of RS256 and ES256 (never none or HS*).
    algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])
    #: Least time between two JWKS fetches (unknown ``kid``, failed fetch): bounds the load a
    #: stream of tokens with made-up key ids can put on the key server.
    jwks_refetch_seconds: float = 10.0
    #: Cached keys are refreshed in the background after this long (a removed key stops working).
    jwks_max_age_seconds: float = 300.0
    jwks_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class EventStoreSection:
    max_events_per_append: int = 100
    max_page_size: int = 200
    #: Used when a read names no page size; capped at max_page_size.
    default_page_size: int = 50
    #: Group commit: most requests coalesced into one transaction, and how long to wait for more.
    group_commit_max_batch: int = 256
    group_commit_linger_ms: float = 0.0
    snapshot_interval: int = 100
    snapshot_retention_days: int = 30
    #: Deepest nesting accepted in a payload, metadata or snapshot state (a scalar is 0, [] is 1).
    max_json_depth: int = 512
    #: Subscriptions: events queued per live subscriber before it is sent back to catch-up reads.
    subscription_buffer: int = 1000
    #: How often a sidecar looks for other sidecars' commits (its subscription reader while someone
    #: is subscribed, and the active forwarder); its own commits wake both at once.
    subscription_poll_interval_ms: float = 100.0
    #: SSE keep-alive comment interval while idle.
    subscription_keepalive_seconds: float = 15.0


@dataclass(frozen=True)
class Config:
    app: AppSection = field(default_factory=AppSection)
    server: ServerSection = field(default_factory=ServerSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    kafka: KafkaSection = field(default_factory=KafkaSection)
    auth: AuthSection = field(default_factory=AuthSection)
    event_store: EventStoreSection = field(default_factory=EventStoreSection)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    document: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the YAML file at ``path``, then ``EVENTSTORE_*`` variables, then ``overrides``.

    ``document`` is that file already parsed, given instead of ``path`` (the operator reads its file
    first to take out its own keys, such as ``database.clusters``).
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if document is not None:
        raw = dict(document)
    elif path is not None:
        raw = read_config_file(path)
    sections = {f.name: f for f in fields(Config)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
    built: dict[str, Any] = {}
    for name in sections:
        section_type = _resolve(Config, name)
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: must be a mapping")
        built[name] = _build_section(name, section_type, values, env, (overrides or {}).get(name, {}))
    config = Config(**built)
    _validate(config)
    return config


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A configuration file parsed into its sections (empty file: none), or a ``ConfigError``."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections")
    return loaded


def _resolve(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _build_section(
    section: str, cls: type, values: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> Any:
    assert is_dataclass(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{section}.{f.name}"
        env_name = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
        if f.name in overrides:
            kwargs[f.name] = _coerce(key, hints[f.name], overrides[f.name], "override")
        elif env_name in env:
            kwargs[f.name] = _coerce(key, hints[f.name], env[env_name], env_name, from_env=True)
        elif f.name in values:
            kwargs[f.name] = _coerce(key, hints[f.name], values[f.name], "config file")
    return cls(**kwargs)


#: Numeric settings: how an error names the kind, and the YAML values taken as they are.
_NUMBERS: dict[Any, tuple[str, tuple[type, ...]]] = {int: ("an integer", (int,)), float: ("a number", (int, float))}


def _coerce(key: str, hint: Any, value: Any, source: str, *, from_env: bool = False) -> Any:
    def fail(why: str) -> ConfigError:
        return ConfigError(f"{key}: {why} (from {source}, got {value!r})")

    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        text = str(value).strip().lower() if from_env else value
        if text not in allowed:
            raise fail(f"must be one of {', '.join(map(str, allowed))}")
        return text
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
        raise fail("must be true or false")
    if hint in _NUMBERS:
        # bool is an int to Python, never to a configuration file; an int is a fine float.
        what, accepted = _NUMBERS[hint]
        if isinstance(value, accepted) and not isinstance(value, bool):
            return hint(value)
        if isinstance(value, str):
            try:
                return hint(value.strip())
            except ValueError:
                pass
        raise fail(f"must be {what}")
    if hint is str:
        if isinstance(value, (dict, list)):
            raise fail("must be a string")
        return "" if value is None else str(value)
    if origin is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            return [str(v) for v in value]
        if value is None:
            return []
        raise fail("must be a list of strings")
    if origin is dict:
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for part in filter(None, (p.strip() for p in value.split(","))):
                k, sep, v = part.partition("=")
                if not sep or not k.strip() or not v.strip():
                    raise fail("must be key=value pairs separated by commas")
                pairs[k.strip()] = v.strip()
            return pairs
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        if value is None:
            return {}
        raise fail("must be a mapping")
    if isinstance(hint, types.UnionType):  # pragma: no cover - no optional fields today
        raise fail("unsupported type")
    raise fail(f"unsupported type {hint}")


def _validate(c: Config) -> None:
    def positive(key: str, value: float, minimum: float = 1) -> None:
        if value < minimum:
            raise ConfigError(f"{key}: must be >= {minimum} (got {value})")

    for key, port in (("server.port", c.server.port), ("server.grpc_port", c.server.grpc_port),
                      ("server.health_port", c.server.health_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: must be a TCP port 0-65535 (got {port})")
    if c.server.port and c.server.port == c.server.grpc_port:
        raise ConfigError("server.grpc_port: must differ from server.port")
    positive("server.max_body_bytes", c.server.max_body_bytes, 1024)
    positive("server.shutdown_grace_seconds", c.server.shutdown_grace_seconds, 0)
    positive("server.header_timeout_seconds", c.server.header_timeout_seconds, 0.1)
    positive("server.body_timeout_seconds", c.server.body_timeout_seconds, 0.1)
    try:
        validate_identifier(c.database.schema, "schema")
    except ValueError as exc:
        raise ConfigError(f"database.schema: {exc}") from exc
    positive("database.max_connections", c.database.max_connections)
    positive("database.min_connections", c.database.min_connections, 0)
    if c.database.min_connections > c.database.max_connections:
        raise ConfigError("database.min_connections: must not exceed database.max_connections")
    positive("database.connect_timeout_seconds", c.database.connect_timeout_seconds, 0.1)
    if c.kafka.producer_acks not in {"all", "-1", "0", "1"}:
        raise ConfigError(f"kafka.producer_acks: must be all, 0 or 1 (got {c.kafka.producer_acks!r})")
    if c.kafka.brokers and not c.kafka.topic_published:
        raise ConfigError("kafka.topic_published: must not be empty when kafka.brokers is set")
    positive("kafka.producer_retries", c.kafka.producer_retries, 0)
    if c.kafka.enable_idempotence and c.kafka.producer_acks not in {"all", "-1"}:
        raise ConfigError(
            f"kafka.enable_idempotence: needs kafka.producer_acks all (got {c.kafka.producer_acks!r});"
            " set enable_idempotence false to use acks 0 or 1"
        )
    if c.kafka.brokers:
        # Files are opened and parsed here, so a missing CA or a key that does not match its
        # certificate stops start-up with the key's name instead of failing every connection.
        try:
            c.kafka.security.validate()
        except KafkaSecurityError as exc:
            raise ConfigError(str(exc)) from None
    if c.auth.mode == "jwt" and not c.auth.jwks_url:
        raise ConfigError("auth.jwks_url: required when auth.mode is jwt (set auth.mode: none for development)")
    positive("auth.leeway_seconds", c.auth.leeway_seconds, 0)
    if not c.auth.algorithms or not set(c.auth.algorithms) <= {"RS256", "ES256"}:
        raise ConfigError(f"auth.algorithms: must be RS256 and/or ES256 (got {c.auth.algorithms!r})")
    positive("auth.jwks_refetch_seconds", c.auth.jwks_refetch_seconds, 0)
    positive("auth.jwks_max_age_seconds", c.auth.jwks_max_age_seconds, 1)
    positive("auth.jwks_timeout_seconds", c.auth.jwks_timeout_seconds, 0.1)
    es = c.event_store
    positive("event_store.max_events_per_append", es.max_events_per_append)
    positive("event_store.max_page_size", es.max_page_size)
    positive("event_store.default_page_size", es.default_page_size)
    positive("event_store.group_commit_max_batch", es.group_commit_max_batch)
    positive("event_store.group_commit_linger_ms", es.group_commit_linger_ms, 0)
    positive("event_store.snapshot_interval", es.snapshot_interval, 0)
    positive("event_store.snapshot_retention_days", es.snapshot_retention_days, 0)
    positive("event_store.subscription_buffer", es.subscription_buffer)
    positive("event_store.subscription_poll_interval_ms", es.subscription_poll_interval_ms, 10)
    positive("event_store.subscription_keepalive_seconds", es.subscription_keepalive_seconds, 0.1)
    positive("event_store.max_json_depth", es.max_json_depth)
    if es.max_json_depth > MAX_JSON_DEPTH_LIMIT:
        # Python's JSON parser and encoder recurse; deeper values would fail inside them.
        raise ConfigError(f"event_store.max_json_depth: must be <= {MAX_JSON_DEPTH_LIMIT} (got {es.max_json_depth})")


def with_section(config: Config, section: str, **changes: Any) -> Config:
    """A copy of ``config`` with some keys of one section changed (for tests and the CLI)."""
    return replace(config, **{section: replace(getattr(config, section), **changes)})


def to_yaml(config: Config) -> str:
    """The config in seed 000's ``config.yaml`` layout (the operator writes this to ConfigMaps)."""
    from dataclasses import asdict

    return yaml.safe_dump(asdict(config), sort_keys=False)
