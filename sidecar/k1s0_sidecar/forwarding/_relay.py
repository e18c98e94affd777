"""The relay loop of the active forwarder: rounds read from the outbox, delivered, retried, checkpointed."""

from __future__ import annotations

import logging
import random
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from k1s0_event_store import KafkaSecurityError
from k1s0_event_store.sidecar_config import KafkaSection

from .. import _tracing as tracing
from .._group_commit import CHASE_STEP, CHASES
from ._metrics import ForwarderMetrics
from ._outbox import Outbox
from ._publisher import (
    UNKNOWN_TOPIC_OR_PARTITION,
    AuthenticationFailed,
    BrokerUnavailable,
    IdempotenceUnavailable,
    Publisher,
    Round,
    TlsFailed,
    TopicsMissing,
    build_round,
    describe,
)
from ._records import records
from ._settings import ForwarderSettings
from ._signals import Signals
from ._status import ForwarderStatus, now

log = logging.getLogger("k1s0_sidecar.forwarder")

_ACKS = {"all": -1, "-1": -1, "1": 1, "0": 0}


class RoundFailed(Exception):
    """A round could not be delivered completely; it is sent again from the checkpoint."""


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


class Backoff:
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


class Relay:
    """Sends the outbox to Kafka in rounds while this sidecar holds the lease.

    A round is a contiguous range of sequences, exactly one record batch per (topic, partition);
    the next round is read only after every batch of this one was acknowledged, and only then does
    the checkpoint move. A failed round is sent again whole (duplicates, never a gap)."""

    def __init__(self, schema: str, kafka: KafkaSection, settings: ForwarderSettings, *, outbox: Outbox,
                 status: ForwarderStatus, metrics: ForwarderMetrics, signals: Signals) -> None:
        self.schema = schema
        self.kafka = kafka
        self.settings = settings
        self.outbox = outbox
        self.status = status
        self.metrics = metrics
        self.signals = signals
        self.acks = _ACKS[str(kafka.producer_acks)]
        #: The producer spans of the round in hand (tracing on, events stored with a trace context).
        self._spans: list[Any] = []

    def set_inactive(self) -> None:
        self.metrics.active.set(0)
        if self.status.state == "active":
            self.status.state = "standby"

    async def lead(self, conn: asyncpg.Connection, position: int) -> None:
        """Forward from ``position`` (the checkpoint) on the lease's connection until stopped."""
        status, metrics, signals = self.status, self.metrics, self.signals
        status.checkpoint = position
        metrics.checkpoint.set(position)
        status.state = "active"
        metrics.active.set(1)
        settings = self.settings
        backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        publisher: Publisher | None = None
        failed_rounds = 0
        chases = 0
        try:
            while not signals.stopping.is_set():
                signals.woken.clear()
                rows = await self.outbox.read(conn, position, settings.batch_events, settings.read_budget_bytes)
                if not rows:
                    # An own commit not readable yet waits for an appender below it that is still
                    # committing (commits run in parallel): look again soon, not at the next poll,
                    # for a while (the event may also have been deleted meanwhile).
                    chases = chases + 1 if signals.wanted > position else 0
                    if chases > CHASES:
                        signals.wanted = chases = 0
                    await signals.idle(CHASE_STEP * chases if chases else settings.poll_interval)
                    continue
                chases = 0
                try:
                    if publisher is None:
                        publisher = await self._new_publisher()
                    batch = records(rows, self.kafka, self._spans)
                    partitions = await publisher.partitions({r.topic for r in batch})
                    status.missing_topics = []
                    rnd = build_round(batch, partitions, publisher.producer, publisher.sequences)
                    await self._deliver(publisher, rnd, backoff)
                except (BrokerUnavailable, IdempotenceUnavailable, TopicsMissing, RoundFailed, KafkaSecurityError,
                        KafkaError) as exc:
                    tracing.end_spans(self._spans, str(exc))
                    failed_rounds += 1
                    # A client error outside our own checks counts as the brokers being unavailable.
                    failure = BrokerUnavailable(describe(exc)) if isinstance(exc, KafkaError) else exc
                    metrics.failures.labels(_KAFKA_REASONS.get(type(failure), "unavailable")).inc()
                    status.publish_failures += 1
                    if isinstance(failure, TopicsMissing):
                        status.missing_topics = failure.topics
                    status.fail(f"Kafka: {failure}")
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
                    await signals.pause(backoff.next())
                    continue
                tracing.end_spans(self._spans)
                # Every batch of the round is acknowledged: move the checkpoint (on the lock's connection).
                await self.outbox.advance(conn, rnd.end)
                position = rnd.end
                status.checkpoint = position
                metrics.checkpoint.set(position)
                metrics.published.inc(rnd.events)
                status.events_published += rnd.events
                status.rounds += 1
                status.last_published_at = now()
                failed_rounds = 0
                backoff.reset()
                if status.last_error is not None:
                    log.info("forwarder (schema %s) recovered: publishing again", self.schema)
                    status.clear_error()
        finally:
            tracing.end_spans(self._spans, "forwarder stopped")
            if publisher is not None:
                await publisher.close()
            self.set_inactive()

    async def _new_publisher(self) -> Publisher:
        publisher = Publisher(
            self.kafka.brokers,
            # Built for every new connection set: a rotated password file is read again.
            client_options=self.kafka.security.client_options(),
            acks=self.acks,
            request_timeout_ms=self.settings.request_timeout_ms,
            client_id=f"k1s0-forwarder-{self.schema}",
            idempotent=self.kafka.enable_idempotence,
        )
        await publisher.start()
        return publisher

    async def _deliver(self, publisher: Publisher, rnd: Round, backoff: Backoff) -> None:
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
            if why or attempt > self.kafka.producer_retries or self.signals.stopping.is_set():
                # The whole round is sent again from the checkpoint: the batches Kafka already took
                # are sent twice. Counted, so that duplicates are a number, not a surprise.
                resent = sum(b.count for tp, b in rnd.batches.items() if tp not in failed)
                self.status.events_resent += resent
                self.metrics.resent.inc(resent)
                raise RoundFailed(summary + why)
            self.status.fail(f"Kafka: {summary} (retrying)")
            pending = {tp: b for tp, b in pending.items() if tp in failed}
            await self.signals.pause(backoff.next())
