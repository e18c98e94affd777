"""Downstream side of the relay (seed 003): idempotent handlers and a dead-letter topic.

The forwarder delivers at least once, so a consumer meets some events twice (after a crash, a
retry, a rebalance). ``EventConsumer`` makes a handler see each event once::

    async def project(event: PublishedEvent, conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO orders_view ...", ...)   # same transaction as the marker

    consumer = EventConsumer(
        brokers=["kafka:9092"], topics=["k1s0.system.eventstore.event.published.v1"],
        group_id="orders-projection", pool=pool, schema="orders_view", handler=project,
    )
    await ensure_consumer_tables(conn, "orders_view")   # once, e.g. in the service's migrations
    await consumer.run()                                 # until stop()

For each message, in one PostgreSQL transaction: insert ``(group_id, event_id)`` into
``processed_events`` (``ON CONFLICT DO NOTHING``), and only if that inserted a row run the
handler on the same connection. The marker and the handler's writes commit together or not at
all; a second delivery finds the marker and is skipped (counted in ``stats.duplicates``).
Offsets are committed after the transactions, so a crash in between means a redelivery, which the
marker absorbs.

A handler that raises is retried (``max_attempts`` in all, with backoff, blocking its partition so
order holds); then the message goes to the dead-letter topic with the error in its headers and the
consumer moves on. A message that is not a valid event goes there at once. A database or broker
that is unreachable is not the message's fault: those are retried without limit and never
dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from ._tracing import consumer_span
from .kafka_security import KafkaSecurity
from .schema import quote_ident

if TYPE_CHECKING:  # aiokafka is imported when a consumer starts, not with the library
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

log = logging.getLogger("k1s0_event_store.consumer")

#: Errors that say "the infrastructure is away", not "this message is bad".
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
)


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    """One event as the forwarder published it (seed 000's message), with where it came from."""

    event_id: str
    stream_id: str
    sequence: int
    event_type: str
    version: int
    payload: Any
    metadata: Mapping[str, Any]
    occurred_at: datetime | None
    stored_at: datetime | None
    topic: str
    partition: int
    offset: int
    headers: Mapping[str, bytes]


Handler = Callable[[PublishedEvent, asyncpg.Connection], Awaitable[None]]


class UndecodableMessage(ValueError):
    """The message is not an event of seed 000's format."""


@dataclass
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    dead_lettered: int = 0
    transient_errors: int = 0
    #: The most recent dead-lettered messages (topic[partition]@offset: error), at most 100.
    dead_letters: list[str] = field(default_factory=list)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def decode(record: ConsumerRecord[bytes, bytes]) -> PublishedEvent:
    """A Kafka record -> ``PublishedEvent``; ``UndecodableMessage`` if it is not one."""
    headers = {k: v for k, v in (record.headers or ())}
    try:
        body = json.loads(record.value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UndecodableMessage(f"value is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("event_type") != "EVENT_PUBLISHED":
        raise UndecodableMessage("value is not an EVENT_PUBLISHED message")
    try:
        stream_id = str(body["stream_id"])
        version = int(body["version"])
        sequence = int(body["sequence"])
        event_type = str(body["domain_event_type"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UndecodableMessage(f"message lacks or mistypes a required field: {exc}") from None
    raw_id = headers.get("event-id")
    # The seed's value carries no event id; the forwarder adds it as a header. Without it, the
    # stream and version identify the event just as well (they are unique in the store).
    event_id = raw_id.decode() if raw_id else f"{stream_id}@{version}"
    metadata = body.get("metadata")
    return PublishedEvent(
        event_id=event_id,
        stream_id=stream_id,
        sequence=sequence,
        event_type=event_type,
        version=version,
        payload=body.get("payload"),
        metadata=metadata if isinstance(metadata, dict) else {},
        occurred_at=_time(body.get("occurred_at")),
        stored_at=_time(body.get("stored_at")),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        headers=headers,
    )


async def ensure_consumer_tables(conn: asyncpg.Connection, schema: str) -> None:
    """Create the schema and its ``processed_events`` ledger if missing (idempotent)."""
    s = quote_ident(schema, "schema")
    await conn.execute(
        f"""
        CREATE SCHEMA IF NOT EXISTS {s};
        CREATE TABLE IF NOT EXISTS {s}.processed_events (
            consumer_group TEXT        NOT NULL,
            event_id       TEXT        NOT NULL,
            stream_id      TEXT        NOT NULL,
            version        BIGINT      NOT NULL,
            topic          TEXT        NOT NULL,
            kafka_partition INTEGER    NOT NULL,
            kafka_offset   BIGINT      NOT NULL,
            processed_at   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
            PRIMARY KEY (consumer_group, event_id)
        )
        """
    )


class EventConsumer:
    """Consume with a consumer group; handle each event once; dead-letter poison messages."""

    def __init__(
        self,
        *,
        brokers: Sequence[str],
        topics: Sequence[str],
        group_id: str,
        pool: asyncpg.Pool,
        handler: Handler,
        schema: str,
        dead_letter_topic: str | None = None,
        max_attempts: int = 3,
        retry_backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 10.0,
        security_protocol: str = "PLAINTEXT",
        security: KafkaSecurity | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not topics:
            raise ValueError("topics must not be empty")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.brokers = list(brokers)
        self.topics = list(topics)
        self.group_id = group_id
        self.pool = pool
        self.handler = handler
        self.schema = schema
        self.dead_letter_topic = dead_letter_topic or f"{self.topics[0]}.dlq"
        self.max_attempts = max_attempts
        self.retry_backoff_seconds = retry_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        #: TLS/SASL for both clients (``security_protocol`` alone is the short form for PLAINTEXT/SSL
        #: with the system's CAs). Checked here, so a bad setting fails the construction, naming it.
        self.security = security or KafkaSecurity(security_protocol=security_protocol, prefix="")
        self.security.validate()
        self.security_protocol = self.security.security_protocol
        self.consumer_options = dict(consumer_options or {})
        self.producer_options = dict(producer_options or {})
        self.stats = ConsumerStats()
        s = quote_ident(schema, "schema")
        self._mark = (
            f"INSERT INTO {s}.processed_events"
            " (consumer_group, event_id, stream_id, version, topic, kafka_partition, kafka_offset)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1"
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        security = self.security.client_options()  # reads a password file again: rotation works
        options: dict[str, Any] = {"auto_offset_reset": "earliest", **security, **self.consumer_options}
        self._consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=self.brokers, group_id=self.group_id, enable_auto_commit=False,
            **options,
        )
        producer: dict[str, Any] = {"acks": "all", "enable_idempotence": True, **security, **self.producer_options}
        self._producer = AIOKafkaProducer(bootstrap_servers=self.brokers, **producer)
        await self._producer.start()
        try:
            await self._consumer.start()
        except BaseException:
            await self._producer.stop()
            raise

    async def stop(self) -> None:
        """Stop after the message in hand (its offset is committed if it was handled)."""
        self._stopping.set()

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> EventConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self) -> None:
        """Consume until ``stop()``. Starts and closes the clients if the caller has not."""
        owned = self._consumer is None
        if owned:
            await self.start()
        try:
            await self._loop()
        finally:
            if owned:
                await self.close()

    async def _loop(self) -> None:
        from aiokafka.errors import CommitFailedError, KafkaError
        from aiokafka.structs import TopicPartition

        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for tp, records in batches.items():
                done: int | None = None
                for record in records:
                    if self._stopping.is_set():
                        break
                    await self.process(record)
                    done = record.offset
                if done is not None:
                    try:
                        await consumer.commit({TopicPartition(tp.topic, tp.partition): done + 1})
                    except (CommitFailedError, KafkaError) as exc:
                        # A rebalance took the partition: its next owner gets a redelivery, which
                        # the processed_events marker turns into a skipped duplicate.
                        log.warning("offset commit for %s failed (redelivery follows): %s", tp, exc)

    async def process(self, record: ConsumerRecord[bytes, bytes]) -> str:
        """Handle one record: ``handled``, ``duplicate`` or ``dead_lettered``.

        With OpenTelemetry configured by the application, this runs in a consumer span that
        continues the trace the record's ``traceparent`` header names (see ``docs/operate.md``)."""
        with consumer_span(record, self.group_id) as span:
            outcome = await self._process(record)
            if span is not None:
                span.set_attribute("eventstore.consumer.outcome", outcome)
            return outcome

    async def _process(self, record: ConsumerRecord[bytes, bytes]) -> str:
        try:
            event = decode(record)
        except UndecodableMessage as exc:
            await self._dead_letter(record, exc, attempts=0)
            return "dead_lettered"
        attempt = 0
        transient = 0
        while True:
            try:
                if await self._handle_once(event):
                    self.stats.handled += 1
                    return "handled"
                self.stats.duplicates += 1
                return "duplicate"
            except _Transient as exc:
                self.stats.transient_errors += 1
                transient += 1
                log.warning("event %s: infrastructure unavailable, retrying: %s", event.event_id, exc.__cause__)
                await asyncio.sleep(self._backoff(transient))
            except Exception as exc:
                attempt += 1
                self.stats.failures += 1
                if attempt >= self.max_attempts:
                    await self._dead_letter(record, exc, attempts=attempt)
                    return "dead_lettered"
                log.warning("event %s: handler failed (attempt %d of %d): %s", event.event_id, attempt,
                            self.max_attempts, exc)
                await asyncio.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        return float(min(self.max_backoff_seconds, self.retry_backoff_seconds * 2 ** (attempt - 1)))

    async def _handle_once(self, event: PublishedEvent) -> bool:
        """One transaction: the marker, then the handler. False if the marker already existed."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetchval(
                    self._mark, self.group_id, event.event_id, event.stream_id, event.version, event.topic,
                    event.partition, event.offset,
                )
                if not inserted:
                    return False
                await self.handler(event, conn)
                return True
        except _TRANSIENT as exc:
            raise _Transient() from exc

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: BaseException, *, attempts: int) -> None:
        """Publish to the dead-letter topic and wait for the ack; retried until it succeeds (the
        message must not be dropped just because the dead-letter topic is away)."""
        from aiokafka.errors import KafkaError

        producer = self._producer
        assert producer is not None
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        headers = [
            *[(k, v) for k, v in (record.headers or ()) if not k.startswith("dlq-")],
            ("dlq-error", error[:2000].encode()),
            ("dlq-error-type", type(exc).__name__.encode()),
            ("dlq-attempts", str(attempts).encode()),
            ("dlq-original-topic", record.topic.encode()),
            ("dlq-original-partition", str(record.partition).encode()),
            ("dlq-original-offset", str(record.offset).encode()),
            ("dlq-consumer-group", self.group_id.encode()),
            ("dlq-failed-at", datetime.now(UTC).isoformat(timespec="milliseconds").encode()),
        ]
        tries = 0
        while True:
            try:
                await producer.send_and_wait(self.dead_letter_topic, record.value, key=record.key, headers=headers)
                break
            except KafkaError as send_error:
                tries += 1
                log.warning("dead-letter publish to %s failed, retrying: %s", self.dead_letter_topic, send_error)
                await asyncio.sleep(self._backoff(tries))
        self.stats.dead_lettered += 1
        self.stats.dead_letters.append(f"{record.topic}[{record.partition}]@{record.offset}: {error[:200]}")
        del self.stats.dead_letters[:-100]  # the most recent hundred
        log.error("message %s[%d]@%d dead-lettered to %s after %d attempt(s): %s", record.topic, record.partition,
                  record.offset, self.dead_letter_topic, attempts, error)


class _Transient(Exception):
    """Internal: the database was unreachable; retry without counting an attempt."""


__all__ = [
    "ConsumerStats",
    "EventConsumer",
    "Handler",
    "PublishedEvent",
    "UndecodableMessage",
    "decode",
    "ensure_consumer_tables",
]
