"""The EventStream's topics: create, grow, configure, delete, and say exactly what could not be done.

Partitions only grow (Kafka cannot shrink a topic without losing its order guarantees): a smaller
number in the spec is refused and reported, never attempted. A broker that lacks an API the spec
needs (Tansu, our test broker, has neither CreatePartitions nor AlterConfigs; aiokafka raises
``IncompatibleBrokerVersion``) is reported with the topic and partition counts, never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError

from k1s0_event_store.kafka_security import KafkaSecurity, KafkaSecurityError, explain_bootstrap_failure

from ._spec import TopicSpec

REQUEST_TIMEOUT_MS = 10_000
TOPIC_ALREADY_EXISTS = 36


class BrokerUnavailable(Exception):
    """The brokers could not be reached (retry later)."""


@dataclass(frozen=True, slots=True)
class TopicOutcome:
    name: str
    ok: bool
    partitions: int
    reason: str
    message: str
    created: bool = False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip() or type(exc).__name__}"[:300]


class Admin:
    """A started admin client for one reconciliation (``async with Admin(brokers) as admin``)."""

    def __init__(self, brokers: Sequence[str], security: KafkaSecurity | None = None) -> None:
        self._brokers = list(brokers)
        # Built per reconciliation: a rotated SASL password file is read again. Settings that went
        # bad since start-up (a deleted CA file) are reported by __aenter__ like an outage.
        self._invalid: KafkaSecurityError | None = None
        try:
            self._options = (security or KafkaSecurity()).client_options()
        except KafkaSecurityError as exc:
            self._invalid, self._options = exc, {}
        self._client = AIOKafkaAdminClient(
            bootstrap_servers=self._brokers,
            request_timeout_ms=REQUEST_TIMEOUT_MS,
            client_id="k1s0-eventstore-operator",
            **self._options,
        )

    async def __aenter__(self) -> Admin:
        if self._invalid is not None:
            raise BrokerUnavailable(f"Kafka settings: {self._invalid}")
        try:
            await self._client.start()
        except Exception as exc:  # SASL failures can surface as KeyError/ValueError from aiokafka
            await self._close_quietly()
            _, why = await explain_bootstrap_failure(
                exc, self._brokers, self._options, client_id="k1s0-eventstore-operator",
                request_timeout_ms=REQUEST_TIMEOUT_MS,
            )
            raise BrokerUnavailable(f"Kafka is unavailable: {why}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close_quietly()

    async def _close_quietly(self) -> None:
        try:
            await self._client.close()
        except Exception:  # closing a half-started client must not mask the real error
            pass

    async def existing(self) -> set[str]:
        try:
            return set(await self._client.list_topics())
        except (KafkaError, OSError) as exc:
            raise BrokerUnavailable(f"Kafka is unavailable: {_describe(exc)}") from None

    async def partition_count(self, name: str) -> int:
        described: list[dict[str, Any]] = await self._client.describe_topics([name])
        for topic in described:
            if topic.get("topic") == name and not topic.get("error_code"):
                return len(topic.get("partitions") or [])
        return 0

    async def current_config(self, name: str, keys: Iterable[str]) -> dict[str, str]:
        wanted = set(keys)
        if not wanted:
            return {}
        responses = await self._client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        found: dict[str, str] = {}
        for response in responses:
            for resource in response.resources:
                for entry in resource[4]:
                    key, value = entry[0], entry[1]
                    if key in wanted and value is not None:
                        found[key] = str(value)
        return found

    async def ensure(self, topic: TopicSpec, existing: set[str]) -> TopicOutcome:
        """Create the topic, or bring an existing one to the spec as far as the broker allows."""
        try:
            if topic.name not in existing:
                response = await self._client.create_topics(
                    [NewTopic(topic.name, topic.partitions, topic.replication_factor, topic_configs=dict(topic.config))]
                )
                for name, code, message in response.topic_errors:
                    if name == topic.name and code not in (0, TOPIC_ALREADY_EXISTS):
                        return TopicOutcome(
                            topic.name, False, 0, "TopicCreateFailed",
                            f"topic {topic.name}: the broker refused to create it (error {code}: {message})",
                        )
                return TopicOutcome(
                    topic.name, True, topic.partitions, "Created",
                    f"topic {topic.name} created with {topic.partitions} partitions", created=True,
                )
            current = await self.partition_count(topic.name)
            if topic.partitions < current:
                return TopicOutcome(
                    topic.name, False, current, "PartitionShrinkRefused",
                    f"topic {topic.name} has {current} partitions; the spec asks for {topic.partitions}, "
                    "and partitions can only grow (not attempted)",
                )
            if topic.partitions > current:
                try:
                    await self._client.create_partitions({topic.name: NewPartitions(topic.partitions)})
                except IncompatibleBrokerVersion:
                    return TopicOutcome(
                        topic.name, False, current, "PartitionIncreaseUnsupported",
                        f"topic {topic.name} has {current} partitions; the spec asks for {topic.partitions}, "
                        "but the broker does not support CreatePartitions",
                    )
                current = topic.partitions
            drift = await self._config_drift(topic)
            if drift:
                try:
                    await self._client.alter_configs(
                        [ConfigResource(ConfigResourceType.TOPIC, topic.name, configs=dict(topic.config))]
                    )
                except IncompatibleBrokerVersion:
                    return TopicOutcome(
                        topic.name, False, current, "ConfigChangeUnsupported",
                        f"topic {topic.name}: config {', '.join(sorted(drift))} differs from the spec, "
                        "but the broker does not support AlterConfigs",
                    )
            return TopicOutcome(topic.name, True, current, "Ready", f"topic {topic.name} has {current} partitions")
        except IncompatibleBrokerVersion as exc:
            return TopicOutcome(topic.name, False, 0, "BrokerUnsupported", f"topic {topic.name}: {_describe(exc)}")
        except (KafkaError, OSError) as exc:
            raise BrokerUnavailable(f"Kafka is unavailable: {_describe(exc)}") from None

    async def _config_drift(self, topic: TopicSpec) -> set[str]:
        if not topic.config:
            return set()
        current = await self.current_config(topic.name, topic.config)
        return {k for k, v in topic.config.items() if current.get(k) != v}

    async def delete(self, names: Iterable[str]) -> list[str]:
        todo = sorted(set(names) & await self.existing())
        if todo:
            try:
                await self._client.delete_topics(todo)
            except (KafkaError, OSError) as exc:
                raise BrokerUnavailable(f"Kafka is unavailable: {_describe(exc)}") from None
        return todo


def summarize(outcomes: Sequence[TopicOutcome]) -> tuple[bool, str, str, Mapping[str, int]]:
    """(all ok, reason, message, partitions per topic) for the TopicReady condition."""
    failed = [o for o in outcomes if not o.ok]
    partitions = {o.name: o.partitions for o in outcomes}
    if failed:
        return False, failed[0].reason, "; ".join(o.message for o in failed), partitions
    # A steady message (not "created ..."), so that a repeated reconciliation leaves the status as it is.
    return True, "TopicsReady", "; ".join(f"topic {o.name} has {o.partitions} partitions" for o in outcomes), partitions
