"""The forwarder's Kafka side: topic metadata without auto-creation, and one produce round.

Why not ``AIOKafkaProducer``: two of its behaviours work against an outbox relay.

* It asks for topic metadata with ``allow_auto_topic_creation=true`` (also from its background
  refresh after a broker reconnect). A broker with ``auto.create.topics.enable`` (Kafka's default)
  then creates a missing topic on the spot with the broker's default partition count: a topic
  the operator was meant to provision appears with the wrong layout, and keys silently move to
  other partitions. Here every metadata request says ``allow_auto_topic_creation=false``, and a
  missing topic is reported (``TopicsMissing``) instead of created.
* Its accumulator may put several batches of one partition in the queue; when one expires after a
  timeout the next can still be sent, so a consumer could see version 6 of a stream before version
  5 arrives in a retry. Here a *round* holds exactly one record batch per partition; the caller
  sends the next round only after every batch of this one was acknowledged. A record batch is
  appended atomically by the broker, so a failed batch means none of its records is after a gap.

The client (``AIOKafkaClient``: connections, API-version negotiation, request framing) and the
record-batch encoder are aiokafka's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import murmur2
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.protocol.transaction import InitProducerIdRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import TopicPartition

from k1s0_event_store.kafka_security import explain_bootstrap_failure

#: Largest record batch per partition and round. Kafka's default ``message.max.bytes`` is 1 MiB +
#: 12 bytes and applies to a whole (uncompressed here) batch; a single bigger event still goes
#: alone in its batch and is refused by the broker, which the status then reports.
MAX_BATCH_BYTES = 1_000_000
#: Largest round (all partitions together), well under Kafka's 100 MiB ``socket.request.max.bytes``.
MAX_ROUND_BYTES = 16_000_000
UNKNOWN_TOPIC_OR_PARTITION = 3
DUPLICATE_SEQUENCE_NUMBER = 46
_INT32_MAX = 2**31 - 1

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, asyncio.TimeoutError)


class TopicsMissing(Exception):
    """Topics the events are routed to do not exist on the broker (they are never auto-created)."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = sorted(topics)
        super().__init__(
            "topic(s) missing on the broker: " + ", ".join(self.topics)
            + " (the forwarder never creates topics; the operator or an administrator must)"
        )


class BrokerUnavailable(Exception):
    """No broker answered (connection refused, timed out, not ready)."""


class IdempotenceUnavailable(Exception):
    """The broker would not give us an idempotent producer id."""


class TlsFailed(BrokerUnavailable):
    """The TLS handshake failed: an untrusted or expired certificate, one for another host name, or
    a broker port that does not speak TLS. Retrying does not help until the settings change."""


class AuthenticationFailed(BrokerUnavailable):
    """The broker refused our SASL credentials or mechanism."""


@dataclass
class Record:
    """One message, ready to encode."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    sequence: int


@dataclass
class PartitionBatch:
    tp: TopicPartition
    builder: DefaultRecordBatchBuilder
    count: int = 0
    first_sequence: int = 0
    buffer: bytes = b""

    def close(self) -> None:
        self.buffer = bytes(self.builder.build())


@dataclass
class Round:
    """Records with sequences in (start, end], one record batch per partition."""

    end: int
    batches: dict[TopicPartition, PartitionBatch] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(b.count for b in self.batches.values())


@dataclass(frozen=True)
class Failure:
    tp: TopicPartition
    error: str
    retriable: bool
    code: int = -1


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, as the Java client), so every client agrees."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def build_round(
    records: Sequence[Record],
    partitions: Mapping[str, int],
    producer: tuple[int, int] | None = None,
    sequences: Mapping[TopicPartition, int] | None = None,
) -> Round:
    """Fill one batch per partition with records in order, stopping at the first record that no
    longer fits its partition's batch (the round then ends just before it). With ``producer``
    (id, epoch) the batches carry idempotence sequence numbers starting at ``sequences[tp]``."""
    pid, epoch = producer if producer is not None else (-1, -1)
    rnd = Round(end=records[0].sequence - 1 if records else 0)
    cache: dict[tuple[str, bytes], int] = {}
    total = 0
    for rec in records:
        total += len(rec.key) + len(rec.value)
        if total > MAX_ROUND_BYTES and rnd.batches:
            break
        slot = (rec.topic, rec.key)
        p = cache.get(slot)
        if p is None:
            p = cache[slot] = partition_for(rec.key, partitions[rec.topic])
        tp = TopicPartition(rec.topic, p)
        batch = rnd.batches.get(tp)
        if batch is None:
            builder = DefaultRecordBatchBuilder(
                magic=2, compression_type=0, is_transactional=0, producer_id=pid, producer_epoch=epoch,
                base_sequence=(sequences or {}).get(tp, 0) if producer is not None else -1,
                batch_size=MAX_BATCH_BYTES,
            )
            batch = rnd.batches[tp] = PartitionBatch(tp, builder, first_sequence=rec.sequence)
        meta = batch.builder.append(batch.count, None, rec.key, rec.value, rec.headers)
        if meta is None:  # full: this record starts the next round
            break
        batch.count += 1
        rnd.end = rec.sequence
    for batch in rnd.batches.values():
        batch.close()
    rnd.batches = {tp: b for tp, b in rnd.batches.items() if b.count}
    return rnd


class Publisher:
    """One client connection set to the brokers; rebuilt by the forwarder after repeated failures."""

    def __init__(
        self,
        brokers: Sequence[str],
        *,
        client_options: Mapping[str, Any],
        acks: int,
        request_timeout_ms: int,
        client_id: str,
        idempotent: bool = False,
    ) -> None:
        self.acks = acks
        self.idempotent = idempotent
        #: (producer id, epoch) when idempotent, and the next sequence number per partition. A
        #: batch re-sent with the same numbers is recognised by the broker and not appended twice.
        self.producer: tuple[int, int] | None = None
        self.sequences: dict[TopicPartition, int] = {}
        self.request_timeout_ms = request_timeout_ms
        self.client = AIOKafkaClient(
            bootstrap_servers=list(brokers),
            request_timeout_ms=request_timeout_ms,
            client_id=client_id,
            # Our own metadata requests keep the cluster map fresh; the background refresh of the
            # client (which lists no topics, so creates none) only needs to run rarely.
            metadata_max_age_ms=300_000,
            **client_options,
        )
        self._brokers = list(brokers)
        self._options = dict(client_options)
        self.client_id = client_id

    async def start(self) -> None:
        try:
            await self.client.bootstrap()
        except Exception as exc:
            # aiokafka only logs why each bootstrap host failed, and lets some SASL failures (a SCRAM
            # server-final message carrying an error) escape as KeyError/ValueError: find out what
            # went wrong so that the status says "TLS" or "authentication", not just "unreachable".
            await self.close()
            raise await self._diagnose(exc) from exc
        if self.idempotent:
            try:
                await self._init_producer_id()
            except BaseException:
                await self.close()
                raise

    async def _diagnose(self, exc: BaseException) -> BrokerUnavailable:
        kind, message = await explain_bootstrap_failure(
            exc, self._brokers, self._options, client_id=self.client_id, request_timeout_ms=self.request_timeout_ms
        )
        return {"tls": TlsFailed, "authentication": AuthenticationFailed}.get(kind, BrokerUnavailable)(message)

    async def _init_producer_id(self) -> None:
        node = self.client.get_random_node()
        if node is None:
            raise BrokerUnavailable("no broker known (bootstrap returned none)")
        try:
            response: Any = await self.client.send(
                node, InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=_INT32_MAX)  # type: ignore[arg-type]
            )
        except TRANSPORT_ERRORS as exc:
            raise IdempotenceUnavailable(
                f"InitProducerId failed ({describe(exc)}): the broker may not support idempotent producers;"
                " set kafka.enable_idempotence: false for such a broker"
            ) from exc
        if response.error_code != 0:
            error = for_code(response.error_code).__name__
            raise IdempotenceUnavailable(
                f"the broker refused an idempotent producer id (InitProducerId: {error});"
                " set kafka.enable_idempotence: false for a broker without idempotence"
            )
        self.producer = (int(response.producer_id), int(response.producer_epoch))

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception:  # pragma: no cover - closing a broken client
            pass

    async def partitions(self, topics: Iterable[str]) -> dict[str, int]:
        """Partition counts of ``topics`` (metadata asked without auto-creation)."""
        wanted = sorted(set(topics))
        node = self.client.get_random_node()
        if node is None:
            raise BrokerUnavailable("no broker known (bootstrap returned none)")
        try:
            response: Any = await self.client.send(node, MetadataRequest(wanted, allow_auto_topic_creation=False))
        except TRANSPORT_ERRORS as exc:
            raise BrokerUnavailable(f"metadata request failed: {describe(exc)}") from exc
        self.client.cluster.update_metadata(response)
        counts: dict[str, int] = {}
        missing: list[str] = []
        for topic in wanted:
            parts = self.client.cluster.partitions_for_topic(topic)
            if not parts:
                missing.append(topic)
            else:
                counts[topic] = len(parts)
        if missing:
            raise TopicsMissing(missing)
        return counts

    async def produce(self, batches: Mapping[TopicPartition, PartitionBatch]) -> list[Failure]:
        """Send every batch (one request per leader, all at once); return the partitions that failed."""
        by_node: dict[int, list[PartitionBatch]] = {}
        failures: list[Failure] = []
        for tp, batch in batches.items():
            leader = self.client.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                failures.append(Failure(tp, "partition has no leader (or is unknown)", True))
            else:
                by_node.setdefault(leader, []).append(batch)
        results = await asyncio.gather(*(self._send(node, group) for node, group in by_node.items()))
        for result in results:
            failures.extend(result)
        return failures

    async def _send(self, node: int, group: list[PartitionBatch]) -> list[Failure]:
        topics: dict[str, list[tuple[int, bytes]]] = {}
        for b in group:
            topics.setdefault(b.tp.topic, []).append((b.tp.partition, b.buffer))
        request = ProduceRequest(
            transactional_id=None, required_acks=self.acks, timeout=self.request_timeout_ms,
            topics=list(topics.items()),
        )
        try:
            response: Any = await self.client.send(node, request)
        except TRANSPORT_ERRORS as exc:
            return [Failure(b.tp, describe(exc), True) for b in group]
        if self.acks == 0:
            return []
        answered: dict[TopicPartition, int] = {}
        for topic, partitions in response.topics:
            for info in partitions:
                answered[TopicPartition(topic, info[0])] = info[1]
        failures = []
        for b in group:
            code = answered.get(b.tp)
            if code is None:
                failures.append(Failure(b.tp, "no answer for this partition", True))
            elif code in (0, DUPLICATE_SEQUENCE_NUMBER):  # appended now, or by an earlier try of this batch
                if self.producer is not None:
                    self.sequences[b.tp] = (self.sequences.get(b.tp, 0) + b.count) % (_INT32_MAX + 1)
            else:
                err = for_code(code)
                failures.append(Failure(b.tp, f"{err.__name__} (code {code})", bool(err.retriable), code))
        return failures


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
