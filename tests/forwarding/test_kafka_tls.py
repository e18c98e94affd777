"""Kafka over TLS (and SASL as far as the test broker allows), end to end.

Tansu listens on plain TCP; stunnel terminates TLS in front of it with certificates of a test CA,
and the broker advertises the TLS port, so after the bootstrap every connection goes through TLS
too. The forwarder publishes over TLS, ``EventConsumer`` reads over TLS, the operator's admin
client creates the topic over TLS; a wrong CA and a certificate for another host name are refused.

SASL: Tansu's ``--authentication`` requires SCRAM, but its users cannot be created for such a
broker here (``tansu user create`` must itself authenticate, and users created on a broker without
``--authentication`` live in its memory only). So the SCRAM exchange is exercised up to the
broker's refusal of an unknown user, over TLS: a successful SASL login is not tested.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from k1s0_event_store import (
    EventConsumer,
    EventEnvelope,
    EventStoreConfig,
    KafkaSecurity,
    PostgresEventStore,
    PublishedEvent,
    ensure_consumer_tables,
)
from k1s0_event_store.sidecar_config import KafkaSection
from k1s0_operator import _kafka
from k1s0_operator._spec import TopicSpec
from k1s0_sidecar.forwarding import Forwarder, ForwarderSettings
from tests.support.kafka import CONSUMER_GROUP_TIMEOUTS, LocalKafka
from tests.support.postgres import free_ports
from tests.support.sidecar import ServedSidecar
from tests.support.tls import Stunnel, TestCA

from .support import poll_until


@dataclass
class TlsKafka:
    tls: str  # bootstrap through the certificate for 127.0.0.1/localhost
    wrong_name: str  # bootstrap through a certificate of the same CA for another host name only
    ca: Path
    other_ca: Path  # a CA that signed none of the brokers' certificates
    mutual: str = ""  # bootstrap through a port that requires a client certificate of ``ca``
    client_cert: tuple[Path, Path] | None = None


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    directory = tmp_path_factory.mktemp("tls")
    ca = TestCA(directory)
    other = TestCA(directory, "unrelated CA")
    good = ca.issue("broker", ["127.0.0.1", "localhost"])
    elsewhere = ca.issue("elsewhere", ["kafka.elsewhere.test"])
    client = ca.issue("event-store-client", ["event-store"], client=True)
    plain, tls, wrong, mutual = free_ports(4)
    tunnel = Stunnel(
        {"tls": (tls, plain, *good), "wrong-name": (wrong, plain, *elsewhere), "mutual": (mutual, plain, *good)},
        client_ca={"mutual": ca.cert_file},
    )
    with LocalKafka(plain, advertised_port=tls), tunnel:
        yield TlsKafka(f"127.0.0.1:{tls}", f"127.0.0.1:{wrong}", ca.cert_file, other.cert_file,
                       f"127.0.0.1:{mutual}", client)


def ssl_settings(kafka: TlsKafka, **changes: object) -> KafkaSecurity:
    return replace(KafkaSecurity(security_protocol="SSL", ssl_ca_file=str(kafka.ca)), **changes)


def section(bootstrap: str, topic: str, security: KafkaSecurity) -> KafkaSection:
    return KafkaSection(
        brokers=[bootstrap], topic_published=topic, enable_idempotence=False,
        security_protocol=security.security_protocol, ssl_ca_file=security.ssl_ca_file,
        ssl_check_hostname=security.ssl_check_hostname, ssl_cert_file=security.ssl_cert_file,
        ssl_key_file=security.ssl_key_file, sasl_mechanism=security.sasl_mechanism,
        sasl_username=security.sasl_username, sasl_password=security.sasl_password,
    )


@pytest.fixture
async def tls_topic(tls_kafka: TlsKafka) -> str:
    """Created by the operator's admin client over TLS."""
    name = f"k1s0.tls.{uuid.uuid4().hex[:10]}.v1"
    async with _kafka.Admin([tls_kafka.tls], ssl_settings(tls_kafka)) as admin:
        outcome = await admin.ensure(TopicSpec(name, 3, 1), await admin.existing())
    assert outcome.ok and outcome.created, outcome
    return name


@pytest.fixture
async def store(config: EventStoreConfig) -> AsyncIterator[PostgresEventStore]:
    s = PostgresEventStore(config)
    yield s
    await s.close()


def failures(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("eventstore_forwarder_publish_failures_total", {"reason": reason}) or 0.0


async def _true(value: bool) -> bool:
    return value


@asynccontextmanager
async def running(forwarder: Forwarder) -> AsyncIterator[Forwarder]:
    await forwarder.start()
    try:
        yield forwarder
    finally:
        await forwarder.stop()


@dataclass
class Refusal:
    status: dict[str, Any]  # the forwarder's, once it had failed
    registry: CollectorRegistry  # its metrics
    sequence: int  # of the event it could not publish


async def refused(config: EventStoreConfig, store: PostgresEventStore, kafka: KafkaSection, stream: str, what: str,
                  reason: str | None = None, **options: Any) -> Refusal:
    """A forwarder with the ``kafka`` settings, retrying every half second at most, after an event
    appended to ``stream`` failed to publish: a failure counted as ``reason``, or any reported error."""
    registry = CollectorRegistry()
    settings = ForwarderSettings(backoff_max=0.5, **options)
    async with running(Forwarder(config.dsn, config.schema, kafka, settings, registry=registry)) as forwarder:
        result = await store.append_events(stream, [EventEnvelope("OrderPlaced", {})])
        if reason is None:
            await poll_until(lambda: _true(forwarder.status()["last_error"] is not None), 20, what)
        else:
            await poll_until(lambda: _true(failures(registry, reason) > 0), 20, what)
        return Refusal(forwarder.status(), registry, result.events[-1].sequence)


async def admin_refuses(bootstrap: str, security: KafkaSecurity, match: str) -> None:
    """The operator's admin client refuses the same, as a retryable "Kafka is unavailable"."""
    with pytest.raises(_kafka.BrokerUnavailable, match=match):
        async with _kafka.Admin([bootstrap], security):
            pass


async def publishes(config: EventStoreConfig, kafka: KafkaSection, last: int, what: str) -> None:
    """A forwarder with these settings publishes every event up to sequence ``last``."""
    async with running(Forwarder(config.dsn, config.schema, kafka)) as forwarder:
        await poll_until(lambda: _true(forwarder.status()["checkpoint"] == last), 20, what)


async def test_forwarder_publishes_over_tls_and_event_consumer_reads_it(
    config: EventStoreConfig, store: PostgresEventStore, tls_kafka: TlsKafka, tls_topic: str
) -> None:
    over_tls = Forwarder(config.dsn, config.schema, section(tls_kafka.tls, tls_topic, ssl_settings(tls_kafka)))
    async with running(over_tls) as forwarder:
        result = await store.append_events(
            "order-tls-1", [EventEnvelope("OrderPlaced", {"n": i}) for i in range(5)]
        )
        last = result.events[-1].sequence
        await poll_until(lambda: _true(forwarder.status()["checkpoint"] == last), 20, "published over TLS")
        assert forwarder.status()["last_error"] is None

    seen: list[PublishedEvent] = []

    async def handler(event: PublishedEvent, _conn: asyncpg.Connection) -> None:
        seen.append(event)

    view = f"v_{uuid.uuid4().hex[:8]}"
    pool = await asyncpg.create_pool(config.dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await ensure_consumer_tables(conn, view)
        consumer = EventConsumer(
            brokers=[tls_kafka.tls], topics=[tls_topic], group_id=f"g-{uuid.uuid4().hex[:8]}", pool=pool,
            schema=view, handler=handler, security=ssl_settings(tls_kafka), consumer_options=CONSUMER_GROUP_TIMEOUTS,
            producer_options={"enable_idempotence": False},
        )
        task = asyncio.create_task(consumer.run())
        try:
            await poll_until(lambda: _true(len(seen) >= 5 or task.done()), 30, "the consumer to read over TLS")
        finally:
            await consumer.stop()
            await asyncio.wait_for(task, 15)
        assert sorted(e.version for e in seen) == [1, 2, 3, 4, 5]
        assert {e.stream_id for e in seen} == {"order-tls-1"}
    finally:
        await pool.close()


async def test_a_wrong_ca_is_refused_and_reported_as_a_kafka_tls_error(
    config: EventStoreConfig, store: PostgresEventStore, tls_kafka: TlsKafka, tls_topic: str
) -> None:
    wrong = ssl_settings(tls_kafka, ssl_ca_file=str(tls_kafka.other_ca))
    status = (await refused(config, store, section(tls_kafka.tls, tls_topic, wrong), "order-tls-2", "a TLS failure",
                            "tls")).status
    assert status["last_error"].startswith("Kafka: TLS: the broker's certificate was refused"), status
    assert "certificate verify failed" in status["last_error"] or "unable to get" in status["last_error"]
    assert status["last_error_source"] == "kafka"
    assert status["checkpoint"] == 0 and status["events_published"] == 0
    await admin_refuses(tls_kafka.tls, wrong, "TLS: the broker's certificate was refused")


async def test_hostname_checking_is_on_by_default(
    config: EventStoreConfig, store: PostgresEventStore, tls_kafka: TlsKafka, tls_topic: str
) -> None:
    """The certificate on ``wrong_name`` is signed by the trusted CA but names another host: refused.
    With ``ssl_check_hostname: false`` the same connection is accepted (so the refusal was the name)."""
    checked = section(tls_kafka.wrong_name, tls_topic, ssl_settings(tls_kafka))
    refusal = await refused(config, store, checked, "order-tls-3", "a TLS failure", "tls")
    error = refusal.status["last_error"]
    assert error.startswith("Kafka: TLS") and "mismatch" in error and "127.0.0.1" in error, error
    assert refusal.status["checkpoint"] == 0
    relaxed = ssl_settings(tls_kafka, ssl_check_hostname=False)
    await publishes(config, section(tls_kafka.wrong_name, tls_topic, relaxed), refusal.sequence,
                    "published without the check")


async def test_mutual_tls_client_certificate(
    config: EventStoreConfig, store: PostgresEventStore, tls_kafka: TlsKafka, tls_topic: str
) -> None:
    """A port that requires a client certificate: refused without one, used with ssl_cert_file/ssl_key_file
    (only the bootstrap goes through that port; the advertised one does not ask for a certificate)."""
    assert tls_kafka.client_cert is not None
    cert, key = tls_kafka.client_cert
    without_cert = section(tls_kafka.mutual, tls_topic, ssl_settings(tls_kafka))
    refusal = await refused(config, store, without_cert, "order-mtls-1", "an error")
    assert refusal.status["last_error"].startswith("Kafka: "), refusal.status
    assert refusal.status["checkpoint"] == 0
    with_cert = ssl_settings(tls_kafka, ssl_cert_file=str(cert), ssl_key_file=str(key))
    await publishes(config, section(tls_kafka.mutual, tls_topic, with_cert), refusal.sequence,
                    "published with a client cert")


async def test_plaintext_client_on_a_tls_port_is_a_kafka_error_not_a_postgresql_one(
    config: EventStoreConfig, store: PostgresEventStore, tls_kafka: TlsKafka, tls_topic: str
) -> None:
    plaintext = section(tls_kafka.tls, tls_topic, KafkaSecurity())
    refusal = await refused(config, store, plaintext, "order-tls-4", "an error", request_timeout_ms=2000)
    status = refusal.status
    assert status["last_error"].startswith("Kafka: ") and status["last_error_source"] == "kafka", status
    assert failures(refusal.registry, "unavailable") > 0


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsKafka]:
    """A broker that requires SASL (SCRAM), behind TLS."""
    directory = tmp_path_factory.mktemp("sasl")
    ca = TestCA(directory)
    good = ca.issue("broker", ["127.0.0.1"])
    plain, tls = free_ports(2)
    with LocalKafka(plain, advertised_port=tls, authentication=True), Stunnel({"sasl": (tls, plain, *good)}):
        yield TlsKafka(f"127.0.0.1:{tls}", "", ca.cert_file, ca.cert_file)


async def test_sasl_ssl_scram_refusal_is_reported_as_authentication(
    config: EventStoreConfig, store: PostgresEventStore, sasl_kafka: TlsKafka
) -> None:
    security = ssl_settings(sasl_kafka, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                            sasl_username="alice", sasl_password="not-a-user-here")
    status = (await refused(config, store, section(sasl_kafka.tls, "k1s0.sasl.v1", security), "order-sasl-1",
                            "an authentication failure", "authentication")).status
    assert status["last_error"].startswith("Kafka: SASL SCRAM-SHA-512 authentication failed"), status
    assert status["last_error_source"] == "kafka" and status["checkpoint"] == 0
    await admin_refuses(sasl_kafka.tls, security, "SASL SCRAM-SHA-512 authentication")


async def test_served_sidecar_forwards_over_tls_from_environment_settings(
    config: EventStoreConfig, tls_kafka: TlsKafka, tls_topic: str, tmp_path: Path
) -> None:
    """The real ``serve`` process, configured only by EVENTSTORE_KAFKA_* variables; then the same with
    a CA file that does not exist: start-up refused, naming the key."""
    env = {
        "EVENTSTORE_KAFKA_BROKERS": tls_kafka.tls, "EVENTSTORE_KAFKA_TOPIC_PUBLISHED": tls_topic,
        "EVENTSTORE_KAFKA_ENABLE_IDEMPOTENCE": "false", "EVENTSTORE_KAFKA_SECURITY_PROTOCOL": "SSL",
        "EVENTSTORE_KAFKA_SSL_CA_FILE": str(tls_kafka.ca),
    }
    sidecar = ServedSidecar(config.dsn, config.schema, env=env)
    await asyncio.to_thread(sidecar.start)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{sidecar.base_url}/api/v1/streams/order-served-tls/events",
                                 json={"events": [{"event_type": "OrderPlaced", "payload": {}}]}) as r:
                assert r.status in (200, 201), await r.text()

            async def published() -> bool:
                async with http.get(f"{sidecar.base_url}/api/v1/forwarder/status") as r:
                    body = await r.json()
                return bool(body["events_published"] >= 1 and body["security_protocol"] == "SSL")

            await poll_until(published, 20, "the served sidecar to publish over TLS")
    finally:
        await asyncio.to_thread(sidecar.stop)
    missing = str(tmp_path / "no-such-ca.pem")
    broken = ServedSidecar(config.dsn, config.schema, env={**env, "EVENTSTORE_KAFKA_SSL_CA_FILE": missing})
    with pytest.raises(RuntimeError, match="exited with 2") as caught:
        await asyncio.to_thread(broken.start, 20)
    assert f"kafka.ssl_ca_file: file not found: {missing}" in str(caught.value)


async def test_a_setting_gone_bad_after_start_up_is_a_kafka_configuration_error(
    config: EventStoreConfig, store: PostgresEventStore, tmp_path: Path
) -> None:
    """The password file is read for each new connection; deleted after start-up (the Secret was
    removed), it is reported as Kafka's configuration problem, not as PostgreSQL's, and retried."""
    secret = tmp_path / "password"
    settings = KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                             sasl_username="orders", sasl_password_file=str(secret))
    kafka = replace(section("127.0.0.1:9", "k1s0.unused.v1", settings), sasl_password="",
                    sasl_password_file=str(secret))
    status = (await refused(config, store, kafka, "order-gone-1", "a configuration failure", "configuration")).status
    assert status["last_error"] == f"Kafka: kafka.sasl_password_file: file not found: {secret}", status
    assert status["last_error_source"] == "kafka" and status["state"] == "active"
