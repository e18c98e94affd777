"""The outbox relay: every committed event, in sequence order, to Kafka, at least once.

How it stays correct
--------------------
* **Where it reads.** ``events`` is the outbox. The forwarder reads ``sequence > checkpoint`` in
  sequence order; appends take the schema's append lock, so sequence order is commit order and a
  reader never skips an event that commits later (``k1s0_event_store.schema``).
* **When it moves on.** A *round* is a contiguous range of sequences, encoded as exactly one record
  batch per (topic, partition) (``_publisher``). The checkpoint moves to the round's end only after
  every batch was acknowledged (``acks=all`` by default). A crash anywhere before that re-sends the
  round: duplicates, never a loss.
* **Order.** Key = ``stream_id``, Kafka's murmur2 partitioner: one partition per stream (per
  topic). The next round starts only after the previous one was acknowledged completely, so at most
  one batch per partition is ever in flight, and a retried batch is the same batch again. Whatever
  fails or repeats, a consumer meets version *n* of a stream for the first time only after it met
  version *n-1*: repeats go backwards (duplicates), never forwards (gaps filled later).
* **Who forwards.** One forwarder per schema is active: the one holding a session-level advisory
  lock (``schema.forwarder_lock_key``) on a dedicated connection. The others are standby and try
  the lock every ``lease_retry_interval``. A holder that dies loses its connection and with it the
  lock at once (``kill -9``: immediately; a vanished host: after the server's TCP keepalive, set
  here to about 20 s). The checkpoint is written on that same connection, so a forwarder that lost
  its lock can no longer move the checkpoint.
* **When Kafka is away.** Appends do not depend on the forwarder; the backlog waits in PostgreSQL.
  The forwarder retries with capped exponential backoff and reports what is wrong (unreachable
  broker, missing topic, refused batch) in ``status()`` and the metrics. It never creates topics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from k1s0_event_store import EventEnvelope, KafkaSecurityError, StreamId
from k1s0_event_store.schema import forwarder_lock_key, quote_ident

from . import tracing, wire
from ._publisher import (
    UNKNOWN_TOPIC_OR_PARTITION,
    AuthenticationFailed,
    BrokerUnavailable,
    IdempotenceUnavailable,
    Publisher,
    Record,
    Round,
    TlsFailed,
    TopicsMissing,
    build_round,
    describe,
)
from .config import KafkaSection
from .group_commit import CHASE_STEP, CHASES
from .openapi import EXTRA_PATHS

log = logging.getLogger("k1s0_sidecar.forwarder")

_ACKS = {"all": -1, "-1": -1, "1": 1, "0": 0}


class RoundFailed(Exception):
    """A round could not be delivered completely; it is sent again from the checkpoint."""


class SchemaNotReady(Exception):
    """The schema or its forwarder tables are missing in PostgreSQL (migrations not applied)."""


#: Kafka-side failures of a round -> the ``reason`` label of eventstore_forwarder_publish_failures.
#: In the status their message starts with "Kafka: " (PostgreSQL's with "PostgreSQL: ").
_KAFKA_REASONS: dict[type[BaseException], str] = {
    BrokerUnavailable: "unavailable",
    TlsFailed: "tls",
    AuthenticationFailed: "authentication",
    KafkaSecurityError: "configuration",
    TopicsMissing: "topic_missing",
    IdempotenceUnavailable: "idempotence_unavailable",
    RoundFailed: "round_failed",
}


class _Backoff:
    """Capped exponential backoff with jitter (half to full of the nominal delay)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return delay * random.uniform(0.5, 1.0)


class ForwarderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.active = Gauge("eventstore_forwarder_active", "1 while this sidecar is the schema's active forwarder",
                            registry=r)
        self.lag_events = Gauge("eventstore_forwarder_lag_events", "Committed events not yet acknowledged by Kafka",
                                registry=r)
        self.lag_seconds = Gauge(
            "eventstore_forwarder_lag_seconds", "Age of the oldest event not yet acknowledged by Kafka", registry=r
        )
        self.published = Counter(
            "eventstore_forwarder_events_published", "Events acknowledged by Kafka (re-sends included)", registry=r
        )
        self.failures = Counter(
            "eventstore_forwarder_publish_failures", "Failed publish attempts (a round or its partitions)",
            ["reason"], registry=r,
        )
        self.checkpoint = Gauge("eventstore_forwarder_checkpoint", "Last sequence acknowledged by Kafka", registry=r)
        self.resent = Counter(
            "eventstore_forwarder_events_resent",
            "Events Kafka had acknowledged and this forwarder sent again (a failed round is re-sent whole)",
            registry=r,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Forwarder:
    """The schema's Kafka relay, as a component the sidecar runtime starts and stops."""

    stop_before_servers = False  # no stream of its own to end: stopped after the in-flight requests

    def __init__(
        self,
        dsn: str,
        schema: str,
        kafka: KafkaSection,
        *,
        registry: CollectorRegistry | None = None,
        holder: str | None = None,
        batch_events: int = 2000,
        read_budget_bytes: int = 4_000_000,
        poll_interval: float = 1.0,
        lease_retry_interval: float = 1.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        request_timeout_ms: int = 10_000,
        connect_timeout: float = 5.0,
        stop_grace: float = 5.0,
    ) -> None:
        if not kafka.brokers:
            raise ValueError("the forwarder needs kafka.brokers (empty disables it: do not create one)")
        self.dsn = dsn
        self.schema = schema
        self.kafka = kafka
        self.holder = holder or f"{socket.gethostname()}/{os.getpid()}"
        self.batch_events = batch_events
        self.read_budget_bytes = read_budget_bytes
        self.poll_interval = poll_interval
        self.lease_retry_interval = lease_retry_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout = connect_timeout
        self.stop_grace = stop_grace
        self.query_timeout = max(5.0, connect_timeout)
        self.acks = _ACKS[str(kafka.producer_acks)]
        self.metrics = ForwarderMetrics(registry or CollectorRegistry())
        self._s = quote_ident(schema, "schema")
        self._task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._wanted = 0  # the highest sequence this sidecar committed (see _lead)
        # status
        self.state = "stopped"
        self.checkpoint: int | None = None
        self.active_holder: str | None = None
        self.active_since: str | None = None
        self.lag_events: int | None = None
        self.lag_seconds: float | None = None
        self.events_published = 0
        #: The producer spans of the round in hand (tracing on, events stored with a trace context).
        self._spans: list[Any] = []
        self.publish_failures = 0
        self.events_resent = 0
        self.rounds = 0
        self.last_error: str | None = None
        #: "kafka" or "postgresql": which side the last error came from.
        self.last_error_source: str | None = None
        self.last_error_at: str | None = None
        self.last_published_at: str | None = None
        self.missing_topics: list[str] = []
        self.takeovers = 0

    # -- component interface -------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self.state = "starting"
            self._task = asyncio.create_task(self._run(), name=f"forwarder:{self.schema}")
            self._monitor_task = asyncio.create_task(self._monitor(), name=f"forwarder-lag:{self.schema}")

    async def stop(self) -> None:
        """Finish the round in progress (up to ``stop_grace``), release the lease, close."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            try:
                await self._monitor_task
            except asyncio.CancelledError:
                pass
            self._monitor_task = None
        try:
            await asyncio.wait_for(asyncio.shield(task), self.stop_grace)
        except TimeoutError:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.state = "stopped"
        self.metrics.active.set(0)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "schema": self.schema,
            "state": self.state,
            "holder": self.holder,
            "active_holder": self.active_holder,
            "active_since": self.active_since,
            "checkpoint": self.checkpoint,
            "lag_events": self.lag_events,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "events_published": self.events_published,
            "publish_failures": self.publish_failures,
            "events_resent": self.events_resent,
            "rounds": self.rounds,
            "last_published_at": self.last_published_at,
            "last_error": self.last_error,
            "last_error_source": self.last_error_source,
            "last_error_at": self.last_error_at,
            "missing_topics": self.missing_topics,
            "brokers": list(self.kafka.brokers),
            "security_protocol": self.kafka.security_protocol,
            "topic": self.kafka.topic_published,
            "routes": dict(self.kafka.routes),
        }

    # -- supervision ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = _Backoff(self.backoff_initial, self.backoff_max)
        while not self._stopping.is_set():
            conn: asyncpg.Connection | None = None
            began = time.monotonic()
            try:
                conn = await self._connect()
                await self._session(conn)
            except Exception as exc:
                if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError,
                                    SchemaNotReady)):
                    self._error(f"PostgreSQL: {describe(exc)}", "postgresql")
                else:  # a bug, not an outage: say so rather than blame either side
                    self._error(f"unexpected error: {describe(exc)}", None)
                    log.exception("forwarder for schema %s failed unexpectedly", self.schema)
            finally:
                self._set_active(False)
                if conn is not None:
                    await self._close(conn)
            if time.monotonic() - began > 30:
                backoff.reset()  # a session that worked for a while starts the backoff afresh
            await self._pause(backoff.next())

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout,
            server_settings={
                "application_name": "k1s0-forwarder",
                # The server notices a vanished holder (and frees its lock) within ~20 s.
                "tcp_keepalives_idle": "10",
                "tcp_keepalives_interval": "3",
                "tcp_keepalives_count": "3",
            },
        )
        await conn.set_type_codec("jsonb", encoder=lambda v: v, decoder=json.loads, schema="pg_catalog")
        return conn

    async def _close(self, conn: asyncpg.Connection) -> None:
        try:
            await asyncio.wait_for(conn.close(), 2)
        except Exception:
            conn.terminate()

    async def _pause(self, seconds: float) -> None:
        """Sleep unless stopping (appends do not cut a backoff short)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _idle(self, seconds: float) -> None:
        """Wait for an append notification, the poll interval, or stop."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    def _error(self, message: str, source: str | None = "kafka") -> None:
        if message != self.last_error:
            log.warning("forwarder (schema %s): %s", self.schema, message)
        self.last_error = message
        self.last_error_source = source
        self.last_error_at = _now()

    def _clear_error(self) -> None:
        self.last_error = None
        self.last_error_source = None

    def _set_active(self, active: bool) -> None:
        self.metrics.active.set(1 if active else 0)
        if not active and self.state == "active":
            self.state = "standby"

    # -- lease ---------------------------------------------------------------------------------

    async def _session(self, conn: asyncpg.Connection) -> None:
        oid = await conn.fetchval("SELECT oid::bigint FROM pg_namespace WHERE nspname = $1", self.schema)
        if oid is None:
            raise SchemaNotReady(f"schema {self.schema} does not exist (migrations not applied)")
        key = forwarder_lock_key(int(oid))
        if self.last_error_source == "postgresql":
            log.info("forwarder (schema %s): PostgreSQL reachable again", self.schema)
            self._clear_error()
        while not self._stopping.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key, timeout=self.query_timeout):
                try:
                    await self._lead(conn)
                finally:
                    if not conn.is_closed():
                        try:
                            await conn.execute("SELECT pg_advisory_unlock($1)", key, timeout=2)
                        except Exception:
                            pass
                return
            self.state = "standby"
            row = await conn.fetchrow(
                f"SELECT position, holder, acquired_at FROM {self._s}.forwarder_checkpoint", timeout=self.query_timeout
            )
            if row is not None:
                self.checkpoint = row["position"]
                self.active_holder = row["holder"]
                self.active_since = row["acquired_at"].isoformat() if row["acquired_at"] else None
            await self._pause(self.lease_retry_interval)

    async def _monitor(self) -> None:
        """Lag, measured on its own connection every second: a round stuck on a frozen broker must
        not freeze the numbers that say so. Standby forwarders read the position from the table."""
        conn: asyncpg.Connection | None = None
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(
                            self.dsn, timeout=self.connect_timeout,
                            server_settings={"application_name": "k1s0-forwarder-lag"},
                        )
                    position = self.checkpoint if self.state == "active" else None
                    if position is None:
                        position = await conn.fetchval(
                            f"SELECT position FROM {self._s}.forwarder_checkpoint", timeout=self.query_timeout
                        )
                    if position is not None:
                        await self._measure_lag(conn, position)
                except Exception as exc:
                    log.debug("forwarder lag not measured: %s", describe(exc))
                    if conn is not None:
                        conn.terminate()
                    conn = None
                await asyncio.sleep(1.0)
        finally:
            if conn is not None:
                await self._close(conn)

    async def _measure_lag(self, conn: asyncpg.Connection, position: int) -> None:
        row = await conn.fetchrow(
            f"SELECT extract(epoch FROM clock_timestamp() - stored_at)::float8 AS age FROM {self._s}.events"
            " WHERE sequence > $1 ORDER BY sequence LIMIT 1",
            position, timeout=self.query_timeout,
        )
        count = await conn.fetchval(
            f"SELECT count(*) FROM {self._s}.events WHERE sequence > $1", position, timeout=self.query_timeout
        )
        self._set_lag(int(count), max(0.0, row["age"]) if row else 0.0)

    def _set_lag(self, events: int, seconds: float) -> None:
        self.lag_events = events
        self.lag_seconds = seconds
        self.metrics.lag_events.set(events)
        self.metrics.lag_seconds.set(seconds)

    # -- forwarding ----------------------------------------------------------------------------

    def wake(self, sequence: int = 0) -> None:
        """This sidecar committed events: look for them now rather than at the next poll. The
        active forwarder finds other sidecars' commits by polling (``poll_interval``): appends do
        not notify (a NOTIFY per commit woke every sidecar of the fleet)."""
        self._wanted = max(self._wanted, sequence)
        self._wake.set()

    async def _lead(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow(
            f"UPDATE {self._s}.forwarder_checkpoint SET holder = $1, epoch = epoch + 1, acquired_at = NOW(),"
            " updated_at = NOW() RETURNING position, epoch, acquired_at",
            self.holder, timeout=self.query_timeout,
        )
        if row is None:
            raise SchemaNotReady(f"{self.schema}.forwarder_checkpoint has no row (migration 3 incomplete)")
        position: int = row["position"]
        self.checkpoint = position
        self.metrics.checkpoint.set(position)
        self.active_holder = self.holder
        self.active_since = row["acquired_at"].isoformat()
        self.takeovers += 1
        self.state = "active"
        self._set_active(True)
        log.info("forwarder active for schema %s from sequence %d (epoch %d)", self.schema, position, row["epoch"])
        backoff = _Backoff(self.backoff_initial, self.backoff_max)
        publisher: Publisher | None = None
        failed_rounds = 0
        # At most batch_events rows and about read_budget_bytes of (stored, possibly compressed)
        # payload and metadata: the first row always, then rows while the running size before them
        # is under budget. Rows left out are not detoasted (the filter needs only their sizes).
        sql = (
            "SELECT sequence, event_id, stream_id, version, event_type, payload, metadata, occurred_at, stored_at"
            " FROM (SELECT *, sum(pg_column_size(payload) + pg_column_size(metadata)) OVER (ORDER BY sequence)"
            " - (pg_column_size(payload) + pg_column_size(metadata)) AS before"
            f" FROM {self._s}.events WHERE sequence > $1 AND sequence <= $4 ORDER BY sequence LIMIT $2) e"
            " WHERE before < $3 ORDER BY sequence"
        )
        # Appenders commit in parallel: read only up to the safe sequence (taken by a statement of
        # its own, before the read's snapshot), or a late commit below the checkpoint is never sent.
        safe_sql = f"SELECT {self._s}.safe_sequence()"
        chases = 0
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                safe = await conn.fetchval(safe_sql, timeout=self.query_timeout)
                rows = await conn.fetch(sql, position, self.batch_events, self.read_budget_bytes, safe,
                                        timeout=self.query_timeout) if safe > position else []
                if not rows:
                    # An own commit not readable yet waits for an appender below it that is still
                    # committing (commits run in parallel): look again soon, not at the next poll,
                    # for a while (the event may also have been deleted meanwhile).
                    chases = chases + 1 if self._wanted > position else 0
                    if chases > CHASES:
                        self._wanted = chases = 0
                    await self._idle(CHASE_STEP * chases if chases else self.poll_interval)
                    continue
                chases = 0
                try:
                    if publisher is None:
                        publisher = await self._new_publisher()
                    records = [self._record(r) for r in rows]
                    partitions = await publisher.partitions({r.topic for r in records})
                    self.missing_topics = []
                    rnd = build_round(records, partitions, publisher.producer, publisher.sequences)
                    await self._deliver(publisher, rnd, backoff)
                except (BrokerUnavailable, IdempotenceUnavailable, TopicsMissing, RoundFailed, KafkaSecurityError,
                        KafkaError) as exc:
                    tracing.end_spans(self._spans, str(exc))
                    failed_rounds += 1
                    # A client error outside our own checks counts as the brokers being unavailable.
                    failure = BrokerUnavailable(describe(exc)) if isinstance(exc, KafkaError) else exc
                    reason = _KAFKA_REASONS.get(type(failure), "unavailable")
                    self.metrics.failures.labels(reason).inc()
                    self.publish_failures += 1
                    if isinstance(failure, TopicsMissing):
                        self.missing_topics = failure.topics
                    self._error(f"Kafka: {failure}")
                    # An idempotent producer whose round failed does not know which of its sequence
                    # numbers the broker took: it starts over with a new producer id.
                    if publisher is not None and (
                        isinstance(failure, BrokerUnavailable)
                        or (isinstance(failure, RoundFailed) and publisher.idempotent)
                        or failed_rounds > self.kafka.producer_retries
                    ):
                        await publisher.close()
                        publisher = None
                        failed_rounds = 0
                    await self._pause(backoff.next())
                    continue
                tracing.end_spans(self._spans)
                # Every batch of the round is acknowledged: move the checkpoint (on the lock's connection).
                # Never backwards: only the lock holder writes, but a write sent by a holder that
                # died while the statement waited can still commit after it (see docs/forwarding.md).
                await conn.execute(
                    f"UPDATE {self._s}.forwarder_checkpoint SET position = GREATEST(position, $1), updated_at = NOW()",
                    rnd.end, timeout=self.query_timeout,
                )
                position = rnd.end
                self.checkpoint = position
                self.metrics.checkpoint.set(position)
                self.metrics.published.inc(rnd.events)
                self.events_published += rnd.events
                self.rounds += 1
                self.last_published_at = _now()
                failed_rounds = 0
                backoff.reset()
                if self.last_error is not None:
                    log.info("forwarder (schema %s) recovered: publishing again", self.schema)
                    self._clear_error()
        finally:
            tracing.end_spans(self._spans, "forwarder stopped")
            if publisher is not None:
                await publisher.close()
            self._set_active(False)

    async def _new_publisher(self) -> Publisher:
        publisher = Publisher(
            self.kafka.brokers,
            # Built for every new connection set: a rotated password file is read again.
            client_options=self.kafka.security.client_options(),
            acks=self.acks,
            request_timeout_ms=self.request_timeout_ms,
            client_id=f"k1s0-forwarder-{self.schema}",
            idempotent=self.kafka.enable_idempotence,
        )
        await publisher.start()
        return publisher

    async def _deliver(self, publisher: Publisher, rnd: Round, backoff: _Backoff) -> None:
        """Send the round; re-send only the partitions that failed, at most ``producer_retries``
        times, while their batch stays the same. A missing topic or a refused batch ends the round."""
        pending = dict(rnd.batches)
        attempt = 0
        while pending:
            failures = await publisher.produce(pending)
            if not failures:
                return
            self.metrics.failures.labels("partition").inc(len(failures))
            first = failures[0]
            failed = {f.tp for f in failures}
            summary = f"{len(failures)} of {len(pending)} partition batch(es) failed, e.g. {first.tp.topic}" \
                      f"[{first.tp.partition}]: {first.error}"
            why = ""
            if any(f.code == UNKNOWN_TOPIC_OR_PARTITION for f in failures):
                why = " (topic or partition gone: re-reading topic metadata)"
            elif not all(f.retriable for f in failures):
                batch = pending[next(f.tp for f in failures if not f.retriable)]
                why = f" (refused by the broker; the batch starts at sequence {batch.first_sequence})"
            attempt += 1
            if why or attempt > self.kafka.producer_retries or self._stopping.is_set():
                # The whole round is sent again from the checkpoint: the batches Kafka already took
                # are sent twice. Counted, so that duplicates are a number, not a surprise.
                resent = sum(b.count for tp, b in rnd.batches.items() if tp not in failed)
                self.events_resent += resent
                self.metrics.resent.inc(resent)
                raise RoundFailed(summary + why)
            self._error(f"Kafka: {summary} (retrying)")
            pending = {tp: b for tp, b in pending.items() if tp in failed}
            await self._pause(backoff.next())

    def _record(self, row: Mapping[str, Any]) -> Record:
        envelope = EventEnvelope(
            event_type=row["event_type"],
            payload=row["payload"],
            metadata=row["metadata"],
            stream_id=StreamId.parse(row["stream_id"]),
            event_id=row["event_id"],
            occurred_at=row["occurred_at"],
            version=row["version"],
            sequence=row["sequence"],
            stored_at=row["stored_at"],
        )
        value = json.dumps(wire.published_message(envelope), ensure_ascii=False, separators=(",", ":"))
        headers = [
            ("content-type", b"application/json"),
            ("event-type", row["event_type"].encode()),
            ("event-id", str(row["event_id"]).encode()),
        ]
        correlation = row["metadata"].get("correlation_id") if isinstance(row["metadata"], dict) else None
        if isinstance(correlation, str) and correlation:
            headers.append(("correlation-id", correlation.encode()))
        topic = self.kafka.routes.get(row["event_type"], self.kafka.topic_published)
        # traceparent/tracestate: the trace stored with the event, continued by a producer span
        headers.extend(tracing.kafka_headers(row["metadata"], topic, row["stream_id"], row["sequence"], self._spans))
        return Record(
            topic=topic,
            key=row["stream_id"].encode(),
            value=value.encode(),
            headers=headers,
            sequence=row["sequence"],
        )


STATUS_PATH = "/api/v1/forwarder/status"

EXTRA_PATHS[STATUS_PATH] = {
    "get": {
        "operationId": "forwarderStatus",
        "summary": "The Kafka forwarder of this sidecar: active/standby, checkpoint, lag, last error. Open.",
        "responses": {
            "200": {
                "description": "Status (``enabled: false`` when kafka.brokers is empty)",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["enabled", "state"],
                            "properties": {
                                "enabled": {"type": "boolean"},
                                "state": {"enum": ["disabled", "starting", "active", "standby", "stopped"]},
                                "checkpoint": {"type": ["integer", "null"]},
                                "lag_events": {"type": ["integer", "null"]},
                                "lag_seconds": {"type": ["number", "null"]},
                                "last_error": {"type": ["string", "null"]},
                                "missing_topics": {"type": "array", "items": {"type": "string"}},
                            },
                        }
                    }
                },
            }
        },
    }
}


def disabled_status() -> dict[str, Any]:
    """The status when ``kafka.brokers`` is empty."""
    return {"enabled": False, "state": "disabled", "reason": "kafka.brokers is empty"}
