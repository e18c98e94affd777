"""The config loader: seed 000 YAML, EVENTSTORE_* overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from k1s0_event_store.sidecar_config import ConfigError, load_config, to_yaml

SEED_YAML = """
app:
  name: "event-store"
  version: "0.1.0"
  environment: "production"
server:
  host: "0.0.0.0"
  port: 8080
  grpc_port: 9090
database:
  url: "postgresql://app:@postgres.k1s0-system.svc.cluster.local:5432/k1s0_system"
  schema: "event_store"
  max_connections: 20
  min_connections: 5
  connect_timeout_seconds: 5
kafka:
  brokers:
    - "kafka-0.messaging.svc.cluster.local:9092"
  security_protocol: "PLAINTEXT"
  topic_published: "k1s0.system.eventstore.event.published.v1"
  producer_acks: "all"
  producer_retries: 3
auth:
  jwks_url: "http://auth-server.k1s0-system.svc.cluster.local:8080/.well-known/jwks.json"
event_store:
  max_events_per_append: 100
  max_page_size: 200
"""


def test_seed_config_yaml_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(SEED_YAML)
    c = load_config(path, env={})
    assert c.server.grpc_port == 9090 and c.database.max_connections == 20
    assert c.kafka.brokers == ["kafka-0.messaging.svc.cluster.local:9092"]
    assert c.auth.mode == "jwt" and c.event_store.max_page_size == 200
    assert load_config(None, env={}, overrides={"auth": {"jwks_url": "http://x"}}).server.port == 8080
    # The layout round-trips (the operator writes it into ConfigMaps).
    again = tmp_path / "again.yaml"
    again.write_text(to_yaml(c))
    assert load_config(again, env={}) == c


def test_environment_overrides_every_section(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(SEED_YAML)
    env = {
        "EVENTSTORE_DATABASE_URL": "postgresql://other/db",
        "EVENTSTORE_DATABASE_SCHEMA": "orders",
        "EVENTSTORE_SERVER_HOST": "127.0.0.1",
        "EVENTSTORE_SERVER_PORT": "18080",
        "EVENTSTORE_SERVER_GRPC_PORT": "19090",
        "EVENTSTORE_KAFKA_BROKERS": "a:9092, b:9092",
        "EVENTSTORE_KAFKA_TOPIC_PUBLISHED": "topic.x",
        "EVENTSTORE_AUTH_MODE": "none",
        "EVENTSTORE_AUTH_JWKS_URL": "",
        "EVENTSTORE_EVENT_STORE_MAX_EVENTS_PER_APPEND": "10",
        "EVENTSTORE_EVENT_STORE_MAX_PAGE_SIZE": "20",
    }
    c = load_config(path, env=env)
    assert c.database.url == "postgresql://other/db" and c.database.schema == "orders"
    assert (c.server.host, c.server.port, c.server.grpc_port) == ("127.0.0.1", 18080, 19090)
    assert c.kafka.brokers == ["a:9092", "b:9092"] and c.kafka.topic_published == "topic.x"
    assert c.auth.mode == "none"
    assert (c.event_store.max_events_per_append, c.event_store.max_page_size) == (10, 20)
    assert load_config(None, env={"EVENTSTORE_AUTH_MODE": "none", "EVENTSTORE_KAFKA_BROKERS": ""}).kafka.brokers == []


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"EVENTSTORE_SERVER_PORT": "http"}, "server.port"),
        ({"EVENTSTORE_SERVER_PORT": "70000"}, "server.port"),
        ({"EVENTSTORE_DATABASE_SCHEMA": "Bad-Name"}, "database.schema"),
        ({"EVENTSTORE_DATABASE_MAX_CONNECTIONS": "0"}, "database.max_connections"),
        ({"EVENTSTORE_AUTH_MODE": "basic"}, "auth.mode"),
        ({"EVENTSTORE_AUTH_MODE": "jwt"}, "auth.jwks_url"),
        ({"EVENTSTORE_EVENT_STORE_MAX_PAGE_SIZE": "-1"}, "event_store.max_page_size"),
        ({"EVENTSTORE_KAFKA_PRODUCER_ACKS": "some"}, "kafka.producer_acks"),
        ({"EVENTSTORE_DATABASE_MIGRATE": "perhaps"}, "database.migrate"),
    ],
)
def test_invalid_values_name_the_key(env: dict[str, str], key: str) -> None:
    base = {"EVENTSTORE_AUTH_MODE": "none"}
    with pytest.raises(ConfigError) as exc:
        load_config(None, env={**base, **env})
    assert str(exc.value).startswith(key), str(exc.value)


def test_unknown_sections_and_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("servr:\n  port: 1\n")
    with pytest.raises(ConfigError, match="servr"):
        load_config(path, env={})
    path.write_text("server:\n  prot: 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_config(path, env={})
    path.write_text("server: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})


def test_serve_refuses_an_invalid_config_naming_the_key() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "k1s0_cli", "serve"],
        env={"EVENTSTORE_AUTH_MODE": "none", "EVENTSTORE_SERVER_GRPC_PORT": "grpc", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "server.grpc_port" in result.stderr
